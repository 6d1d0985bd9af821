"""The Triton kernels where Triton is installed; CPU installs run without it."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache


@cache
def triton_kernel(name: str) -> Callable | None:
    """``ugsep.quant.triton_kernels.<name>``, or None where Triton is not installed (looked up once)."""
    try:
        from ugsep.quant import triton_kernels
    except ImportError:
        return None
    return getattr(triton_kernels, name)
