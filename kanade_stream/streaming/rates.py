"""Rate conversion in the student: token rate -> latent rate (transposed conv), latent rate -> mel rate
(linear interpolation with its fractional phase carried as exact integers), and input audio rate ->
16 kHz (an exact streaming sinc resampler).

No `from __future__ import annotations` here: TorchScript reads the annotations.
"""

import math
from fractions import Fraction
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..modules.streaming import StreamingModule
from .convs import causal_conv, causal_conv_step


class TokenUpsampler(StreamingModule):
    """A ConvTranspose1d (parameters `weight`, `bias`) with kernel == stride: each input frame makes `factor`
    output frames on its own, so the streaming form needs no state."""

    def __init__(self, channels: int, factor: int):
        super().__init__()
        conv = nn.ConvTranspose1d(channels, channels, factor, stride=factor)
        self.weight, self.bias = conv.weight, conv.bias
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        """F.conv_transpose1d(x, weight, bias, factor) written as one matrix product (frames never overlap);
        on CPU conv_transpose1d takes a slow direct path (~0.1 ms a step)."""
        if x.shape[-1] == 0:
            return x
        batch, channels, frames = x.shape
        out_channels = self.weight.shape[1]
        y = x.transpose(1, 2).matmul(self.weight.reshape(channels, out_channels * self.factor))  # (B, T, O * f)
        y = y.reshape(batch, frames, out_channels, self.factor).permute(0, 2, 1, 3)
        y = y.reshape(batch, out_channels, frames * self.factor)
        return y if self.bias is None else y + self.bias.reshape(1, out_channels, 1)


