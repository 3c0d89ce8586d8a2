"""``torch.nn`` modules: ``NeighborhoodAttention1D`` / ``2D`` / ``3D``.

Constructor arguments and parameter names follow upstream NATTEN 0.21 (``embed_dim, num_heads,
kernel_size, stride, dilation, is_causal, qkv_bias, qk_scale, proj_drop``; parameters ``qkv`` and
``proj``), so a ``state_dict`` saved from upstream's modules loads and gives the same outputs.
natten-mps 0.3.3's extras are accepted too: ``num_kv_heads`` (GQA/MQA; then the parameters are
``q_proj`` and ``kv_proj``, as natten-mps names them) and ``attn_drop`` (dropout on the attention
weights; while training with ``attn_drop > 0`` the module computes the weights explicitly, a slower
path; ``eval()`` uses the fused kernels).

Input and output: ``[batch, *spatial, embed_dim]`` (channels last), as upstream. As in natten-mps,
``forward`` takes the per-sample extents of a padded batch (``seq_lens`` ``[B]`` for 1-D,
``spatial_sizes`` ``[B, rank]`` for 2-D/3-D; see :mod:`natten_mps.varlen`): each sample attends
within its own extents and the attention output is zero at padding positions (the output
projection then adds its bias there, as in natten-mps).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from . import checks, functional, varlen
from .semantics import window_bounds

__all__ = ["NeighborhoodAttention1D", "NeighborhoodAttention2D", "NeighborhoodAttention3D"]


class _NeighborhoodAttention(nn.Module):
    rank = 0

    def __init__(self, embed_dim: int, num_heads: int, kernel_size, stride=1, dilation=1, is_causal=False,
                 qkv_bias: bool = True, qk_scale: Optional[float] = None, proj_drop: float = 0.0,
                 num_kv_heads: Optional[int] = None, attn_drop: float = 0.0):
        super().__init__()
        if not isinstance(embed_dim, int) or not isinstance(num_heads, int) or embed_dim < 1 or num_heads < 1:
            raise ValueError(f"embed_dim and num_heads must be positive ints, got {embed_dim!r} and {num_heads!r}")
        if embed_dim % num_heads != 0:
            raise ValueError(f"num_heads must divide embed_dim, got embed_dim={embed_dim}, num_heads={num_heads}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.num_kv_heads = num_heads if num_kv_heads is None else int(num_kv_heads)
        if self.num_kv_heads < 1 or num_heads % self.num_kv_heads != 0:
            raise ValueError(f"num_heads must be divisible by num_kv_heads, got num_kv_heads={num_kv_heads}, "
                             f"num_heads={num_heads}")
        r = self.rank
        self.kernel_size = checks.as_tuple(kernel_size, r, "kernel_size")
        self.stride = checks.as_tuple(stride, r, "stride")
        self.dilation = checks.as_tuple(dilation, r, "dilation")
        self.is_causal = tuple(bool(c) for c in checks.as_tuple(is_causal, r, "is_causal", kind=bool))
        self.scale = qk_scale or self.head_dim ** -0.5
        if self.num_kv_heads == num_heads:
            self.qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=qkv_bias)
        else:
            self.q_proj = nn.Linear(embed_dim, embed_dim, bias=qkv_bias)
            self.kv_proj = nn.Linear(embed_dim, 2 * self.num_kv_heads * self.head_dim, bias=qkv_bias)
        if not 0.0 <= attn_drop < 1.0 or not 0.0 <= proj_drop < 1.0:
            raise ValueError(f"attn_drop and proj_drop must be in [0, 1), got {attn_drop} and {proj_drop}")
        self.attn_drop_p = float(attn_drop)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _qkv(self, x: Tensor):
        B, *spatial, _ = x.shape
        if self.num_kv_heads == self.num_heads:
            qkv = self.qkv(x).reshape(B, *spatial, 3, self.num_heads, self.head_dim)
            return qkv.unbind(-3)
        q = self.q_proj(x).reshape(B, *spatial, self.num_heads, self.head_dim)
        k, v = self.kv_proj(x).reshape(B, *spatial, 2, self.num_kv_heads, self.head_dim).unbind(-3)
        return q, k, v

    def _attend(self, x: Tensor, sizes: Optional[Tensor]) -> Tensor:
        """``x`` ``[batch, *spatial, embed_dim]`` -> same shape; ``sizes``: per-sample extents or None."""
        if not isinstance(x, Tensor) or x.dim() != self.rank + 2:
            raise ValueError(f"{type(self).__name__} expects input shape [batch, {'x'.join(['L'] * self.rank)}, embed_dim] "
                             f"(rank {self.rank + 2}), got shape {tuple(getattr(x, 'shape', ()))}")
        if x.shape[-1] != self.embed_dim:
            raise ValueError(f"expected embed_dim {self.embed_dim}, got {x.shape[-1]} (input shape {tuple(x.shape)})")
        q, k, v = self._qkv(x)
        if sizes is not None and self.attn_drop_p > 0.0 and self.training:
            out = self._explicit_varlen(q, k, v, sizes)
        elif sizes is not None:
            fn = {1: varlen.na1d_varlen, 2: varlen.na2d_varlen, 3: varlen.na3d_varlen}[self.rank]
            out = fn(q, k, v, sizes, self.kernel_size, self.dilation, self.scale, stride=self.stride,
                     is_causal=self.is_causal)
        elif self.attn_drop_p > 0.0 and self.training:
            out = self._explicit_attention(q, k, v)
        else:
            fn = {1: functional.na1d, 2: functional.na2d, 3: functional.na3d}[self.rank]
            out = fn(q, k, v, self.kernel_size, stride=self.stride, dilation=self.dilation,
                     is_causal=self.is_causal, scale=self.scale)
        out = self.proj(out.reshape(x.shape))
        # nn.Dropout(0) is the identity: skip its module call (a tenth of a small module's host cost)
        return self.proj_drop(out) if self.proj_drop.p > 0.0 else out

    def _explicit_varlen(self, q: Tensor, k: Tensor, v: Tensor, sizes: Tensor) -> Tensor:
        """Explicit weights (for dropout) per sample on its own extents; zeros at padding."""
        rows = varlen.check_sizes(sizes, "seq_lens" if self.rank == 1 else "spatial_sizes", q.shape[0],
                                  tuple(q.shape[1:1 + self.rank]), self.kernel_size, self.dilation, self.rank)
        out = q.new_zeros(q.shape[:-1] + (v.shape[-1],))
        for b, extent in enumerate(rows.tolist()):
            r = (slice(b, b + 1),) + tuple(slice(0, e) for e in extent)
            out[r] = self._explicit_attention(q[r], k[r], v[r])
        return out

    def _axis_mask(self, ax: int, n: int) -> Tensor:
        """[n, n] bool: key j is in query i's window on axis ``ax`` (NATTEN's rule, semantics.py)."""
        d = self.dilation[ax]
        m = torch.zeros(n, n, dtype=torch.bool)
        for g in range(min(d, n)):
            members = torch.arange(g, n, d)
            pos = torch.arange(members.numel())
            lo, hi = window_bounds(pos, members.numel(), self.kernel_size[ax], self.stride[ax], self.is_causal[ax])
            m[members[:, None], members[None, :]] = (pos[None, :] >= lo[:, None]) & (pos[None, :] <= hi[:, None])
        return m

    def _explicit_attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Attention weights made explicitly (masked dense scores) so dropout can act on them."""
        B, *spatial, H, D = q.shape
        mask = None
        for ax, n in enumerate(spatial):
            m = self._axis_mask(ax, n)
            mask = m if mask is None else (mask[:, None, :, None] & m[None, :, None, :]).reshape(mask.shape[0] * n, -1)
        mask = mask.to(q.device)
        n, G = mask.shape[0], H // k.shape[-2]
        qf = q.reshape(B, n, H, D).transpose(1, 2)
        kf = k.reshape(B, n, -1, D).repeat_interleave(G, dim=2).transpose(1, 2)
        vf = v.reshape(B, n, -1, v.shape[-1]).repeat_interleave(G, dim=2).transpose(1, 2)
        scores = (qf @ kf.transpose(-1, -2)).float() * self.scale
        weights = self.attn_drop(scores.masked_fill(~mask, float("-inf")).softmax(-1)).to(vf.dtype)
        return (weights @ vf).transpose(1, 2).reshape(q.shape[:-1] + (v.shape[-1],))

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, dilation={self.dilation}, "
                f"is_causal={self.is_causal}")


