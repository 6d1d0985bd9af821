"""QuantPerTokenLinear: a drop-in for PerTokenLinear whose user positions run W8A16 and whose
item positions run FP8 (or stay float), chosen per layer by the recipe."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ugsep.kernels import Backend, resolve_backend, triton_kernel
from ugsep.layers import PerTokenLinear, per_token_product
from ugsep.quant.fp8 import E4M3, fp8_bmm, quantize_fp8_weight
from ugsep.quant.int8 import dequantize_int8, quantize_int8


class QuantPerTokenLinear(nn.Module):
    """Positions [0, boundary) are user side, [boundary, T) item side.

    user side: ``w8a16`` int8 weights (T_u, N, K) + scales (T_u, G, N), 16-bit activations.
    item side: ``fp8`` E4M3 weights (T_g, N, K) + per-channel scales and per-row dynamic
    activation scales, or ``float`` weights.

    Kernels: ``backend`` is what was asked for, ``kernels`` what runs (Triton or torch), resolved
    by ``use_kernels`` and again after every move, as ``RankingModel`` does.
    """

    def __init__(self, lin: PerTokenLinear, boundary: int, user_fmt: str, item_fmt: str,
                 group_size: int = 0, backend: Backend = Backend.AUTO) -> None:
        super().__init__()
        w = lin.weight.detach()
        self.n_tokens, self.boundary, self.d_out = w.shape[0], boundary, w.shape[2]
        self.user_fmt, self.item_fmt = user_fmt, item_fmt
        self.bias = nn.Parameter(lin.bias.detach().clone(), requires_grad=False)
        self._store("user", w[:boundary], user_fmt, group_size)
        self._store("item", w[boundary:], item_fmt, group_size)
        self.use_kernels(backend)

    def use_kernels(self, backend: Backend | str = Backend.AUTO) -> QuantPerTokenLinear:
        """AUTO: the Triton kernels where the weights are on CUDA and Triton imports, else torch ops."""
        self.kernels = resolve_backend(backend, self.bias.device)  # raises before changing anything
        self.backend = Backend(backend)
        return self

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        if hasattr(self, "backend"):  # not while __init__ is still building the layer
            self.kernels = resolve_backend(self.backend, self.bias.device)
        return self

    def _store(self, side: str, w: Tensor, fmt: str, group_size: int) -> None:
        if fmt == "w8a16":
            q, s = quantize_int8(w, group_size)
            self.register_buffer(f"{side}_q", q.transpose(1, 2).contiguous())  # (T, N, K)
            self.register_buffer(f"{side}_scale", _as_bits(s))
        elif fmt == "fp8":
            q, s = quantize_fp8_weight(w)
            # (T, N, K) = column-major B for _scaled_mm; stored as uint8 so model.to(dtype) leaves it alone
            self.register_buffer(f"{side}_q", q.transpose(1, 2).contiguous().view(torch.uint8))
            self.register_buffer(f"{side}_scale", _as_bits(s))
        else:
            self.register_buffer(f"{side}_w", w.clone())

    def forward(self, x: Tensor, positions: slice = slice(None)) -> Tensor:
        return self.positions_first(x.transpose(0, 1), positions).transpose(0, 1)

    def positions_first(self, x: Tensor | None, positions: slice = slice(None),
                        x_fp8: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """(T', M, K) -> (T', M, N). ``x_fp8``: an FP8 item side's input rows already quantized
        (E4M3 rows, float32 row scales), in which case ``x`` may be None."""
        start, stop, _ = positions.indices(self.n_tokens)
        if x_fp8 is not None and not (start >= self.boundary and self.item_fmt == "fp8"):
            raise ValueError("pre-quantized input needs item positions whose format is fp8")
        parts = []
        if start < self.boundary:
            parts.append(self._side("user", x[: self.boundary - start], slice(start, min(stop, self.boundary))))
        if stop > self.boundary:
            lo = max(start, self.boundary)
            xi = None if x is None else x[lo - start :]
            parts.append(self._side("item", xi, slice(lo - self.boundary, stop - self.boundary), x_fp8))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _side(self, side: str, x: Tensor | None, sl: slice, x_fp8: tuple[Tensor, Tensor] | None = None) -> Tensor:
        fmt = self.user_fmt if side == "user" else self.item_fmt
        off = 0 if side == "user" else self.boundary
        bias = self.bias[sl.start + off : sl.stop + off]
        if fmt == "w8a16":
            return self._w8a16(x, getattr(self, f"{side}_q")[sl], self._scale(side)[sl], bias)
        if fmt == "fp8":
            return fp8_bmm(x, getattr(self, f"{side}_q")[sl].view(E4M3), self._scale(side)[sl], bias, x_fp8,
                           triton_rows=self.kernels is Backend.TRITON)
        w = getattr(self, f"{side}_w")[sl].to(x.dtype)
        return per_token_product(x, w, bias.to(x.dtype))

    def _scale(self, side: str) -> Tensor:
        return getattr(self, f"{side}_scale").view(torch.float32)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for side in ("user", "item"):  # checkpoints written before scales were stored as bits
            key = f"{prefix}{side}_scale"
            if key in state_dict and state_dict[key].is_floating_point():
                state_dict[key] = _as_bits(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _w8a16(self, x: Tensor, q: Tensor, scale: Tensor, bias: Tensor) -> Tensor:
        if self.kernels is Backend.TRITON and x.dtype in (torch.bfloat16, torch.float16):
            return triton_kernel("w8a16_bmm")(x, q.transpose(1, 2), scale.float(), bias.to(x.dtype))
        if x.dtype == torch.bfloat16 and not x.is_cuda and scale.shape[1] == 1 and x.shape[-1] % 16 == 0:
            # CPU int8 GEMM per position; the op crashes on widths that are not a multiple of 16
            return torch.stack([torch._weight_int8pack_mm(x[t].contiguous(), q[t], scale[t, 0].to(x.dtype))
                                for t in range(x.shape[0])]) + bias.to(x.dtype).unsqueeze(1)
        w = dequantize_int8(q.transpose(1, 2), scale.float(), x.dtype)
        return per_token_product(x, w, bias.to(x.dtype))


def _as_bits(scale: Tensor) -> Tensor:
    """float32 scales stored as their int32 bit pattern, so ``model.to(torch.bfloat16)`` (which
    casts floating tensors only) keeps them exact; read back with ``.view(torch.float32)``."""
    return scale.float().contiguous().view(torch.int32)
