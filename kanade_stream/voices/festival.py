"""Festival voices with phone alignments: one `festival -b` process per voice speaks a batch of sentences
and saves, for each, the waveform (`utt.save.wave`) and the segment end times (`utt.save.segs`).

The voices read English text with their own front end: the English diphone voices (kal, ked) say it as
English; the others (Italian, Catalan, Czech, Finnish, Russian) as a speaker of that language reading
the letters would, and their segments are in their own phone set (mapped by voices.phones).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from .phones import SILENCE, to_common

Segment = tuple[float, float, "str | None", str]


@dataclass(frozen=True)
class FestivalVoice:
    name: str  # festival's voice_<name> function
    phone_set: str  # key of voices.phones.PHONE_SETS
    package: str  # Debian package
    language: str


FESTIVAL_VOICES = {
    v.name: v for v in (
        FestivalVoice("kal_diphone", "radio", "festvox-kallpc16k", "en-us"),
        FestivalVoice("ked_diphone", "radio", "festvox-kdlpc16k", "en-us"),
        FestivalVoice("lp_diphone", "italian", "festvox-italp16k", "it"),
        FestivalVoice("pc_diphone", "italian", "festvox-itapc16k", "it"),
        FestivalVoice("upc_ca_ona_hts", "catalan", "festvox-ca-ona-hts", "ca"),
        FestivalVoice("czech_dita", "czech", "festvox-czech-dita", "cs"),
        FestivalVoice("czech_machac", "czech", "festvox-czech-machac", "cs"),
        FestivalVoice("suo_fi_lj_diphone", "finnish", "festvox-suopuhe-lj", "fi"),
        FestivalVoice("hy_fi_mv_diphone", "finnish", "festvox-suopuhe-mv", "fi"),
        FestivalVoice("msu_ru_nsh_clunits", "russian", "festvox-ru", "ru"),
        # Appended, not beside the other Czech voices: a recipe's perturbations and sentences are drawn in this
        # order, so voices added at the end leave a corpus's existing voices byte-identical (and reused).
        FestivalVoice("czech_ph", "czech", "festvox-czech-ph", "cs"),
        FestivalVoice("czech_krb", "czech", "festvox-czech-krb", "cs"),  # a child
    )
}


def festival_available() -> bool:
    return shutil.which("festival") is not None


def installed_voices() -> list[str]:
    """The voices of FESTIVAL_VOICES whose folder is installed."""
    root = Path("/usr/share/festival/voices")
    found = {p.name for p in root.glob("*/*") if p.is_dir()} if root.is_dir() else set()
    return [name for name in FESTIVAL_VOICES if name in found]


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def read_segs(path: Path, phone_set: str) -> list[Segment]:
    """A `utt.save.segs` file (after '#': lines 'end_time 100 phone') as (start, end, phone, source)."""
    segments, start, body = [], 0.0, False
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        if not body:
            body = line.strip() == "#"
            continue
        parts = line.split()
        if len(parts) < 3:
            continue
        end, name = float(parts[0]), parts[2]
        if end > start:
            segments.append((start, end, to_common(name, phone_set), name))
            start = end
    return segments


def synthesize_batch(voice: str, texts: list[str], sample_rate: int = 16000, timeout: float = 600.0
                     ) -> list[tuple[np.ndarray, list[Segment]] | None]:
    """Each text spoken by festival `voice`: (float32 audio at sample_rate, peak-normalised to 0.9, segments),
    or None where festival made no audio for it."""
    if voice not in FESTIVAL_VOICES:
        raise ValueError(f"unknown festival voice {voice!r}; known: {', '.join(FESTIVAL_VOICES)}")
    if not festival_available():
        raise RuntimeError("festival is not installed: apt-get install festival " + FESTIVAL_VOICES[voice].package)
    spec = FESTIVAL_VOICES[voice]
    with tempfile.TemporaryDirectory(prefix="kanade_festival_") as tmp:
        tmp = Path(tmp)
        lines = [f"(voice_{voice})"]
        for i, text in enumerate(texts):
            lines.append(
                f"(unwind-protect (begin (set! utt (utt.synth (Utterance Text {_quote(text)})))"
                f" (utt.save.wave utt \"{tmp}/{i}.wav\" 'riff) (utt.save.segs utt \"{tmp}/{i}.segs\")) nil)")
        script = tmp / "batch.scm"
        script.write_text("\n".join(lines) + "\n", encoding="utf-8")
        proc = subprocess.run(["festival", "-b", str(script)], capture_output=True, text=True, timeout=timeout,
                              check=False)  # failed sentences have no files: counted below
        out = []
        for i in range(len(texts)):
            wav, segs = tmp / f"{i}.wav", tmp / f"{i}.segs"
            if not (wav.is_file() and segs.is_file()):
                out.append(None)
                continue
            audio, rate = sf.read(wav, dtype="float32", always_2d=True)
            audio = audio.mean(axis=1)
            peak = float(np.abs(audio).max()) if audio.size else 0.0
            if peak < 2e-3:
                out.append(None)
                continue
            audio = audio * (0.9 / peak)
            segments = read_segs(segs, spec.phone_set)
            duration = len(audio) / rate
            if segments and segments[-1][1] < duration:
                segments.append((segments[-1][1], duration, SILENCE, "pau"))
            if rate != sample_rate:
                audio = _resample(audio, rate, sample_rate)
            out.append((np.clip(audio, -1, 1).astype(np.float32), segments))
        if all(o is None for o in out) and texts:
            raise RuntimeError(f"festival voice {voice} made no audio: {proc.stderr.strip()[-500:]}")
        return out


def _resample(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    import torch
    import torchaudio

    with torch.no_grad():
        return torchaudio.functional.resample(torch.from_numpy(np.ascontiguousarray(audio)), rate, target).numpy()
