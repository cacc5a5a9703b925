"""Multi-head attention of the Kanade transformer: RoPE, and which keys a query may see.

Parameter names follow the official release (`attention.wq` ...). Attention spans:
- the teacher's symmetric local window: query i sees key j when |i - j| <= window // 2;
- the student's chunk-causal span: frames are grouped in chunks of `chunk` (aligned on position 0); a
  query sees the keys of its own chunk and the `past` frames before it, never a later chunk.
Both are "a query of the chunk starting at c sees keys c - past .. c + chunk - 1 + future", so one
mask function serves both.

No `from __future__ import annotations` here: TorchScript reads the annotations.
"""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def rope_angles(head_dim: int, positions: Tensor, theta: float = 1e4,
                exact: bool = False) -> Tuple[Tensor, Tensor]:
    """cos and sin of the rotary angles, each (T, head_dim // 2) float32, for integer `positions` (T,).

    `exact=True` computes the angles in float64, so they stay exact at the large positions of a long stream
    (float32 angles lose ~1e-3 rad at position 3e4); the official model computes them in float32.
    """
    dtype = torch.float64 if exact else torch.float32
    exponents = torch.arange(0, head_dim, 2, device=positions.device)[: head_dim // 2].to(dtype) / head_dim
    inv_freq = 1.0 / (theta ** exponents)
    angles = torch.outer(positions.to(dtype), inv_freq)
    return torch.cos(angles).float(), torch.sin(angles).float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate interleaved pairs (x0, x1), (x2, x3) ... of each head. x: (B, T, H, D); cos, sin: (T, D/2)."""
    pairs = x.float().unflatten(-1, (-1, 2))  # (..., D) -> (..., D/2, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    cos, sin = cos[:, None, :], sin[:, None, :]  # broadcast over heads
    rotated = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)


def span_mask(query_positions: Tensor, key_positions: Tensor, past: int, future: int, chunk: int = 1) -> Tensor:
    """(Tq, Tk) boolean, True = attend: a query in the chunk starting at c sees keys at positions
    c - past .. c + chunk - 1 + future. Negative key positions (empty cache slots) are never seen."""
    chunk_start = torch.div(query_positions, chunk, rounding_mode="floor") * chunk
    keys = key_positions[None, :]
    return ((keys >= chunk_start[:, None] - past) & (keys <= chunk_start[:, None] + (chunk - 1 + future))
            & (keys >= 0))


class Attention(nn.Module):
    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim {dim} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.head_dim = dim // n_heads
        self.scale = self.head_dim ** -0.5
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, dim, bias=False)
        self.wv = nn.Linear(dim, dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def linear_qkv(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """The three input projections, each (B, T, dim) (one fused layer in int8.py's exportable form)."""
        return self.wq(x), self.wk(x), self.wv(x)

    def project(self, x: Tensor, cos: Optional[Tensor], sin: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        """Queries, keys (both rotated) and values, each (B, H, T, D)."""
        b, t = x.shape[0], x.shape[1]
        q, k, v = self.linear_qkv(x)
        q = q.view(b, t, self.n_heads, self.head_dim)
        k = k.view(b, t, self.n_heads, self.head_dim)
        v = v.view(b, t, self.n_heads, self.head_dim)
        if cos is not None and sin is not None:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor]) -> Tensor:
        """(B, H, Tq, D) queries over (B, H, Tk, D) keys / values -> (B, Tq, dim)."""
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        return self.wo(out.transpose(1, 2).flatten(2))

