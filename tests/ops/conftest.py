"""Run the Triton kernels on CPU tensors through Triton's interpreter when there is no GPU.

``TRITON_INTERPRET`` is read when a ``@triton.jit`` function is defined. Ours are defined
when ``detector.ops.triton`` is first imported, which only a Triton backend call does, so
setting the variable when pytest loads this file is early enough. Triton itself may already
be imported by then in compiled mode (importing torchvision imports it through
torch._dynamo), so the kernels avoid triton's own jit'd helpers (see
detector/ops/triton/reduce.py); test_backend.py checks that order in a fresh process.
Should something have imported our kernels compiled already, they are defined again here.
"""
import importlib
import os
import sys
from pathlib import Path

import pytest
import torch

KERNEL_MODULES = ("reduce", "inputs", "tiled_iou", "fused_match", "bitmask_nms", "segmented_nms")

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
    if "detector.ops.triton" in sys.modules:
        from detector.ops.triton.inputs import is_interpreted

        if not is_interpreted(sys.modules["detector.ops.triton.tiled_iou"].pairwise_iou):
            for name in KERNEL_MODULES:
                importlib.reload(sys.modules[f"detector.ops.triton.{name}"])
            importlib.reload(sys.modules["detector.ops.triton"])


def pytest_collection_modifyitems(items):
    # 0 / 0 for zero-area pairs is expected (torchvision gives NaN too); numpy warns under the interpreter.
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning"))
