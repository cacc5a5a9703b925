"""Convolutional parts of the teacher: the ConvNeXt global encoder with attentive statistics pooling,
and the mel PostNet. Parameter names follow the official release."""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn


def _channels_last_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm over channels of a (B, C, T) tensor."""
    return norm(x.transpose(1, 2)).transpose(1, 2)


def _zero_padding(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    # Batched inputs of different lengths: padded frames must read as zeros to every convolution,
    # exactly like the zero padding a single utterance gets at its end.
    return x if mask is None else x * mask[:, None, :].to(x.dtype)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, intermediate_dim: int, kernel_size: int = 7, layer_scale: float = 1e-6):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.pwconv2 = nn.Linear(intermediate_dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def pointwise(self, x: torch.Tensor) -> torch.Tensor:
        """Everything after the depthwise conv, on (B, T, C)."""
        return self.gamma * self.pwconv2(F.gelu(self.pwconv1(self.norm(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pointwise(self.dwconv(x).transpose(1, 2)).transpose(1, 2)


class ConvNeXtBackbone(nn.Module):
    def __init__(self, input_channels: int, dim: int, intermediate_dim: int, num_layers: int):
        super().__init__()
        self.embed = nn.Conv1d(input_channels, dim, kernel_size=7, padding=3)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.convnext = nn.ModuleList(ConvNeXtBlock(dim, intermediate_dim) for _ in range(num_layers))
        self.final_layer_norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C_in, T) -> (B, dim, T). mask: (B, T), True = real frame."""
        x = _channels_last_norm(self.norm, self.embed(_zero_padding(x, mask)))
        for block in self.convnext:
            x = block(_zero_padding(x, mask))
        return _channels_last_norm(self.final_layer_norm, x)


class AttentiveStatsPooling(nn.Module):
    """Attention-weighted mean and std over time, projected and normalised."""

    def __init__(self, channels: int, output_channels: int, attention_channels: int = 128):
        super().__init__()
        self.attn = nn.Sequential(
            nn.Conv1d(channels, attention_channels, 1), nn.Tanh(), nn.Conv1d(attention_channels, channels, 1)
        )
        self.proj = nn.Linear(2 * channels, output_channels)
        self.norm = nn.LayerNorm(output_channels)

    def accumulate(self, x: torch.Tensor, running_max: torch.Tensor, sum_w: torch.Tensor, sum_wx: torch.Tensor,
                   sum_wx2: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Online form of the softmax over time, for audio that arrives in pieces: add frames x (B, C, n) to
        the running statistics (per channel, float64: the max logit so far, and the sums of weights, weighted
        x and weighted x^2, all relative to that max). `pooled` turns them into the embedding."""
        logits = self.attn(x).double()
        xd = x.double()
        new_max = torch.maximum(running_max, logits.amax(dim=-1))
        rescale = torch.exp(running_max - new_max)
        weights = torch.exp(logits - new_max[..., None])
        return (new_max, sum_w * rescale + weights.sum(-1), sum_wx * rescale + (weights * xd).sum(-1),
                sum_wx2 * rescale + (weights * xd * xd).sum(-1))

    def pooled(self, sum_w: torch.Tensor, sum_wx: torch.Tensor, sum_wx2: torch.Tensor) -> torch.Tensor:
        """The embedding (B, output_channels) of accumulated statistics (see `accumulate`)."""
        weight_sum = sum_w.clamp(min=1e-300)
        mean = sum_wx / weight_sum
        variance = sum_wx2 / weight_sum - mean * mean
        std = torch.sqrt(variance.clamp(1e-4, 1e4))
        return self.norm(self.proj(torch.cat([mean, std], dim=1).to(self.norm.weight.dtype)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, T) -> (B, output_channels)."""
        logits = self.attn(x)
        if mask is not None:
            logits = logits.masked_fill(~mask[:, None, :], float("-inf"))
        weights = torch.softmax(logits, dim=2)
        mean = (weights * x).sum(dim=2)
        variance = (weights * x * x).sum(dim=2) - mean * mean
        std = torch.sqrt(variance.clamp(1e-4, 1e4))
        return self.norm(self.proj(torch.cat([mean, std], dim=1)))


class GlobalEncoder(nn.Module):
    def __init__(self, input_channels: int, output_channels: int, num_layers: int, dim: int, intermediate_dim: int):
        super().__init__()
        self.output_channels = output_channels
        self.backbone = ConvNeXtBackbone(input_channels, dim, intermediate_dim, num_layers)
        self.pooling = AttentiveStatsPooling(dim, output_channels)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """SSL features (B, T, C) -> global embedding (B, output_channels)."""
        return self.pooling(self.backbone(features.transpose(1, 2), mask), mask)


class _ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of (B, C, T); a module so the checkpoint key is `.norm.weight`."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)  # inline (not the helper) so TorchScript compiles it


class PostNet(nn.Module):
    """Residual refinement of the mel: conv-norm blocks with tanh between them."""

    def __init__(self, input_channels: int = 100, channels: int = 256, kernel_size: int = 7, num_layers: int = 4,
                 use_layer_norm: bool = True, padding: str = "same"):
        super().__init__()
        if padding not in ("same", "causal"):
            raise ValueError(f"padding must be 'same' or 'causal', got {padding!r}")
        self.kernel_size, self.padding = kernel_size, padding
        dims = [input_channels] + [channels] * (num_layers - 1) + [input_channels]
        self.convolutions = nn.ModuleList(
            nn.Sequential(
                nn.Conv1d(c_in, c_out, kernel_size),
                _ChannelLayerNorm(c_out) if use_layer_norm else nn.Identity(),
            )
            for c_in, c_out in zip(dims[:-1], dims[1:])
        )

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, T) -> (B, n_mels, T)."""
        k = self.kernel_size
        pad = (k - 1, 0) if self.padding == "causal" else ((k - 1) // 2, k // 2)
        x = mel
        for i, block in enumerate(self.convolutions):
            x = block(F.pad(x, pad))
            if i < len(self.convolutions) - 1:
                x = torch.tanh(x)
        return mel + x
