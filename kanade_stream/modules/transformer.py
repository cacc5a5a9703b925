"""The one transformer of kanade-stream, used by the teacher and the student: pre-norm blocks with RoPE
attention, SwiGLU and optional AdaLN-Zero conditioning.

- Teacher: `window_size` gives the official symmetric local window; only `forward` (offline) is used.
  Parameter names follow the official release (`layers.N.attention.wq`, `feed_forward.w1`,
  `attention_norm.condition_proj.1` ...), so released checkpoints load without renaming.
- Student: `causal_past` (+ `chunk`) gives chunk-causal attention with a bounded past. `forward` is the
  offline form (training); `step` streams with a fixed-size KV ring per layer, written in place: the new
  frames' keys overwrite the oldest slots, and a query attends to the whole ring masked by the absolute
  position each slot holds. Keys are stored already rotated (RoPE with float64 angles, exact for hours),
  so every cutting of the stream computes the scores of the offline form.

No `from __future__ import annotations` here: TorchScript reads the annotations.
"""

import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import Attention, rope_angles, span_mask
from .streaming import StreamingModule


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

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm (same parameter names) with AdaLNZero's interface: `modulation(condition)` (nothing: it
    takes no condition) and (x, modulation) -> (y, gate), so conditioned and plain blocks share one code path."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__(dim, eps=eps)
        self.modulation_dim = 0

    def modulation(self, condition: Tensor) -> Tensor:
        return condition[..., :0]

    def forward(self, x: Tensor, modulation: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps), None


class AdaLNZero(nn.Module):
    """LayerNorm without affine, modulated by a condition: x_norm * (1 + scale) + shift (and a gate).

    The condition's projection (`modulation`) is separate from the norm (`forward`) because a stream's
    condition (the target voice) is fixed: a stream projects it once, not at every step."""

    def __init__(self, dim: int, condition_dim: int, with_gate: bool = True, eps: float = 1e-5):
        super().__init__()
        self.with_gate = with_gate
        self.modulation_dim = (3 if with_gate else 2) * dim  # shift, scale (, gate)
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.condition_proj = nn.Sequential(nn.SiLU(), nn.Linear(condition_dim, self.modulation_dim))
        nn.init.zeros_(self.condition_proj[1].weight)  # zero init: the block starts as identity
        nn.init.zeros_(self.condition_proj[1].bias)

    def modulation(self, condition: Tensor) -> Tensor:
        """condition (B, 1, condition_dim) -> (B, 1, modulation_dim): shift, scale (and gate) side by side."""
        return self.condition_proj(condition)

    def forward(self, x: Tensor, modulation: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
        assert modulation is not None, "AdaLN-Zero needs its modulation (the projected condition)"
        gate: Optional[Tensor] = None
        if self.with_gate:
            shift, scale, gate = modulation.chunk(3, dim=-1)
        else:
            shift, scale = modulation.chunk(2, dim=-1)
        return self.norm(x) * (1 + scale) + shift, gate


def _norm(dim: int, condition_dim: Optional[int], eps: float, with_gate: bool = True) -> nn.Module:
    if condition_dim is None:
        return LayerNorm(dim, eps)
    return AdaLNZero(dim, condition_dim, with_gate=with_gate, eps=eps)


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, n_heads: int, condition_dim: Optional[int] = None, eps: float = 1e-5):
        super().__init__()
        self.attention = Attention(dim, n_heads)
        self.feed_forward = FeedForward(dim)
        self.attention_norm = _norm(dim, condition_dim, eps)
        self.ffn_norm = _norm(dim, condition_dim, eps)
        self.modulation_dim = self.attention_norm.modulation_dim + self.ffn_norm.modulation_dim

    def modulation(self, condition: Tensor) -> Tensor:
        return torch.cat([self.attention_norm.modulation(condition), self.ffn_norm.modulation(condition)], dim=-1)

    def forward(self, x: Tensor, cos: Optional[Tensor], sin: Optional[Tensor], mask: Optional[Tensor],
                modulation: Optional[Tensor], ring_keys: Optional[Tensor] = None,
                ring_values: Optional[Tensor] = None, slots: Optional[Tensor] = None) -> Tensor:
        """Offline: attends to the frames of `x`. Streaming: the new frames' keys and values are first written
        into the KV ring at `slots` (in place), then the queries attend to the whole ring under `mask`.
        modulation: this block's share of `Transformer.modulation(condition)` (None if unconditioned)."""
        attention_modulation: Optional[Tensor] = None
        ffn_modulation: Optional[Tensor] = None
        if modulation is not None:
            split = self.attention_norm.modulation_dim
            attention_modulation, ffn_modulation = modulation[..., :split], modulation[..., split:]
        h, gate = self.attention_norm(x, attention_modulation)
        q, k, v = self.attention.project(h, cos, sin)
        if ring_keys is not None and ring_values is not None and slots is not None:
            ring_keys.index_copy_(2, slots, k)
            ring_values.index_copy_(2, slots, v)
            k, v = ring_keys, ring_values
        h = self.attention.attend(q, k, v, mask)
        x = x + (h if gate is None else gate * h)
        h, gate = self.ffn_norm(x, ffn_modulation)
        h = self.feed_forward(h)
        return x + (h if gate is None else gate * h)


