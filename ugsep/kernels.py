"""Which kernels a model runs: the Triton ones (CUDA only) or plain torch ops.

The choice is made once, by ``RankingModel.use_kernels`` (``load_checkpoint`` and
``quantize_model`` call it), never per forward call. Triton is imported only when a model on
CUDA asks for it, so CPU installs run without it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from enum import Enum
from functools import cache

import torch

QUANT_KERNELS = "ugsep.quant.triton_kernels"
GROUP_KERNELS = "ugsep.group_kernels"


class Backend(str, Enum):
    """Kernel choice; AUTO picks Triton on CUDA where Triton imports, the torch path elsewhere."""

    AUTO = "auto"
    TRITON = "triton"
    TORCH = "torch"


@cache
def triton_kernel(name: str, module: str = QUANT_KERNELS) -> Callable | None:
    """``<module>.<name>``, or None where Triton is not installed (imported once)."""
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:
        return None


def triton_available() -> bool:
    """Whether every Triton kernel imports (the group kernels import the quantization ones)."""
    return triton_kernel("mix_norm", GROUP_KERNELS) is not None


def resolve_backend(backend: Backend | str, device: torch.device | str) -> Backend:
    """AUTO -> TRITON or TORCH for parameters on ``device``; TRITON where it cannot run raises."""
    backend, device = Backend(backend), torch.device(device)
    runs_triton = device.type == "cuda" and triton_available()
    if backend is Backend.TRITON and not runs_triton:
        raise RuntimeError(
            f"Backend.TRITON needs the model on a CUDA device (it is on {device}) and the triton "
            "package (pip install 'ugsep[gpu]'); move the model first, or use Backend.AUTO or Backend.TORCH"
        )
    if backend is Backend.AUTO:
        return Backend.TRITON if runs_triton else Backend.TORCH
    return backend
