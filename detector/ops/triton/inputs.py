"""Host-side checks shared by the Triton wrappers: where a kernel can run, and its inputs."""
import torch
from torch import Tensor

from detector.errors import InputError, KernelError


def is_interpreted(kernel) -> bool:
    """True when ``kernel`` was defined under ``TRITON_INTERPRET=1`` (runs on CPU tensors)."""
    return type(kernel).__name__ == "InterpretedFunction"


def check_device(kernel, *tensors: Tensor) -> None:
    """Compiled kernels need CUDA tensors; the interpreter takes CPU tensors."""
    if is_interpreted(kernel):
        return
    for tensor in tensors:
        if tensor.device.type != "cuda":
            raise KernelError(
                f"backend='triton' needs CUDA tensors, got a tensor on {tensor.device}; for CPU tensors set "
                "TRITON_INTERPRET=1 before detector.ops.triton is first imported, or use backend='torchvision'"
            )


def as_float32_boxes(boxes: Tensor, name: str) -> Tensor:
    """Contiguous float32 [N, 4]: the kernels compute in fp32 and read rows of 4 coordinates."""
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise InputError(f"{name} must be [N, 4] (x1, y1, x2, y2), got shape {tuple(boxes.shape)}")
    if boxes.dtype != torch.float32:
        raise InputError(f"backend='triton' computes in float32; {name} is {boxes.dtype} (use backend='torchvision')")
    return boxes.contiguous()
