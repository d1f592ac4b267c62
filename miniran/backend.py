"""Arrays and devices: one entry point that picks NumPy or CuPy.

Every reference Function of :mod:`miniran.functional` computes on *raw*
arrays obtained through :func:`get_array_module`, so the same code runs on a
NumPy array (CPU) and on a CuPy array (GPU). CuPy is optional: it is imported
lazily inside a ``try/except`` and the import error is kept, to be shown only
when the user actually asks for the GPU.

This module does one job. miniran's CPU threads and the BLAS thread hold are
in :mod:`miniran.threads`; the declarations of the fused GPU kernels in
:mod:`miniran.kernels`. It is the lowest layer of the package and imports
nothing from miniran.
"""

from __future__ import annotations

import sys

import numpy as np

#: dtype of new floating-point tensors and parameters.
DEFAULT_DTYPE = np.float32

_cupy = None
_cupy_import_error: BaseException | None = None
_cupy_checked = False
_gpu_usable: bool | None = None
_gpu_error: BaseException | None = None

INSTALL_HINT = (
    "Install the CuPy build that matches your CUDA driver together with the CUDA "
    "libraries it needs (NVRTC, cuBLAS, ...): `pip install -e '.[cuda12]'` (CUDA 12.x "
    "driver) or `pip install -e '.[cuda13]'` (CUDA 13.x driver); these extras install "
    "`cupy-cudaNNx[ctk]`, which brings the CUDA libraries as wheels, so only the NVIDIA "
    "driver is needed. `nvidia-smi` shows the CUDA version your driver supports."
)


def _import_cupy():
    """Import CuPy once; remember the failure instead of raising it."""
    global _cupy, _cupy_import_error, _cupy_checked
    if not _cupy_checked:
        _cupy_checked = True
        try:
            import cupy  # noqa: F401

            _cupy = cupy
        except Exception as exc:  # ImportError, or a CUDA library that fails to load
            _cupy_import_error = exc
    return _cupy


def cuda_available() -> bool:
    """True only when CuPy imports *and* a CUDA device can run a kernel."""
    global _gpu_usable, _gpu_error
    if _gpu_usable is None:
        cp = _import_cupy()
        if cp is None:
            _gpu_usable = False
        else:
            try:
                _gpu_usable = bool(cp.is_available())
                if _gpu_usable:
                    # is_available() only counts devices; run a tiny kernel to be sure.
                    (cp.arange(2) + 1).sum().item()
                else:
                    _gpu_error = RuntimeError("CuPy found no usable CUDA device")
            except Exception as exc:
                _gpu_usable = False
                _gpu_error = exc
    return _gpu_usable


def check_cuda_available() -> None:
    """Raise a RuntimeError that says how to get a working GPU setup."""
    if cuda_available():
        return
    if _cupy is None:
        reason = f"CuPy could not be imported ({_cupy_import_error!r})."
    else:
        reason = f"CuPy is installed but no GPU is usable ({_gpu_error!r})."
    raise RuntimeError(f"The GPU was requested but is not available: {reason} {INSTALL_HINT}")


def cupy_module():
    """The ``cupy`` module (raises the helpful error when it is not usable)."""
    check_cuda_available()
    return _cupy


def _cupy_ndarray_type():
    """CuPy's ndarray class if CuPy has been imported by anyone, else None.

    Looks in ``sys.modules`` as well as at miniran's own import, so an array made
    by a user who imported CuPy before miniran did is still recognised, and a
    type check never triggers the (slow) CuPy import itself.
    """
    return getattr(_loaded_cupy(), "ndarray", None)


def _loaded_cupy():
    """The ``cupy`` module if miniran or the user has imported it, else None."""
    return _cupy if _cupy is not None else sys.modules.get("cupy")


def is_cupy_array(array) -> bool:
    """True for a raw CuPy array (not for a miniran Tensor holding one)."""
    nd = _cupy_ndarray_type()
    return nd is not None and isinstance(array, nd)


def get_array_module(*arrays):
    """Return ``numpy`` or ``cupy``, whichever holds the given arrays.

    Accepts raw arrays (NumPy or CuPy), Python and NumPy scalars, ``None`` and
    miniran tensors. NumPy is returned unless at least one argument is a CuPy
    array or a tensor holding one. Raw arrays are checked first: a CuPy array
    also has a ``.data`` attribute (its device memory pointer), which must not
    be mistaken for a tensor's data.
    """
    nd = _cupy_ndarray_type()
    if nd is None:
        return np
    for a in arrays:
        if isinstance(a, nd) or isinstance(getattr(a, "data", None), nd):
            return _loaded_cupy()
    return np


def normalize_device(device) -> str:
    """Map user spellings ('cpu', 'gpu', 'cuda', 'cuda:0') to 'cpu' or 'gpu'.

    miniran drives one GPU, CuPy's current device. ``cuda:N`` with N other than
    0 is refused rather than silently meaning device 0: choose the card with
    ``CUDA_VISIBLE_DEVICES=N``, which makes it device 0 for the process.
    """
    if device is None:
        return "cpu"
    name = str(device).strip().lower()
    if name == "cpu":
        return "cpu"
    if name in ("gpu", "cuda"):
        return "gpu"
    for prefix in ("cuda:", "gpu:"):
        if name.startswith(prefix):
            index = name[len(prefix):]
            if index == "0":
                return "gpu"
            if index.isdigit():
                raise ValueError(
                    f"device {device!r}: miniran uses one GPU, device 0; to run on GPU {index}, "
                    f"start Python with CUDA_VISIBLE_DEVICES={index} and pass device='gpu'")
    raise ValueError(f"device must be 'cpu' or 'gpu' (or 'cuda', 'cuda:0'), got {device!r}")


def device_of(array) -> str:
    return "gpu" if is_cupy_array(array) else "cpu"


def to_device(array, device):
    """Copy a raw array to 'cpu' (NumPy) or 'gpu' (CuPy); no copy if already there."""
    device = normalize_device(device)
    if device == "cpu":
        return _loaded_cupy().asnumpy(array) if is_cupy_array(array) else np.asarray(array)
    cp = cupy_module()
    return array if is_cupy_array(array) else cp.asarray(array)


def data_pointer(array) -> int:
    """The address of an array's first element (device memory for CuPy, host memory for NumPy)."""
    return int(array.data.ptr) if is_cupy_array(array) else int(array.__array_interface__["data"][0])


def same_memory(a, b) -> bool:
    """Whether two arrays are the same elements: same start, shape, strides and dtype (views included)."""
    return (a.shape == b.shape and a.dtype == b.dtype and a.strides == b.strides
            and is_cupy_array(a) == is_cupy_array(b) and data_pointer(a) == data_pointer(b))


def to_numpy(array) -> np.ndarray:
    """Host copy of any array (NumPy arrays are returned as they are)."""
    return to_device(array, "cpu")
