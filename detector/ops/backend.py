"""Which implementation runs an op: ``backend="auto" | "triton" | "torchvision"``.

"auto" picks the Triton kernels for float32 CUDA tensors when triton imports, and torchvision
(CPU C++ / CUDA) or the chunked torch matcher otherwise. The first "auto" call of each op in a
process checks its kernel against torchvision on a probe, and a kernel that fails then or later
or disagrees is replaced by torchvision's op, with one warning (triton_check.py). "triton" runs
the kernels unchecked, errors included; on CPU tensors it runs them in Triton's interpreter,
which must be switched on (``TRITON_INTERPRET=1``) before the kernels are first imported;
without it the kernels raise a clear error.
"""
import functools
from collections.abc import Callable

import torch
from torch import Tensor

from detector.errors import InputError, MissingDependencyError

BACKENDS = ("auto", "triton", "torchvision")
# Devices whose float32 tensors "auto" sends to the Triton kernels. (Tests add "cpu" to run the
# first-call check through Triton's interpreter.)
AUTO_TRITON_DEVICES = {"cuda"}


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
    on_gpu = all(t.device.type in AUTO_TRITON_DEVICES and t.dtype == torch.float32 for t in boxes)
    return on_gpu and triton_importable()


def dispatch(op: str, backend: str, boxes: tuple[Tensor, ...], triton_call: Callable[[], Tensor],
             torch_call: Callable[[], Tensor]) -> Tensor:
    """`triton_call()` when op `op` should run the Triton kernels for these box tensors and, with
    "auto", its kernel is trusted on this machine (triton_check.py); else `torch_call()`."""
    if not use_triton(backend, *boxes):
        return torch_call()
    if backend == "triton":
        return triton_call()
    from detector.ops import triton_check

    return triton_check.run_checked(op, boxes[0].device, triton_call, torch_call)


def triton_kernels():
    """The Triton implementations, imported on first use (this is where triton gets imported)."""
    import detector.ops.triton as kernels

    return kernels
