"""Does a little lookahead buy the causal student agreement with the teacher?

The student's causal SSL encoder must guess, from the past alone, features the teacher's WavLM computes
from both sides. With L frames of lookahead (20 ms each at 50 Hz) its frame i + L is trained toward the
teacher's frame i, so it has seen L frames past the one it stands for, at L x 20 ms more latency.

This trains copies of one student's SSL encoder in lockstep (the same batches, the same teacher targets,
computed once) for each lookahead, then measures on held-out voices: the feature MSE against the teacher
(normalised features, as the ssl stage's loss) and how many tokens the student's content encoder gets
right from those features (the teacher's own features give the ceiling, printed too). The content encoder
that reads them is one shared copy, trained alongside on the teacher's own features (the content stage), so
token agreement measures the features only:

    python benchmarks/student_lookahead.py --student kanade_stream/assets/student-tiny \\
        --teacher kanade_stream/assets/teacher-tiny \\
        --data ~/.cache/kanade_stream/ssl-corpus-full/manifest.jsonl --lookahead 0 1 2 --steps 600
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from distill.tasks import STAGE_PARTS, TeacherTargets, fsq_losses
from kanade_stream.audio import resample
from kanade_stream.streaming import load_student
from kanade_stream.teacher import KanadeTeacher
from training.data import BatchStream, ChunkDataset, filter_clips, load_data, split_train_val, validation_batches


def aligned(student_frames: torch.Tensor, teacher_frames: torch.Tensor, lookahead: int):
    """Student frame i + lookahead against teacher frame i, over the frames both have."""
    n = min(student_frames.shape[1] - lookahead, teacher_frames.shape[1])
    return student_frames[:, lookahead:lookahead + n], teacher_frames[:, :n]


def losses(student, wave16: torch.Tensor, target, lookahead: int) -> torch.Tensor:
    content, global_features = student.ssl_features(wave16)
    a, b = aligned(content, target.content, lookahead)
    ga, gb = aligned(global_features, target.global_features, lookahead)
    return F.mse_loss(a, b) + F.mse_loss(ga, gb)


@torch.no_grad()
def evaluate(student, reader, batches, targets: TeacherTargets, lookahead: int, teacher_features: bool = False) -> dict:
    """`student` makes the features, `reader`'s content encoder turns them into tokens."""
    mse = agree = frames = tokens = 0.0
    for wave in batches:
        target = targets(wave)
        if teacher_features:
            features, goal = target.content, target.content
        else:
            content, _ = student.ssl_features(resample(wave, student.config.sample_rate, student.config.ssl_sample_rate))
            features, goal = aligned(content, target.content, lookahead)
        mse += F.mse_loss(features, goal, reduction="sum").item() / features.shape[-1]
        frames += features.shape[0] * features.shape[1]
        usable = features.shape[1] // reader.config.downsample_factor * reader.config.downsample_factor
        _, indices = reader.quantizer.encode(reader.content_latent(features[:, :usable]))
        n = indices.shape[1]
        agree += (indices == target.indices[:, :n]).float().sum().item()
        tokens += indices.numel()
    return {"feature_mse": mse / frames, "token_agreement": agree / tokens, "tokens": int(tokens)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", required=True, help="the student folder to start from: its SSL encoder is copied "
                                                    "once per lookahead, its content encoder once for reading")
    p.add_argument("--teacher", required=True)
    p.add_argument("--data", required=True, help="manifest.jsonl (its heldout split is the evaluation)")
    p.add_argument("--lookahead", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--val-clips", type=int, default=48)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    teacher = KanadeTeacher.from_pretrained(args.teacher)
    targets = TeacherTargets(teacher, None)
    base = load_student(args.student)
    rate, chunk_seconds = teacher.sample_rate, 2.0
    train, val, _ = split_train_val(load_data(args.data))
    train, _ = filter_clips(train, chunk_seconds, "pad", 0.5)
    val, _ = filter_clips(val, chunk_seconds, "pad", 0.5)
    val_batches = validation_batches(val, int(chunk_seconds * rate), rate, args.val_clips, 8)
    stream = BatchStream(ChunkDataset(train, int(chunk_seconds * rate), rate, seed=0), args.batch_size)

    reader = copy.deepcopy(base)  # its content encoder learns the teacher's tokens from the teacher's features
    reader.requires_grad_(False)
    reader_parts = [reader.get_submodule(name).requires_grad_(True) for name in STAGE_PARTS["content"]]
    reader_optimizer = torch.optim.AdamW([q for part in reader_parts for q in part.parameters()], lr=args.lr,
                                         weight_decay=1e-4)
    variants = {}
    for lookahead in args.lookahead:
        student = copy.deepcopy(base)
        student.requires_grad_(False)
        parts = [student.get_submodule(name).requires_grad_(True) for name in STAGE_PARTS["ssl"]]
        params = [q for part in parts for q in part.parameters()]
        optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.steps, pct_start=0.05)
        variants[lookahead] = (student, parts, optimizer, schedule)

    results = {"student": args.student, "teacher": args.teacher, "steps": args.steps, "batch_size": args.batch_size,
               "ceiling before": evaluate(base.eval(), reader.eval(), val_batches, targets, 0, teacher_features=True)}
    for lookahead, (student, *_) in variants.items():
        results[f"lookahead {lookahead} before"] = evaluate(student.eval(), reader, val_batches, targets, lookahead)
    print(json.dumps(results, indent=1), flush=True)
    start = time.time()
    for step in range(args.steps):
        wave, _ = next(stream)
        with torch.no_grad():
            target = targets(wave)
        wave16 = resample(wave, rate, base.config.ssl_sample_rate)
        reader.eval()
        for part in reader_parts:
            part.train()
        mse, ce, _, _ = fsq_losses(reader, reader.content_latent(target.content), target)
        reader_optimizer.zero_grad(set_to_none=True)
        (mse + 0.1 * ce).backward()
        reader_optimizer.step()
        for lookahead, (student, parts, optimizer, schedule) in variants.items():
            student.eval()  # as the ssl stage: only the parts it trains are in training mode
            for part in parts:
                part.train()
            loss = losses(student, wave16, target, lookahead)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([q for g in optimizer.param_groups for q in g["params"]], 1.0)
            optimizer.step()
            schedule.step()
        if (step + 1) % 50 == 0:
            print(f"step {step + 1}: {time.time() - start:.0f} s, last loss {loss.item():.4f}", flush=True)
    results["ceiling after"] = evaluate(base.eval(), reader.eval(), val_batches, targets, 0, teacher_features=True)
    for lookahead, (student, *_) in variants.items():
        results[f"lookahead {lookahead} after"] = evaluate(student.eval(), reader, val_batches, targets, lookahead)
    print(json.dumps(results, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
