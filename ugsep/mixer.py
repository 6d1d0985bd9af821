"""TokenMixer block (RankMixer) and its UG-Sep separated form.

Tokens: T = T_u + T_g, user positions first. Mixing is parameter-free with H = T heads of
width d = D / T: output token h is the concatenation over source tokens t of head h of
token t. (H = T keeps the token count constant, RankMixer's main setting; it also keeps the
plain residual UG-Sep safe, so the paper's masked cross-attention residual is not needed.)

UG-Sep choices (the paper's mask equations are not public):
- Mask: at user output positions h < T_u the slots that come from group tokens t >= T_u are
  zeroed. Group positions read every token. User tokens therefore depend on user fields
  alone at every layer.
- Information compensation: the user tokens entering a layer, flattened, pass through a
  low-rank linear map (T_u*D -> r -> T_g*D) that is added to the mixed group tokens before
  the residual. It gives each group position the full user representation rather than only
  its own head of it. It reads user tokens only (nothing flows from G to U), so it is computed
  once per user and stored in the user state: it adds no per-candidate FLOPs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ugsep.layers import PerTokenFFN


def mix_tokens(x: Tensor) -> Tensor:
    """(B, T, D) -> (B, T, D): output token h = concat over t of head h of token t."""
    b, t, d = x.shape
    return x.view(b, t, t, d // t).transpose(1, 2).reshape(b, t, d)


def separation_mask(n_user: int, n_group: int, d_model: int) -> Tensor:
    """(T, D) 0/1 mask: zero the group-sourced slots of user output positions."""
    t = n_user + n_group
    mask = torch.ones(t, t, d_model // t)  # (out position, source token, d)
    mask[:n_user, n_user:] = 0
    return mask.view(t, d_model)


class Compensation(nn.Module):
    """Low-rank U -> G projection: (B, T_u, D) -> (B, T_g, D)."""

    def __init__(self, n_user: int, n_group: int, d_model: int, rank: int) -> None:
        super().__init__()
        self.n_group = n_group
        self.down = nn.Linear(n_user * d_model, rank)
        self.up = nn.Linear(rank, n_group * d_model)
        nn.init.normal_(self.up.weight, std=0.02)

    def forward(self, u: Tensor) -> Tensor:
        return self.up(self.down(u.flatten(1))).view(u.shape[0], self.n_group, -1)

    def flops(self) -> int:
        return 2 * (self.down.weight.numel() + self.up.weight.numel())


class TokenMixerBlock(nn.Module):
    """S = LN(Mix(X) + X); X' = LN(PFFN(S) + S), optionally UG-separated."""

    def __init__(
        self,
        n_user: int,
        n_group: int,
        d_model: int,
        ffn_mult: int,
        separated: bool,
        comp_rank: int = 0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.n_user, self.n_group = n_user, n_group
        self.n_tokens = n_user + n_group
        self.head_dim = d_model // self.n_tokens
        self.separated = separated
        self.ffn = PerTokenFFN(self.n_tokens, d_model, ffn_mult, dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.comp = Compensation(n_user, n_group, d_model, comp_rank) if comp_rank else None
        mask = separation_mask(n_user, n_group, d_model) if separated else torch.ones(1)
        self.register_buffer("mix_mask", mask, persistent=False)

    # --- full path: every candidate carries all T tokens (the reference) ---
    def forward(self, x: Tensor) -> Tensor:
        m = mix_tokens(x) * self.mix_mask
        if self.comp is not None:
            c = self.comp(x[:, : self.n_user])  # (B, T_g, D)
            m = torch.cat([m[:, : self.n_user], m[:, self.n_user :] + c], dim=1)
        return self._residual_ffn(m, x)

    def _residual_ffn(self, m: Tensor, x: Tensor, positions: slice = slice(None)) -> Tensor:
        s = self.norm1(m + x)
        return self.norm2(self.ffn(s, positions) + s)

    # --- split path: user positions once per user, group positions once per candidate ---
    def user_step(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """u: (B_u, T_u, D) -> (next u, heads the group positions read, compensation)."""
        b, tu, d = u.shape
        heads = u.view(b, tu, self.n_tokens, self.head_dim)  # (B_u, T_u src, T dst, d)
        m = heads[:, :, :tu].transpose(1, 2).reshape(b, tu, tu * self.head_dim)
        m = nn.functional.pad(m, (0, d - tu * self.head_dim))  # group slots masked to 0
        read = heads[:, :, tu:]  # (B_u, T_u src, T_g dst, d)
        comp = self.comp(u) if self.comp is not None else None
        return self._residual_ffn(m, u, slice(0, tu)), read, comp

    def group_step(self, g: Tensor, read: Tensor, comp: Tensor | None) -> Tensor:
        """g: (N, T_g, D); read: (N, T_u, T_g, d) user heads already gathered per candidate."""
        n, tg, d = g.shape
        own = g.view(n, tg, self.n_tokens, self.head_dim)[:, :, self.n_user :]  # (N, T_g, T_g, d)
        src = torch.cat([read, own], dim=1)  # (N, T src, T_g dst, d)
        m = src.transpose(1, 2).reshape(n, tg, d)
        if comp is not None:
            m = m + comp
        return self._residual_ffn(m, g, slice(self.n_user, self.n_tokens))
