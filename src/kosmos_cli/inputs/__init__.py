"""inputs stage."""
