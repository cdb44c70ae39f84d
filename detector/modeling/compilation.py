"""`torch.compile` of the parts of the model whose work is dense tensor code of a fixed shape per
input size: the backbone and the RPN head. The rest (anchors, matching, sampling, NMS, RoIAlign)
is data-dependent control flow and custom kernels that the compiler would only cut into pieces,
and the box head sees a different number of RoIs on every image.

The parts are compiled in place (`nn.Module.compile`), so parameter names, checkpoints, DDP and
`.eval()` / `.train()` behave as before. Shapes are static (`dynamic=False`): each new padded
input size compiles again (about 35 s for Lite0 on a 2-core CPU), and after torch's limit of
recompilations (`torch._dynamo.config.cache_size_limit`) new sizes run eagerly. Dynamic shapes
were tried: on torch 2.14's CPU backend compiling Lite0 with symbolic sizes had not finished
after 8 minutes. So compile pays, if at all, for inputs of one size (`tools/bench_compile.py`).
"""
from __future__ import annotations

import shutil

from torch import nn

from detector.errors import MissingDependencyError


def compile_model(model: nn.Module, key: str = "train.compile") -> nn.Module:
    """Compile `model`'s backbone and RPN head in place; `key` names the setting that asked for it
    in the error raised when the CPU backend cannot build its code."""
    _check_cpu_compiler(key)
    for part in (model.backbone, model.rpn.head):
        part.compile(dynamic=False)
    return model


def _check_cpu_compiler(key: str) -> None:
    # Inductor writes C++ for the CPU and builds it with the system compiler; without one the
    # first forward would fail deep inside the compiler stack instead of here.
    from torch._inductor import config as inductor_config

    candidates = inductor_config.cpp.cxx
    names = [name for name in (candidates if isinstance(candidates, (tuple, list)) else (candidates,)) if name]
    if not any(shutil.which(name) for name in names or ["g++"]):
        raise MissingDependencyError(
            f"{key}: torch.compile on the CPU needs a C++ compiler ({' or '.join(names or ['g++'])}) on PATH; "
            "install one (e.g. apt install g++) or leave compile off"
        )
