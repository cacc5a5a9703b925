"""Embedded speech corpus: English speech synthesized on the spot with eSpeak NG, no download needed.

eSpeak NG comes from the PyPI package `espeakng-loader`, which ships the shared library and its
espeak-ng-data folder but no Python bindings, so this module talks to it through a small ctypes binding.

The corpus is meant for smoke tests, examples and tiny training runs: many clearly different (if robotic)
voices, a fixed set of plain sentences, and byte-for-byte reproducible output for a given seed.

    python -m kanade_stream.corpus --out /tmp/corpus --speakers 12 --per-speaker 10 --held-out 2
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import functools
import hashlib
import json
import os
import random
import re
import shutil
import sys
import tempfile
import threading
import time
import weakref
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from .audio import check_sample_rate
from .cache import cache_root

ESPEAK_SAMPLE_RATE = 22050  # eSpeak NG's native output rate
PEAK_LEVEL = 0.9  # every utterance is peak-normalised to this, eSpeak's own levels vary ~10x between variants
CORPUS_FORMAT = 1  # bump when the layout or the audio processing changes, so cached corpora get rebuilt
SPLITS = ("train", "heldout")
_INSTALL_HINT = "pip install espeakng-loader"

# eSpeak NG API constants (speak_lib.h)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # without it a missing data folder calls exit() inside the library
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_PITCH, _PARAM_RANGE = 1, 3, 4
_EE_OK = 0

# Variants (files in espeak-ng-data/voices/!v) that sound like plausible adult voices; the novelty ones
# (robots, whisper, croak, demonic, child-like) are left out. Klatt variants use a different synthesiser,
# which widens the timbre spread.
_FEMALE_VARIANTS = (
    "f1", "f2", "f3", "f4", "f5", "Alicia", "Andrea", "Annie", "anika", "aunty", "belinda", "grandma",
    "shelby", "steph",
)
_MALE_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "Andy", "Denis", "adam", "david", "edward", "klatt4",
    "marcelo", "quincy", "robert", "victor",
)
# eSpeak's pitch setting scales the variant's own pitch from 0.5x (0) to 2x (99). The first pass over the
# variants stays near natural; later passes reuse each variant well below, then well above it.
_PITCH_BANDS = ((38, 62), (16, 28), (72, 84))
_LANGUAGES = ("en-us", "en")  # American and British English


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: an eSpeak language, a voice variant and prosody settings."""

    name: str  # unique speaker id, e.g. "spk03"
    language: str = "en-us"
    variant: str = "m1"
    pitch: int = 50  # 0-99, 50 is the variant's own pitch
    pitch_range: int = 50  # 0-99, 0 is monotone
    rate: int = 175  # words per minute

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"voice name must be a non-empty string, got {self.name!r}")
        for label, value, low, high in (
            ("pitch", self.pitch, 0, 99),
            ("pitch_range", self.pitch_range, 0, 99),
            ("rate", self.rate, 80, 450),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"voice {self.name!r}: {label} must be an integer in {low}-{high}, got {value!r}")
        # these end up in an eSpeak voice spec "<language>+<variant>", where '+' and spaces would change its meaning
        for label, value in (("language", self.language), ("variant", self.variant)):
            if not value or any(c in value for c in "+ /\\\0"):
                raise ValueError(f"voice {self.name!r}: invalid {label} {value!r}")

    @property
    def espeak_name(self) -> str:
        return f"{self.language}+{self.variant}"


@dataclass
class CorpusInfo:
    """What build_corpus made (or found already made)."""

    out_dir: Path
    manifest: Path
    speakers: dict[str, list[str]]  # split -> speaker names
    num_utterances: int
    total_duration: float  # seconds
    reused: bool = False
    voices: list[Voice] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------------
# eSpeak NG binding
# --------------------------------------------------------------------------------------------------------

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_INITIALIZE_PHONEME_EVENTS = 0x0001
_EVENT_LIST_TERMINATED, _EVENT_PHONEME, _EVENT_END = 0, 7, 5


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    """espeak_EVENT (speak_lib.h); `sample` is the event's position in output samples."""

    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


