"""Training. Filled by the training issue (#5)."""