class NeighborhoodAttention1D(_NeighborhoodAttention):
    """1-D neighborhood attention over ``[batch, length, embed_dim]``."""
    rank = 1

    def forward(self, x: Tensor, seq_lens: Optional[Tensor] = None) -> Tensor:
        """``x`` ``[B, L, embed_dim]`` -> same shape. ``seq_lens`` ``[B]`` int: length of each sample of a
        padded batch (positions past it are padding), or None."""
        return self._attend(x, seq_lens)


class NeighborhoodAttention2D(_NeighborhoodAttention):
    """2-D neighborhood attention over ``[batch, height, width, embed_dim]``."""
    rank = 2

    def forward(self, x: Tensor, spatial_sizes: Optional[Tensor] = None) -> Tensor:
        """``x`` ``[B, H, W, embed_dim]`` -> same shape. ``spatial_sizes`` ``[B, 2]`` int: ``(H_b, W_b)`` of
        each sample of a padded batch, or None."""
        return self._attend(x, spatial_sizes)


class NeighborhoodAttention3D(_NeighborhoodAttention):
    """3-D neighborhood attention over ``[batch, depth, height, width, embed_dim]``."""
    rank = 3

    def forward(self, x: Tensor, spatial_sizes: Optional[Tensor] = None) -> Tensor:
        """``x`` ``[B, D, H, W, embed_dim]`` -> same shape. ``spatial_sizes`` ``[B, 3]`` int: ``(D_b, H_b, W_b)``
        of each sample of a padded batch, or None."""
        return self._attend(x, spatial_sizes)
