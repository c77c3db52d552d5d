"""Evaluation: ground truth files, metrics, and `kosmos25 eval` runs."""