class _ESpeak:
    """Runs each synthesis on a freshly loaded private copy of libespeak-ng.

    eSpeak keeps hidden synthesis state in static variables (pitch flutter phase, gain control, echo buffer)
    that carry over from one utterance to the next and that neither espeak_Terminate nor re-initialising
    resets, so the same call gives different samples depending on what was spoken before. Loading the
    library afresh for every utterance restores all of it; that costs about 3 ms. A private copy makes sure
    nobody else in the process (e.g. a phonemizer) keeps the library loaded and its state alive.
    """

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as e:
            raise RuntimeError(
                f"the embedded speech corpus needs eSpeak NG from the espeakng-loader package: {_INSTALL_HINT}"
            ) from e
        try:
            source = Path(espeakng_loader.get_library_path())
            self.data_path = Path(espeakng_loader.get_data_path())
        except Exception as e:  # the package raises a bare RuntimeError/OSError when its files are missing
            raise RuntimeError(
                f"espeakng-loader is installed but incomplete ({e}); reinstall it: {_INSTALL_HINT}"
            ) from e
        if not source.is_file():
            raise RuntimeError(f"eSpeak NG library not found at {source}; reinstall it: {_INSTALL_HINT}")
        self._dir = Path(tempfile.mkdtemp(prefix="kanade_espeak_"))
        weakref.finalize(self, shutil.rmtree, self._dir, True)  # drop the private copies at exit
        self._source = source
        self._copies = 0
        self._library = self._new_copy()
        self._chunks: list[bytes] = []
        self._events: list[tuple[int, str]] | None = None  # (sample, eSpeak phoneme) when asked for
        self._callback = _SynthCallback(self._collect)  # kept on self: ctypes must not free it while in use
        self._libc = _load_libc()
        try:
            lib = self._open()
        except (OSError, AttributeError) as e:  # AttributeError: a library without the functions we need
            raise RuntimeError(
                f"cannot load the eSpeak NG library {source} ({e}); reinstall it: {_INSTALL_HINT}"
            ) from e
        try:
            info = lib.espeak_Info
            info.restype, info.argtypes = ctypes.c_char_p, [ctypes.c_void_p]
            self.version = (info(None) or b"?").decode()
        finally:
            self._close(lib)

    def _new_copy(self) -> Path:
        self._copies += 1
        target = self._dir / f"{self._source.stem}-{self._copies}{self._source.suffix}"
        shutil.copyfile(self._source, target)
        return target

    def _collect(self, wav, num_samples: int, _events) -> int:
        if wav and num_samples > 0:
            self._chunks.append(ctypes.string_at(wav, 2 * num_samples))
        if self._events is not None and _events:
            events = ctypes.cast(_events, ctypes.POINTER(_Event))
            i = 0
            while events[i].type != _EVENT_LIST_TERMINATED:
                event = events[i]
                if event.type == _EVENT_PHONEME:
                    self._events.append((int(event.sample), event.id.string.decode("utf-8", "replace")))
                elif event.type == _EVENT_END:
                    self._events.append((int(event.sample), "_"))
                i += 1
        return 0  # 0 = keep synthesising

    def _open(self) -> ctypes.CDLL:
        lib = ctypes.CDLL(str(self._library))
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_void_p, ctypes.c_void_p,
        ]
        if hasattr(lib, "espeak_ng_SetRandSeed"):  # added in eSpeak NG 1.51
            lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        return lib

    def _close(self, lib: ctypes.CDLL) -> None:
        import _ctypes

        (_ctypes.FreeLibrary if os.name == "nt" else _ctypes.dlclose)(lib._handle)
        # If the loader kept it mapped anyway, its state would leak into the next utterance: use a new copy.
        maps = Path("/proc/self/maps")
        if maps.exists() and str(self._library) in maps.read_text():
            self._library = self._new_copy()

    @contextlib.contextmanager
    def _session(self, options: int = 0):
        """A freshly loaded copy of the library, initialised for synchronous output (with `options`) for one
        job, then terminated and unloaded, so that nothing of the job outlives it."""
        lib = self._open()
        initialised = False
        try:
            rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, os.fsencode(self.data_path),
                                         _INITIALIZE_DONT_EXIT | options)
            if rate != ESPEAK_SAMPLE_RATE:
                raise RuntimeError(
                    f"eSpeak NG failed to initialise with data at {self.data_path} (returned {rate}); "
                    f"reinstall it: {_INSTALL_HINT}"
                )
            initialised = True
            yield lib
        finally:
            if initialised:
                lib.espeak_Terminate()  # frees its buffers before the library is unloaded
            self._close(lib)

    def synth(self, text: str, voice: Voice, phonemes: bool = False) -> np.ndarray:
        """int16 samples at ESPEAK_SAMPLE_RATE; with `phonemes`, self._events holds (start sample, phoneme)."""
        if not (self.data_path / "voices" / "!v" / voice.variant).is_file():
            raise ValueError(
                f"voice {voice.name!r}: eSpeak NG has no variant {voice.variant!r}; "
                f"available: {', '.join(_variant_names(self.data_path))}"
            )
        with self._session(_INITIALIZE_PHONEME_EVENTS if phonemes else 0) as lib:
            lib.espeak_SetSynthCallback(self._callback)
            if lib.espeak_SetVoiceByName(voice.espeak_name.encode()) != _EE_OK:
                raise ValueError(f"voice {voice.name!r}: eSpeak NG has no voice {voice.espeak_name!r}")
            for param, value in (
                (_PARAM_RATE, voice.rate),
                (_PARAM_PITCH, voice.pitch),
                (_PARAM_RANGE, voice.pitch_range),
            ):
                lib.espeak_SetParameter(param, value, 0)
            # Breath noise comes from eSpeak's own generator and from libc rand(); seed both from the inputs
            # so that a clip is reproducible yet different clips get different noise.
            seed = zlib.crc32(f"{voice!r}\n{text}".encode())
            if hasattr(lib, "espeak_ng_SetRandSeed"):
                lib.espeak_ng_SetRandSeed(seed)
            if self._libc is not None:
                self._libc.srand(seed)
            encoded = text.encode("utf-8") + b"\0"
            self._chunks = []
            self._events = [] if phonemes else None
            status = lib.espeak_Synth(encoded, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            if status != _EE_OK:
                raise RuntimeError(f"eSpeak NG synthesis failed (error {status}) for {text!r} with voice {voice}")
            lib.espeak_Synchronize()
        return np.frombuffer(b"".join(self._chunks), dtype=np.int16)

    def ipa(self, text: str, language: str = "en-us") -> list[tuple[str, str]]:
        """`text` in IPA, clause by clause: [(words separated by spaces, phones within a word by '.', the
        clause's closing punctuation or '')]. eSpeak's own text-to-phoneme pass, no audio."""
        with self._session() as lib:
            if lib.espeak_SetVoiceByName(language.encode()) != _EE_OK:
                raise ValueError(f"eSpeak NG has no voice {language!r}")
            to_phonemes = lib.espeak_TextToPhonemes
            to_phonemes.restype = ctypes.c_char_p
            to_phonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
            buffer = ctypes.create_string_buffer(text.encode("utf-8"))
            pointer = ctypes.c_void_p(ctypes.addressof(buffer))
            clauses = []
            while pointer.value:
                before = pointer.value - ctypes.addressof(buffer)
                # IPA (bit 1), '.' between the phones of a word (bits 8-23)
                phonemes = (to_phonemes(ctypes.byref(pointer), _CHARS_UTF8, 0x02 | (ord(".") << 8)) or b"").decode()
                after = (pointer.value - ctypes.addressof(buffer)) if pointer.value else len(buffer.value)
                # eSpeak reads one character into the next clause: the mark is what precedes that
                piece = buffer.value[before:after].decode("utf-8", "replace")
                end = re.search(r"([,.;:!?])\s*\S?\s*$", piece)
                if phonemes.strip():
                    clauses.append((phonemes.strip(), end.group(1) if end else ""))
            return clauses


def _load_libc():
    """The C library whose rand() eSpeak's noise uses; None where we cannot reach it (Windows)."""
    if os.name == "nt":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        libc.srand.argtypes = [ctypes.c_uint]
        return libc
    except (OSError, AttributeError):
        return None


_lock = threading.Lock()  # eSpeak is process-global state: one synthesis at a time
_engine_instance: _ESpeak | None = None


def _engine() -> _ESpeak:
    global _engine_instance
    if _engine_instance is None:
        _engine_instance = _ESpeak()
    return _engine_instance


def _variant_names(data_path: Path) -> list[str]:
    return sorted(p.name for p in (data_path / "voices" / "!v").iterdir() if p.is_file())


def available_variants() -> list[str]:
    """Voice variant names in the installed espeak-ng-data (any of them can be used in a Voice)."""
    with _lock:
        data_path = _engine().data_path
    return _variant_names(data_path)


def espeak_version() -> str:
    with _lock:
        return _engine().version


@functools.lru_cache(maxsize=8)
def _resampler(sample_rate: int):
    """torchaudio Resample from eSpeak's rate; cached because building the sinc kernel costs more than
    synthesising a sentence (e.g. 22050 -> 16000 Hz)."""
    import torchaudio

    return torchaudio.transforms.Resample(ESPEAK_SAMPLE_RATE, sample_rate)


def synthesize(text: str, voice: Voice, sample_rate: int = 24000) -> np.ndarray:
    """Speak `text` with `voice`: float32 mono in [-1, 1] at `sample_rate`, identical for identical inputs."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if not isinstance(voice, Voice):
        raise TypeError(f"voice must be a Voice, got {type(voice).__name__}")
    sample_rate = check_sample_rate(sample_rate)
    with _lock:
        pcm = _engine().synth(text, voice)
    # eSpeak returns a few near-silent samples for empty or unpronounceable text; 64/32768 is about -54 dBFS
    if pcm.size == 0 or int(np.abs(pcm.astype(np.int32)).max()) < 64:
        raise RuntimeError(f"eSpeak NG produced no audio for text {text!r} with voice {voice}")
    audio = pcm.astype(np.float32)
    audio *= PEAK_LEVEL / float(np.abs(audio).max())
    if sample_rate != ESPEAK_SAMPLE_RATE:
        import torch

        with torch.no_grad():
            audio = _resampler(sample_rate)(torch.from_numpy(audio)).numpy()
    return np.clip(audio, -1.0, 1.0).astype(np.float32, copy=False)


def make_voices(n: int, seed: int = 0) -> list[Voice]:
    """`n` clearly distinct voices, alternating female and male, the same list for the same seed.

    Each variant is used once per pitch band, so no two voices share both variant and pitch band.
    """
    max_voices = (len(_FEMALE_VARIANTS) + len(_MALE_VARIANTS)) * len(_PITCH_BANDS)
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= max_voices:
        raise ValueError(f"number of voices must be an integer in 0-{max_voices}, got {n!r}")
    rng = random.Random(seed)
    female, male = list(_FEMALE_VARIANTS), list(_MALE_VARIANTS)
    rng.shuffle(female)
    rng.shuffle(male)
    # interleave so any prefix is gender-balanced, then the surplus male variants
    order = [v for pair in zip(female, male) for v in pair] + male[len(female):] + female[len(male):]
    voices = []
    for i in range(n):
        band, j = divmod(i, len(order))
        low, high = _PITCH_BANDS[band]
        voices.append(
            Voice(
                name=f"spk{i:02d}",
                language=_LANGUAGES[0] if rng.random() < 0.7 else _LANGUAGES[1],
                variant=order[j],
                pitch=rng.randint(low, high),
                pitch_range=rng.randint(30, 80),
                rate=rng.randrange(135, 200, 5),
            )
        )
    return voices


# --------------------------------------------------------------------------------------------------------
# Sentences
# --------------------------------------------------------------------------------------------------------

SENTENCES_FILE = Path(__file__).parent / "data" / "corpus_sentences.txt"


def read_sentences(path: str | os.PathLike = SENTENCES_FILE) -> list[str]:
    """One sentence a line, in file order; blank lines and '#' comment lines are skipped."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


SENTENCES: list[str] = read_sentences()


# --------------------------------------------------------------------------------------------------------
# Corpus on disk
# --------------------------------------------------------------------------------------------------------


def default_corpus_dir() -> Path:
    """`$KANADE_STREAM_CACHE/corpus`, else `~/.cache/kanade_stream/corpus`."""
    return cache_root() / "corpus"


def _check_count(label: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{label} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _espeak_package_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("espeakng-loader")
    except metadata.PackageNotFoundError:
        return "unknown"


def load_manifest(path: str | os.PathLike) -> list[dict]:
    """The manifest.jsonl entries of a corpus (path is the manifest or the corpus folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.jsonl"
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _summarise(out_dir: Path, entries: list[dict], voices: list[Voice], reused: bool) -> CorpusInfo:
    speakers: dict[str, list[str]] = {split: [] for split in SPLITS}
    for entry in entries:
        names = speakers[entry["split"]]
        if entry["speaker"] not in names:
            names.append(entry["speaker"])
    return CorpusInfo(
        out_dir=out_dir,
        manifest=out_dir / "manifest.jsonl",
        speakers=speakers,
        num_utterances=len(entries),
        total_duration=round(sum(e["duration"] for e in entries), 4),
        reused=reused,
        voices=voices,
    )


def _existing_corpus(out_dir: Path, params: dict) -> list[dict] | None:
    """The manifest entries if out_dir holds a complete corpus built with `params`, else None."""
    try:
        stored = json.loads((out_dir / "corpus.json").read_text(encoding="utf-8"))
        if not stored.get("complete") or stored.get("params") != params:
            return None
        entries = load_manifest(out_dir / "manifest.jsonl")
    except (OSError, ValueError):
        return None
    for entry in entries:
        wav = out_dir / entry["path"]
        if not (wav.is_file() and wav.with_suffix(".txt").is_file()):
            return None
    return entries


def build_corpus(
    out_dir: str | os.PathLike,
    n_speakers: int = 12,
    utterances_per_speaker: int = 10,
    held_out_speakers: int = 2,
    sample_rate: int = 24000,
    seed: int = 0,
    progress: bool = False,
) -> CorpusInfo:
    """Synthesize a small multi-speaker corpus into `out_dir`, or reuse the one already there.

    Layout: `<split>/<speaker>/<speaker>_<nnnn>.wav` (16-bit PCM) with the transcript in a `.txt` beside it,
    `manifest.jsonl` (one line per utterance) and `corpus.json` (build parameters and voices). The last
    `held_out_speakers` voices form the "heldout" split. Same arguments give byte-identical files.
    """
    n_speakers = _check_count("n_speakers", n_speakers, 1)
    utterances_per_speaker = _check_count("utterances_per_speaker", utterances_per_speaker, 1)
    held_out_speakers = _check_count("held_out_speakers", held_out_speakers, 0)
    if held_out_speakers >= n_speakers:
        raise ValueError(
            f"held_out_speakers ({held_out_speakers}) must be smaller than n_speakers ({n_speakers}) "
            "so that at least one speaker is left for training"
        )
    sample_rate = check_sample_rate(sample_rate)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    max_speakers = (len(_FEMALE_VARIANTS) + len(_MALE_VARIANTS)) * len(_PITCH_BANDS)
    if n_speakers > max_speakers:
        raise ValueError(f"n_speakers must be at most {max_speakers} (distinct voices available), got {n_speakers}")
    voices = make_voices(n_speakers, int(seed))

    out_dir = Path(out_dir).expanduser()
    params = {
        "format": CORPUS_FORMAT,
        "n_speakers": n_speakers,
        "utterances_per_speaker": utterances_per_speaker,
        "held_out_speakers": held_out_speakers,
        "sample_rate": sample_rate,
        "seed": int(seed),
        "voices": [asdict(v) for v in voices],
        "sentences_sha256": hashlib.sha256("\n".join(SENTENCES).encode()).hexdigest(),
        "espeakng_loader": _espeak_package_version(),
    }
    entries = _existing_corpus(out_dir, params)
    if entries is not None:
        return _summarise(out_dir, entries, voices, reused=True)

    # Start clean, but only delete split folders we know we wrote (corpus.json marks a build of ours,
    # finished or interrupted); anything else in the way is the user's and we refuse to touch it.
    meta = out_dir / "corpus.json"
    if meta.exists():
        for split in SPLITS:
            shutil.rmtree(out_dir / split, ignore_errors=True)
    else:
        for split in SPLITS:
            if (out_dir / split).exists() and any((out_dir / split).iterdir()):
                raise ValueError(
                    f"{out_dir / split} already exists and was not made by build_corpus; "
                    "choose an empty or new folder for the corpus"
                )
    out_dir.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps({"complete": False, "params": params}, indent=1) + "\n", encoding="utf-8")

    # Deal sentences from one seeded shuffle, so speakers (and splits) say different sentences
    # until the list runs out.
    order = list(range(len(SENTENCES)))
    random.Random(seed).shuffle(order)
    n_train = n_speakers - held_out_speakers
    jobs = []
    for s, voice in enumerate(voices):
        split = SPLITS[0] if s < n_train else SPLITS[1]
        for u in range(utterances_per_speaker):
            k = s * utterances_per_speaker + u
            jobs.append((split, voice, u, SENTENCES[order[k % len(order)]]))

    if progress:
        from tqdm import tqdm

        jobs = tqdm(jobs, desc="synthesizing corpus", unit="utt")
    entries = []
    for split, voice, u, text in jobs:
        audio = synthesize(text, voice, sample_rate)
        rel = Path(split) / voice.name / f"{voice.name}_{u:04d}.wav"
        wav = out_dir / rel
        wav.parent.mkdir(parents=True, exist_ok=True)
        # PCM_16 rather than float: libsndfile stamps float WAVs with a time-dependent PEAK chunk
        sf.write(wav, audio, sample_rate, subtype="PCM_16")
        wav.with_suffix(".txt").write_text(text + "\n", encoding="utf-8")
        entries.append(
            {
                "path": rel.as_posix(),
                "speaker": voice.name,
                "split": split,
                "text": text,
                "duration": round(len(audio) / sample_rate, 4),
                "sample_rate": sample_rate,
            }
        )

    manifest = out_dir / "manifest.jsonl"
    tmp = manifest.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries), encoding="utf-8")
    tmp.replace(manifest)
    # written last: a corpus.json with complete=true means everything above is in place
    meta.write_text(json.dumps({"complete": True, "params": params}, indent=1) + "\n", encoding="utf-8")
    return _summarise(out_dir, entries, voices, reused=False)


def ensure_default_corpus(**kwargs) -> CorpusInfo:
    """Build (or reuse) the corpus in default_corpus_dir(); kwargs go to build_corpus."""
    return build_corpus(default_corpus_dir(), **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kanade_stream.corpus",
        description="Synthesize the embedded eSpeak NG speech corpus (no download needed).",
    )
    parser.add_argument("--out", type=Path, default=None, help=f"output folder (default: {default_corpus_dir()})")
    parser.add_argument("--speakers", type=int, default=12, help="number of speakers (default: 12)")
    parser.add_argument("--per-speaker", type=int, default=10, help="utterances per speaker (default: 10)")
    parser.add_argument("--held-out", type=int, default=2, help="speakers kept for the heldout split (default: 2)")
    parser.add_argument("--sample-rate", type=int, default=24000, help="output sample rate in Hz (default: 24000)")
    parser.add_argument("--seed", type=int, default=0, help="voice and sentence selection seed (default: 0)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        info = build_corpus(
            args.out if args.out is not None else default_corpus_dir(),
            n_speakers=args.speakers,
            utterances_per_speaker=args.per_speaker,
            held_out_speakers=args.held_out,
            sample_rate=args.sample_rate,
            seed=args.seed,
            progress=True,
        )
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    how = "reused existing corpus" if info.reused else f"built in {time.perf_counter() - start:.1f} s"
    print(
        f"{info.num_utterances} utterances, {info.total_duration / 60:.1f} min, "
        f"{len(info.speakers['train'])} train + {len(info.speakers['heldout'])} heldout speakers, "
        f"{args.sample_rate} Hz -> {info.out_dir} ({how})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
