"""The Triton kernels where Triton is installed; CPU installs run without it."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import cache

QUANT_KERNELS = "ugsep.quant.triton_kernels"
GROUP_KERNELS = "ugsep.group_kernels"


@cache
def triton_kernel(name: str, module: str = QUANT_KERNELS) -> Callable | None:
    """``<module>.<name>``, or None where Triton is not installed (looked up once)."""
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:
        return None
