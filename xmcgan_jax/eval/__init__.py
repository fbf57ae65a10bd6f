"""Evaluation: FID / IS arithmetic, R-precision."""
