"""The held-out evaluation set: Harvard sentences (IEEE 1969, public domain; package data `data/harvard.txt`)
spoken by the CMU ARCTIC voices built into flite (rms and awb: male, slt: female). No model of this project is
trained on these voices or these texts (training uses eSpeak NG voices and festival's kal/ked).

    items = build_heldout_set("runs/heldout", sentences=4)   # [(path, text, voice), ...], voice by voice

Files are synthesised once into the cache folder (16 kHz WAV, named by voice, sentence number and a hash of
voice + text, so an edited sentence never reuses a stale file) and reused afterwards; flite is deterministic,
so every machine builds the same set.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

HARVARD_FILE = Path(__file__).parent / "data" / "harvard.txt"
HELDOUT_VOICES = ("rms", "awb", "slt")
VOICE_GENDERS = {"rms": "male", "awb": "male", "slt": "female"}
# voices the embedded models may have heard (festival/flite diphone voices used by the training corpus)
TRAINING_VOICES = frozenset({"kal", "kal16", "ked", "ked16", "awb_time"})
FLITE_RATE = 16000
FLITE_INSTALL_HINT = "apt-get install flite"


class HeldoutItem(NamedTuple):
    path: Path
    text: str
    voice: str


class FliteError(RuntimeError):
    """flite is missing, lacks a voice, or failed; the message says what to do."""


def harvard_sentences() -> list[str]:
    """The Harvard sentences of the package data file, in list order (100 sentences: lists 1-10)."""
    lines = HARVARD_FILE.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def check_voices(voices) -> tuple[str, ...]:
    """The requested voices, checked: only the held-out flite voices, each once."""
    if isinstance(voices, str):
        voices = (voices,)
    voices = tuple(voices)
    if not voices:
        raise ValueError(f"no voices given: choose from {', '.join(HELDOUT_VOICES)}")
    for voice in voices:
        if voice in TRAINING_VOICES:
            raise ValueError(
                f"{voice!r} is a training voice (or the same speaker as one): evaluating on it would measure "
                f"memory, not generalisation; use the held-out voices {', '.join(HELDOUT_VOICES)}"
            )
        if voice not in HELDOUT_VOICES:
            raise ValueError(f"unknown held-out voice {voice!r}: choose from {', '.join(HELDOUT_VOICES)} "
                             "(the CMU ARCTIC voices built into flite)")
    if len(set(voices)) != len(voices):
        raise ValueError(f"voices repeat: {voices}")
    return voices


def find_flite(flite: str = "flite") -> str:
    """The flite executable, with every requested voice built in; FliteError naming the fix otherwise."""
    path = shutil.which(flite)
    if path is None:
        raise FliteError(f"flite was not found ({flite!r}): the held-out voices are synthesised with it; "
                         f"install it with `{FLITE_INSTALL_HINT}` (Debian/Ubuntu package 'flite')")
    return path


def flite_voices(flite: str) -> set[str]:
    """Voices built into this flite (`flite -lv`)."""
    result = subprocess.run([flite, "-lv"], capture_output=True, text=True, timeout=60)
    listing = (result.stdout + result.stderr).split(":", 1)[-1]
    return set(listing.split())


def clip_name(voice: str, index: int, text: str) -> str:
    digest = hashlib.sha1(f"{voice}\n{text}".encode()).hexdigest()[:8]
    return f"{voice}_harvard{index + 1:03d}_{digest}.wav"


def synthesize(flite: str, voice: str, text: str, path: Path) -> Path:
    """Speak `text` with flite's `voice` into `path` (written under a temporary name, then renamed)."""
    return synthesize_with_phones(flite, voice, text, path)[0]


def synthesize_with_phones(flite: str, voice: str, text: str, path: Path) -> tuple[Path, list]:
    """As `synthesize`, and the phones flite spoke, with their times: [(start s, end s, inventory phone or
    None)] from flite's own segment times (`-psdur`), its US English phones mapped to the shared inventory
    (`kanade_stream.voices.phones`). Evaluation labels for the held-out voices; never training data."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp.wav")
    try:
        result = subprocess.run([flite, "-voice", voice, "-psdur", "-t", text, "-o", str(temporary)],
                                capture_output=True, text=True, timeout=120)
        if result.returncode != 0 or not temporary.is_file() or temporary.stat().st_size <= 44:
            raise FliteError(f"flite failed for voice {voice!r} and text {text!r} (exit {result.returncode}): "
                             f"{result.stderr.strip() or 'no audio written'}")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path, flite_segments(result.stdout)


def flite_segments(printed: str) -> list[tuple[float, float, str | None]]:
    """flite's `-psdur` listing ("pau:0.184 dh:0.228 ...": each phone with its end time) as segments in the
    shared phone inventory (flite's US English phones are festival's radio set)."""
    from ..voices.phones import to_common

    segments, start = [], 0.0
    for item in printed.split():
        phone, _, end = item.rpartition(":")
        try:
            end_s = float(end)
        except ValueError:
            raise FliteError(f"flite printed {item!r} where a phone and its end time were expected") from None
        segments.append((start, end_s, to_common(phone, "radio")))
        start = end_s
    return segments


def build_heldout_set(cache_dir: str | Path, sentences: int = 4, voices=HELDOUT_VOICES, first: int = 0,
                      flite: str = "flite") -> list[HeldoutItem]:
    """Harvard sentences `first` .. `first + sentences - 1`, each spoken by every voice, synthesised into
    `cache_dir` unless already there. Items are ordered voice by voice, sentences in order within a voice."""
    voices = check_voices(voices)
    texts = harvard_sentences()
    if isinstance(sentences, bool) or not isinstance(sentences, int) or sentences < 1:
        raise ValueError(f"sentences must be a positive integer, got {sentences!r}")
    if isinstance(first, bool) or not isinstance(first, int) or first < 0 or first + sentences > len(texts):
        raise ValueError(f"sentences {first}..{first + sentences - 1} requested; there are {len(texts)} "
                         f"Harvard sentences (0..{len(texts) - 1})")
    cache_dir = Path(cache_dir)
    wanted = [(voice, i, texts[i]) for voice in voices for i in range(first, first + sentences)]
    missing = [(voice, i, text) for voice, i, text in wanted if not (cache_dir / clip_name(voice, i, text)).is_file()]
    if missing:
        executable = find_flite(flite)
        available = flite_voices(executable)
        absent = sorted({voice for voice, _, _ in missing} - available)
        if absent:  # flite silently falls back to its default voice for an unknown name: check first
            raise FliteError(f"this flite has no voice {', '.join(absent)} (it has: {', '.join(sorted(available))}); "
                             f"Debian's flite package ({FLITE_INSTALL_HINT}) includes rms, awb and slt")
        cache_dir.mkdir(parents=True, exist_ok=True)
        for voice, i, text in missing:
            synthesize(executable, voice, text, cache_dir / clip_name(voice, i, text))
    return [HeldoutItem(cache_dir / clip_name(voice, i, text), text, voice) for voice, i, text in wanted]
