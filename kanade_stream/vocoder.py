"""Mel -> waveform. Vocos (`charactr/vocos-mel-24khz` or a local folder) is the real vocoder; Griffin-Lim
is a weight-free fallback so that everything runs with no download (clearly lower quality)."""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
import torchaudio
from torch import nn

DEFAULT_VOCODER = "charactr/vocos-mel-24khz"
GRIFFIN_LIM = "griffin-lim"


class GriffinLimVocoder(nn.Module):
    """Inverts the Vocos log-mel (24 kHz, n_fft 1024, hop 256, 100 mels, power 1) by least squares and
    Griffin-Lim phase reconstruction."""

    def __init__(self, sample_rate: int = 24000, n_fft: int = 1024, hop_length: int = 256, n_mels: int = 100,
                 n_iter: int = 32):
        super().__init__()
        self.inverse_mel = torchaudio.transforms.InverseMelScale(n_fft // 2 + 1, n_mels, sample_rate)
        self.griffin_lim = torchaudio.transforms.GriffinLim(n_fft, n_iter=n_iter, hop_length=hop_length, power=1.0)

    @torch.no_grad()
    def decode(self, mel: torch.Tensor) -> torch.Tensor:
        magnitude = self.inverse_mel(torch.exp(mel.float())).clamp_min(0)
        return self.griffin_lim(magnitude)


def load_vocoder(name_or_path: str | Path = DEFAULT_VOCODER, device: str | torch.device = "cpu") -> nn.Module:
    """A Vocos hub id, a local Vocos folder (config.yaml + pytorch_model.bin), or "griffin-lim"."""
    if str(name_or_path) == GRIFFIN_LIM:
        return GriffinLimVocoder().to(device)
    from vocos import Vocos

    path = Path(name_or_path).expanduser()
    if path.is_dir():
        config, weights = path / "config.yaml", path / "pytorch_model.bin"
        if not config.is_file() or not weights.is_file():
            raise FileNotFoundError(f"{path} is not a Vocos folder: it needs config.yaml and pytorch_model.bin")
        model = Vocos.from_hparams(str(config))
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    else:
        from .hub import require_hub

        require_hub(str(name_or_path), "vocoder", cached_probe="config.yaml")  # fail at once when offline
        try:
            model = Vocos.from_pretrained(str(name_or_path))
        except Exception as err:  # hub errors come in many types
            raise OSError(f"cannot load the vocoder {name_or_path!r}: {err}\nPass a local Vocos folder, or "
                          f"--vocoder {GRIFFIN_LIM} for the weight-free fallback.") from err
    return model.to(device).eval()


@torch.no_grad()
def vocode(vocoder: nn.Module, mel: torch.Tensor) -> torch.Tensor:
    """Log-mel (n_mels, frames) or (B, n_mels, frames) -> waveform (samples,) or (B, samples)."""
    single = mel.dim() == 2
    anchor = next(itertools.chain(vocoder.parameters(), vocoder.buffers()), None)  # Griffin-Lim: buffers only
    device = anchor.device if anchor is not None else "cpu"
    wave = vocoder.decode((mel[None] if single else mel).float().to(device))
    return wave[0] if single else wave
