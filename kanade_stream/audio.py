"""Audio front end: file I/O (soundfile), input checks, mono mix-down, resampling (torchaudio) and the
Vocos log-mel spectrogram that the decoder predicts and the vocoder consumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio
from torch import nn

MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 384000
MIX_CHOICES = ("mean", "left", "right", "first")
# what folders of audio are searched for (the command line, training data)
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")


class AudioError(ValueError):
    """Audio that cannot be used as given; the message says what to change."""


def check_sample_rate(sample_rate) -> int:
    """The sample rate as an int, or AudioError (a ValueError) when it is not a usable whole number of Hz."""
    if isinstance(sample_rate, float) and sample_rate.is_integer():
        sample_rate = int(sample_rate)
    if not isinstance(sample_rate, (int, np.integer)) or isinstance(sample_rate, bool):
        raise AudioError(f"sample rate must be an integer number of Hz, got {sample_rate!r}")
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"unsupported sample rate {sample_rate} Hz: supported rates are {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz "
            "(resample the audio first, e.g. with sox or ffmpeg)"
        )
    return int(sample_rate)


def mix_down(audio: torch.Tensor, mix: str | None) -> torch.Tensor:
    """(channels, samples) -> (samples,). Several channels need an explicit choice of `mix`."""
    if audio.shape[0] == 1:
        return audio[0]
    if mix is None:
        raise AudioError(
            f"audio has {audio.shape[0]} channels and the model takes mono: choose a mix-down "
            f"(mix= one of {MIX_CHOICES}; on the command line --mix mean)"
        )
    if mix == "mean":
        return audio.mean(dim=0)
    if mix in ("left", "first"):
        return audio[0]
    if mix == "right":
        return audio[1]
    raise AudioError(f"unknown mix-down {mix!r}: use one of {MIX_CHOICES}")


def as_waveform(audio, name: str = "audio", mix: str | None = None) -> torch.Tensor:
    """Check and convert user audio to a float32 1-D tensor. Refuses what would give a silent wrong answer."""
    if isinstance(audio, np.ndarray):
        audio = torch.from_numpy(np.ascontiguousarray(audio))
    if not isinstance(audio, torch.Tensor):
        raise AudioError(f"{name} must be a numpy array or torch tensor, got {type(audio).__name__}")
    if not audio.is_floating_point():
        raise AudioError(
            f"{name} has dtype {audio.dtype}; pass float samples in [-1, 1] "
            "(for int16 PCM divide by 32768, or read files with kanade_stream.load_audio)"
        )
    if audio.numel() == 0:
        raise AudioError(f"{name} is empty (0 samples)")
    if audio.dim() == 2:
        # (channels, samples) with few channels; (samples, channels) as soundfile gives is also common
        if audio.shape[0] > audio.shape[1]:
            audio = audio.T
        audio = mix_down(audio, mix)
    elif audio.dim() != 1:
        raise AudioError(f"{name} must be 1-D (samples,) or 2-D (channels, samples), got shape {tuple(audio.shape)}")
    if audio.numel() == 0:
        raise AudioError(f"{name} is empty (0 samples)")
    if not torch.isfinite(audio).all():
        bad = int((~torch.isfinite(audio)).sum())
        raise AudioError(f"{name} contains {bad} NaN or infinite samples; clean the signal before encoding")
    return audio.float()


def resample(audio: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Band-limited sinc resampling (torchaudio's default filter, as the official Kanade code uses)."""
    orig_rate, new_rate = check_sample_rate(orig_rate), check_sample_rate(new_rate)
    if orig_rate == new_rate:
        return audio
    return torchaudio.functional.resample(audio, orig_rate, new_rate)


def load_audio(path: str | Path, sample_rate: int | None = None, mix: str | None = None) -> tuple[torch.Tensor, int]:
    """Read a file as float32 mono, resampled to `sample_rate` if given. Returns (waveform, rate)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(f"cannot read {path} as audio ({err}); use WAV, FLAC or OGG") from err
    wave = as_waveform(torch.from_numpy(data.T.copy()), name=str(path), mix=mix)
    rate = check_sample_rate(rate)
    if sample_rate is not None:
        wave, rate = resample(wave, rate, sample_rate), sample_rate
    return wave, rate


def save_audio(path: str | Path, audio, sample_rate: int, subtype: str = "FLOAT") -> Path:
    """Write mono audio; 32-bit float by default so that reading it back gives exactly what was written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    sf.write(str(path), np.asarray(audio, dtype=np.float32).reshape(-1), check_sample_rate(sample_rate), subtype=subtype)
    return path


class MelSpectrogram(nn.Module):
    """Vocos' mel features: log(clamp(|STFT| -> mel, 1e-7)), center padding, HTK mels, no normalisation."""

    def __init__(self, sample_rate: int = 24000, n_fft: int = 1024, hop_length: int = 256, n_mels: int = 100,
                 padding: str = "center"):
        super().__init__()
        if padding not in ("center", "same"):
            raise ValueError(f"mel padding must be 'center' or 'same', got {padding!r}")
        self.padding, self.hop_length = padding, hop_length
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels,
            center=padding == "center", power=1,
        )

    def num_frames(self, num_samples: int) -> int:
        return num_samples // self.hop_length + (1 if self.padding == "center" else 0)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """(..., samples) -> (..., n_mels, frames)."""
        if self.padding == "same":
            pad = (self.mel.win_length - self.hop_length) // 2
            audio = torch.nn.functional.pad(audio, (pad, pad), mode="reflect")
        return torch.log(torch.clamp(self.mel(audio), min=1e-7))
