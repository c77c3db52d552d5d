"""Fine-tuning KOSMOS-2.5 on your own pages: `kosmos25 train` and `kosmos25 merge`."""
