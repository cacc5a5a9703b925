"""Intelligibility: speech recognition with pocketsphinx (its US-English acoustic model, language model and
dictionary ship inside the PyPI wheel, so it runs offline) and the word error rate of its transcript.

    text = transcribe(audio, sample_rate)              # any rate; resampled to 16 kHz
    wer = word_error_rate("The birch canoe.", text)    # normalised: lower case, punctuation stripped

The recogniser is a fixed, independent judge: a clean flite voice already scores WER ~0.1-0.4, so quality is
read as the WER of an output minus the WER of its source, never as an absolute number.

Determinism: the decoder is loaded once and its feature extractor (noise estimate, cepstral mean) is reset
before every utterance, so a transcript depends only on the audio, not on what was transcribed before.
The level does not matter either: audio is peak-normalised before it is quantised to 16-bit.

Search settings (DECODER_SETTINGS): pocketsphinx's models and beams, with the search bounded to at most 1500
active HMMs per frame and without the second (flat-lexicon) pass. On clean held-out flite speech this gives the
same word error rate as the defaults (0.34 against 0.35 on 15 Harvard clips of rms/awb/slt), and garbled audio,
whose search otherwise explodes to 3-6 times the time of clean audio, costs about the same as clean audio.
"""

from __future__ import annotations

import functools
import re
import threading

import numpy as np
import torch

from ..audio import as_waveform, resample
from .judges import require

ASR_SAMPLE_RATE = 16000
DECODER_SETTINGS = {"maxhmmpf": 1500, "fwdflat": False}
SILENCE_PEAK = 1e-4  # a clip whose peak stays below this (-80 dBFS) is silence: transcript ""
PEAK_LEVEL = 0.9

_ALTERNATE_PRONUNCIATION = re.compile(r"\(\d+\)")  # pocketsphinx marks dictionary variants as word(2)
_NOT_WORD = re.compile(r"[^a-z0-9']+")


def normalize_text(text: str) -> list[str]:
    """Words for scoring: lower case, every character other than letters, digits and apostrophes is a word
    break (so "birch-canoe," -> "birch", "canoe"), apostrophes kept inside words ("it's") and dropped at
    their ends ('quoted' -> quoted)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    words = _NOT_WORD.split(_ALTERNATE_PRONUNCIATION.sub("", text.lower()))
    return [w for w in (word.strip("'") for word in words) if w]


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, number of reference words) after `normalize_text`: the
    Levenshtein distance between the two word sequences. Sum both over a set of clips for a corpus WER."""
    ref, hyp = normalize_text(reference), normalize_text(hypothesis)
    previous = list(range(len(hyp) + 1))  # distance from ref[:0] to hyp[:j]
    for i, ref_word in enumerate(ref, start=1):
        current = [i]
        for j, hyp_word in enumerate(hyp, start=1):
            current.append(min(previous[j] + 1,  # deletion of ref_word
                               current[j - 1] + 1,  # insertion of hyp_word
                               previous[j - 1] + (ref_word != hyp_word)))  # match or substitution
        previous = current
    return previous[-1], len(ref)


def word_error_rate(reference: str, hypothesis: str) -> float:
    """(S + D + I) / N over normalised words; 0 for identical texts, can exceed 1 with many insertions."""
    errors, words = word_errors(reference, hypothesis)
    if words == 0:
        raise ValueError(f"the reference {reference!r} has no words: the word error rate is undefined")
    return errors / words


@functools.lru_cache(maxsize=1)
def _decoder():
    pocketsphinx = require("pocketsphinx", "pocketsphinx", "speech recognition (word error rate)")
    # the defaults are the wheel's en-us acoustic model, en-us language model and cmudict dictionary
    return pocketsphinx.Decoder(loglevel="FATAL", **DECODER_SETTINGS), threading.Lock()


def to_pcm16(audio, sample_rate: int) -> np.ndarray | None:
    """Mono audio at any rate -> 16 kHz int16 PCM peak-normalised to PEAK_LEVEL; None when it is silent."""
    wave = resample(as_waveform(audio, name="audio").detach().cpu(), sample_rate, ASR_SAMPLE_RATE)
    peak = float(wave.abs().max())
    if peak < SILENCE_PEAK:
        return None
    return torch.round(wave * (PEAK_LEVEL * 32767 / peak)).to(torch.int16).numpy()


def transcribe(audio, sample_rate: int) -> str:
    """Mono audio (numpy or torch, float in [-1, 1]) at `sample_rate` -> lower-case transcript ("" for silence
    or when nothing is recognised)."""
    pcm = to_pcm16(audio, sample_rate)
    if pcm is None:
        return ""
    decoder, lock = _decoder()
    with lock:  # one decoder, one utterance at a time
        decoder.reinit_feat()  # forget the previous utterance's noise and cepstral-mean estimates
        decoder.start_utt()
        decoder.process_raw(pcm.tobytes(), no_search=False, full_utt=True)
        decoder.end_utt()
        hypothesis = decoder.hyp()
    return " ".join(normalize_text(hypothesis.hypstr)) if hypothesis is not None else ""
