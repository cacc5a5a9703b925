"""Speaker similarity: the cosine of Resemblyzer utterance embeddings (its GE2E speaker encoder; the
pretrained weights ship inside the PyPI wheel, so it runs offline).

    similarity = speaker_similarity(a, rate_a, b, rate_b)   # ~0.9 same speaker, ~0.5-0.7 different ones

Resemblyzer's preprocessing normalises the volume and trims long silences with a voice activity detector
before embedding. A clip in which no speech is left after that (silence, or a blip shorter than
MIN_VOICED_SECONDS) has no speaker: `speaker_embedding` returns None for it, and `speaker_similarity` returns
NaN with a NoSpeechWarning, so one silent output shows up as a missing value instead of a made-up score
(Resemblyzer itself would return an arbitrary embedding for an empty clip).
"""

from __future__ import annotations

import functools
import math
import threading
import warnings

import numpy as np

from ..audio import as_waveform, resample
from .judges import require

SPEAKER_SAMPLE_RATE = 16000
SILENCE_PEAK = 1e-4  # below -80 dBFS everywhere: silence
MIN_VOICED_SECONDS = 0.25  # voiced audio (after Resemblyzer's silence trimming) needed for an embedding


class NoSpeechWarning(UserWarning):
    """A clip given to the speaker encoder has no speech in it; its similarity is NaN."""


@functools.lru_cache(maxsize=1)
def _encoder():
    require("resemblyzer", "resemblyzer", "speaker similarity")
    with warnings.catch_warnings():  # resemblyzer imports a deprecated scipy path; not ours to fix
        warnings.simplefilter("ignore", DeprecationWarning)
        from resemblyzer import VoiceEncoder, preprocess_wav
    return VoiceEncoder("cpu", verbose=False), preprocess_wav, threading.Lock()


def speaker_embedding(audio, sample_rate: int) -> np.ndarray | None:
    """Mono audio (numpy or torch, float) at `sample_rate` -> unit-length speaker embedding (256,), or None
    when the clip has no speech (see the module docstring)."""
    wave = resample(as_waveform(audio, name="audio").detach().cpu(), sample_rate, SPEAKER_SAMPLE_RATE)
    wave = wave.clamp(-1.0, 1.0).numpy().astype(np.float32)  # Resemblyzer converts to int16 for its VAD
    if float(np.abs(wave).max()) < SILENCE_PEAK:
        return None
    encoder, preprocess_wav, lock = _encoder()
    voiced = preprocess_wav(wave)  # already at 16 kHz: volume normalisation + silence trimming only
    if voiced.size < MIN_VOICED_SECONDS * SPEAKER_SAMPLE_RATE or not np.isfinite(voiced).all():
        return None
    with lock:
        return encoder.embed_utterance(voiced.astype(np.float32))


def cosine_similarity(a: np.ndarray | None, b: np.ndarray | None) -> float:
    """Cosine of two embeddings; NaN if either is None (a clip without speech)."""
    if a is None or b is None:
        return math.nan
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def mean_embedding(embeddings: list[np.ndarray | None]) -> np.ndarray | None:
    """A voice profile: the unit-normalised mean of several utterance embeddings (None ones skipped; None
    if none is left)."""
    kept = [np.asarray(e, dtype=np.float64) for e in embeddings if e is not None]
    if not kept:
        return None
    mean = np.mean(kept, axis=0)
    return mean / np.linalg.norm(mean)


def speaker_similarity(a, rate_a: int, b, rate_b: int) -> float:
    """Cosine similarity of the speakers of two clips, in [-1, 1]; NaN (with a NoSpeechWarning) when either
    clip has no speech."""
    embedding_a, embedding_b = speaker_embedding(a, rate_a), speaker_embedding(b, rate_b)
    silent = [name for name, e in (("first", embedding_a), ("second", embedding_b)) if e is None]
    if silent:
        subject = f"the {' and '.join(silent)} clip" + ("s have" if len(silent) > 1 else " has")
        warnings.warn(f"{subject} no speech (silence, or under {MIN_VOICED_SECONDS} s voiced): speaker similarity "
                      "is NaN", NoSpeechWarning, stacklevel=2)
    return cosine_similarity(embedding_a, embedding_b)