class Transformer(StreamingModule):
    """Stack of pre-norm blocks + final norm, with optional input / output projections.

    Attention span (one of): `window_size` (odd; symmetric local window, the teacher), `causal_past`
    (chunk-causal with `chunk` frames per chunk and that many past frames; streamable, the student), or
    neither (full attention). x: (B, T, C_in) -> (B, T, C_out); condition: (B, 1, condition_dim).

    Streaming (`causal_past` only): `step` takes any number of frames when chunk == 1, whole chunks
    otherwise, and processes them `step_frames` at a time. State: `position` (next absolute position),
    `slot_positions` (absolute position held by each ring slot, -1 = empty), and per layer
    `layers.N.keys` / `layers.N.values` (B, H, causal_past + step_frames, head_dim).
    """

    def __init__(self, dim: int, n_layers: int, n_heads: int, window_size: Optional[int] = None,
                 causal_past: Optional[int] = None, chunk: int = 1, step_frames: int = 8,
                 input_dim: Optional[int] = None, output_dim: Optional[int] = None,
                 condition_dim: Optional[int] = None, use_rope: bool = True, rope_theta: float = 1e4,
                 exact_rope: bool = False, eps: float = 1e-5):
        super().__init__()
        if window_size is not None and causal_past is not None:
            raise ValueError("give window_size (symmetric) or causal_past (chunk-causal), not both")
        if window_size is not None and window_size % 2 != 1:
            raise ValueError(f"window_size must be odd (symmetric local window), got {window_size}")
        if causal_past is not None and (causal_past < 0 or chunk < 1):
            raise ValueError(f"need causal_past >= 0 and chunk >= 1, got {causal_past} and {chunk}")
        self.dim, self.n_heads, self.head_dim = dim, n_heads, dim // n_heads
        self.window_size = window_size
        self.streamable = causal_past is not None
        self.masked = window_size is not None or causal_past is not None
        if window_size is not None:
            self.past, self.future, self.chunk = window_size // 2, window_size // 2, 1
        elif causal_past is not None:
            self.past, self.future, self.chunk = causal_past, 0, chunk
        else:
            self.past, self.future, self.chunk = 0, 0, 1
        self.step_frames = -(-max(step_frames, 1) // self.chunk) * self.chunk  # whole chunks per piece
        self.capacity = self.past + self.step_frames  # ring slots: every key a piece's queries can see
        self.use_rope, self.rope_theta, self.exact_rope = use_rope, rope_theta, exact_rope
        self.conditioned = condition_dim is not None
        self.layers = nn.ModuleList(TransformerBlock(dim, n_heads, condition_dim, eps) for _ in range(n_layers))
        self.norm = _norm(dim, condition_dim, eps, with_gate=False)
        self.input_proj = nn.Linear(input_dim, dim) if input_dim is not None else nn.Identity()
        self.output_proj = nn.Linear(dim, output_dim) if output_dim is not None else nn.Identity()
        self.output_dim = output_dim if output_dim is not None else dim
        self.register_buffer("anchor", torch.zeros(0), persistent=False)  # device / dtype of new state

    def rope(self, positions: Tensor) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        if not self.use_rope:
            return None, None
        cos, sin = rope_angles(self.head_dim, positions, self.rope_theta, self.exact_rope)
        return cos, sin

    def modulation(self, condition: Optional[Tensor]) -> Optional[Tensor]:
        """condition (B, 1, condition_dim) -> every AdaLN-Zero norm's projection of it, side by side (B, 1, D):
        what the blocks read. None for an unconditioned transformer. A stream's condition is fixed, so a
        stream may compute this once and pass it to `step` (the compiled step does)."""
        if not self.conditioned:
            return None
        if condition is None:
            raise ValueError("this transformer is conditioned (AdaLN-Zero): pass `condition`")
        parts: List[Tensor] = []
        for layer in self.layers:
            parts.append(layer.modulation(condition))
        parts.append(self.norm.modulation(condition))
        return torch.cat(parts, dim=-1)

    def _run(self, x: Tensor, positions: Tensor, mask: Optional[Tensor], modulation: Optional[Tensor],
             rings: List[Tensor], slots: Optional[Tensor]) -> Tensor:
        cos, sin = self.rope(positions)
        x = self.input_proj(x)
        offset = 0
        for i, layer in enumerate(self.layers):
            share: Optional[Tensor] = None
            if modulation is not None:
                share = modulation[..., offset: offset + layer.modulation_dim]
                offset += layer.modulation_dim
            if slots is None:
                x = layer(x, cos, sin, mask, share)
            else:
                x = layer(x, cos, sin, mask, share, rings[2 * i], rings[2 * i + 1], slots)
        final: Optional[Tensor] = None if modulation is None else modulation[..., offset:]
        return self.output_proj(self.norm(x, final)[0])

    def forward(self, x: Tensor, condition: Optional[Tensor] = None,
                key_padding_mask: Optional[Tensor] = None) -> Tensor:
        """Offline. key_padding_mask: (B, T), True = real frame (batches of different lengths)."""
        modulation = self.modulation(condition)
        t = x.shape[1]
        positions = torch.arange(t, device=x.device)
        mask: Optional[Tensor] = None
        if self.masked:
            mask = span_mask(positions, positions, self.past, self.future, self.chunk)
        if key_padding_mask is not None:
            keys = key_padding_mask[:, None, None, :]
            mask = keys if mask is None else mask & keys
            # a padded query may see no real key at all; let it see itself so softmax stays finite
            mask = mask | torch.eye(t, dtype=torch.bool, device=x.device)
        return self._run(x, positions, mask, modulation, [], None)

    # --- streaming ---------------------------------------------------------------------------------

    def init_state(self, batch: int = 1) -> Dict[str, Tensor]:
        if not self.streamable:
            raise RuntimeError("only a chunk-causal transformer (causal_past) can stream")
        p = self.state_prefix
        device = self.anchor.device
        state: Dict[str, Tensor] = {
            p + "position": torch.zeros(1, dtype=torch.long, device=device),
            p + "slot_positions": torch.full((self.capacity,), -1, dtype=torch.long, device=device),
        }
        for i in range(len(self.layers)):
            state[p + "layers." + str(i) + ".keys"] = self.anchor.new_zeros(
                batch, self.n_heads, self.capacity, self.head_dim)
            state[p + "layers." + str(i) + ".values"] = self.anchor.new_zeros(
                batch, self.n_heads, self.capacity, self.head_dim)
        return state

    def step(self, x: Tensor, state: Dict[str, Tensor], condition: Optional[Tensor] = None,
             modulation: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
        """x (B, n, C_in) -> (B, n, C_out). A conditioned transformer takes the condition (B, 1, condition_dim)
        or, computed once for a stream, its `modulation(condition)`."""
        n = x.shape[1]
        if n % self.chunk:
            raise ValueError(f"a chunked transformer steps whole chunks of {self.chunk} frames, got {n}")
        if modulation is None:
            modulation = self.modulation(condition)
        if n == 0:
            return x.new_zeros(x.shape[0], 0, self.output_dim), state
        p = self.state_prefix
        rings: List[Tensor] = []
        for i in range(len(self.layers)):
            rings.append(state[p + "layers." + str(i) + ".keys"])
            rings.append(state[p + "layers." + str(i) + ".values"])
        slot_positions = state[p + "slot_positions"]
        outputs: List[Tensor] = []
        for start in range(0, n, self.step_frames):
            piece = x[:, start: start + self.step_frames]
            positions = state[p + "position"] + torch.arange(piece.shape[1], device=x.device)
            slots = torch.remainder(positions, self.capacity)
            slot_positions.index_copy_(0, slots, positions)
            mask = span_mask(positions, slot_positions, self.past, 0, self.chunk)
            outputs.append(self._run(piece, positions, mask, modulation, rings, slots))
            state[p + "position"] = state[p + "position"] + piece.shape[1]
        return torch.cat(outputs, dim=1), state
