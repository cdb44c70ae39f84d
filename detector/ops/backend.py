"""Which implementation runs an op: ``backend="auto" | "triton" | "torchvision"``.

"auto" picks the Triton kernels for float32 CUDA tensors when triton imports, and torchvision
(CPU C++ / CUDA) or the chunked torch matcher otherwise. "triton" on CPU tensors runs the
kernels in Triton's interpreter, which must be switched on (``TRITON_INTERPRET=1``) before the
kernels are first imported; without it the kernels raise a clear error.
"""
import functools

import torch
from torch import Tensor

from detector.errors import InputError, MissingDependencyError

BACKENDS = ("auto", "triton", "torchvision")


@functools.cache
def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # missing or broken: "auto" must still work
        return False
    return True


def use_triton(backend: str, *boxes: Tensor) -> bool:
    """Whether the op should run the Triton kernels for these box tensors."""
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}: expected one of {BACKENDS}")
    if backend == "torchvision":
        return False
    if backend == "triton":
        if not triton_importable():
            raise MissingDependencyError("backend='triton' needs the triton package (pip install triton); use backend='torchvision'")
        return True
    on_gpu = all(t.is_cuda and t.dtype == torch.float32 for t in boxes)
    return on_gpu and triton_importable()


def triton_kernels():
    """The Triton implementations, imported on first use (this is where triton gets imported)."""
    import detector.ops.triton as kernels

    return kernels
