"""Causal convolutions of the student: plain and strided convs, the SSL front end, ConvNeXt blocks and
backbone, and the PostNet. Each keeps the inputs it has not fully consumed as its state (`tail`).

Sequences are (B, C, T). No `from __future__ import annotations` here: TorchScript reads the annotations.
"""

import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modules.convnets import ConvNeXtBlock, PostNet
from ..modules.streaming import StreamingModule, name_states


def causal_conv(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: int, groups: int) -> Tensor:
    """Conv1d with (kernel - stride) zeros on the left: output t sees inputs up to (t + 1) * stride - 1."""
    kernel = weight.shape[-1]
    x = F.pad(x, (kernel - stride, 0))
    if x.shape[-1] < kernel:  # too short for a single output
        return x.new_zeros(x.shape[0], weight.shape[0], 0)
    return F.conv1d(x, weight, bias, stride, 0, 1, groups)


def conv_windows(x: Tensor, kernel: int, stride: int) -> Tensor:
    """(B, C, T) -> (B, T_out, C * kernel): each output frame's input window, flattened as a conv weight
    (out, C, kernel) flattens, so a conv is a Linear layer over its windows (int8.py's int8 convs)."""
    return x.unfold(2, kernel, stride).permute(0, 2, 1, 3).flatten(2)


def few_frame_conv(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: int, groups: int) -> Tensor:
    """F.conv1d(x, weight, bias, stride, groups=groups) (no padding) written for the few output frames of a
    streaming step: one matrix product over the unfolded windows (dense), or a multiply-add over them
    (depthwise). At a handful of frames this is ~3x faster than conv1d on CPU (its direct path does not pay
    off that short); other groupings fall back to conv1d."""
    kernel, channels = weight.shape[-1], x.shape[1]
    if groups == 1:
        y = conv_windows(x, kernel, stride).matmul(weight.reshape(weight.shape[0], channels * kernel).t())
        if bias is not None:
            y = y + bias
        return y.transpose(1, 2)
    if groups == channels and weight.shape[0] == channels:
        windows = x.unfold(2, kernel, stride)  # (B, C, T_out, kernel)
        y = (windows * weight.reshape(1, channels, 1, kernel)).sum(-1)
        return y if bias is None else y + bias.reshape(1, channels, 1)
    return F.conv1d(x, weight, bias, stride, 0, 1, groups)


def is_step_sized(frames: int, channels: int, kernel: int) -> bool:
    """Whether a conv's unfolded windows (`frames` over the whole batch) are small enough for
    `few_frame_conv`: up to 2^18 values (e.g. 146 frames of 256 channels x 7 taps, or a 40 ms push through
    the 41-tap input resampler). There the matrix
    product is the faster one, and AOTInductor would run conv1d through its slow direct path; a long push (a
    whole file at once) takes conv1d's own path. (TorchScript reads no module constants: a literal.)"""
    return frames * channels * kernel <= 262144


