"""Stand-in for CuPy's ``cupy_backends`` package: only ``cupy_backends.cuda.libs.cublas``."""
