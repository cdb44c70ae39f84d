"""Backend choice: "auto" / "triton" / "torchvision", and the errors that explain a wrong one."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from box_cases import DEVICE, random_boxes, random_scores

from detector import ops
from detector.ops.backend import use_triton
from detector.ops.triton.inputs import check_device, is_interpreted

REPO_ROOT = Path(__file__).resolve().parents[2]  # subprocesses import detector from the checkout


def test_auto_uses_triton_only_for_float32_cuda_tensors():
    cpu_boxes = random_boxes(4, seed=0).cpu()
    assert not use_triton("auto", cpu_boxes)
    assert not use_triton("torchvision", cpu_boxes)
    assert use_triton("triton", cpu_boxes)
    if torch.cuda.is_available():
        assert use_triton("auto", cpu_boxes.cuda()) and not use_triton("auto", cpu_boxes.cuda().double())


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        ops.box_iou(random_boxes(2, seed=0), random_boxes(2, seed=1), backend="cuda")


def test_triton_backend_wants_float32():
    with pytest.raises(TypeError, match="float32"):
        ops.nms(random_boxes(3, seed=0).double(), random_scores(3, seed=0), 0.5, backend="triton")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter is only switched on without a GPU")
def test_kernels_run_in_the_interpreter_on_cpu():
    from detector.ops.triton.fused_match import _best_gt_kernel
    from detector.ops.triton.tiled_iou import _box_iou_kernel

    assert is_interpreted(_box_iou_kernel) and is_interpreted(_best_gt_kernel)


def test_compiled_kernels_refuse_cpu_tensors_with_a_hint():
    def compiled_kernel():  # anything that is not an InterpretedFunction
        pass

    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        check_device(compiled_kernel, torch.zeros(1))


def test_import_and_ops_work_without_triton():
    # A machine without triton (macOS): import works, "auto" falls back, "triton" says why not.
    code = """
import sys
sys.modules["triton"] = None  # makes `import triton` raise ImportError
import torch
from detector import ops
boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 1.0]])
assert ops.nms(boxes, torch.tensor([0.9, 0.8]), 0.4).tolist() == [0]
assert ops.match(boxes[:1], boxes).tolist() == [0, -2]
try:
    ops.nms(boxes, torch.tensor([0.9, 0.8]), 0.4, backend="triton")
except ImportError as error:
    assert "needs the triton package" in str(error)
else:
    raise AssertionError("backend='triton' without triton must raise")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter is only used without a GPU")
def test_interpreter_works_when_triton_was_imported_first():
    # The whole test suite imports torchvision (hence triton, compiled mode) before this
    # directory's conftest sets TRITON_INTERPRET=1; the kernels must still run and be exact.
    code = """
import os, sys
import torch, torchvision
assert "triton" in sys.modules
os.environ["TRITON_INTERPRET"] = "1"
from detector import ops
from torchvision.models.detection._utils import Matcher
generator = torch.Generator().manual_seed(0)
top_left = torch.rand(100, 2, generator=generator) * 100
boxes = torch.cat([top_left, top_left + 1 + torch.rand(100, 2, generator=generator) * 40], dim=1)
scores = torch.rand(100, generator=generator)
classes = torch.randint(0, 3, (100,), generator=generator)
assert torch.equal(ops.nms(boxes, scores, 0.5, backend="triton"), torchvision.ops.nms(boxes, scores, 0.5))
expected = torchvision.ops.batched_nms(boxes, scores, classes, 0.5)
assert torch.equal(ops.batched_nms(boxes, scores, classes, 0.5, backend="triton"), expected)
expected = Matcher(0.7, 0.3, True)(torchvision.ops.box_iou(boxes[:9], boxes))
assert torch.equal(ops.match(boxes[:9], boxes, backend="triton"), expected)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr


def test_device_follows_inputs():
    boxes = random_boxes(5, seed=0)
    assert ops.nms(boxes, random_scores(5, seed=0), 0.5, backend="triton").device == DEVICE
    assert ops.match(boxes, boxes, backend="triton").device == DEVICE
