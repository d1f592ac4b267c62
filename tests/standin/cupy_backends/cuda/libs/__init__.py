"""Stand-in for ``cupy_backends.cuda.libs``."""