def causal_conv_step(x: Tensor, tail: Tensor, weight: Tensor, bias: Optional[Tensor], stride: int,
                     groups: int) -> Tuple[Tensor, Tensor]:
    """Streaming form of `causal_conv`. `tail` holds the inputs not yet fully consumed: at least
    kernel - stride of them (the left context) and fewer than kernel, so the state stays bounded."""
    kernel = weight.shape[-1]
    x = torch.cat([tail, x], dim=-1)
    if x.shape[-1] < kernel:
        return x.new_zeros(x.shape[0], weight.shape[0], 0), x
    if is_step_sized(x.shape[0] * ((x.shape[-1] - kernel) // stride + 1), x.shape[1], kernel):
        y = few_frame_conv(x, weight, bias, stride, groups)
    else:
        y = F.conv1d(x, weight, bias, stride, 0, 1, groups)
    return y, x[..., y.shape[-1] * stride:]


class CausalConv1d(StreamingModule):
    """A Conv1d (parameters `weight`, `bias` as nn.Conv1d) made causal: left padding kernel - stride, any
    stride. State: `tail` (B, C_in, kernel - stride .. kernel - 1)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1,
                 bias: bool = True):
        super().__init__()
        if kernel_size < stride:
            raise ValueError(f"kernel_size {kernel_size} < stride {stride} would skip inputs")
        conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, groups=groups, bias=bias)
        self.weight, self.bias = conv.weight, conv.bias
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.groups = kernel_size, stride, groups

    def init_state(self, batch: int = 1) -> Dict[str, Tensor]:
        return {self.state_prefix + "tail": self.weight.new_zeros(batch, self.in_channels,
                                                                  self.kernel_size - self.stride)}

    def forward(self, x: Tensor) -> Tensor:
        return causal_conv(x, self.weight, self.bias, self.stride, self.groups)

    def step(self, x: Tensor, state: Dict[str, Tensor],
             condition: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
        key = self.state_prefix + "tail"
        y, tail = causal_conv_step(x, state[key], self.weight, self.bias, self.stride, self.groups)
        state[key] = tail
        return y, state


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of (B, C, T): per frame, so streaming needs no state."""

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x.transpose(1, 2), self.normalized_shape, self.weight, self.bias, self.eps).transpose(1, 2)


class CausalConvNeXtBlock(StreamingModule, ConvNeXtBlock):
    """The teacher's ConvNeXt block (same parameters) with a causal depthwise conv; state: `tail`, the
    last kernel - 1 inputs."""

    def __init__(self, dim: int, intermediate_dim: int, kernel_size: int = 7, layer_scale: float = 1e-6):
        ConvNeXtBlock.__init__(self, dim, intermediate_dim, kernel_size, layer_scale)
        self.state_prefix = ""
        self.dim, self.kernel_size = dim, kernel_size

    def init_state(self, batch: int = 1) -> Dict[str, Tensor]:
        return {self.state_prefix + "tail": self.gamma.new_zeros(batch, self.dim, self.kernel_size - 1)}

    def _residual(self, x: Tensor, mixed: Tensor) -> Tensor:
        return x + self.pointwise(mixed.transpose(1, 2)).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T) -> (B, C, T)."""
        return self._residual(x, causal_conv(x, self.dwconv.weight, self.dwconv.bias, 1, self.dim))

    def step(self, x: Tensor, state: Dict[str, Tensor],
             condition: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
        key = self.state_prefix + "tail"
        mixed, tail = causal_conv_step(x, state[key], self.dwconv.weight, self.dwconv.bias, 1, self.dim)
        state[key] = tail
        return self._residual(x, mixed), state


class FrontendLayer(StreamingModule):
    """Strided causal conv + GELU + LayerNorm over channels (causal-safe, unlike WavLM's GroupNorm)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int):
        super().__init__()
        self.conv = CausalConv1d(in_channels, out_channels, kernel, stride)
        self.norm = ChannelLayerNorm(out_channels)

    def init_state(self, batch: int = 1) -> Dict[str, Tensor]:
        return self.conv.init_state(batch)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(F.gelu(self.conv(x)))

    def step(self, x: Tensor, state: Dict[str, Tensor],
             condition: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
        y, state = self.conv.step(x, state)
        return self.norm(F.gelu(y)), state


class CausalConvFrontend(StreamingModule):
    """Waveform (B, samples) -> frames (B, T, dim) by strided causal convs; frame t is final once samples up
    to (t + 1) * hop have arrived, hop = product of the strides. `layers`: [(channels, kernel, stride), ...]."""

    def __init__(self, layers: List[List[int]], dim: int):
        super().__init__()
        channels = [1] + [int(layer[0]) for layer in layers]
        self.layers = nn.ModuleList(FrontendLayer(channels[i], int(c), int(k), int(s))
                                    for i, (c, k, s) in enumerate(layers))
        self.proj = nn.Linear(channels[-1], dim)
        self.hop = math.prod(int(layer[2]) for layer in layers)
        name_states(self)  # children's entries under their paths; a parent model renames them

    def init_state(self, batch: int = 1) -> Dict[str, Tensor]:
        state: Dict[str, Tensor] = {}
        for layer in self.layers:
            state.update(layer.init_state(batch))
        return state

    def forward(self, wave: Tensor) -> Tensor:
        x = wave[:, None]
        for layer in self.layers:
            x = layer(x)
        return self.proj(x.transpose(1, 2))

    def step(self, wave: Tensor, state: Dict[str, Tensor],
             condition: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
        x = wave[:, None]
        for layer in self.layers:
            x, state = layer.step(x, state)
        return self.proj(x.transpose(1, 2)), state


class CausalConvNeXtBackbone(StreamingModule):
    """Causal conv embedding, LayerNorm, causal ConvNeXt blocks, final LayerNorm; (B, C_in, T) -> (B, dim, T).
    Parameter names follow the teacher's ConvNeXt backbone."""

    def __init__(self, input_channels: int, dim: int, intermediate_dim: int, num_layers: int, kernel_size: int = 7):
        super().__init__()
        self.embed = CausalConv1d(input_channels, dim, kernel_size)
        self.norm = ChannelLayerNorm(dim, eps=1e-6)
        self.convnext = nn.ModuleList(CausalConvNeXtBlock(dim, intermediate_dim, kernel_size) for _ in range(num_layers))
        self.final_layer_norm = ChannelLayerNorm(dim, eps=1e-6)
        name_states(self)  # children's entries under their paths; a parent model renames them

    def init_state(self, batch: int = 1) -> Dict[str, Tensor]:
        state = self.embed.init_state(batch)
        for block in self.convnext:
            state.update(block.init_state(batch))
        return state

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(self.embed(x))
        for block in self.convnext:
            x = block(x)
        return self.final_layer_norm(x)

    def step(self, x: Tensor, state: Dict[str, Tensor],
             condition: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
        x, state = self.embed.step(x, state)
        x = self.norm(x)
        for block in self.convnext:
            x, state = block.step(x, state)
        return self.final_layer_norm(x), state


class StepSizedConv1d(nn.Conv1d):
    """An unpadded stride-1 nn.Conv1d that computes step-sized inputs with `few_frame_conv` (as every other
    step conv here; AOTInductor would run conv1d through its slow direct path)."""

    def forward(self, x: Tensor) -> Tensor:
        if is_step_sized(x.shape[0] * (x.shape[-1] - self.weight.shape[-1] + 1), x.shape[1], self.weight.shape[-1]):
            return few_frame_conv(x, self.weight, self.bias, 1, 1)
        return F.conv1d(x, self.weight, self.bias)


class CausalPostNet(StreamingModule, PostNet):
    """The teacher's PostNet (same parameters) with causal padding; state: `tails.N`, the last kernel - 1
    inputs of conv N."""

    def __init__(self, input_channels: int = 100, channels: int = 256, kernel_size: int = 7, num_layers: int = 4):
        PostNet.__init__(self, input_channels, channels, kernel_size, num_layers, use_layer_norm=True,
                         padding="causal")
        self.state_prefix = ""
        self.input_dims = [input_channels] + [channels] * (num_layers - 1)
        for block in self.convolutions:
            block[0].__class__ = StepSizedConv1d  # same parameters; a step's few frames as a matrix product
        self.register_buffer("anchor", torch.zeros(0), persistent=False)

    def init_state(self, batch: int = 1) -> Dict[str, Tensor]:
        state: Dict[str, Tensor] = {}
        for i, channels in enumerate(self.input_dims):
            state[self.state_prefix + "tails." + str(i)] = self.anchor.new_zeros(batch, channels, self.kernel_size - 1)
        return state

    def step(self, mel: Tensor, state: Dict[str, Tensor],
             condition: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
        if mel.shape[-1] == 0:
            return mel, state
        x = mel
        last = len(self.convolutions) - 1
        for i, block in enumerate(self.convolutions):
            key = self.state_prefix + "tails." + str(i)
            padded = torch.cat([state[key], x], dim=-1)  # the convs have no padding: exactly T outputs
            state[key] = padded[..., padded.shape[-1] - (self.kernel_size - 1):]
            x = block(padded)
            if i < last:
                x = torch.tanh(x)
        return mel + x, state
