"""Streaming building blocks: each has an offline `forward` over a whole sequence and a
`step(chunk, state) -> (out, state)` with explicit tensor state, and the two compute the same function
for any way of cutting the input (tests/test_streaming_blocks.py checks it).

Conventions
- State is a flat `List[Tensor]` made by `init_state(batch)`; `step` never mutates it, it returns a new
  list, so a failed call leaves the caller's state untouched and the code scripts with TorchScript.
- Everything is causal: outputs never depend on inputs later than the ones already given, so `step`
  may be fed any number of new frames (including 0) and emits exactly the outputs that became final.
- Sequences are (B, C, T) for convolutions and (B, T, C) for transformers, as in PyTorch.
- No file here uses `from __future__ import annotations`: TorchScript reads the annotations.
"""

import math
from fractions import Fraction
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modules.convnets import AttentiveStatsPooling, ConvNeXtBlock, PostNet
from ..modules.transformer import AdaLNZero, Attention, FeedForward, rope_angles


class StreamingModule(nn.Module):
    """The one streaming abstraction: offline `forward(x)` and `step(x, state) -> (y, state)`.

    Stateless blocks inherit `init_state` (no tensors) and get `step` = `forward`.
    """

    def init_state(self, batch: int = 1) -> List[Tensor]:
        return []

    def step(self, x: Tensor, state: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        return self.forward(x), state


def state_numel(state: List[Tensor]) -> int:
    return sum(int(t.numel()) for t in state)


# --- causal convolution ------------------------------------------------------------------------------


def causal_conv(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: int, groups: int) -> Tensor:
    """Conv1d with (kernel - stride) zeros on the left: output t sees inputs up to (t + 1) * stride - 1."""
    kernel = weight.shape[-1]
    x = F.pad(x, (kernel - stride, 0))
    if x.shape[-1] < kernel:  # too short for a single output
        return x.new_zeros(x.shape[0], weight.shape[0], 0)
    return F.conv1d(x, weight, bias, stride, 0, 1, groups)


def causal_conv_step(x: Tensor, tail: Tensor, weight: Tensor, bias: Optional[Tensor], stride: int,
                     groups: int) -> Tuple[Tensor, Tensor]:
    """Streaming form of `causal_conv`. `tail` holds the inputs not yet fully consumed: at least
    kernel - stride of them (the left context) and fewer than kernel, so the state stays bounded."""
    kernel = weight.shape[-1]
    x = torch.cat([tail, x], dim=-1)
    if x.shape[-1] < kernel:
        return x.new_zeros(x.shape[0], weight.shape[0], 0), x
    y = F.conv1d(x, weight, bias, stride, 0, 1, groups)
    return y, x[..., y.shape[-1] * stride:]


class CausalConv1d(StreamingModule, nn.Conv1d):
    """nn.Conv1d (same parameters) made causal: left padding kernel - stride, any stride."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1,
                 bias: bool = True):
        if kernel_size < stride:
            raise ValueError(f"kernel_size {kernel_size} < stride {stride} would skip inputs")
        nn.Conv1d.__init__(self, in_channels, out_channels, kernel_size, stride=stride, groups=groups, bias=bias)
        self.causal_kernel, self.causal_stride = kernel_size, stride

    def init_state(self, batch: int = 1) -> List[Tensor]:
        return [self.weight.new_zeros(batch, self.in_channels, self.causal_kernel - self.causal_stride)]

    def forward(self, x: Tensor) -> Tensor:
        return causal_conv(x, self.weight, self.bias, self.causal_stride, self.groups)

    def step(self, x: Tensor, state: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        y, tail = causal_conv_step(x, state[0], self.weight, self.bias, self.causal_stride, self.groups)
        return y, [tail]


class CausalConvNeXtBlock(StreamingModule, ConvNeXtBlock):
    """The teacher's ConvNeXt block (same parameters) with a causal depthwise conv; state = last k-1 inputs."""

    def __init__(self, dim: int, intermediate_dim: int, kernel_size: int = 7, layer_scale: float = 1e-6):
        ConvNeXtBlock.__init__(self, dim, intermediate_dim, kernel_size, layer_scale)
        self.dim, self.kernel_size = dim, kernel_size

    def init_state(self, batch: int = 1) -> List[Tensor]:
        return [self.gamma.new_zeros(batch, self.dim, self.kernel_size - 1)]

    def _residual(self, x: Tensor, mixed: Tensor) -> Tensor:
        return x + self.pointwise(mixed.transpose(1, 2)).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T) -> (B, C, T)."""
        return self._residual(x, causal_conv(x, self.dwconv.weight, self.dwconv.bias, 1, self.dim))

    def step(self, x: Tensor, state: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        mixed, tail = causal_conv_step(x, state[0], self.dwconv.weight, self.dwconv.bias, 1, self.dim)
        return self._residual(x, mixed), [tail]


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of (B, C, T): per frame, so streaming needs no state."""

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x.transpose(1, 2), self.normalized_shape, self.weight, self.bias, self.eps).transpose(1, 2)


