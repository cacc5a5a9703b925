"""Speech quality of the models, measured by independent judges on voices and texts that no model was trained on.

    .venv/bin/python benchmarks/quality.py                      # embedded tiny models, 3 voices x 4 sentences
    .venv/bin/python benchmarks/quality.py --sentences 8 --all-targets --out runs/quality-big
    .venv/bin/python benchmarks/quality.py --teacher runs/teacher --vocoder runs/vocoder --student runs/student

Held-out set: Harvard sentences spoken by flite's CMU ARCTIC voices rms, awb (male) and slt (female)
(`kanade_stream.evaluation.heldout`; needs `apt-get install flite`). Judges (`pip install "kanade-stream[eval]"`):
pocketsphinx for the word error rate, Resemblyzer for speaker similarity. Every figure is read against the
source: a judge's own error on clean flite speech is not the models' fault.

Rows
  source               the flite clip itself (the judges' ceiling)
  vocoder (source mel) the vocoder on the teacher's mel spectrogram of the source: the vocoder's own ceiling
  griffin-lim          Griffin-Lim on the same mel (the weight-free fallback)
  teacher resynthesis  teacher encode -> decode (the source's own voice) -> vocoder
    (griffin-lim)      the same mel through Griffin-Lim: with the two rows above, tells the decoder's loss from
                       the vocoder's
  teacher resynthesis, FSQ unrounded
                       as teacher resynthesis with the quantiser's rounding left out (a diagnostic: the words
                       the continuous latent keeps, to tell the quantiser's loss from the encoder's)
  teacher VC           teacher voice conversion to another held-out voice -> vocoder
  student resynthesis  student encode -> decode, offline
  student stream VC    StreamingConverter at --chunk-ms chunks, the source pushed in 20 ms pieces, then flush
Conversions: source sentence i of voice v is converted to the voice of another held-out voice, whose reference
clip is a different sentence (i + 1) of that voice. By default each source goes to one target, cycling through
the other voices so that every ordered voice pair (same- and cross-gender) appears; --all-targets converts
every source to every other voice.

Columns
  WER          corpus word error rate of the row (errors / reference words, pocketsphinx transcripts)
  dWER         WER of the row minus WER of the sources of the same clips
  sim src      speaker similarity to the source voice (for the source row: to the same voice's other sentences)
  sim tgt      similarity to the target voice (conversions; for the source row: of the unconverted sources
               to the same targets, i.e. where a conversion starts from)
  tgt-src      sim tgt minus sim src, per clip, averaged (> 0: the output sounds more like the target)
  tokens       student vs teacher token agreement on the sources (exact index; per FSQ level printed below)
A voice's "profile" is the mean Resemblyzer embedding of its held-out clips of the *other* sentences, so that
no similarity is inflated by matching text.

Writes quality.json (every clip, transcript and score), quality.md (the table), quality.png (bar chart, needs
matplotlib) and the audio of every row (audio/, 16-bit WAV) to --out. Timings are printed, never judged.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch

from kanade_stream import KanadeTeacher, load_audio, load_vocoder, resample, save_audio, vocode
from kanade_stream.evaluation import (
    HELDOUT_VOICES, VOICE_GENDERS, FliteError, JudgeMissingError, NoSpeechWarning, build_heldout_set,
    cosine_similarity, judge_versions, mean_embedding, speaker_embedding, transcribe, word_errors,
)
from kanade_stream.evaluation.judges import require
from kanade_stream.pretrained import default_student, default_teacher, default_vocoder
from kanade_stream.streaming import StreamingConverter, load_student
from kanade_stream.streaming.int8 import quantize_int8
from kanade_stream.vocoder import GRIFFIN_LIM

ROWS = {  # key: label
    "source": "source (flite)",
    "vocoder": "vocoder (source mel)",
    "griffin-lim": "griffin-lim (source mel)",
    "teacher-resynth": "teacher resynthesis",
    "teacher-resynth-gl": "teacher resynthesis (griffin-lim)",
    "teacher-resynth-unrounded": "teacher resynthesis, FSQ unrounded",
    "teacher-vc": "teacher VC",
    "student-resynth": "student resynthesis",
    "student-stream-vc": "student stream VC",
}
CONVERSIONS = ("teacher-vc", "student-stream-vc")
TEACHER_ROWS = ("vocoder", "griffin-lim", "teacher-resynth", "teacher-resynth-gl", "teacher-resynth-unrounded",
                "teacher-vc")
STUDENT_ROWS = ("student-resynth", "student-stream-vc")
PIECE_MS = 20  # the size of each push into the streaming converter (an audio callback's block)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=4, help="Harvard sentences per voice (>= 2; default 4)")
    parser.add_argument("--first", type=int, default=0, help="index of the first Harvard sentence (default 0)")
    parser.add_argument("--voices", nargs="+", default=list(HELDOUT_VOICES), help="held-out voices (rms awb slt)")
    parser.add_argument("--all-targets", action="store_true", help="convert every source to every other voice")
    parser.add_argument("--teacher", default=None, help="teacher release folder (default: the embedded teacher-tiny)")
    parser.add_argument("--vocoder", default=None, help="Vocos folder / hub id (default: the embedded vocoder-tiny)")
    parser.add_argument("--student", default=None, help="student folder (default: the embedded student-tiny)")
    parser.add_argument("--student-precision", choices=("float32", "int8"), default="float32",
                        help="run the student rows with int8 weights (quantize_int8, CPU), as --precision int8 "
                             "in the live programs")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS), help="rows to run (default all)")
    parser.add_argument("--chunk-ms", type=float, default=80, help="streaming chunk (default 80 ms)")
    parser.add_argument("--out", type=Path, default=Path("runs/quality"), help="output folder (default runs/quality)")
    parser.add_argument("--cache", type=Path, default=Path("runs/heldout"),
                        help="where the held-out clips are synthesised (default runs/heldout; reused)")
    parser.add_argument("--no-audio", action="store_true", help="do not write the rows' audio")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a small shared machine, OpenMP threads that wait for "
                             "each other made the streaming converter over 10x slower)")
    args = parser.parse_args(argv)
    if args.sentences < 2:
        parser.error("--sentences must be >= 2: a conversion's reference is another sentence of the target voice")
    if len(args.voices) < 2 and any(row in CONVERSIONS for row in args.rows):
        parser.error("conversions need at least two --voices (a source voice and a target voice)")
    if "source" not in args.rows:
        args.rows = ["source"] + args.rows  # every other row is judged against it
    return args


# --- the machine and the models ----------------------------------------------------------------------------

def machine_info() -> dict:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        flite = subprocess.run(["flite", "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        flite = "not found"
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "flite": flite.splitlines()[0] if flite else "unknown", **judge_versions()}


def load_models(args) -> dict:
    """Only the models the chosen rows need; a missing embedded student drops the student rows with a note."""
    models: dict = {"paths": {}}
    if any(row in args.rows for row in TEACHER_ROWS):
        teacher_path = args.teacher or default_teacher()
        models["teacher"] = KanadeTeacher.from_pretrained(teacher_path)
        models["paths"]["teacher"] = str(teacher_path)
        vocoder_name = args.vocoder or default_vocoder()
        models["vocoder"] = load_vocoder(vocoder_name)
        models["paths"]["vocoder"] = str(vocoder_name)
        if "griffin-lim" in args.rows or "teacher-resynth-gl" in args.rows:
            models["griffin-lim"] = load_vocoder(GRIFFIN_LIM)
            models["paths"]["griffin-lim"] = GRIFFIN_LIM
    if any(row in args.rows for row in STUDENT_ROWS):
        try:
            student_path = args.student or default_student()
        except FileNotFoundError as err:
            print(f"student rows skipped: {err}")
            args.rows = [row for row in args.rows if row not in STUDENT_ROWS]
        else:
            models["student"] = load_student(student_path)
            models["paths"]["student"] = str(student_path)
            if args.student_precision == "int8":
                models["student"] = quantize_int8(models["student"])
                models["paths"]["student"] += " (int8 weights)"
    return models


# --- the outputs ------------------------------------------------------------------------------------------

def conversion_pairs(clips: list[dict], voices: list[str], all_targets: bool) -> list[tuple[int, str, int]]:
    """(source clip index, target voice, reference clip index): each source to one other voice (cycling) or all."""
    index = {(c["voice"], c["sentence"]): k for k, c in enumerate(clips)}
    count = 1 + max(c["sentence"] for c in clips)
    pairs = []
    for k, clip in enumerate(clips):
        others = [v for v in voices if v != clip["voice"]]
        targets = others if all_targets else [others[clip["sentence"] % len(others)]]
        for target in targets:
            pairs.append((k, target, index[(target, (clip["sentence"] + 1) % count)]))
    return pairs


def stream_convert(student, source: torch.Tensor, reference: torch.Tensor, rate: int, chunk_ms: float) -> np.ndarray:
    converter = StreamingConverter(student, reference=reference, sample_rate=rate, chunk_ms=chunk_ms)
    piece = rate * PIECE_MS // 1000
    samples = source.numpy()
    parts = [converter.push(samples[start : start + piece]) for start in range(0, samples.size, piece)]
    parts.append(converter.flush())
    return np.concatenate(parts)


def make_outputs(args, clips: list[dict], pairs, models: dict, rate: int) -> tuple[list[dict], dict]:
    """Every row's audio, as records {row, clip, target, reference, audio, rate}; and seconds spent per row."""
    records, seconds = [], {}

    def run(row, clip, fn, target=None, reference=None):
        torch.manual_seed(zlib.crc32(f"{row}/{clip}/{target}".encode()))  # Griffin-Lim starts from random phases
        start = time.perf_counter()
        audio, out_rate = fn()
        seconds[row] = seconds.get(row, 0.0) + time.perf_counter() - start
        audio = torch.as_tensor(audio).detach().float().cpu().reshape(-1).numpy()
        records.append({"row": row, "clip": clip, "target": target, "reference": reference, "audio": audio,
                        "rate": out_rate})

    teacher, vocoder = models.get("teacher"), models.get("vocoder")
    student = models.get("student")
    model_rate = teacher.sample_rate if teacher is not None else None
    with torch.inference_mode():
        for k, clip in enumerate(clips):
            wave = clip["wave"]
            run("source", k, lambda: (wave, rate))
            if teacher is not None:
                mel = teacher.mel_spectrogram(resample(wave, rate, model_rate).to(teacher.device))
                if "vocoder" in args.rows:
                    run("vocoder", k, lambda: (vocode(vocoder, mel), model_rate))
                if "griffin-lim" in args.rows:
                    run("griffin-lim", k, lambda: (vocode(models["griffin-lim"], mel), model_rate))
                if "teacher-resynth" in args.rows or "teacher-resynth-gl" in args.rows:
                    decoded = {}

                    def resynth(vocoder_model):
                        if not decoded:  # decoded once, timed with the first of these rows
                            f = teacher.encode(wave, sample_rate=rate)
                            decoded["mel"] = teacher.decode(f.global_embedding,
                                                            content_token_indices=f.content_token_indices,
                                                            target_audio_length=resample(wave, rate, model_rate).numel())
                        return vocode(vocoder_model, decoded["mel"]), model_rate
                    if "teacher-resynth" in args.rows:
                        run("teacher-resynth", k, lambda: resynth(vocoder))
                    if "teacher-resynth-gl" in args.rows:
                        run("teacher-resynth-gl", k, lambda: resynth(models["griffin-lim"]))
                if "teacher-resynth-unrounded" in args.rows:
                    run("teacher-resynth-unrounded", k,
                        lambda: (vocode(vocoder, unrounded_resynthesis(teacher, wave, rate)), model_rate))
            if student is not None and "student-resynth" in args.rows:
                def student_resynth():
                    f = student.encode(wave, sample_rate=rate)
                    return student.decode(f.global_embedding, content_token_indices=f.content_token_indices), \
                        student.output_rate
                run("student-resynth", k, student_resynth)
        for k, target, ref in pairs:
            source, reference = clips[k]["wave"], clips[ref]["wave"]
            if teacher is not None and "teacher-vc" in args.rows:
                run("teacher-vc", k, lambda: (vocode(vocoder, teacher.voice_conversion(source, reference,
                                                                                       sample_rate=rate)), model_rate),
                    target, ref)
            if student is not None and "student-stream-vc" in args.rows:
                run("student-stream-vc", k,
                    lambda: (stream_convert(student, source, reference, rate, args.chunk_ms), student.output_rate),
                    target, ref)
    return records, seconds


