"""sum / max / min along an axis, as ``tl.sum`` / ``tl.max`` / ``tl.min`` compute them, but
reachable from an interpreted kernel even when triton was imported before
``TRITON_INTERPRET=1`` was set.

``tl.sum`` and friends are ``@triton.jit`` functions of triton's standard library, so they
are compiled-mode functions if triton was imported first (importing torchvision imports it,
through torch._dynamo), and the interpreter refuses to call them. ``tl.reduce`` is a builtin
that the interpreter patches, and with triton's own combine functions it takes the
interpreter's numpy fast path; compiled, it is exactly what ``tl.sum`` / ``tl.max`` emit.
"""
import triton
import triton.language as tl


@triton.jit
def sum_along(x, axis):
    return tl.reduce(x, axis, tl.standard._sum_combine)


@triton.jit
def max_along(x, axis):
    """Max along ``axis`` (no NaN in ``x``: the interpreter skips NaN, GPU max ignores it)."""
    return tl.reduce(x, axis, tl.standard._elementwise_max)


@triton.jit
def min_along(x, axis):
    return tl.reduce(x, axis, tl.standard._elementwise_min)
