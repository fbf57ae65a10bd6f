"""Sampling: checkpoints and captions in, images out, without TensorFlow."""