def unrounded_resynthesis(teacher: KanadeTeacher, wave: torch.Tensor, rate: int) -> torch.Tensor:
    """The teacher's resynthesis with the FSQ's rounding left out (its bounded latent, scaled as the codes
    are): what the words would be if the 12,800 tokens lost nothing, to tell the quantiser's losses from the
    encoder's."""
    wave_model = resample(wave, rate, teacher.sample_rate)
    content_in, global_in = teacher.ssl_features(wave_model[None].to(teacher.device))
    quantizer = teacher.local_quantizer
    embedding = quantizer.proj_out(quantizer.unrounded(teacher.content_latent(content_in)) / quantizer.half_width)
    return teacher.decode(teacher.global_encoder(global_in)[0], content_embedding=embedding[0],
                          target_audio_length=wave_model.numel())


def token_agreement(clips: list[dict], models: dict, rate: int) -> dict | None:
    """Student vs teacher content tokens on the held-out sources: exact index and per FSQ level (digit)."""
    teacher, student = models.get("teacher"), models.get("student")
    if teacher is None or student is None:
        return None
    levels = list(teacher.local_quantizer.levels)
    same_codebook = levels == list(student.quantizer.levels)
    basis = torch.cumprod(torch.tensor([1] + levels[:-1]), 0)
    exact = compared = 0
    per_level = torch.zeros(len(levels))
    length_differences = []
    for clip in clips:
        t = teacher.encode(clip["wave"], sample_rate=rate, return_global=False).content_token_indices.cpu()
        s = student.encode(clip["wave"], sample_rate=rate, return_global=False).content_token_indices.cpu()
        n = min(t.numel(), s.numel())
        length_differences.append(s.numel() - t.numel())
        exact += int((t[:n] == s[:n]).sum())
        if same_codebook:
            digits = lambda x: (x[:n, None] // basis) % torch.tensor(levels)  # noqa: E731
            per_level += (digits(t) == digits(s)).float().sum(0)
        compared += n
    return {"tokens_compared": compared, "exact": exact / max(compared, 1),
            "chance": 1 / math.prod(levels), "levels": levels,
            "per_level": (per_level / max(compared, 1)).tolist() if same_codebook else None,
            "student_minus_teacher_tokens": length_differences}


# --- the judging ------------------------------------------------------------------------------------------

def judge(records: list[dict], clips: list[dict]) -> dict:
    """Transcript + word errors + embedding of every record, then the voice similarities."""
    seconds = {"asr": 0.0, "speaker": 0.0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoSpeechWarning)
        for record in records:
            clip = clips[record["clip"]]
            start = time.perf_counter()
            record["hypothesis"] = transcribe(record["audio"], record["rate"])
            seconds["asr"] += time.perf_counter() - start
            record["errors"], record["words"] = word_errors(clip["text"], record["hypothesis"])
            start = time.perf_counter()
            record["embedding"] = speaker_embedding(record["audio"], record["rate"])
            seconds["speaker"] += time.perf_counter() - start
    sources = {r["clip"]: r["embedding"] for r in records if r["row"] == "source"}

    def profile(voice: str, text: str):
        return mean_embedding([sources[k] for k, c in enumerate(clips) if c["voice"] == voice and c["text"] != text])

    for record in records:
        clip = clips[record["clip"]]
        record["sim_source"] = cosine_similarity(record["embedding"], profile(clip["voice"], clip["text"]))
        record["sim_target"] = (cosine_similarity(record["embedding"], profile(record["target"], clip["text"]))
                                if record["target"] else math.nan)
        record["silent"] = record["embedding"] is None
    return seconds


def nanmean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def summarise(records: list[dict], clips: list[dict], pairs, row: str) -> dict:
    rows = [r for r in records if r["row"] == row]
    source = {r["clip"]: r for r in records if r["row"] == "source"}
    errors, words = sum(r["errors"] for r in rows), sum(r["words"] for r in rows)
    source_errors = sum(source[r["clip"]]["errors"] for r in rows)
    result = {"row": row, "label": ROWS[row], "clips": len(rows), "wer": errors / words,
              "delta_wer": (errors - source_errors) / words, "sim_source": nanmean([r["sim_source"] for r in rows]),
              "no_speech": sum(r["silent"] for r in rows), "sim_target": math.nan, "target_minus_source": math.nan}
    if row == "source":  # what unintelligible speech scores: each transcript against another sentence's text
        texts = {(c["voice"], c["sentence"]): c["text"] for c in clips}
        count = 1 + max(c["sentence"] for c in clips)
        wrong = [word_errors(texts[(clips[r["clip"]]["voice"], (clips[r["clip"]]["sentence"] + 1) % count)],
                             r["hypothesis"]) for r in rows]
        result["wer_other_text"] = sum(e for e, _ in wrong) / sum(n for _, n in wrong)
    if row in CONVERSIONS or row == "source":
        if row == "source":  # where the conversions start: the sources against the same targets
            scored = [{"sim_target": cosine_similarity(source[k]["embedding"], mean_embedding(
                [source[j]["embedding"] for j, c in enumerate(clips) if c["voice"] == t and c["text"] != clips[k]["text"]])),
                "sim_source": source[k]["sim_source"], "clip": k, "target": t} for k, t, _ in pairs]
        else:
            scored = rows
        result["sim_target"] = nanmean([r["sim_target"] for r in scored])
        result["target_minus_source"] = nanmean([r["sim_target"] - r["sim_source"] for r in scored])
        for kind in ("same", "cross"):
            group = [r for r in scored
                     if (VOICE_GENDERS[clips[r["clip"]]["voice"]] == VOICE_GENDERS[r["target"]]) == (kind == "same")]
            result[f"{kind}_gender"] = {"pairs": len(group), "sim_target": nanmean([r["sim_target"] for r in group]),
                                        "target_minus_source": nanmean([r["sim_target"] - r["sim_source"] for r in group])}
            if row != "source":
                group_errors, group_words = sum(r["errors"] for r in group), sum(r["words"] for r in group)
                result[f"{kind}_gender"]["wer"] = group_errors / group_words if group_words else math.nan
    return result


# --- the report -------------------------------------------------------------------------------------------

def fmt(value, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def table(summaries: list[dict], tokens: dict | None) -> list[str]:
    header = "| row | clips | WER | dWER | sim src | sim tgt | tgt-src | tokens |"
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summaries:
        token = fmt(tokens["exact"]) if tokens and s["row"] == "student-resynth" else "-"
        label = s["label"] + (f" ({s['no_speech']} without speech)" if s["no_speech"] else "")
        lines.append(f"| {label} | {s['clips']} | {fmt(s['wer'])} | {fmt(s['delta_wer'], True)} | {fmt(s['sim_source'])} "
                     f"| {fmt(s['sim_target'])} | {fmt(s['target_minus_source'], True)} | {token} |")
    return lines


def gender_lines(summaries: list[dict]) -> list[str]:
    lines = ["| conversion | pairs | same-gender: WER / sim tgt / tgt-src | pairs | cross-gender: WER / sim tgt / tgt-src |",
             "|---|---:|---|---:|---|"]
    for s in summaries:
        if "same_gender" not in s:
            continue
        cells = []
        for kind in ("same_gender", "cross_gender"):
            g = s[kind]
            cells += [str(g["pairs"]), f"{fmt(g.get('wer'))} / {fmt(g['sim_target'])} / {fmt(g['target_minus_source'], True)}"]
        lines.append(f"| {s['label']} | " + " | ".join(cells) + " |")
    return lines


def write_chart(path: Path, summaries: list[dict]) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return 'chart skipped: matplotlib is not installed (pip install "kanade-stream[eval]")'
    labels = [s["label"] for s in summaries]
    x = np.arange(len(labels))
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    left.bar(x, [s["wer"] for s in summaries], color="#4c72b0")
    left.axhline(summaries[0]["wer"], color="black", linestyle="--", linewidth=1, label="source (the judge's own errors)")
    left.axhline(summaries[0]["wer_other_text"], color="gray", linestyle=":", linewidth=1,
                 label="unintelligible (sources vs another sentence's text)")
    left.set_title("word error rate (pocketsphinx), lower is better")
    left.set_ylabel("WER")
    width = 0.38
    right.bar(x - width / 2, [s["sim_source"] for s in summaries], width, label="to source voice", color="#55a868")
    right.bar(x + width / 2, [0 if math.isnan(s["sim_target"]) else s["sim_target"] for s in summaries], width,
              label="to target voice (conversions)", color="#c44e52")
    right.axhline(summaries[0]["sim_source"], color="#55a868", linestyle="--", linewidth=1, label="same voice (source)")
    right.axhline(summaries[0]["sim_target"], color="#c44e52", linestyle=":", linewidth=1,
                  label="source vs target voices")
    right.set_ylim(0, 1)
    right.set_title("speaker similarity (Resemblyzer)")
    for axis in (left, right):
        axis.set_xticks(x)
        axis.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"chart: {path}"


def json_ready(value):
    """NaN (a clip without speech, an empty group) -> null; numpy numbers -> Python numbers."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    machine = machine_info()
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} with "
          f"{machine['torch_threads']} threads, Python {machine['python']}, {machine['platform']}")
    print(f"judges: pocketsphinx {machine['pocketsphinx']}, resemblyzer {machine['resemblyzer']}; "
          f"voices: {machine['flite']}")

    try:  # before any model runs: the judges, then the held-out clips
        require("pocketsphinx", "pocketsphinx", "speech recognition (word error rate)")
        require("resemblyzer", "resemblyzer", "speaker similarity")
        items = build_heldout_set(args.cache, sentences=args.sentences, voices=args.voices, first=args.first)
    except (JudgeMissingError, FliteError, ValueError) as err:
        raise SystemExit(f"quality.py: {err}") from err
    rate = 16000
    clips = []
    for item in items:
        wave, rate = load_audio(item.path)
        clips.append({"voice": item.voice, "text": item.text, "path": str(item.path), "wave": wave,
                      "sentence": sum(1 for c in clips if c["voice"] == item.voice)})
    pairs = conversion_pairs(clips, list(args.voices), args.all_targets)
    print(f"held-out set: {len(clips)} clips ({len(args.voices)} voices x {args.sentences} Harvard sentences, "
          f"{sum(c['wave'].numel() for c in clips) / rate:.0f} s) in {args.cache}; {len(pairs)} conversions")

    models = load_models(args)
    for name, path in models["paths"].items():
        print(f"{name}: {path}")
    print("rows: " + ", ".join(ROWS[row] for row in ROWS if row in args.rows))

    records, model_seconds = make_outputs(args, clips, pairs, models, rate)
    tokens = token_agreement(clips, models, rate)
    judge_seconds = judge(records, clips)
    summaries = [summarise(records, clips, pairs, row) for row in ROWS if row in args.rows]

    lines = table(summaries, tokens)
    if any("same_gender" in s for s in summaries if s["row"] != "source"):
        lines += [""] + gender_lines([s for s in summaries if s["row"] != "source"])
    floor = summaries[0]
    lines += ["", f"reading guide: judges on the sources themselves: WER {fmt(floor['wer'])}, same-voice similarity "
                  f"{fmt(floor['sim_source'])}, similarity between different held-out voices {fmt(floor['sim_target'])}; "
                  f"unintelligible speech: WER ~{fmt(floor['wer_other_text'])} (the source transcripts scored against "
                  "another sentence's text)"]
    if tokens:
        per_level = ", ".join(f"{a:.3f}" for a in tokens["per_level"]) if tokens["per_level"] else "n/a"
        lines += ["", f"student vs teacher tokens on the {len(clips)} sources: {tokens['tokens_compared']} compared, "
                      f"exact {tokens['exact']:.4f} (chance {tokens['chance']:.5f}), per FSQ level {tokens['levels']}: "
                      f"{per_level}"]
    print()
    print("\n".join(lines))
    print()
    timing = {**{f"make {row}": s for row, s in model_seconds.items()}, **{f"judge {k}": s for k, s in judge_seconds.items()}}
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in timing.items())
          + f"; total {time.perf_counter() - started:.0f}")

    args.out.mkdir(parents=True, exist_ok=True)
    if not args.no_audio:
        for r in records:
            clip = clips[r["clip"]]
            name = f"{clip['voice']}{clip['sentence']:02d}" + (f"_to_{r['target']}" if r["target"] else "")
            r["audio_path"] = str(save_audio(args.out / "audio" / r["row"] / f"{name}.wav",
                                             np.clip(r["audio"], -1, 1), r["rate"], subtype="PCM_16"))
    report = {
        "machine": machine, "models": models["paths"],
        "settings": {"sentences": args.sentences, "first": args.first, "voices": list(args.voices),
                     "all_targets": args.all_targets, "chunk_ms": args.chunk_ms, "push_ms": PIECE_MS,
                     "rows": list(args.rows)},
        "rows": summaries, "tokens": tokens, "seconds": timing,
        "clips": [{k: v for k, v in c.items() if k != "wave"} for c in clips],
        "items": [{"row": r["row"], "voice": clips[r["clip"]]["voice"], "sentence": clips[r["clip"]]["sentence"],
                   "text": clips[r["clip"]]["text"], "target": r["target"],
                   "reference": clips[r["reference"]]["path"] if r["reference"] is not None else None,
                   "hypothesis": r["hypothesis"], "errors": r["errors"], "words": r["words"],
                   "sim_source": r["sim_source"], "sim_target": r["sim_target"], "no_speech": r["silent"],
                   "audio": r.get("audio_path")} for r in records],
    }
    (args.out / "quality.json").write_text(json.dumps(json_ready(report), indent=2, allow_nan=False))
    (args.out / "quality.md").write_text("\n".join(["# Quality (held-out voices and texts)", ""] + lines) + "\n")
    print(write_chart(args.out / "quality.png", summaries))
    print(f"report: {args.out / 'quality.json'}, {args.out / 'quality.md'}")
    return report


if __name__ == "__main__":
    main()
