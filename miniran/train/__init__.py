"""Training: the ``miniran`` command line, the training loop, checkpoints and plots."""
