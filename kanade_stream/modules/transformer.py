"""Pre-norm transformer of the Kanade tokenizer: RoPE, local-window attention, SwiGLU, AdaLN-Zero.

Parameter names follow the official release (``layers.N.attention.wq``, ``feed_forward.w1``,
``attention_norm.condition_proj.1`` ...) so released checkpoints load without renaming.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def rope_angles(head_dim: int, positions: torch.Tensor, theta: float = 1e4,
                precision: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles, each (T, head_dim // 2) float32, for integer `positions` (T,).

    `precision=torch.float64` computes the angles exactly even for the large positions of a long stream
    (float32 angles lose ~1e-3 rad at position 3e4); the results are returned as float32 either way.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device)[: head_dim // 2].to(precision) / head_dim))
    angles = torch.outer(positions.to(precision), inv_freq)
    return torch.cos(angles).float(), torch.sin(angles).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x0, x1), (x2, x3) ... of each head. x: (B, T, H, D); cos, sin: (T, D/2)."""
    pairs = x.float().unflatten(-1, (-1, 2))  # (..., D) -> (..., D/2, 2); TorchScript-friendly
    x0, x1 = pairs[..., 0], pairs[..., 1]
    cos, sin = cos[:, None, :], sin[:, None, :]  # broadcast over heads
    rotated = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)


def local_window_mask(length: int, window_size: int | None, device=None) -> torch.Tensor | None:
    """Symmetric local window: query i sees key j when |i - j| <= window_size // 2. True = attend."""
    if window_size is None:
        return None
    idx = torch.arange(length, device=device)
    return (idx[:, None] - idx[None, :]).abs() <= window_size // 2


