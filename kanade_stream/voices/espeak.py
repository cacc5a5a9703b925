"""eSpeak NG with phone alignments: the phoneme events of its synth callback (through the ctypes binding of
kanade_stream.corpus), each event's sample position being where that phoneme starts in the output."""

from __future__ import annotations

import numpy as np

from .. import corpus
from .phones import SILENCE, to_common

Segment = tuple[float, float, "str | None", str]  # start s, end s, inventory phone (None: unknown), source phone


PAD_SECONDS = 0.25  # eSpeak starts and stops speaking at the first and last sample: add silence as speech has


def synthesize_aligned(text: str, voice: corpus.Voice, sample_rate: int = 16000, pad: float = PAD_SECONDS
                       ) -> tuple[np.ndarray, list[Segment]]:
    """float32 audio at `sample_rate` (as corpus.synthesize: peak-normalised) with `pad` s of silence at
    each end, and its phone segments."""
    with corpus._lock:
        engine = corpus._engine()
        pcm = engine.synth(text, voice, phonemes=True)
        events = list(engine._events or [])
    if pcm.size == 0 or int(np.abs(pcm.astype(np.int32)).max()) < 64:
        raise RuntimeError(f"eSpeak NG produced no audio for text {text!r} with voice {voice}")
    audio = pcm.astype(np.float32)
    audio *= corpus.PEAK_LEVEL / float(np.abs(audio).max())
    duration = len(pcm) / corpus.ESPEAK_SAMPLE_RATE
    if sample_rate != corpus.ESPEAK_SAMPLE_RATE:
        import torch

        with torch.no_grad():
            audio = corpus._resampler(sample_rate)(torch.from_numpy(audio)).numpy()
    audio = np.clip(audio, -1.0, 1.0).astype(np.float32, copy=False)
    segments: list[Segment] = []
    rate = corpus.ESPEAK_SAMPLE_RATE
    if events and events[0][0] > 0:
        segments.append((0.0, events[0][0] / rate, SILENCE, "_"))
    for (start, name), (end, _) in zip(events, events[1:] + [(len(pcm), "_")]):
        if end > start:
            segments.append((start / rate, min(end, len(pcm)) / rate, to_common(name, "espeak"), name))
    if segments and segments[-1][1] < duration:
        segments.append((segments[-1][1], duration, SILENCE, "_"))
    if pad > 0:
        n = int(round(pad * sample_rate))
        audio = np.pad(audio, (n, n))
        shift = n / sample_rate
        segments = [(0.0, shift, SILENCE, "_")] + [(s + shift, e + shift, p, src) for s, e, p, src in segments]
        segments.append((segments[-1][1], len(audio) / sample_rate, SILENCE, "_"))
    return audio, segments
