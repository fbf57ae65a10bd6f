"""Training: the compiled step, the loop around it, its state on disk."""
