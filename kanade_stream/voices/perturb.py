"""Perturbations that make new voices from a synthesizer's voice and keep its alignment valid.

`Perturbation(speed, semitones)`: resampling by `speed` scales the duration by 1/speed and the formants
(vocal-tract length) and pitch by `speed`; a phase-vocoder pitch shift then sets the pitch to `semitones`
from the original without changing the duration. So the formants move by `speed`, the pitch by
`semitones`, and segment times are divided by `speed`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Perturbation:
    speed: float = 1.0  # > 1: shorter, higher formants
    semitones: float = 0.0  # final pitch change

    def __post_init__(self):
        if not 0.5 <= self.speed <= 2.0 or not -12 <= self.semitones <= 12:
            raise ValueError(f"perturbation out of range: {self}")

    @property
    def is_identity(self) -> bool:
        return self.speed == 1.0 and self.semitones == 0.0

    @property
    def tag(self) -> str:
        return "orig" if self.is_identity else f"s{self.speed:.2f}p{self.semitones:+.1f}"


def effective_speed(speed: float, sample_rate: int) -> float:
    """The speed the resampler really applies: sample_rate * speed rounded to 100 Hz."""
    return int(round(sample_rate * speed / 100)) * 100 / sample_rate


def apply(audio: np.ndarray, sample_rate: int, p: Perturbation, segments: list | None = None):
    """(perturbed float32 audio, segments with times / speed)."""
    import torch
    import torchaudio.functional as AF

    if p.is_identity:
        return audio, segments
    speed = effective_speed(p.speed, sample_rate)
    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    with torch.no_grad():
        if speed != 1.0:
            # play at speed x: treat the samples as if recorded at sample_rate * speed
            x = AF.resample(x, int(round(sample_rate * speed)), sample_rate)
        shift = p.semitones - 12 * math.log2(speed)
        if abs(shift) > 1e-3:
            x = pitch_shift(x, sample_rate, shift)
    y = x.numpy().astype(np.float32)
    peak = float(np.abs(y).max())
    if peak > 0:
        y = y * (0.9 / peak)
    if segments is not None:
        segments = [(s / speed, e / speed, *rest) for s, e, *rest in segments]
    return y, segments


def pitch_shift(x, sample_rate: int, semitones: float):
    """Phase-vocoder stretch by f, then resampling by 1/f, with f = 2**(semitones/12) rounded so that the
    resampling ratio is sample_rate : a multiple of 100 Hz (torchaudio's own pitch_shift resamples with
    an arbitrary ratio, whose filter is huge and slow). Keeps the length."""
    import torch
    import torchaudio.functional as AF

    n = x.shape[-1]
    new_rate = int(round(sample_rate / 2 ** (semitones / 12) / 100)) * 100
    factor = sample_rate / new_rate  # pitch factor really applied
    n_fft, hop = 512, 128
    window = torch.hann_window(n_fft, device=x.device)
    spec = torch.stft(x, n_fft, hop, window=window, return_complex=True)
    phase_advance = torch.linspace(0, torch.pi * hop, spec.shape[-2], device=x.device)[..., None]
    stretched = AF.phase_vocoder(spec, 1.0 / factor, phase_advance)
    y = torch.istft(stretched, n_fft, hop, window=window, length=int(round(n * factor)))
    y = AF.resample(y, sample_rate, new_rate)
    if y.shape[-1] >= n:
        return y[..., :n]
    return torch.nn.functional.pad(y, (0, n - y.shape[-1]))


def white_noise(x, snr_db, generator=None):
    """`x` (..., samples) with white noise `snr_db` dB below its RMS (over the last axis; `snr_db` a number or a
    tensor broadcasting against x[..., :1]), drawn from `generator`."""
    import torch

    noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
    rms = x.float().pow(2).mean(dim=-1, keepdim=True).sqrt().to(x.dtype)
    return x + noise * rms * 10 ** (-torch.as_tensor(snr_db, dtype=x.dtype, device=x.device) / 20)


def microphone_draws(tilt_db: float = 0.0) -> int:
    """How many uniform draws `random_microphone` reads: four, and a fifth for the tilt only when it is on, so
    that runs without it draw exactly as they did before it existed."""
    return 5 if tilt_db else 4


def random_microphone(max_db: float, draws, tilt_db: float = 0.0) -> tuple[float, float, float, float]:
    """A microphone for `equalise` from uniform [0, 1) draws: (bass dB, treble dB, bass Hz, treble Hz), each
    gain within +- max_db, the bass corner log-uniform in 100-400 Hz, the treble corner in 1-4 kHz
    (`microphone_draws(tilt_db)` draws).
    With `tilt_db` a fifth draw tilts the whole spectrum: the bass up and the treble down by one amount within
    +- tilt_db (or the other way). Independent draws rarely reach a darker or brighter voice at both ends at
    once, which voices and rooms often are (a pressed or breathy voice, a close or distant microphone)."""
    bass, treble, bass_corner, treble_corner = (float(d) for d in draws[:4])
    bass_db, treble_db = -max_db + 2 * max_db * bass, -max_db + 2 * max_db * treble
    if tilt_db:
        tilt = -tilt_db + 2 * tilt_db * float(draws[4])
        bass_db, treble_db = bass_db + tilt, treble_db - tilt
    return bass_db, treble_db, 100 * 4 ** bass_corner, 1000 * 4 ** treble_corner


def equalise(x, sample_rate: int, bass_db: float = 0.0, treble_db: float = 0.0, bass_hz: float = 250.0,
             treble_hz: float = 2000.0):
    """`x` (..., samples) heard through another microphone and room: a low shelf of `bass_db` below about
    `bass_hz` and a high shelf of `treble_db` above about `treble_hz` (second-order shelving filters), the RMS
    kept. Microphones differ most at the ends of the band (a close microphone's proximity effect lifts the
    bass by 10 dB or more)."""
    import torchaudio.functional as AF

    if not bass_db and not treble_db:
        return x
    y = x
    if bass_db:
        y = AF.bass_biquad(y, sample_rate, bass_db, bass_hz)
    if treble_db:
        y = AF.treble_biquad(y, sample_rate, treble_db, treble_hz)
    rms = lambda z: z.float().pow(2).mean(dim=-1, keepdim=True).sqrt()  # noqa: E731
    y = y * (rms(x) / rms(y).clamp_min(1e-9)).to(y.dtype)
    return y / y.abs().amax(dim=-1, keepdim=True).clamp_min(1.0)  # a boost must not clip
