"""Where the teacher loses the voice: the same-voice similarity of teacher resynthesis (tokens + global
embedding -> mel -> vocoder), judged by Resemblyzer, on three kinds of voices:

1. voices of the corpus the teacher was trained on (its train split),
2. the corpus's held-out voices (perturbed versions of base speakers that the training split also has:
   festival `ked`, eSpeak voices),
3. the CMU ARCTIC voices (flite rms, awb, slt reading Harvard sentences): speakers no training saw.

Next to each: the vocoder alone on the clip's own mel (the ceiling the vocoder sets), and how far apart the
teacher's global embeddings of different voices are (cosine, same voice vs different voices), to tell a
global branch that cannot tell the voices apart from a decoder that cannot render them.

Then the words of the ARCTIC clips (pocketsphinx word error rate): the source, its resynthesis in its own
(unseen) voice, and its conversion into a training voice (the first clip of `--seen-voice` as reference).
If the words come through better in a voice the decoder has learnt to render, the tokens carry them and the
rendering of unseen voices is what loses them.

Last, the words of corpus voices (`--words-of`, default a training voice `fe-kal-0` and the held-out real
speaker `fe-ked-0`, festival's ked, no version of whom the models saw): the source, the vocoder on its mel, and
teacher resynthesis. The same teacher on a speaker it saw and on one it did not, with the judge's own
difficulty with each voice next to it.

    python benchmarks/voice_generalization.py --corpus ~/.cache/kanade_stream/ssl-corpus-full/manifest.jsonl

Needs the eval extra (Resemblyzer) and flite for the ARCTIC voices.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kanade_stream.audio import load_audio
from kanade_stream.evaluation.heldout import build_heldout_set
from kanade_stream.evaluation.voices import speaker_similarity
from kanade_stream.evaluation.words import transcribe, word_error_rate
from kanade_stream.pretrained import EMBEDDED_TEACHER, EMBEDDED_VOCODER
from kanade_stream.teacher import KanadeTeacher
from kanade_stream.vocoder import load_vocoder, vocode


def corpus_clips(manifest: Path, split: str, count: int, seed: int) -> list[tuple[Path, str]]:
    """`count` clips of 2-6 s from the split, two a voice (so same-voice pairs exist), the voices drawn evenly
    over its synthesizers (seeded)."""
    records = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    by_voice: dict[str, list[dict]] = {}
    for r in records:
        if r.get("split") == split and 2.0 < float(r["duration"]) < 6.0:
            by_voice.setdefault(r["speaker"], []).append(r)
    by_synth: dict[str, list[str]] = {}
    for voice, clips in sorted(by_voice.items()):
        if len(clips) >= 2:
            by_synth.setdefault(clips[0].get("synth", "?"), []).append(voice)
    if not by_synth:
        raise SystemExit(f"{manifest} has no {split} voice with two clips of 2-6 s")
    rng = random.Random(seed)
    voices = max(1, count // 2)
    chosen = []
    for k, synth in enumerate(sorted(by_synth)):
        share = voices // len(by_synth) + (k < voices % len(by_synth))
        for voice in rng.sample(by_synth[synth], min(share, len(by_synth[synth]))):
            chosen += [(manifest.parent / r["path"], voice) for r in rng.sample(by_voice[voice], 2)]
    return chosen


def measure(teacher: KanadeTeacher, vocoder, clips: list[tuple[Path, str]]) -> dict:
    rate = teacher.sample_rate
    resynth, vocoded, embeddings = [], [], []
    with torch.inference_mode():
        for path, _ in clips:
            wave, _ = load_audio(path, rate)
            features = teacher.encode(wave)
            mel = teacher.decode(features.global_embedding, content_token_indices=features.content_token_indices,
                                 target_audio_length=wave.numel())
            source = wave.numpy()
            resynth.append(speaker_similarity(source, rate, vocode(vocoder, mel).reshape(-1).numpy(), rate))
            own_mel = teacher.mel_spectrogram(wave[None])
            vocoded.append(speaker_similarity(source, rate, vocode(vocoder, own_mel).reshape(-1).numpy(), rate))
            embeddings.append(torch.nn.functional.normalize(features.global_embedding.flatten(), dim=0))
    cosine = torch.stack(embeddings) @ torch.stack(embeddings).T
    same, different = [], []
    for i, j in itertools.combinations(range(len(clips)), 2):
        (same if clips[i][1] == clips[j][1] else different).append(float(cosine[i, j]))
    return {"clips": len(clips), "voices": len({s for _, s in clips}),
            "teacher_resynthesis_similarity": float(np.mean(resynth)), "vocoder_similarity": float(np.mean(vocoded)),
            "global_cosine_same_voice": float(np.mean(same)) if same else None,
            "global_cosine_different_voices": float(np.mean(different)) if different else None}


def arctic_words(teacher: KanadeTeacher, vocoder, items, reference: Path) -> dict:
    """Mean word error rate of the source, its resynthesis and its conversion into the reference's voice."""
    rate = teacher.sample_rate
    rows = {"source": [], "resynthesis (own voice)": [], "conversion into the seen voice": []}
    with torch.inference_mode():
        seen_voice = teacher.encode(load_audio(reference, rate)[0], return_content=False).global_embedding
        for item in items:
            wave, _ = load_audio(item.path, rate)
            features = teacher.encode(wave)  # one SSL pass gives the tokens and the clip's own voice
            resynth, converted = (vocode(vocoder, teacher.decode(voice, content_embedding=features.content_embedding,
                                                                  target_audio_length=wave.numel()))
                                  for voice in (features.global_embedding, seen_voice))
            for row, audio in zip(rows, (wave, resynth, converted)):
                rows[row].append(word_error_rate(item.text, transcribe(audio.reshape(-1).numpy(), rate)))
    return {row: float(np.mean(v)) for row, v in rows.items()}


