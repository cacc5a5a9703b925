"""Distill a causal, chunked streaming student from the bidirectional Kanade teacher.

    python distill/run.py                                  # embedded default, CPU: tiny teacher (trained first
                                                           # if missing) -> small student, eSpeak corpus
    torchrun --nproc_per_node 8 distill/run.py --config kanade_25hz --data /data/LibriTTS   # official teacher,
                                                           # WavLM Base+, official Vocos target (kanade_12hz too)
    python distill/run.py --config kanade_25hz --data /data/LibriTTS --batch-size 8           # one GPU
    python distill/run.py --stage decoder --resume         # one stage, continuing where it stopped
    python distill/run.py --eval-only --out runs/student    # the report again, for the exported student

Stages (ssl, content, decoder, vocoder, then a joint fine-tune) each write <out>/<stage>/ (checkpoints,
logs, mel PNGs, export/); the final student is <out>/export (config.json + model.safetensors) and the
evaluation report <out>/eval/report.{json,md}.

This is the command line over `distill.pipeline.distill_student`; `python -m distill.run` works the same.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from distill.models import DistillError, load_teacher
from distill.pipeline import distill_student, evaluate_run
from distill.settings import ALL_STAGES, STAGES, DistillSettings, check_settings, load_settings
from kanade_stream.audio import AudioError
from kanade_stream.checkpoint import CheckpointError
from kanade_stream.config import ConfigError
from training.data import DataError, RunData
from training.logs import setup_logging
from training.runtime import init_runtime, shutdown_runtime
from training.settings import SettingsError


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="recipe: distill/configs/<name>.yaml or a path (default: tiny)")
    p.add_argument("--teacher", default=None, help="hub id, release folder, training run folder, or 'embedded'")
    p.add_argument("--ssl-model", default=None, help="the teacher's WavLM (hub id or folder) if not bundled")
    p.add_argument("--vocoder", default=None, help="teacher vocoder to imitate (Vocos hub id or folder)")
    p.add_argument("--data", default=None, help="audio folder or manifest.jsonl (default: embedded eSpeak corpus)")
    p.add_argument("--out", default=None, help="output folder (default: from the config)")
    p.add_argument("--stage", nargs="+", default=["all"], choices=ALL_STAGES + ("all",),
                   help="run these stages in order, or all (default: ssl to joint, the float student); int8 then "
                        "fine-tunes that student through int8 rounding into <out>/int8/export (run it in int8: "
                        "--precision int8 in the live programs)")
    p.add_argument("--init", default=None,
                   help="a student folder (config.json + model.safetensors) to start from instead of a fresh "
                        "student, e.g. --init kanade_stream/assets/student-tiny --stage ssl joint: more training "
                        "of the shipped student's front end, then end to end")
    p.add_argument("--add-ssl-layers", type=int, default=0, metavar="N",
                   help="with --init: N more causal SSL layers on top of the student's, each starting as the "
                        "identity, so it starts exactly where --init was; then train them, e.g. --stage ssl")
    p.add_argument("--add-content-layers", type=int, default=0, metavar="N",
                   help="with --init: N more content-encoder layers on top, each starting as the identity "
                        "(train them with --stage content or joint)")
    p.add_argument("--steps", type=int, default=None, help="override the steps of every selected stage")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--equaliser", type=float, default=None, metavar="DB",
                   help="hear every training chunk through another microphone, its bass and treble each moved by "
                        "up to +-DB dB, before teacher and student see it (equaliser_db)")
    p.add_argument("--tilt", type=float, default=None, metavar="DB",
                   help="with --equaliser: each microphone also tilts the spectrum, bass up and treble down (or the "
                        "reverse) by one draw within +-DB dB (tilt_db)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out: finished stages are skipped, an unfinished one goes on from its "
                        "last.pt, else its newest readable step_*.pt; never deletes anything")
    p.add_argument("--overwrite", action="store_true",
                   help="start over, deleting the folder of each stage run (needed when it already holds a run)")
    p.add_argument("--eval-only", action="store_true", help="only write the evaluation report of <out>/export")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16"],
                   help="auto: bf16 autocast on GPU, fp32 on CPU; bf16 on a CPU with AVX512-BF16 or AMX is faster "
                        "(training/README.md)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (on a shared or busy CPU, 1 is often much faster than several)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def apply_overrides(settings: DistillSettings, args, stages) -> DistillSettings:
    for key in ("teacher", "out"):
        if getattr(args, key) is not None:
            setattr(settings, key, getattr(args, key))
    if args.vocoder is not None:
        settings.teacher_vocoder = args.vocoder
    if args.ssl_model is not None:
        settings.ssl_model = args.ssl_model
    if args.data is not None:
        settings.data.path = args.data
    if args.batch_size is not None:
        settings.data.batch_size = args.batch_size
        for stage in ALL_STAGES:
            settings.phase(stage).batch_size = None
    if args.equaliser is not None:
        settings.equaliser_db = args.equaliser
    if args.tilt is not None:
        settings.tilt_db = args.tilt
    if args.precision is not None:
        settings.precision = args.precision
    if args.steps is not None:
        for stage in stages:
            s = settings.phase(stage)
            s.steps = args.steps
            s.val_every = s.ckpt_every = min(s.val_every, args.steps)
            s.log_every = min(s.log_every, args.steps)
    check_settings(settings)
    return settings


def main(argv=None) -> int:
    args = parse_args(argv)
    stages = list(STAGES) if "all" in args.stage else [s for s in ALL_STAGES if s in args.stage]
    runtime = report = int8_report = None
    start = time.time()
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    try:
        settings = apply_overrides(load_settings(args.config), args, stages)
        runtime = init_runtime(settings.precision, args.device)
        if args.eval_only:
            setup_logging(is_main=runtime.is_main)
            out = Path(settings.out)
            if not (out / "export" / "model.safetensors").is_file():
                raise DistillError(f"{out}/export holds no student: run the distillation first (or pass --out)")
            teacher, _ = load_teacher(settings.teacher, settings.ssl_model, runtime)
            report = evaluate_run(settings, teacher, RunData(settings, runtime, out), out)
        else:
            outcome = distill_student(settings, stages, runtime, args.resume, args.overwrite, not args.no_progress,
                                      init=args.init,
                                      add_layers={"ssl": args.add_ssl_layers, "content": args.add_content_layers})
            report, int8_report = outcome.get("report"), outcome.get("int8_report")
            if not outcome["completed"]:
                return 130
    except (DistillError, SettingsError, DataError, CheckpointError, ConfigError, AudioError, FileNotFoundError,
            OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        if runtime is not None:
            shutdown_runtime()
    out = Path(settings.out)
    for what, folder, result in (("student", out, report), ("int8 student", out / "int8", int8_report)):
        if result is None:
            continue
        print(f"\ndistillation finished in {time.time() - start:.0f} s")
        print(f"  {what}: {(folder / 'export').resolve()}")
        print(f"  report:  {(folder / 'eval' / 'report.md').resolve()}")
        for key in ("token_agreement", "mel_l1_to_teacher", "streaming_equals_offline", "vc_similarity_to_reference",
                    "vc_similarity_to_source", "vc_content_token_agreement"):
            if key in result:
                print(f"  {key}: {result[key]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