class FrameInterpolator(StreamingModule):
    """Linear interpolation from one frame rate to another (align_corners=False semantics, no parameters),
    with the fractional phase carried in state as exact integers.

    Output frame i reads the input at position src(i) = i * in_rate / out_rate + shift, with
    ratio = p / q and shift = `shift_num` / (2 q) (default -q: frame centres of a centre-padded
    output line up with the input frame centres). Negative positions clamp to 0 like F.interpolate. Frame i
    is emitted once its right neighbour floor(src) + 1 exists, so `step` never waits for more than one
    input frame. State: `last` input frame (B, C, 1), inputs `seen` (1,), outputs `emitted` (1,).
    """

    def __init__(self, channels: int, in_rate: float, out_rate: float, shift_num: Optional[int] = None):
        super().__init__()
        ratio = Fraction(in_rate).limit_denominator(10**6) / Fraction(out_rate).limit_denominator(10**6)
        self.channels, self.p, self.q = channels, ratio.numerator, ratio.denominator
        self.shift_num = -self.q if shift_num is None else shift_num
        self.register_buffer("anchor", torch.zeros(0), persistent=False)

    def num_outputs(self, num_inputs: int) -> int:
        """Frames `step` has emitted after `num_inputs` input frames (pure integer arithmetic)."""
        # frame i is ready when floor((2p i + shift) / 2q) <= num_inputs - 2; count them
        if num_inputs < 2:
            return 0
        bound = 2 * self.q * (num_inputs - 1) - self.shift_num  # 2p i < bound
        return max(-(-bound // (2 * self.p)), 0)

    def init_state(self, batch: int = 1) -> Dict[str, Tensor]:
        p = self.state_prefix
        counter = torch.zeros(1, dtype=torch.long, device=self.anchor.device)
        return {p + "last": self.anchor.new_zeros(batch, self.channels, 1), p + "seen": counter,
                p + "emitted": counter.clone()}

    def forward(self, x: Tensor, num_outputs: int = -1) -> Tensor:
        """(B, C, T_in) -> (B, C, T_out). By default the frames `step` would emit; `num_outputs` >= 0 gives
        that many, repeating the last input frame past the end (the end-of-stream form, see `flush`)."""
        total = self.num_outputs(x.shape[-1]) if num_outputs < 0 else num_outputs
        if total == 0 or x.shape[-1] == 0:
            return x.new_zeros(x.shape[0], x.shape[1], 0)
        return self._gather(x, 0, total, 0)

    def step(self, x: Tensor, state: Dict[str, Tensor],
             condition: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
        p = self.state_prefix
        taps = self.step_taps(int(state[p + "seen"]), int(state[p + "emitted"]), x.shape[-1], x.device)
        return self.step_with_taps(x, state, taps)

    def step_taps(self, seen: int, emitted: int, new_frames: int, device: torch.device) -> Tensor:
        """What a step of `new_frames` input frames emits, after `seen` inputs and `emitted` outputs:
        (3, count) int64, for each output frame its left and right input frames as indices into
        [state `last`, x], and the right one's weight in units of 1 / 2q. A compiled step computes these
        outside its graph (they set the output count)."""
        count = self.num_outputs(seen + new_frames) - emitted
        return self._taps(emitted, count, seen - 1, new_frames, device)

    def taps_phase(self, seen: int, emitted: int) -> Optional[Tuple[int, int]]:
        """A key under which `step_taps` repeat, or None early in a stream: p more inputs and q more outputs
        read the same frames, p further on, once no output frame reads before the first input."""
        if seen < 2 or emitted < 1 or 2 * self.p * emitted + self.shift_num < 0:
            return None
        return seen % self.p, emitted - self.q * (seen // self.p)

    def step_with_taps(self, x: Tensor, state: Dict[str, Tensor], taps: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        """`step`, given its `step_taps`: (B, C, new_frames) -> (B, C, taps.shape[1])."""
        p = self.state_prefix
        frames = torch.cat([state[p + "last"], x], dim=-1)  # input index seen - 1 is at 0
        state[p + "last"] = frames[..., -1:]
        state[p + "seen"] = state[p + "seen"] + x.shape[-1]
        state[p + "emitted"] = state[p + "emitted"] + taps.shape[1]
        return self._mix(frames, taps), state

    def _taps(self, first: int, count: int, offset: int, last: int, device: torch.device) -> Tensor:
        """Output frames first .. first + count - 1 read frames whose index 0 is input frame `offset` and
        index `last` the last there is. Python integers: exact, and a step's few frames cost one small tensor."""
        lefts: List[int] = []
        rights: List[int] = []
        remainders: List[int] = []
        for index in range(first, first + max(count, 0)):
            numerator = 2 * self.p * index + self.shift_num
            left = numerator // (2 * self.q)
            remainder = numerator - 2 * self.q * left
            if numerator < 0:  # before the first input frame: hold it
                left, remainder = 0, 0
            lefts.append(min(left - offset, last))
            rights.append(min(left + 1 - offset, last))
            remainders.append(remainder)
        return torch.tensor([lefts, rights, remainders], dtype=torch.long, device=device)

    def _mix(self, frames: Tensor, taps: Tensor) -> Tensor:
        frac = taps[2].to(frames.dtype) / (2 * self.q)
        return frames.index_select(2, taps[0]) * (1 - frac) + frames.index_select(2, taps[1]) * frac

    def _gather(self, frames: Tensor, first: int, count: int, offset: int) -> Tensor:
        """Output frames first .. first + count - 1 from `frames`, whose index 0 is input frame `offset`."""
        return self._mix(frames, self._taps(first, count, offset, frames.shape[-1] - 1, frames.device))

    def flush(self, state: Dict[str, Tensor], num_outputs: int) -> Tuple[Tensor, Dict[str, Tensor]]:
        """End of stream: emit frames up to `num_outputs` in all, holding the last input frame."""
        p = self.state_prefix
        last = state[p + "last"]
        seen, emitted = int(state[p + "seen"]), int(state[p + "emitted"])
        count = num_outputs - emitted
        if count <= 0 or seen == 0:
            return last[..., :0], state
        state[p + "emitted"] = state[p + "emitted"] + count
        return self._gather(last, emitted, count, seen - 1), state


class StreamingResampler(StreamingModule):
    """Band-limited (Hann-windowed sinc) resampling between integer rates, streamed exactly.

    With rates reduced to orig : new (e.g. 48 kHz -> 16 kHz = 3 : 1), every block of `orig` input samples
    yields `new` output samples, one per phase, each a dot product with its own sinc kernel over
    2 * width + orig inputs: a strided causal convolution with `new` output channels. Being causal, the
    output is the band-limited input delayed by `width` input samples (`delay_seconds`); it has no
    lookahead, so after n inputs exactly (n // orig) * new outputs are final. Same filter family and
    defaults as torchaudio's sinc resampler (lowpass width 6, rolloff 0.99). State: `tail`.
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

    def init_state(self, batch: int = 1) -> Dict[str, Tensor]:
        return {self.state_prefix + "tail": self.kernel.new_zeros(batch, 1, 0 if self.identity else 2 * self.width)}

    def _interleave(self, phases: Tensor) -> Tensor:
        return phases.transpose(1, 2).reshape(phases.shape[0], -1)  # (B, new, Q) -> (B, Q * new)

    def forward(self, x: Tensor) -> Tensor:
        """(B, samples) -> (B, samples * new / orig, rounded down to whole blocks)."""
        if self.identity:
            return x
        # causal_conv pads kernel - stride = 2 width zeros on the left: the stream starts in silence
        return self._interleave(causal_conv(x[:, None], self.kernel, None, self.orig, 1))

    def step(self, x: Tensor, state: Dict[str, Tensor],
             condition: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
        if self.identity:
            return x, state
        key = self.state_prefix + "tail"
        phases, tail = causal_conv_step(x[:, None], state[key], self.kernel, None, self.orig, 1)
        state[key] = tail
        return self._interleave(phases), state
