"""Quantized drop-ins, swapped in by ``quantize_model``:

- ``QuantPerTokenLinear`` for ``PerTokenLinear``: user positions W8A16, item positions FP8 (or
  float), chosen per layer by the recipe;
- ``QuantLinear`` for ``nn.Linear`` (HyFormer's user-side sequence layers): W8A16.

W8A16: int8 weights with per-output-channel (or per-group) float32 scales, activations in their
own 16-bit or float dtype, the weights dequantized in the product (``w8a16_product``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ugsep.kernels import Backend, resolve_backend, triton_kernel
from ugsep.layers import PerTokenLinear, per_token_product
from ugsep.quant.fp8 import E4M3, fp8_bmm, quantize_fp8_weight
from ugsep.quant.int8 import dequantize_int8, quantize_int8


class _QuantLayer(nn.Module):
    """The kernel choice of a quantized layer: ``backend`` is what was asked for, ``kernels`` what
    runs (Triton or torch), resolved by ``use_kernels`` and again after every move, as
    ``RankingModel`` does. Subclasses hold a ``bias`` parameter, which says where the layer is."""

    def use_kernels(self, backend: Backend | str = Backend.AUTO) -> _QuantLayer:
        """AUTO: the Triton kernels where the weights are on CUDA and Triton imports, else torch ops."""
        self.kernels = resolve_backend(backend, self.bias.device)  # raises before changing anything
        self.backend = Backend(backend)
        return self

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        if hasattr(self, "backend"):  # not while __init__ is still building the layer
            self.kernels = resolve_backend(self.backend, self.bias.device)
        return self


class QuantPerTokenLinear(_QuantLayer):
    """Positions [0, boundary) are user side, [boundary, T) item side.

    user side: ``w8a16`` int8 weights (T_u, N, K) + scales (T_u, G, N), 16-bit activations.
    item side: ``fp8`` E4M3 weights (T_g, N, K) + per-channel scales and per-row dynamic
    activation scales, or ``float`` weights.

    ``weight`` hands back the dequantized weights, for code that reads ``PerTokenLinear.weight``
    itself instead of calling the layer (HyFormer's ``QueryGenerator.user_part``/``finish``).
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

    @property
    def weight(self) -> Tensor:
        """(T, K, N): the weights the products use, dequantized to the bias's dtype. For W8A16 and
        float positions only: an FP8 product also rounds its inputs to E4M3, which code that reads
        the weights and multiplies them itself would skip."""
        parts = []
        sides = (("user", self.user_fmt, self.boundary), ("item", self.item_fmt, self.n_tokens - self.boundary))
        for side, fmt, n in sides:
            if n == 0:
                continue
            if fmt == "fp8":
                raise RuntimeError(f"a QuantPerTokenLinear whose {side} positions are FP8 has no weight tensor to "
                                   "read: call the layer (FP8 also quantizes its inputs), or quantize it W8A16")
            if fmt == "w8a16":
                parts.append(dequantize_int8(getattr(self, f"{side}_q").transpose(1, 2), self._scale(side),
                                             self.bias.dtype))
            else:
                parts.append(getattr(self, f"{side}_w").to(self.bias.dtype))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

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
            return w8a16_product(x, getattr(self, f"{side}_q")[sl], self._scale(side)[sl], bias, self.kernels)
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

    def extra_repr(self) -> str:
        sides = [f"user={self.user_fmt}"] if self.boundary else []
        sides += [f"item={self.item_fmt}"] if self.boundary < self.n_tokens else []
        return ", ".join([f"positions={self.n_tokens}", f"boundary={self.boundary}", *sides])


class QuantLinear(_QuantLayer):
    """W8A16 drop-in for ``nn.Linear`` (same forward: ``(..., in) -> (..., out)``): int8 weights
    stored (out, in) as nn.Linear keeps them, float32 scales per output channel (or per group of
    ``group_size`` inputs), activations in their own dtype.

    The product is ``QuantPerTokenLinear``'s W8A16 side with one position: every row of x (all
    leading dimensions flattened) is a row M of the (T=1, M, K) contract of the Triton W8A16 kernel,
    which runs where the kernels are Triton and x is 16-bit; elsewhere ``w8a16_product``'s torch ops.
    """

    def __init__(self, lin: nn.Linear, group_size: int = 0, backend: Backend = Backend.AUTO) -> None:
        super().__init__()
        self.in_features, self.out_features = lin.in_features, lin.out_features
        q, s = quantize_int8(lin.weight.detach().t().unsqueeze(0), group_size)  # (1, K, N), (1, G, N)
        self.register_buffer("q", q.transpose(1, 2).contiguous())  # (1, N, K)
        self.register_buffer("scale", _as_bits(s))  # float32 bits: a cast of the model leaves them exact
        bias = lin.bias.detach().clone() if lin.bias is not None else lin.weight.new_zeros(lin.out_features)
        self.bias = nn.Parameter(bias, requires_grad=False)  # (N,)
        self.use_kernels(backend)

    @property
    def weight(self) -> Tensor:
        """(out, in): the weights the product uses, dequantized to the bias's dtype."""
        return dequantize_int8(self.q.transpose(1, 2), self.scale.view(torch.float32), self.bias.dtype)[0].t()

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(1, -1, self.in_features)  # (1, M, K): one position, every leading index a row
        y = w8a16_product(rows, self.q, self.scale.view(torch.float32), self.bias.unsqueeze(0), self.kernels)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        groups = self.scale.shape[1]
        return f"in_features={self.in_features}, out_features={self.out_features}, w8a16" + \
            (f", groups={groups}" if groups > 1 else "")


def w8a16_product(x: Tensor, q: Tensor, scale: Tensor, bias: Tensor, kernels: Backend) -> Tensor:
    """(T, M, K) @ dequant(q) + bias -> (T, M, N) in x's dtype; q: (T, N, K) int8, scale: (T, G, N)
    float32, bias: (T, N). Triton kernels and a 16-bit x: the Triton W8A16 kernel; bf16 on the CPU
    with per-channel scales: torch's int8 GEMM per position; otherwise dequantize, then multiply."""
    if x.shape[1] == 0:  # no rows: nothing to launch
        return x.new_empty((x.shape[0], 0, q.shape[1]))
    if kernels is Backend.TRITON and x.dtype in (torch.bfloat16, torch.float16):
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
