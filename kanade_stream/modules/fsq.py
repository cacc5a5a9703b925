"""Finite scalar quantization (FSQ) with the Kanade codebook: levels [8, 8, 8, 5, 5] = 12800 codes.

Every operation is per frame, so the same module serves offline and streaming use unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class FiniteScalarQuantizer(nn.Module):
    def __init__(self, input_dim: int, output_dim: int, levels: list[int] | tuple[int, ...] = (8, 8, 8, 5, 5)):
        super().__init__()
        levels = [int(level) for level in levels]
        if not levels or min(levels) < 2:
            raise ValueError(f"FSQ levels must all be >= 2, got {levels}")
        self.levels = levels
        self.codebook_size = math.prod(levels)
        self.proj_in = nn.Linear(input_dim, len(levels))
        self.proj_out = nn.Linear(len(levels), output_dim)
        lv = torch.tensor(levels)
        # buffers are derived from `levels`, so they are not part of the checkpoint
        self.register_buffer("_levels", lv, persistent=False)
        self.register_buffer("_half_width", lv // 2, persistent=False)
        self.register_buffer("_basis", torch.cumprod(torch.tensor([1] + levels[:-1]), 0), persistent=False)

    @property
    def half_width(self) -> torch.Tensor:
        """L // 2 per level: a level's rounded values run over -L//2 .. L-1-L//2, and codes = rounded / half_width."""
        return self._half_width

    def bound(self, z: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
        levels = self._levels.to(z.dtype)
        half_l = (levels - 1) * (1 - eps) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0).to(z.dtype)
        return torch.tanh(z + torch.tan(offset / half_l)) * half_l - offset

    def unrounded(self, latent: torch.Tensor) -> torch.Tensor:
        """(..., input_dim) -> the bounded latent just before rounding (..., n_levels): its integers are the
        code digits (training losses and diagnostics that look past the rounding)."""
        return self.bound(self.proj_in(latent))

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Latent (..., n_levels) -> codes in [-1, 1], straight-through gradient for the rounding."""
        bounded = self.bound(z)
        rounded = bounded + (torch.round(bounded) - bounded).detach()
        return rounded / self._half_width.to(z.dtype)

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        digits = torch.round(codes * self._half_width + self._half_width).long()
        return (digits * self._basis).sum(dim=-1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.codebook_size):
            raise ValueError(f"token indices must be in [0, {self.codebook_size}), got range "
                             f"[{int(indices.min())}, {int(indices.max())}]")
        return self.valid_indices_to_codes(indices)

    def valid_indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """`indices_to_codes` for indices already known to be in range (no data-dependent check: a compiled
        step's graph keeps no Python branch on values)."""
        digits = (indices.long()[..., None] // self._basis) % self._levels
        return (digits - self._half_width).float() / self._half_width

    def encode(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., input_dim) -> (embedding (..., output_dim), indices (...))."""
        codes = self.quantize(self.proj_in(latent))
        return self.proj_out(codes), self.codes_to_indices(codes)

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Token indices (...) -> content embedding (..., output_dim)."""
        return self.proj_out(self.indices_to_codes(indices).to(self.proj_out.weight.dtype))

    def decode_valid(self, indices: torch.Tensor) -> torch.Tensor:
        """`decode` for indices already checked to be in range (streams check every push first)."""
        return self.proj_out(self.valid_indices_to_codes(indices).to(self.proj_out.weight.dtype))

    def forward(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training form: (embedding, indices, codebook perplexity of this batch)."""
        codes = self.quantize(self.proj_in(latent))
        indices = self.codes_to_indices(codes.detach())
        counts = torch.bincount(indices.flatten(), minlength=self.codebook_size).float()
        probs = counts / counts.sum().clamp_min(1)
        perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
        return self.proj_out(codes), indices, perplexity