class _FrontendLayer(StreamingModule):
    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int):
        super().__init__()
        self.conv = CausalConv1d(in_channels, out_channels, kernel, stride)
        self.norm = ChannelLayerNorm(out_channels)

    def init_state(self, batch: int = 1) -> List[Tensor]:
        return self.conv.init_state(batch)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(F.gelu(self.conv(x)))

    def step(self, x: Tensor, state: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        y, state = self.conv.step(x, state)
        return self.norm(F.gelu(y)), state


class CausalConvFrontend(StreamingModule):
    """Waveform (B, samples) -> frames (B, T, dim) by strided causal convs (each + GELU + LayerNorm over
    channels, causal-safe unlike WavLM's GroupNorm over time); frame t is final once samples up to
    (t + 1) * hop have arrived, hop = product of the strides. `layers`: [(channels, kernel, stride), ...]."""

    def __init__(self, layers: List[List[int]], dim: int):
        super().__init__()
        channels = [1] + [int(layer[0]) for layer in layers]
        self.layers = nn.ModuleList(_FrontendLayer(channels[i], int(c), int(k), int(s))
                                    for i, (c, k, s) in enumerate(layers))
        self.proj = nn.Linear(channels[-1], dim)
        self.hop = math.prod(int(layer[2]) for layer in layers)

    def init_state(self, batch: int = 1) -> List[Tensor]:
        state: List[Tensor] = []
        for layer in self.layers:
            state += layer.init_state(batch)
        return state

    def forward(self, wave: Tensor) -> Tensor:
        x = wave[:, None]
        for layer in self.layers:
            x = layer(x)
        return self.proj(x.transpose(1, 2))

    def step(self, wave: Tensor, state: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        x = wave[:, None]
        new_state: List[Tensor] = []
        for i, layer in enumerate(self.layers):
            x, layer_state = layer.step(x, state[i: i + 1])
            new_state += layer_state
        return self.proj(x.transpose(1, 2)), new_state


# --- transformer with chunked local attention ---------------------------------------------------------


def chunk_causal_mask(query_positions: Tensor, key_positions: Tensor, chunk: int, past: int) -> Tensor:
    """True = attend. A query sees the keys of its own chunk (chunk frames aligned on absolute position 0)
    and the `past` frames before that chunk; never a later chunk, nor a negative (empty cache) slot."""
    query_chunk_start = torch.div(query_positions, chunk, rounding_mode="floor") * chunk
    keys = key_positions[None, :]
    return ((keys < query_chunk_start[:, None] + chunk) & (keys >= query_chunk_start[:, None] - past)
            & (keys >= 0))


class _LayerNormWithCondition(nn.LayerNorm):
    """Plain LayerNorm with the call signature of AdaLNZero ((x, condition) -> (y, gate)), so conditioned and
    unconditioned blocks share one scriptable code path. Parameter names stay those of nn.LayerNorm."""

    def forward(self, x: Tensor, condition: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps), None


class StreamingTransformerLayer(nn.Module):
    """The teacher's pre-norm block (same parameter names: attention.wq, feed_forward.w1,
    attention_norm.condition_proj.1 ...) computed over [cached past keys, new frames]."""

    def __init__(self, dim: int, n_heads: int, condition_dim: Optional[int] = None, eps: float = 1e-5):
        super().__init__()
        self.attention = Attention(dim, n_heads)
        self.feed_forward = FeedForward(dim)
        if condition_dim is None:
            self.attention_norm = _LayerNormWithCondition(dim, eps=eps)
            self.ffn_norm = _LayerNormWithCondition(dim, eps=eps)
        else:
            self.attention_norm = AdaLNZero(dim, condition_dim, eps=eps)
            self.ffn_norm = AdaLNZero(dim, condition_dim, eps=eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, condition: Tensor, past_keys: Tensor,
                past_values: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Returns the new frames' outputs and all keys / values seen (past + new, keys already rotated)."""
        h, gate = self.attention_norm(x, condition)
        q, k, v = self.attention.project_qkv(h, cos, sin)
        keys, values = torch.cat([past_keys, k], dim=2), torch.cat([past_values, v], dim=2)
        h = self.attention.attend(q, keys, values, mask)
        x = x + (h if gate is None else gate * h)
        h, gate = self.ffn_norm(x, condition)
        h = self.feed_forward(h)
        return x + (h if gate is None else gate * h), keys, values


class StreamingTransformer(StreamingModule):
    """Transformer with chunked local attention and a bounded KV cache.

    A frame sees its own chunk of `chunk` frames and the `past` frames before that chunk. RoPE uses
    absolute positions (a step counter in the state; angles computed in float64 so they stay exact for
    hours), and the cache keeps keys already rotated: the offline form and every cutting of the stream
    compute the same scores. The cache holds exactly `past` frames (a fixed-size window shifted each
    step; slots before the stream start are masked out by their negative positions).

    `step` takes any number of frames when chunk == 1; with chunk > 1 it takes whole chunks only.
    State: [next position (1,) int64] + [keys (B, H, past, Dh), values (B, H, past, Dh)] per layer.
    """

    def __init__(self, dim: int, n_layers: int, n_heads: int, past: int, chunk: int = 1,
                 input_dim: Optional[int] = None, output_dim: Optional[int] = None,
                 condition_dim: Optional[int] = None, rope_theta: float = 1e4, eps: float = 1e-5):
        super().__init__()
        if past < 0 or chunk < 1:
            raise ValueError(f"need past >= 0 and chunk >= 1, got past={past}, chunk={chunk}")
        self.dim, self.n_heads, self.head_dim = dim, n_heads, dim // n_heads
        self.past, self.chunk, self.rope_theta = past, chunk, rope_theta
        self.conditioned = condition_dim is not None
        self.layers = nn.ModuleList(StreamingTransformerLayer(dim, n_heads, condition_dim, eps) for _ in range(n_layers))
        self.norm = (AdaLNZero(dim, condition_dim, with_gate=False, eps=eps) if condition_dim is not None
                     else _LayerNormWithCondition(dim, eps=eps))
        self.input_proj = nn.Linear(input_dim, dim) if input_dim is not None else nn.Identity()
        self.output_proj = nn.Linear(dim, output_dim) if output_dim is not None else nn.Identity()
        self.output_dim = output_dim if output_dim is not None else dim
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)  # device / dtype for new state

    def init_state(self, batch: int = 1) -> List[Tensor]:
        state = [torch.zeros(1, dtype=torch.long, device=self._anchor.device)]
        for _ in self.layers:
            cache = self._anchor.new_zeros(batch, self.n_heads, self.past, self.head_dim)
            state += [cache, cache.clone()]
        return state

    def _run(self, x: Tensor, positions: Tensor, key_positions: Tensor, condition: Optional[Tensor],
             caches: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        cos, sin = rope_angles(self.head_dim, positions, self.rope_theta, torch.float64)
        mask = chunk_causal_mask(positions, key_positions, self.chunk, self.past)
        cond = condition if condition is not None else x.new_zeros(0)  # unconditioned norms ignore it
        x = self.input_proj(x)
        seen: List[Tensor] = []
        for i, layer in enumerate(self.layers):
            x, keys, values = layer(x, cos, sin, mask, cond, caches[2 * i], caches[2 * i + 1])
            seen += [keys, values]
        return self.output_proj(self.norm(x, cond)[0]), seen

    def forward(self, x: Tensor, condition: Optional[Tensor] = None) -> Tensor:
        """x: (B, T, C_in) -> (B, T, C_out). condition: (B, 1, cond) for AdaLN-Zero."""
        positions = torch.arange(x.shape[1], device=x.device)
        empty = self._anchor.new_zeros(x.shape[0], self.n_heads, 0, self.head_dim)
        return self._run(x, positions, positions, condition, [empty] * (2 * len(self.layers)))[0]

    def step(self, x: Tensor, state: List[Tensor], condition: Optional[Tensor] = None) -> Tuple[Tensor, List[Tensor]]:
        n = x.shape[1]
        if n == 0:
            return x.new_zeros(x.shape[0], 0, self.output_dim), state
        start = state[0]
        positions = start + torch.arange(n, device=x.device)
        key_positions = torch.cat([start - self.past + torch.arange(self.past, device=x.device), positions])
        y, seen = self._run(x, positions, key_positions, condition, state[1:])
        # keep the last `past` keys / values: a fixed-size window, whatever the number of new frames
        return y, [start + n] + [t[:, :, t.shape[2] - self.past:] for t in seen]


# --- token-rate <-> frame-rate -----------------------------------------------------------------------


class TokenUpsampler(StreamingModule, nn.ConvTranspose1d):
    """ConvTranspose1d with kernel == stride: each input frame makes `factor` output frames on its own,
    so the streaming form needs no state."""

    def __init__(self, channels: int, factor: int):
        nn.ConvTranspose1d.__init__(self, channels, channels, factor, stride=factor)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] == 0:
            return x
        return F.conv_transpose1d(x, self.weight, self.bias, self.stride, 0, 0, 1, 1)


class FrameInterpolator(StreamingModule):
    """Linear interpolation from one frame rate to another (align_corners=False semantics, no parameters),
    with the fractional phase carried in state as exact integers.

    Output frame i reads the input at position src(i) = i * in_rate / out_rate + shift, with
    ratio = p / q and shift = `shift_num` / (2 q) (default -q: frame centres of a centre-padded
    output line up with the input frame centres). Negative positions clamp to 0 like F.interpolate. Frame i
    is emitted once its right neighbour floor(src) + 1 exists, so `step` never waits for more than one
    input frame. State: [last input frame (B, C, 1), inputs seen (1,), outputs emitted (1,)].
    """

    def __init__(self, channels: int, in_rate: float, out_rate: float, shift_num: Optional[int] = None):
        super().__init__()
        ratio = Fraction(in_rate).limit_denominator(10**6) / Fraction(out_rate).limit_denominator(10**6)
        self.channels, self.p, self.q = channels, ratio.numerator, ratio.denominator
        self.shift_num = -self.q if shift_num is None else shift_num
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)

    def num_outputs(self, num_inputs: int) -> int:
        """Frames `step` has emitted after `num_inputs` input frames (pure integer arithmetic)."""
        # frame i is ready when floor((2p i + shift) / 2q) <= num_inputs - 2; count them
        if num_inputs < 2:
            return 0
        bound = 2 * self.q * (num_inputs - 1) - self.shift_num  # 2p i < bound
        return max(-(-bound // (2 * self.p)), 0)

    def init_state(self, batch: int = 1) -> List[Tensor]:
        counter = torch.zeros(1, dtype=torch.long, device=self._anchor.device)
        return [self._anchor.new_zeros(batch, self.channels, 1), counter, counter.clone()]

    def _sources(self, first: int, count: int, device: torch.device) -> Tuple[Tensor, Tensor]:
        """Left input index and weight of the right neighbour for output frames first .. first + count - 1."""
        index = first + torch.arange(count, device=device)
        numerator = 2 * self.p * index + self.shift_num
        left = torch.div(numerator, 2 * self.q, rounding_mode="floor")
        frac = (numerator - 2 * self.q * left).to(torch.float32) / (2 * self.q)
        before_start = numerator < 0
        return left.clamp(min=0), torch.where(before_start, torch.zeros_like(frac), frac)

    def _gather(self, frames: Tensor, left: Tensor, frac: Tensor, offset: int) -> Tensor:
        last = frames.shape[-1] - 1
        a = frames.index_select(2, (left - offset).clamp(max=last))
        b = frames.index_select(2, (left + 1 - offset).clamp(max=last))
        return a * (1 - frac) + b * frac

    def forward(self, x: Tensor, num_outputs: int = -1) -> Tensor:
        """(B, C, T_in) -> (B, C, T_out). By default the frames `step` would emit; `num_outputs` >= 0 gives
        that many, repeating the last input frame past the end (the end-of-stream form, see `flush`)."""
        total = self.num_outputs(x.shape[-1]) if num_outputs < 0 else num_outputs
        if total == 0 or x.shape[-1] == 0:
            return x.new_zeros(x.shape[0], x.shape[1], 0)
        left, frac = self._sources(0, total, x.device)
        return self._gather(x, left, frac, 0)

    def step(self, x: Tensor, state: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        seen_before, emitted = int(state[1]), int(state[2])
        seen = seen_before + x.shape[-1]
        count = self.num_outputs(seen) - emitted
        frames = torch.cat([state[0], x], dim=-1)  # input index seen_before - 1 is at 0
        new_state = [frames[..., -1:], state[1] + x.shape[-1], state[2] + max(count, 0)]
        if count <= 0:
            return x.new_zeros(x.shape[0], x.shape[1], 0), new_state
        left, frac = self._sources(emitted, count, x.device)
        return self._gather(frames, left, frac, seen_before - 1), new_state

    def flush(self, state: List[Tensor], num_outputs: int) -> Tuple[Tensor, List[Tensor]]:
        """End of stream: emit frames up to `num_outputs` in all, holding the last input frame."""
        seen, emitted = int(state[1]), int(state[2])
        count = num_outputs - emitted
        if count <= 0 or seen == 0:
            return state[0][..., :0], state
        left, frac = self._sources(emitted, count, state[0].device)
        return self._gather(state[0], left, frac, seen - 1), [state[0], state[1], state[2] + count]


# --- conditioning, post-processing, pooling ----------------------------------------------------------


class CausalPostNet(StreamingModule, PostNet):
    """The teacher's PostNet (same parameters) with causal padding; state = last k-1 inputs of each conv."""

    def __init__(self, input_channels: int = 100, channels: int = 256, kernel_size: int = 7, num_layers: int = 4):
        PostNet.__init__(self, input_channels, channels, kernel_size, num_layers, use_layer_norm=True,
                         padding="causal")
        self.input_dims = [input_channels] + [channels] * (num_layers - 1)
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)

    def init_state(self, batch: int = 1) -> List[Tensor]:
        return [self._anchor.new_zeros(batch, c, self.kernel_size - 1) for c in self.input_dims]

    def step(self, mel: Tensor, state: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        if mel.shape[-1] == 0:
            return mel, state
        x, tails = mel, []
        last = len(self.convolutions) - 1
        for i, block in enumerate(self.convolutions):
            padded = torch.cat([state[i], x], dim=-1)  # the convs have no padding: exactly T outputs
            tails.append(padded[..., padded.shape[-1] - (self.kernel_size - 1):])
            x = block(padded)
            if i < last:
                x = torch.tanh(x)
        return mel + x, tails


class StreamingStatsPooling(StreamingModule, AttentiveStatsPooling):
    """The teacher's attentive statistics pooling (same parameters) over a growing stream.

    The softmax over time is accumulated online per channel (running max, and sums of weights, weighted
    x and weighted x^2 rescaled when the max grows, in float64), so the embedding refines as audio
    arrives and the state is 4 vectors of `channels` whatever the length. `step` returns the embedding
    of everything seen so far; it is defined once at least one frame has been seen.
    """

    def __init__(self, channels: int, output_channels: int, attention_channels: int = 128):
        AttentiveStatsPooling.__init__(self, channels, output_channels, attention_channels)
        self.channels = channels

    def init_state(self, batch: int = 1) -> List[Tensor]:
        zeros = torch.zeros(batch, self.channels, dtype=torch.float64, device=self.proj.weight.device)
        return [zeros - 1e300, zeros, zeros.clone(), zeros.clone()]  # running max, sum w, sum w x, sum w x^2

    def embedding(self, state: List[Tensor]) -> Tensor:
        weight_sum = state[1].clamp(min=1e-300)
        mean = state[2] / weight_sum
        variance = state[3] / weight_sum - mean * mean
        std = torch.sqrt(variance.clamp(1e-4, 1e4))
        stats = torch.cat([mean, std], dim=1).to(self.proj.weight.dtype)
        return self.norm(self.proj(stats))

    def step(self, x: Tensor, state: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        """x: (B, C, n) new frames -> (embedding so far (B, output_channels), state)."""
        if x.shape[-1] == 0:
            return self.embedding(state), state
        logits = self.attn(x).double()
        xd = x.double()
        new_max = torch.maximum(state[0], logits.amax(dim=-1))
        rescale = torch.exp(state[0] - new_max)
        weights = torch.exp(logits - new_max[..., None])
        new_state = [new_max, state[1] * rescale + weights.sum(-1), state[2] * rescale + (weights * xd).sum(-1),
                     state[3] * rescale + (weights * xd * xd).sum(-1)]
        return self.embedding(new_state), new_state


class CausalGlobalEncoder(StreamingModule):
    """Global (speaker) branch of the student: causal ConvNeXt backbone + streaming attentive stats.
    Parameter names follow the teacher's GlobalEncoder (backbone.embed, backbone.convnext.N, pooling)."""

    def __init__(self, input_channels: int, output_channels: int, num_layers: int, dim: int, intermediate_dim: int,
                 kernel_size: int = 7):
        super().__init__()
        self.output_channels = output_channels
        self.backbone = _CausalConvNeXtBackbone(input_channels, dim, intermediate_dim, num_layers, kernel_size)
        self.pooling = StreamingStatsPooling(dim, output_channels)
        self.n_backbone = len(self.backbone.init_state(1))

    def init_state(self, batch: int = 1) -> List[Tensor]:
        return self.backbone.init_state(batch) + self.pooling.init_state(batch)

    def forward(self, features: Tensor) -> Tensor:
        """(B, T, C) -> (B, output_channels)."""
        return self.pooling(self.backbone(features.transpose(1, 2)))

    def step(self, features: Tensor, state: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        hidden, backbone_state = self.backbone.step(features.transpose(1, 2), state[: self.n_backbone])
        embedding, pooling_state = self.pooling.step(hidden, state[self.n_backbone:])
        return embedding, backbone_state + pooling_state

    def embedding(self, state: List[Tensor]) -> Tensor:
        return self.pooling.embedding(state[self.n_backbone:])


class _CausalConvNeXtBackbone(StreamingModule):
    """Causal conv embedding, LayerNorm, causal ConvNeXt blocks, final LayerNorm; (B, C_in, T) -> (B, dim, T)."""

    def __init__(self, input_channels: int, dim: int, intermediate_dim: int, num_layers: int, kernel_size: int = 7):
        super().__init__()
        self.embed = CausalConv1d(input_channels, dim, kernel_size)
        self.norm = ChannelLayerNorm(dim, eps=1e-6)
        self.convnext = nn.ModuleList(CausalConvNeXtBlock(dim, intermediate_dim, kernel_size) for _ in range(num_layers))
        self.final_layer_norm = ChannelLayerNorm(dim, eps=1e-6)

    def init_state(self, batch: int = 1) -> List[Tensor]:
        state = self.embed.init_state(batch)
        for block in self.convnext:
            state += block.init_state(batch)
        return state

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(self.embed(x))
        for block in self.convnext:
            x = block(x)
        return self.final_layer_norm(x)

    def step(self, x: Tensor, state: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        x, new_state = self.embed.step(x, state[:1])
        x = self.norm(x)
        for i, block in enumerate(self.convnext):
            x, block_state = block.step(x, state[i + 1: i + 2])
            new_state += block_state
        return self.final_layer_norm(x), new_state


# --- vocoder -----------------------------------------------------------------------------------------


class StreamingISTFT(StreamingModule):
    """Inverse STFT by overlap-add, frame by frame (n_fft a multiple of hop).

    Frame i's windowed inverse FFT covers internal samples [i hop, i hop + n_fft); once frame i is added,
    samples before (i + 1) hop are final. Like a centre-padded STFT, the first n_fft / 2 internal samples
    are dropped, so output sample s is aligned with frame s / hop's centre. The sum is divided by the
    steady-state window envelope (a periodic function of s mod hop), so the first n_fft / 2 - hop output
    samples of a stream fade in; offline and streaming forms do the same.
    State: [overlap-add tail (B, n_fft/hop - 1, hop), frames emitted so far (1,) saturating].
    """

    def __init__(self, n_fft: int, hop_length: int):
        super().__init__()
        if n_fft % hop_length or (n_fft // 2) % hop_length:
            raise ValueError(f"n_fft ({n_fft}) and n_fft / 2 must be multiples of hop_length ({hop_length})")
        self.n_fft, self.hop = n_fft, hop_length
        self.overlap = n_fft // hop_length  # frames overlapping each sample
        self.drop_frames = n_fft // 2 // hop_length
        window = torch.hann_window(n_fft, periodic=True)
        self.register_buffer("window", window, persistent=False)
        envelope = (window**2).view(self.overlap, hop_length).sum(dim=0)
        self.register_buffer("envelope", envelope, persistent=False)

    def num_outputs(self, num_frames: int) -> int:
        return max(num_frames - self.drop_frames, 0) * self.hop

    def init_state(self, batch: int = 1) -> List[Tensor]:
        return [self.window.new_zeros(batch, self.overlap - 1, self.hop),
                torch.zeros(1, dtype=torch.long, device=self.window.device)]

    def _overlap_add(self, spectrum: Tensor, tail: Tensor) -> Tuple[Tensor, Tensor]:
        """spectrum: (B, n, n_fft/2+1) complex -> (final samples (B, n, hop), new tail)."""
        b, n = spectrum.shape[0], spectrum.shape[1]
        frames = (torch.fft.irfft(spectrum, n=self.n_fft, dim=-1) * self.window).view(b, n, self.overlap, self.hop)
        total = F.pad(tail, (0, 0, 0, n))
        for j in range(self.overlap):  # piece j of frame i lands on hop-segment i + j
            total = total + F.pad(frames[:, :, j], (0, 0, j, self.overlap - 1 - j))
        return total[:, :n] / self.envelope, total[:, n:]

    def forward(self, spectrum: Tensor) -> Tensor:
        """(B, n, n_fft/2+1) complex -> (B, samples)."""
        tail = self.window.new_zeros(spectrum.shape[0], self.overlap - 1, self.hop)
        final, _ = self._overlap_add(spectrum, tail)
        return final[:, self.drop_frames:].flatten(1)

    def step(self, spectrum: Tensor, state: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        n = spectrum.shape[1]
        if n == 0:
            return self.window.new_zeros(spectrum.shape[0], 0), state
        final, tail = self._overlap_add(spectrum, state[0])
        drop = min(max(self.drop_frames - int(state[1]), 0), n)
        return final[:, drop:].flatten(1), [tail, (state[1] + n).clamp(max=self.drop_frames)]


class CausalVocoder(StreamingModule):
    """Vocos-style vocoder made causal: mel (B, n_mels, T) -> causal ConvNeXt backbone -> linear head to
    log-magnitude and phase -> streaming ISTFT. Output: T * hop samples minus the first n_fft / 2."""

    def __init__(self, n_mels: int = 100, dim: int = 256, intermediate_dim: int = 768, num_layers: int = 6,
                 n_fft: int = 512, hop_length: int = 256, kernel_size: int = 7):
        super().__init__()
        self.backbone = _CausalConvNeXtBackbone(n_mels, dim, intermediate_dim, num_layers, kernel_size)
        self.head = nn.Linear(dim, n_fft + 2)
        self.istft = StreamingISTFT(n_fft, hop_length)
        self.n_bins = n_fft // 2 + 1
        self.n_backbone = len(self.backbone.init_state(1))

    def init_state(self, batch: int = 1) -> List[Tensor]:
        return self.backbone.init_state(batch) + self.istft.init_state(batch)

    def _spectrum(self, hidden: Tensor) -> Tensor:
        out = self.head(hidden.transpose(1, 2))
        magnitude = torch.exp(out[..., : self.n_bins]).clamp(max=1e2)
        phase = out[..., self.n_bins:]
        return torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))

    def forward(self, mel: Tensor) -> Tensor:
        return self.istft(self._spectrum(self.backbone(mel)))

    def step(self, mel: Tensor, state: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        hidden, backbone_state = self.backbone.step(mel, state[: self.n_backbone])
        audio, istft_state = self.istft.step(self._spectrum(hidden), state[self.n_backbone:])
        return audio, backbone_state + istft_state


# --- input resampling --------------------------------------------------------------------------------


class StreamingResampler(StreamingModule):
    """Band-limited (Hann-windowed sinc) resampling between integer rates, streamed exactly.

    With rates reduced to orig : new (e.g. 48 kHz -> 16 kHz = 3 : 1), every block of `orig` input samples
    yields `new` output samples, one per phase, each a dot product with its own sinc kernel over
    2 * width + orig inputs: a strided causal convolution with `new` output channels. Being causal, the
    output is the band-limited input delayed by `width` input samples (`delay_seconds`); it has no
    lookahead, so after n inputs exactly (n // orig) * new outputs are final. Same filter family and
    defaults as torchaudio's sinc resampler (lowpass width 6, rolloff 0.99).
    """

    def __init__(self, orig_rate: int, new_rate: int, lowpass_filter_width: int = 6, rolloff: float = 0.99):
        super().__init__()
        g = math.gcd(int(orig_rate), int(new_rate))
        self.orig_rate, self.new_rate = int(orig_rate), int(new_rate)
        self.orig, self.new = self.orig_rate // g, self.new_rate // g
        self.identity = self.orig == self.new
        base = min(self.orig, self.new) * rolloff  # cutoff, in units of the reduced rates
        self.width = 0 if self.identity else math.ceil(lowpass_filter_width * self.orig / base)
        taps = torch.arange(-self.width, self.width + self.orig, dtype=torch.float64)
        # t: distance from input tap to output phase j, in zero-crossings of the low-pass sinc
        t = (taps[None, :] / self.orig - torch.arange(self.new, dtype=torch.float64)[:, None] / self.new) * base
        t = t.clamp(-lowpass_filter_width, lowpass_filter_width)
        window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
        kernel = torch.where(t == 0, torch.ones_like(t), torch.sin(math.pi * t) / (math.pi * t)) * window * base / self.orig
        self.register_buffer("kernel", kernel.float()[:, None, :], persistent=False)  # (new, 1, 2 width + orig)

    @property
    def delay_seconds(self) -> float:
        return self.width / self.orig_rate

    def num_outputs(self, num_inputs: int) -> int:
        return num_inputs if self.identity else (num_inputs // self.orig) * self.new

    def init_state(self, batch: int = 1) -> List[Tensor]:
        return [self.kernel.new_zeros(batch, 1, 0 if self.identity else 2 * self.width)]

    def _interleave(self, phases: Tensor) -> Tensor:
        return phases.transpose(1, 2).reshape(phases.shape[0], -1)  # (B, new, Q) -> (B, Q * new)

    def forward(self, x: Tensor) -> Tensor:
        """(B, samples) -> (B, samples * new / orig, rounded down to whole blocks)."""
        if self.identity:
            return x
        # causal_conv pads kernel - stride = 2 width zeros on the left: the stream starts in silence
        return self._interleave(causal_conv(x[:, None], self.kernel, None, self.orig, 1))

    def step(self, x: Tensor, state: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        if self.identity:
            return x, state
        phases, tail = causal_conv_step(x[:, None], state[0], self.kernel, None, self.orig, 1)
        return self._interleave(phases), [tail]
