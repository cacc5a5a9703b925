"""What the neural voices (Kokoro, Piper) share: eSpeak NG's US English IPA as they read it, phone segments
from the durations they predict, their ONNX graphs edited once and cached, their audio as the corpus keeps it.

Both models read eSpeak's IPA and decide, before rendering any audio, how many frames each input symbol lasts.
Those durations are the models' own alignment: an edit of the graph makes them an output, and turned into
segments here they need no aligner after the fact. Labels use one token per phone, eSpeak's multi-letter
diphthongs and affricates merged into single letters as Kokoro writes them (the `kokoro` phone set of phones.py).
"""

from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path
from typing import Callable

import numpy as np

from .. import corpus
from .phones import to_common

Segment = tuple[float, float, "str | None", str]

# eSpeak's multi-letter IPA phones as single tokens (Kokoro's English front end writes them so)
MERGE = (("eɪ", "A"), ("aɪ", "I"), ("oʊ", "O"), ("aʊ", "W"), ("ɔɪ", "Y"), ("əʊ", "Q"), ("tʃ", "ʧ"), ("dʒ", "ʤ"),
         ("ɜː", "ɜɹ"), ("ɐ", "ə"), ("ɫ", "l"), ("r", "ɹ"))
MODIFIERS = {"ˈ", "ˌ", "ː"}  # stress and length: part of the phone they mark
PAUSES = set(";:,.!?—…\"()“” ")  # spoken as silence (or as nothing: a word break)
SHORTEST_PAUSE = 0.1  # s: a word break shorter than this is the end of the phone before it, not silence


def merged(phone: str) -> str:
    """One eSpeak IPA phone ('ˈeɪ', 'tʃ') with its multi-letter parts as single tokens ('ˈA', 'ʧ')."""
    for a, b in MERGE:
        phone = phone.replace(a, b)
    return phone


def english_phones(text: str) -> list[tuple[str, str]]:
    """eSpeak NG's US English IPA for `text`, item by item: (IPA as eSpeak writes it, its tokens). An item is a
    phone ('ˈeɪ' -> 'ˈA'), a word break (' ') or the clause's punctuation ('.')."""
    items: list[tuple[str, str]] = []
    for clause, punctuation in corpus._engine().ipa(text, "en-us"):
        for word in clause.split():
            items += [(phone, merged(phone)) for phone in word.split(".") if phone]
            items.append((" ", " "))
        if items and punctuation:
            items[-1] = (punctuation, punctuation)
    while items and items[-1][0] == " ":
        items.pop()
    return items


def english_phonemes(text: str) -> list[str]:
    """The tokens of english_phones, one list: one per phone, stress and length marks, a space between words and
    the clause's punctuation."""
    return [token for _, tokens in english_phones(text) for token in tokens]


def segments_from_durations(tokens: list[str], frames: np.ndarray, audio: np.ndarray, sample_rate: int,
                            frame_samples: int, phone_set: str, lead: float = 0.0) -> list[Segment]:
    """Per-token durations (in frames of frame_samples) as phone segments (start, end, inventory phone, token):
    stress and length marks join their phone, pauses and word breaks that last are silence, a word break too
    short to be a pause joins the phone before it. `lead`: how far (s) the audio runs ahead of the durations."""
    if len(frames) != len(tokens):
        raise RuntimeError(f"the model gave {len(frames)} durations for {len(tokens)} tokens")
    ends = np.maximum(np.cumsum(frames) * frame_samples / sample_rate - lead, 0.0)
    starts = np.concatenate([[0.0], ends[:-1]])
    merged_segments: list[list] = []  # [start, end, token]
    pending_stress = None
    for token, start, end in zip(tokens, starts, ends):
        if token in ("ˈ", "ˌ"):
            pending_stress = pending_stress if pending_stress is not None else start
            continue
        if token == "ː" and merged_segments:
            merged_segments[-1][1] = end
            continue
        if token == " " and merged_segments and end - start < SHORTEST_PAUSE:
            merged_segments[-1][1] = end
            continue
        begin = pending_stress if pending_stress is not None else start
        pending_stress = None
        source = "#" if token in PAUSES or token == "#" else token
        if merged_segments and source == "#" and merged_segments[-1][2] == "#":
            merged_segments[-1][1] = end
        else:
            merged_segments.append([begin, end, source])
    duration = len(audio) / sample_rate
    if not merged_segments:
        return []
    if merged_segments[-1][2] != "#":
        merged_segments.append([merged_segments[-1][1], duration, "#"])
    merged_segments[-1][1] = duration
    # a model often gives a pause's time to the phone before it: that phone ends where its sound does
    loud = loud_frames(audio, frame_samples)
    frame = frame_samples / sample_rate
    for phone, pause in zip(merged_segments, merged_segments[1:]):
        if phone[2] != "#" and pause[2] == "#":
            first, last = int(phone[0] / frame), int(np.ceil(phone[1] / frame))
            sounding = np.flatnonzero(loud[first:last])
            sound_end = (first + sounding[-1] + 1) * frame if sounding.size else phone[0] + frame
            if phone[1] > sound_end + frame:
                phone[1] = pause[0] = max(sound_end, phone[0] + frame)
    return [(s, e, to_common(src, phone_set), src) for s, e, src in merged_segments if e > s]


def loud_frames(audio: np.ndarray, frame_samples: int, below_peak_db: float = 40.0) -> np.ndarray:
    """Per frame of frame_samples: within below_peak_db of the loudest frame."""
    frames = -(-len(audio) // frame_samples)
    padded = np.pad(audio, (0, frames * frame_samples - len(audio)))
    energy = np.sqrt(np.mean(padded.reshape(frames, -1) ** 2, axis=1)) + 1e-9
    return 20 * np.log10(energy / energy.max()) > -below_peak_db


def importable(*modules: str) -> bool:
    """Whether every module imports (a voice's optional packages)."""
    try:
        for name in modules:
            importlib.import_module(name)
    except ImportError:
        return False
    return True


def edited_copy(model: Path, cache_dir: Path, prefix: str, edit: Callable) -> Path:
    """cache_dir/<prefix>-<digest>.onnx: `model` changed by edit(graph) (an onnx ModelProto, changed in place;
    it raises when the model is not the one it knows), made once per model file (path, size and time)."""
    import onnx

    stat = model.stat()
    digest = hashlib.sha256(f"{model.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    out = Path(cache_dir) / f"{prefix}-{digest[:16]}.onnx"
    if out.is_file():
        return out
    graph = onnx.load(str(model))
    edit(graph)
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")  # builder processes may write it at the same time
    onnx.save(graph, str(tmp))
    tmp.replace(out)
    return out


def corpus_audio(audio: np.ndarray, rate: int, sample_rate: int) -> np.ndarray | None:
    """A voice's float32 audio at `rate` as the corpus keeps it (peak 0.9, at `sample_rate`, within [-1, 1]), or
    None when it is silent."""
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak < 2e-3:
        return None
    audio = audio * (0.9 / peak)
    if sample_rate != rate:
        import torch

        from ..audio import resample

        with torch.no_grad():
            audio = resample(torch.from_numpy(audio), rate, sample_rate).numpy()
    return np.clip(audio, -1, 1).astype(np.float32)