class Attention(nn.Module):
    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim {dim} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.head_dim = dim // n_heads
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, dim, bias=False)
        self.wv = nn.Linear(dim, dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def project_qkv(self, x: torch.Tensor, cos, sin) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys (both rotated) and values, each (B, H, T, D)."""
        b, t, _ = x.shape
        q = self.wq(x).view(b, t, self.n_heads, self.head_dim)
        k = self.wk(x).view(b, t, self.n_heads, self.head_dim)
        v = self.wv(x).view(b, t, self.n_heads, self.head_dim)
        if cos is not None:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.head_dim**-0.5)
        b, _, t, _ = out.shape
        return self.wo(out.transpose(1, 2).reshape(b, t, -1))

    def forward(self, x: torch.Tensor, cos, sin, mask: torch.Tensor | None) -> torch.Tensor:
        return self.attend(*self.project_qkv(x, cos, sin), mask)


def swiglu_hidden_dim(dim: int, multiple_of: int = 256) -> int:
    hidden = int(2 * 4 * dim / 3)
    return multiple_of * math.ceil(hidden / multiple_of)


class FeedForward(nn.Module):
    def __init__(self, dim: int, multiple_of: int = 256):
        super().__init__()
        hidden = swiglu_hidden_dim(dim, multiple_of)
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class AdaLNZero(nn.Module):
    """LayerNorm without affine, modulated by a condition: x_norm * (1 + scale) + shift (and a gate)."""

    def __init__(self, dim: int, condition_dim: int, with_gate: bool = True, eps: float = 1e-5):
        super().__init__()
        self.with_gate = with_gate
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.condition_proj = nn.Sequential(nn.SiLU(), nn.Linear(condition_dim, (3 if with_gate else 2) * dim))
        nn.init.zeros_(self.condition_proj[1].weight)  # zero init: the block starts as identity
        nn.init.zeros_(self.condition_proj[1].bias)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        params = self.condition_proj(condition)
        if self.with_gate:
            shift, scale, gate = params.chunk(3, dim=-1)
        else:
            (shift, scale), gate = params.chunk(2, dim=-1), None
        return self.norm(x) * (1 + scale) + shift, gate


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, n_heads: int, condition_dim: int | None = None, eps: float = 1e-5):
        super().__init__()
        self.attention = Attention(dim, n_heads)
        self.feed_forward = FeedForward(dim)
        self.conditioned = condition_dim is not None
        if self.conditioned:
            self.attention_norm = AdaLNZero(dim, condition_dim, eps=eps)
            self.ffn_norm = AdaLNZero(dim, condition_dim, eps=eps)
        else:
            self.attention_norm = nn.LayerNorm(dim, eps=eps)
            self.ffn_norm = nn.LayerNorm(dim, eps=eps)

    def _norm(self, norm: nn.Module, x: torch.Tensor, condition):
        if self.conditioned:
            return norm(x, condition)
        return norm(x), None

    def forward(self, x, cos, sin, mask, condition=None, attention_fn=None) -> torch.Tensor:
        """`attention_fn(normed_x) -> out` replaces plain masked attention (the streaming KV cache uses it)."""
        h, gate = self._norm(self.attention_norm, x, condition)
        h = attention_fn(h) if attention_fn is not None else self.attention(h, cos, sin, mask)
        x = x + (gate * h if gate is not None else h)
        h, gate = self._norm(self.ffn_norm, x, condition)
        h = self.feed_forward(h)
        return x + (gate * h if gate is not None else h)


class Transformer(nn.Module):
    """Stack of blocks + final norm, with optional input/output projections.

    `window_size` (odd) gives the symmetric local attention of the teacher; `forward` also takes an
    explicit boolean `attn_mask` (T, T) or (B, 1, T, T), True = attend, for other patterns.
    """

    def __init__(
        self,
        dim: int,
        n_layers: int,
        n_heads: int,
        window_size: int | None = None,
        input_dim: int | None = None,
        output_dim: int | None = None,
        condition_dim: int | None = None,
        use_rope: bool = True,
        rope_theta: float = 1e4,
        eps: float = 1e-5,
    ):
        super().__init__()
        if window_size is not None and window_size % 2 != 1:
            raise ValueError(f"window_size must be odd (symmetric local window), got {window_size}")
        self.dim, self.n_heads, self.window_size = dim, n_heads, window_size
        self.use_rope, self.rope_theta = use_rope, rope_theta
        self.condition_dim = condition_dim
        self.layers = nn.ModuleList(TransformerBlock(dim, n_heads, condition_dim, eps) for _ in range(n_layers))
        self.norm = (
            AdaLNZero(dim, condition_dim, with_gate=False, eps=eps) if condition_dim is not None else nn.LayerNorm(dim, eps=eps)
        )
        self.input_proj = nn.Linear(input_dim, dim) if input_dim is not None else nn.Identity()
        self.output_proj = nn.Linear(dim, output_dim) if output_dim is not None else nn.Identity()
        self.output_dim = output_dim if output_dim is not None else dim

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def rope(self, positions: torch.Tensor):
        if not self.use_rope:
            return None, None
        return rope_angles(self.head_dim, positions, self.rope_theta)

    def final_norm(self, x: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        if self.condition_dim is not None:
            return self.norm(x, condition)[0]
        return self.norm(x)

    def forward(
        self,
        x: torch.Tensor,
        condition: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (B, T, C). condition: (B, 1, cond) for AdaLN-Zero. key_padding_mask: (B, T), True = real frame."""
        if self.condition_dim is not None and condition is None:
            raise ValueError("this transformer is conditioned (AdaLN-Zero): pass `condition`")
        b, t, _ = x.shape
        cos, sin = self.rope(torch.arange(t, device=x.device))
        mask = attn_mask if attn_mask is not None else local_window_mask(t, self.window_size, x.device)
        if key_padding_mask is not None:
            keys = key_padding_mask[:, None, None, :]
            mask = keys if mask is None else mask & keys
            # a padded query may see no real key at all; let it see itself so softmax stays finite
            mask = mask | torch.eye(t, dtype=torch.bool, device=x.device)
        x = self.input_proj(x)
        for layer in self.layers:
            x = layer(x, cos, sin, mask, condition)
        return self.output_proj(self.final_norm(x, condition))
