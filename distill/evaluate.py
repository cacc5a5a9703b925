"""The distillation report: how close the student is to the teacher, on voices training never saw.

    token agreement   exact token index and per FSQ level, student tokens vs teacher tokens
    mel distance      L1 between the student's and the teacher's resynthesis mels
    streaming check   StreamingEncoder on random-sized pushes vs the student's offline encode
    voice conversion  speaker similarity of the converted audio to the reference and to the source
                      (Resemblyzer's pretrained speaker encoder, shipped inside its PyPI wheel), and a
                      content check: teacher tokens of the converted audio vs of the source

Written as report.json, report.md and PNGs (mel comparisons, agreement over training steps).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch

from kanade_stream.audio import resample
from kanade_stream.streaming import KanadeStudent, StreamingEncoder
from kanade_stream.teacher import KanadeTeacher
from training.data import read_chunk
from training.logs import mel_panel, write_png

MAX_EVAL_SECONDS = 6.0


def _digits(indices: torch.Tensor, levels: list[int]) -> torch.Tensor:
    basis = torch.cumprod(torch.tensor([1] + levels[:-1]), 0)
    return (indices.long()[..., None] // basis) % torch.tensor(levels)


def _speaker_encoder():
    try:
        from resemblyzer import VoiceEncoder
    except ImportError:
        return None
    return VoiceEncoder("cpu", verbose=False)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))


def load_clips(records: list[dict], count: int, sample_rate: int) -> list[tuple[dict, torch.Tensor]]:
    """Up to `count` held-out clips (at most MAX_EVAL_SECONDS each), spread over the speakers."""
    by_speaker: dict[str, list[dict]] = {}
    for record in records:
        by_speaker.setdefault(record["speaker"], []).append(record)
    ordered = [r for group in zip(*by_speaker.values()) for r in group] if by_speaker else []
    ordered += [r for r in records if r not in ordered]
    clips = []
    for record in ordered[:count]:
        seconds = min(float(record["duration"]), MAX_EVAL_SECONDS)
        samples = int(seconds * 25) * sample_rate // 25  # whole teacher tokens
        clips.append((record, read_chunk(record, samples, sample_rate, 0.0)))
    return clips


@torch.no_grad()
def evaluate(student: KanadeStudent, teacher: KanadeTeacher, records: list[dict], out: Path, count: int = 8,
             history: dict[str, Path] | None = None, seed: int = 0) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    student, teacher = student.eval(), teacher.eval()
    rate, ssl_rate = teacher.sample_rate, student.config.ssl_sample_rate
    clips = load_clips(records, count, rate)
    if not clips:
        raise ValueError("no held-out clips to evaluate on")
    levels = teacher.local_quantizer.levels
    exact, per_level, mel_l1, stream_ok, frames = [], [], [], [], 0
    panels = []
    rng = np.random.default_rng(seed)
    for i, (_, wave) in enumerate(clips):
        t = teacher.encode(wave)
        s = student.encode(resample(wave, rate, ssl_rate), sample_rate=ssl_rate)
        n = min(t.content_token_indices.numel(), s.content_token_indices.numel())
        ti, si = t.content_token_indices[:n].cpu(), s.content_token_indices[:n].cpu()
        exact.append((ti == si).float().sum().item())
        per_level.append((_digits(ti, levels) == _digits(si, levels)).float().sum(0).numpy())
        frames += n
        # resynthesis mels, each model from its own tokens and its own speaker embedding
        teacher_mel = teacher.decode(t.global_embedding, content_token_indices=t.content_token_indices,
                                     target_audio_length=wave.numel())
        student_mel = student.decode_mel(s.content_embedding[None], s.global_embedding[None])[0]
        m = min(teacher_mel.shape[-1], student_mel.shape[-1])
        mel_l1.append(float((teacher_mel[:, :m] - student_mel[:, :m]).abs().mean()))
        if i < 3:
            panels.append(mel_panel([teacher_mel[:, :m], student_mel[:, :m]]))
        # streaming: random push sizes must give exactly the offline tokens
        encoder = StreamingEncoder(student, sample_rate=rate)
        pieces, pos, x = [], 0, wave.numpy()
        while pos < len(x):
            size = int(rng.integers(1, 4000))
            pieces.append(encoder.push(x[pos : pos + size]))
            pos += size
        pieces.append(encoder.flush())
        streamed = torch.cat([p.cpu() for p in pieces])
        offline = student.encode(wave, sample_rate=rate).content_token_indices.cpu()
        stream_ok.append(bool(torch.equal(streamed, offline)))

    report: dict = {
        "clips": len(clips),
        "tokens_compared": frames,
        "token_agreement": sum(exact) / max(frames, 1),
        "level_agreement": (np.sum(per_level, axis=0) / max(frames, 1)).round(4).tolist(),
        "chance_token_agreement": 1 / teacher.local_quantizer.codebook_size,
        "mel_l1_to_teacher": float(np.mean(mel_l1)),
        "streaming_equals_offline": all(stream_ok),
    }
    report.update(_voice_conversion(student, teacher, clips))
    for i, panel in enumerate(panels):
        write_png(out / f"mel_clip{i}_teacher_top_student_bottom.png", panel)
    if history:
        curve = _agreement_curve(history)
        if curve is not None:
            write_png(out / "token_agreement_over_steps.png", curve[0])
            report["agreement_history"] = curve[1]
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(to_markdown(report))
    return report


def _voice_conversion(student: KanadeStudent, teacher: KanadeTeacher, clips) -> dict:
    """Each clip converted to the voice of a clip by another speaker."""
    rate = teacher.sample_rate
    encoder = _speaker_encoder()
    pairs = [(clips[i], clips[j]) for i in range(len(clips)) for j in range(len(clips))
             if clips[i][0]["speaker"] != clips[j][0]["speaker"]][: len(clips)]
    if not pairs:
        return {"voice_conversion": "needs held-out clips from two speakers"}
    to_ref, to_src, content, content_levels = [], [], [], []
    levels = teacher.local_quantizer.levels
    for (_, source), (_, reference) in pairs:
        converted = student.convert(source, reference, sample_rate=rate)
        n = min(converted.numel(), source.numel())
        source_tokens = teacher.encode(source).content_token_indices
        converted_tokens = teacher.encode(converted[:n].cpu()).content_token_indices
        k = min(source_tokens.numel(), converted_tokens.numel())
        content.append(float((source_tokens[:k] == converted_tokens[:k]).float().mean()))
        content_levels.append(float((_digits(source_tokens[:k].cpu(), levels) ==
                                     _digits(converted_tokens[:k].cpu(), levels)).float().mean()))
        if encoder is not None:
            as16 = lambda w: resample(w.cpu().float(), rate, 16000).numpy()  # noqa: E731 - Resemblyzer takes 16 kHz
            e_conv, e_src, e_ref = (encoder.embed_utterance(as16(w)) for w in (converted[:n], source, reference))
            to_ref.append(_cosine(e_conv, e_ref))
            to_src.append(_cosine(e_conv, e_src))
    result = {"vc_pairs": len(pairs), "vc_content_token_agreement": float(np.mean(content)),
              "vc_content_level_agreement": float(np.mean(content_levels))}
    if encoder is not None:
        result.update(vc_similarity_to_reference=float(np.mean(to_ref)), vc_similarity_to_source=float(np.mean(to_src)),
                      speaker_encoder="resemblyzer (GE2E, pretrained weights from its PyPI wheel)")
    else:
        result["speaker_encoder"] = "not installed (pip install resemblyzer)"
    return result


def _agreement_curve(history: dict[str, Path]):
    """Validation token agreement against the global step, from the stages' val.csv logs."""
    points, offset = [], 0
    for stage, csv_path in history.items():
        last = 0
        if csv_path.is_file():
            with open(csv_path) as f:
                for row in csv.DictReader(f):
                    step = int(float(row["step"]))
                    last = max(last, step)
                    if row.get("token_agreement") not in (None, ""):
                        points.append((offset + step, float(row["token_agreement"]), stage))
        offset += last
    if len(points) < 2:
        return None
    height, width = 160, 480
    image = np.full((height, width, 3), 255, dtype=np.uint8)
    image[height - 1, :] = image[:, 0] = 0
    max_step = max(p[0] for p in points) or 1
    xy = [(int(p[0] / max_step * (width - 1)), int((1 - p[1]) * (height - 1))) for p in points]
    for (x0, y0), (x1, y1) in zip(xy[:-1], xy[1:]):
        for t in np.linspace(0, 1, max(abs(x1 - x0), abs(y1 - y0), 1) + 1):
            x, y = int(round(x0 + (x1 - x0) * t)), int(round(y0 + (y1 - y0) * t))
            image[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2] = (33, 145, 140)
    return image, [{"step": s, "token_agreement": a, "stage": st} for s, a, st in points]


def to_markdown(report: dict) -> str:
    lines = ["# Distillation report", "", "Held-out voices (never seen in training).", "", "| metric | value |",
             "|---|---|"]
    for key, value in report.items():
        if key == "agreement_history":
            continue
        if isinstance(value, float):
            value = f"{value:.4f}"
        lines.append(f"| {key} | {value} |")
    lines += ["", "Pictures: `mel_clip*_teacher_top_student_bottom.png`, `token_agreement_over_steps.png`."]
    return "\n".join(lines) + "\n"
