"""``cupy.cuda.runtime`` of the stand-in: one device, id 0, unless ``CUPY_STANDIN_DEVICES`` says more.

``CUPY_STANDIN_DEVICES=N`` (the stand-in's own setting, for multi-process
tests) makes N devices visible; all of them are the same host memory, and
each process of an ``mpiexec`` run has its own.
"""

import os

import cupy_standin as _ctl


class CUDARuntimeError(RuntimeError):
    def __init__(self, status, msg):
        self.status = status
        super().__init__(msg)


_DEVICE = [0]
_TOTAL = 141 * 2**30


def getDeviceCount():
    value = os.environ.get("CUPY_STANDIN_DEVICES", "1").strip()
    return int(value) if value.isdigit() and int(value) >= 1 else 1


def getDevice():
    return _DEVICE[0]


def setDevice(device):
    # what the CUDA runtime answers for an ordinal past the last device
    if not 0 <= int(device) < getDeviceCount():
        raise CUDARuntimeError(101, "cudaErrorInvalidDevice: invalid device ordinal")
    _DEVICE[0] = int(device)


def deviceSynchronize():
    _ctl.sync("device_synchronize")


def memGetInfo():
    from cupy import get_default_memory_pool
    used = get_default_memory_pool().used_bytes()
    return (_TOTAL - used, _TOTAL)


def runtimeGetVersion():
    return 12080


def driverGetVersion():
    return 12080


def getDeviceProperties(device):
    if not 0 <= int(device) < getDeviceCount():
        raise CUDARuntimeError(101, "cudaErrorInvalidDevice: invalid device ordinal")
    return {"name": b"cupy stand-in (CPU)", "totalGlobalMem": _TOTAL, "major": 9, "minor": 0,
            "multiProcessorCount": 132, "maxThreadsPerBlock": 1024, "warpSize": 32}


is_hip = False