def corpus_words(teacher: KanadeTeacher, vocoder, manifest: Path, voice: str, count: int) -> dict:
    """Mean word error rate of `count` clips of a corpus voice: the source, the vocoder on its mel, resynthesis."""
    rate = teacher.sample_rate
    records = [r for line in manifest.read_text().splitlines() if line.strip()
               and (r := json.loads(line))["speaker"] == voice][:count]
    if not records:
        raise SystemExit(f"{manifest} has no voice {voice!r} (--words-of)")
    rows = {"source": [], "vocoder": [], "teacher resynthesis": []}
    with torch.inference_mode():
        for r in records:
            wave, _ = load_audio(manifest.parent / r["path"], rate)
            features = teacher.encode(wave)
            mel = teacher.decode(features.global_embedding, content_token_indices=features.content_token_indices,
                                 target_audio_length=wave.numel())
            outputs = (wave, vocode(vocoder, teacher.mel_spectrogram(wave[None])), vocode(vocoder, mel))
            for row, audio in zip(rows, outputs):
                rows[row].append(word_error_rate(r["text"], transcribe(audio.reshape(-1).numpy(), rate)))
    return {"clips": len(records), **{row: float(np.mean(v)) for row, v in rows.items()}}


def first_clip_of(manifest: Path, voice: str) -> Path:
    for line in manifest.read_text().splitlines():
        if line.strip() and (r := json.loads(line))["speaker"] == voice:
            return manifest.parent / r["path"]
    raise SystemExit(f"{manifest} has no voice {voice!r} (--seen-voice)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", type=Path, required=True, help="manifest.jsonl of the voice corpus the teacher saw")
    p.add_argument("--teacher", default=str(EMBEDDED_TEACHER), help="teacher release folder (default: embedded)")
    p.add_argument("--vocoder", default=str(EMBEDDED_VOCODER), help="Vocos folder (default: embedded)")
    p.add_argument("--clips", type=int, default=16, help="clips per corpus split, two a voice (default 16)")
    p.add_argument("--sentences", type=int, default=4, help="Harvard sentences per ARCTIC voice (default 4)")
    p.add_argument("--cache", default="runs/heldout", help="where the ARCTIC clips are synthesised (reused)")
    p.add_argument("--seen-voice", default="fe-kal-0", help="training voice to convert the ARCTIC clips into")
    p.add_argument("--words-of", nargs="*", default=["fe-kal-0", "fe-ked-0"],
                   help="corpus voices whose words are judged (default: training fe-kal-0, held-out fe-ked-0)")
    p.add_argument("--word-clips", type=int, default=30, help="clips per --words-of voice (default 30)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="write the table as JSON here")
    args = p.parse_args(argv)
    if not args.corpus.is_file():
        p.error(f"--corpus {args.corpus} is not a file: give the corpus's manifest.jsonl")
    torch.set_num_threads(args.threads)
    teacher = KanadeTeacher.from_pretrained(args.teacher).eval()
    vocoder = load_vocoder(args.vocoder)
    items = build_heldout_set(args.cache, sentences=args.sentences)
    arctic = [(item.path, item.voice) for item in items]
    groups = {"corpus training voices": corpus_clips(args.corpus, "train", args.clips, args.seed),
              "corpus held-out voices": corpus_clips(args.corpus, "heldout", args.clips, args.seed),
              "CMU ARCTIC voices (unseen speakers)": arctic}
    results = {name: measure(teacher, vocoder, clips) for name, clips in groups.items()}
    print(f"teacher {args.teacher}, vocoder {args.vocoder}; Resemblyzer same-voice similarity\n")
    print("| voices | clips | teacher resynthesis | vocoder on the clip's mel | global embedding cosine: "
          "same voice / different voices |")
    print("|---|---:|---:|---:|---|")
    for name, r in results.items():
        same, diff = r["global_cosine_same_voice"], r["global_cosine_different_voices"]
        pair = f"{same:.3f} / {diff:.3f}" if same is not None and diff is not None else "-"
        print(f"| {name} | {r['clips']} | {r['teacher_resynthesis_similarity']:.3f} | "
              f"{r['vocoder_similarity']:.3f} | {pair} |")
    words = arctic_words(teacher, vocoder, items, first_clip_of(args.corpus, args.seen_voice))
    print(f"\nwords of the {len(items)} ARCTIC clips (word error rate; seen voice {args.seen_voice})\n")
    print("| " + " | ".join(words) + " |\n|" + "---:|" * len(words))
    print("| " + " | ".join(f"{v:.3f}" for v in words.values()) + " |")
    voice_words = {voice: corpus_words(teacher, vocoder, args.corpus, voice, args.word_clips)
                   for voice in args.words_of}
    if voice_words:
        print("\nwords of corpus voices (word error rate)\n")
        print("| voice | split | clips | source | vocoder | teacher resynthesis |\n|---|---|---:|---:|---:|---:|")
        splits = {json.loads(line)["speaker"]: json.loads(line)["split"]
                  for line in args.corpus.read_text().splitlines() if line.strip()}
        for voice, r in voice_words.items():
            print(f"| {voice} | {splits.get(voice, '?')} | {r['clips']} | {r['source']:.3f} | {r['vocoder']:.3f} | "
                  f"{r['teacher resynthesis']:.3f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"teacher": args.teacher, "vocoder": args.vocoder, "groups": results,
                                        "arctic_words": words, "seen_voice": args.seen_voice,
                                        "corpus_words": voice_words},
                                       indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
