"""A GPU path that cannot strand a run: the Triton kernels are checked before "auto" trusts them.

No kernel of ours has run on every GPU, Triton and driver version a user may have. So the
first "auto" call of each op in a process runs its Triton kernel and torchvision's op on a
small probe (clustered boxes, distinct scores, several classes and images) and compares them
exactly. On a compile or launch error, or any difference, it warns once (`TritonFallbackWarning`,
naming the op, the GPU and the Triton and torch versions) and the op runs torchvision's
implementation for the rest of the process. A kernel that raises on a later call is replaced
the same way; running out of memory is not the kernel's fault and is raised as it is.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor

PROBE_BOXES = 200
# op -> True (trusted) or False (replaced by torchvision's), decided at its first "auto" call.
_verdicts: dict[str, bool] = {}


class TritonFallbackWarning(RuntimeWarning):
    """A Triton kernel failed or disagreed with torchvision; the op uses torchvision's from now on."""


def run_checked(op: str, device: torch.device, triton_call: Callable[[], Tensor],
                torch_call: Callable[[], Tensor]) -> Tensor:
    """`triton_call()` if op `op`'s kernel is trusted (probed on the first call), else `torch_call()`."""
    if op not in _verdicts:
        problem = probe_problem(op, device)
        _verdicts[op] = problem is None
        if problem:
            _warn(op, device, problem)
    if not _verdicts[op]:
        return torch_call()
    try:
        return triton_call()
    except torch.OutOfMemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - any kernel failure: compile, launch, unsupported GPU
        _verdicts[op] = False
        _warn(op, device, f"raised {_one_line(error)}")
        return torch_call()


def probe_problem(op: str, device: torch.device) -> str | None:
    """Why op `op`'s Triton kernel cannot be trusted on `device`, or None when it gives exactly
    torchvision's result on the probe."""
    from detector import ops

    gt, boxes, scores, classes, images = probe_inputs(device)
    calls = {
        "box_iou": lambda backend: [ops.box_iou(gt, boxes, backend=backend)],
        "match": lambda backend: [ops.match(gt, boxes, 0.7, 0.3, True, backend=backend),
                                  ops.match(gt, boxes, 0.5, 0.4, False, backend=backend)],
        "nms": lambda backend: [ops.nms(boxes, scores, 0.5, backend=backend)],
        "batched_nms": lambda backend: [ops.batched_nms(boxes, scores, classes, 0.5, backend=backend),
                                        ops.batched_nms(boxes, scores, classes, 0.5, backend, image_idxs=images)],
    }
    try:
        ours = calls[op]("triton")
    except torch.OutOfMemoryError:
        raise
    except Exception as error:  # noqa: BLE001
        return f"raised {_one_line(error)}"
    theirs = calls[op]("torchvision")
    for mine, reference in zip(ours, theirs):
        difference = _difference(mine, reference)
        if difference:
            return f"differs from torchvision on a probe of {len(gt)} x {len(boxes)} boxes: {difference}"
    return None


def probe_inputs(device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(gt [12, 4], boxes [200, 4], distinct scores, classes 0..2, images 0..1) as a detector
    sees them: clusters of jittered boxes around objects, plus a zero-area box and a duplicate."""
    generator = torch.Generator().manual_seed(0)
    centers = torch.rand(10, 2, generator=generator) * torch.tensor([640.0, 480.0])
    sizes = 16 + torch.rand(10, 2, generator=generator) * 200
    gt = torch.cat([centers - sizes / 2, centers + sizes / 2], dim=1)
    owner = torch.randint(0, 10, (PROBE_BOXES,), generator=generator)
    jitter = 1 + 0.2 * torch.randn(PROBE_BOXES, 4, generator=generator)
    boxes = torch.cat([centers[owner] - sizes[owner] / 2 * jitter[:, :2], centers[owner] + sizes[owner] / 2 * jitter[:, 2:]], dim=1)
    boxes[0] = torch.tensor([5.0, 5.0, 5.0, 9.0])  # zero area
    boxes[1] = boxes[2]  # an exact duplicate
    gt = torch.cat([gt, torch.tensor([[0.0, 0.0, 8.0, 8.0], [600.0, 10.0, 630.0, 60.0]])])  # one overlaps nothing
    scores = (torch.randperm(PROBE_BOXES, generator=generator).float() + 1) / PROBE_BOXES
    classes = torch.randint(0, 3, (PROBE_BOXES,), generator=generator)
    images = torch.randint(0, 2, (PROBE_BOXES,), generator=generator)
    return tuple(t.to(device) for t in (gt, boxes, scores, classes, images))


def _difference(ours: Tensor, theirs: Tensor) -> str | None:
    """What differs between two results (None when equal: same shape, dtype and values, NaN == NaN)."""
    if ours.shape != theirs.shape or ours.dtype != theirs.dtype:
        return f"{ours.dtype} {tuple(ours.shape)} instead of {theirs.dtype} {tuple(theirs.shape)}"
    ours, theirs = ours.cpu(), theirs.cpu()
    differ = (ours != theirs) & ~(ours.isnan() & theirs.isnan()) if ours.is_floating_point() else ours != theirs
    if not differ.any():
        return None
    if ours.is_floating_point():
        largest = (ours - theirs).abs()[differ].nan_to_num(nan=float("inf")).max().item()
        return f"{int(differ.sum())} of {ours.numel()} values differ (largest |difference| {largest:.3g})"
    return f"{int(differ.sum())} of {ours.numel()} indices differ"


def _warn(op: str, device: torch.device, problem: str) -> None:
    warnings.warn(f"ops.{op}: the Triton kernel {problem} on {_device_name(device)} (Triton {_triton_version()}, "
                  f"torch {torch.__version__}); ops.{op} runs torchvision's implementation for the rest of this "
                  f"process (backend='triton' runs the kernel regardless)", TritonFallbackWarning, stacklevel=4)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor})"
    return f"{device.type} (Triton interpreter)"


def _triton_version() -> str:
    try:
        import triton
    except Exception:  # noqa: BLE001
        return "not importable"
    return getattr(triton, "__version__", "unknown")


def _one_line(error: Exception) -> str:
    message = " ".join(str(error).split())
    return f"{type(error).__name__}: {message[:300]}" if message else type(error).__name__
