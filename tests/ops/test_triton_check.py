"""backend="auto" cannot strand a run on a GPU where a Triton kernel fails or computes wrong: the
first call of each op checks the kernel against torchvision, and a failing or wrong kernel is
replaced by torchvision's op with one warning naming the op, the device and the versions.

Run on CPU tensors through Triton's interpreter (conftest.py): "auto" is let onto CPU tensors
here, and kernels are broken on purpose; the checking code is the package's own."""
import warnings

import pytest
import torch
import torchvision
from box_cases import DEVICE

import detector.ops.triton as kernels
from detector import ops
from detector.ops import backend, triton_check
from detector.ops.matcher import match_chunked
from detector.ops.triton import bitmask_nms
from detector.ops.triton_check import TritonFallbackWarning

OPS = ("box_iou", "match", "nms", "batched_nms")


def test_every_real_kernel_passes_its_check():
    # On a GPU (tools/gpu_check.sh) the compiled kernels; here the interpreter. No false alarm.
    assert {op: triton_check.probe_problem(op, DEVICE) for op in OPS} == dict.fromkeys(OPS)


# The tests below break kernels on purpose and run them through Triton's interpreter.
interpreter_only = pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter tests (CPU only)")


@pytest.fixture(autouse=True)
def auto_on_cpu(monkeypatch):
    """A process that has checked nothing yet, where "auto" sends CPU tensors to the kernels."""
    monkeypatch.setattr(backend, "AUTO_TRITON_DEVICES", {"cuda", "cpu"})
    monkeypatch.setattr(triton_check, "_verdicts", {})


def inputs(count=40, seed=0):
    generator = torch.Generator().manual_seed(seed)
    top_left = torch.rand(count, 2, generator=generator) * 100
    boxes = torch.cat([top_left, top_left + 1 + torch.rand(count, 2, generator=generator) * 40], dim=1)
    return boxes, torch.rand(count, generator=generator), torch.randint(0, 3, (count,), generator=generator)


class FailingKernel:
    """Stands in for a @triton.jit kernel that cannot compile on this GPU: `kernel[grid](...)` raises."""

    def __init__(self):
        self.launches = 0

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches += 1
            raise RuntimeError("PassManager::run failed")

        return launch


def no_warning(call):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call()
    assert not [w for w in caught if issubclass(w.category, TritonFallbackWarning)]
    return result


@interpreter_only
def test_a_trusted_kernel_runs_after_its_first_call_check():
    boxes, scores, _ = inputs()
    assert torch.equal(no_warning(lambda: ops.nms(boxes, scores, 0.5)), torchvision.ops.nms(boxes, scores, 0.5))
    assert triton_check._verdicts == {"nms": True}


@interpreter_only
def test_a_kernel_that_fails_to_compile_is_replaced_by_torchvision_with_one_warning(monkeypatch):
    import triton

    failing = FailingKernel()
    monkeypatch.setattr(bitmask_nms, "_keep_from_mask_kernel", failing)  # used by nms and batched_nms
    boxes, scores, classes = inputs()
    with pytest.warns(TritonFallbackWarning) as caught:
        kept = ops.nms(boxes, scores, 0.5)
    assert torch.equal(kept, torchvision.ops.nms(boxes, scores, 0.5))
    ours = [str(w.message) for w in caught if issubclass(w.category, TritonFallbackWarning)]
    message = ours[0]
    assert len(ours) == 1 and message.startswith("ops.nms: the Triton kernel raised RuntimeError: PassManager::run failed")
    assert f"on cpu (Triton interpreter) (Triton {triton.__version__}, torch {torch.__version__})" in message
    launches = failing.launches
    assert torch.equal(no_warning(lambda: ops.nms(boxes, scores, 0.3)), torchvision.ops.nms(boxes, scores, 0.3))
    assert failing.launches == launches  # torchvision's from then on: the kernel is not tried again

    # Each op is judged on its own: batched_nms warns once for itself, box_iou stays on its kernel.
    with pytest.warns(TritonFallbackWarning, match="^ops.batched_nms: the Triton kernel raised"):
        kept = ops.batched_nms(boxes, scores, classes, 0.5)
    assert torch.equal(kept, torchvision.ops.batched_nms(boxes, scores, classes, 0.5))
    no_warning(lambda: ops.box_iou(boxes, boxes))
    assert triton_check._verdicts == {"nms": False, "batched_nms": False, "box_iou": True}


@interpreter_only
def test_a_kernel_that_computes_wrong_is_replaced_by_torchvision(monkeypatch):
    real_iou, real_match = kernels.box_iou, kernels.match
    # One ulp off everywhere: the check compares bits, not a tolerance.
    monkeypatch.setattr(kernels, "box_iou", lambda a, b: torch.nextafter(real_iou(a, b), torch.tensor(2.0)))

    def match_off_by_one_box(*args):
        matches = real_match(*args)
        matches[0] = -2 if matches[0] != -2 else -1
        return matches

    monkeypatch.setattr(kernels, "match", match_off_by_one_box)
    boxes, _, _ = inputs()
    with pytest.warns(TritonFallbackWarning, match=r"^ops.box_iou: the Triton kernel differs from torchvision on a "
                                                   r"probe of 12 x 200 boxes: \d+ of 2400 values differ"):
        iou = ops.box_iou(boxes[:5], boxes)
    assert torch.equal(iou, torchvision.ops.box_iou(boxes[:5], boxes))
    with pytest.warns(TritonFallbackWarning, match=r"^ops.match: the Triton kernel differs .*: 1 of 200 indices differ"):
        matched = ops.match(boxes[:5], boxes)
    assert torch.equal(matched, match_chunked(boxes[:5], boxes, 0.7, 0.3, True))


@interpreter_only
def test_a_kernel_that_fails_on_a_later_call_is_replaced_then(monkeypatch):
    boxes, _, _ = inputs()
    no_warning(lambda: ops.box_iou(boxes, boxes))  # checked and trusted

    def fails(a, b):
        raise RuntimeError("Triton Error [CUDA]: an illegal instruction was encountered")

    monkeypatch.setattr(kernels, "box_iou", fails)
    with pytest.warns(TritonFallbackWarning, match="^ops.box_iou: the Triton kernel raised RuntimeError: Triton Error"):
        iou = ops.box_iou(boxes[:3], boxes)
    assert torch.equal(iou, torchvision.ops.box_iou(boxes[:3], boxes)) and triton_check._verdicts["box_iou"] is False


@interpreter_only
def test_out_of_memory_is_raised_for_the_caller_and_the_kernel_kept(monkeypatch):
    boxes, _, _ = inputs()
    no_warning(lambda: ops.match(boxes[:3], boxes))

    def out_of_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(kernels, "match", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):  # match_with_fallback (fallback.py) handles it
        ops.match(boxes[:3], boxes)
    assert triton_check._verdicts == {"match": True}


@interpreter_only
def test_backend_triton_runs_the_kernel_unchecked(monkeypatch):
    monkeypatch.setattr(bitmask_nms, "_keep_from_mask_kernel", FailingKernel())
    boxes, scores, _ = inputs()
    with pytest.raises(RuntimeError, match="PassManager::run failed"):
        ops.nms(boxes, scores, 0.5, backend="triton")
    assert triton_check._verdicts == {}
