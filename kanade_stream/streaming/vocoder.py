"""The student's vocoder: a Vocos-style causal ConvNeXt backbone with a linear head to log-magnitude and
phase, and an inverse STFT by overlap-add streamed frame by frame.

No `from __future__ import annotations` here: TorchScript reads the annotations.
"""

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modules.streaming import StreamingModule, name_states
from .convs import CausalConvNeXtBackbone


class StreamingISTFT(StreamingModule):
    """Inverse STFT by overlap-add, frame by frame (n_fft a multiple of hop).

    Frame i's windowed inverse FFT covers internal samples [i hop, i hop + n_fft); once frame i is added,
    samples before (i + 1) hop are final. Like a centre-padded STFT, the first n_fft / 2 internal samples
    are dropped, so output sample s is aligned with frame s / hop's centre. The sum is divided by the
    steady-state window envelope (a periodic function of s mod hop), so the first n_fft / 2 - hop output
    samples of a stream fade in; offline and streaming forms do the same.
    State: `tail`, the overlap-add tail (B, n_fft/hop - 1, hop); `frames`, frames seen so far (1,), saturating
    at n_fft / 2 / hop.
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

    def init_state(self, batch: int = 1) -> Dict[str, Tensor]:
        p = self.state_prefix
        return {p + "tail": self.window.new_zeros(batch, self.overlap - 1, self.hop),
                p + "frames": torch.zeros(1, dtype=torch.long, device=self.window.device)}

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

    def step(self, spectrum: Tensor, state: Dict[str, Tensor],
             condition: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
        n = spectrum.shape[1]
        if n == 0:
            return self.window.new_zeros(spectrum.shape[0], 0), state
        drop = self.start_drop(int(state[self.state_prefix + "frames"]), n)
        audio, state = self.step_undropped(spectrum, state)
        return audio[:, drop:], state

    def start_drop(self, frames_before: int, n: int) -> int:
        """Samples `step` drops from the `n` frames' audio when `frames_before` frames came before (the
        first n_fft / 2 samples of a stream; Python-only, so compiled steps can keep it outside the graph)."""
        return min(max(self.drop_frames - frames_before, 0), n) * self.hop

    def step_undropped(self, spectrum: Tensor, state: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
        """`step` without the start drop: (B, n * hop) samples, n >= 1; its shapes depend on n alone."""
        p = self.state_prefix
        final, tail = self._overlap_add(spectrum, state[p + "tail"])
        state[p + "tail"] = tail
        state[p + "frames"] = (state[p + "frames"] + spectrum.shape[1]).clamp(max=self.drop_frames)
        return final.flatten(1), state


class CausalVocoder(StreamingModule):
    """Vocos-style vocoder made causal: mel (B, n_mels, T) -> causal ConvNeXt backbone -> linear head to
    log-magnitude and phase -> streaming ISTFT. Output: T * hop samples minus the first n_fft / 2."""

    def __init__(self, n_mels: int = 100, dim: int = 256, intermediate_dim: int = 768, num_layers: int = 6,
                 n_fft: int = 512, hop_length: int = 256, kernel_size: int = 7):
        super().__init__()
        self.backbone = CausalConvNeXtBackbone(n_mels, dim, intermediate_dim, num_layers, kernel_size)
        self.head = nn.Linear(dim, n_fft + 2)
        self.istft = StreamingISTFT(n_fft, hop_length)
        self.n_bins = n_fft // 2 + 1
        name_states(self)  # children's entries under their paths; a parent model renames them

    def init_state(self, batch: int = 1) -> Dict[str, Tensor]:
        state = self.backbone.init_state(batch)
        state.update(self.istft.init_state(batch))
        return state

    def _spectrum(self, hidden: Tensor) -> Tensor:
        out = self.head(hidden.transpose(1, 2))
        magnitude = torch.exp(out[..., : self.n_bins]).clamp(max=1e2)
        phase = out[..., self.n_bins:]
        return torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))

    def forward(self, mel: Tensor) -> Tensor:
        return self.istft(self._spectrum(self.backbone(mel)))

    def step(self, mel: Tensor, state: Dict[str, Tensor],
             condition: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
        hidden, state = self.backbone.step(mel, state)
        return self.istft.step(self._spectrum(hidden), state)

    def step_undropped(self, mel: Tensor, state: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
        """`step` without the ISTFT's start drop (see StreamingISTFT.start_drop); mel has >= 1 frame."""
        hidden, state = self.backbone.step(mel, state)
        return self.istft.step_undropped(self._spectrum(hidden), state)
