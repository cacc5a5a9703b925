"""Distill a causal, chunked streaming student from the bidirectional Kanade teacher.

    python distill/run.py                                  # embedded default, CPU: tiny teacher (trained first
                                                           # if missing) -> small student, eSpeak corpus
    python distill/run.py --teacher frothywater/kanade-25hz --vocoder charactr/vocos-mel-24khz \\
        --data /data/LibriTTS --config default --out runs/student-25hz
    torchrun --nproc_per_node 4 distill/run.py --teacher ... --data ...
    python distill/run.py --stage decoder --resume         # one stage, continuing where it stopped
    python distill/run.py --eval-only --out runs/student    # the report again, for the exported student

Stages (ssl, content, decoder, vocoder, then a joint fine-tune) each write <out>/<stage>/ (checkpoints,
logs, mel PNGs, export/); the final student is <out>/export (config.json + model.safetensors) and the
evaluation report <out>/eval/report.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from distill.settings import STAGES, DistillSettings, load_settings  # noqa: E402
from kanade_stream.audio import AudioError  # noqa: E402
from kanade_stream.checkpoint import CheckpointError  # noqa: E402
from kanade_stream.config import ConfigError  # noqa: E402
from kanade_stream.streaming import KanadeStudent, StudentConfig, load_student  # noqa: E402
from kanade_stream.teacher import KanadeTeacher  # noqa: E402
from training.checkpoint import seed_everything  # noqa: E402
from training.data import DataError  # noqa: E402
from training.run import Data, prepare_folder, setup_logging  # noqa: E402
from training.settings import REPO_ROOT, SettingsError  # noqa: E402
from training.trainer import Trainer, init_runtime, shutdown_runtime  # noqa: E402

log = logging.getLogger("training")
EMBEDDED_TEACHER_RUN = REPO_ROOT / "runs" / "teacher-tiny"


class DistillError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------------------
# the teacher, its vocoder, the student
# --------------------------------------------------------------------------------------------------------


def teacher_folder(spec: str) -> str:
    """A release folder or hub id for `spec`: "embedded", a training run folder, a release folder, a hub id."""
    if spec == "embedded":
        export = EMBEDDED_TEACHER_RUN / "export"
        if not (export / "model.safetensors").is_file():
            log.info("the embedded tiny teacher is not trained yet: training it first (training/run.py)")
            from training.run import main as train_main

            if train_main(["--out", str(EMBEDDED_TEACHER_RUN), "--resume"]) != 0:
                raise DistillError("training the embedded teacher failed (see above)")
        return str(export)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".pt":
        raise DistillError(f"{path} is a training checkpoint: pass its run folder (with export/) or the export "
                           "folder, which hold the config with the weights")
    if (path / "export" / "model.safetensors").is_file():
        return str(path / "export")
    return spec


def load_teacher(spec: str, ssl_model: str | None, device) -> tuple[KanadeTeacher, str]:
    folder = teacher_folder(spec)
    return KanadeTeacher.from_pretrained(folder, ssl_model=ssl_model, device=device), folder


def load_teacher_vocoder(spec: str | None, folder: str, device):
    """The vocoder whose audio the student's vocoder imitates; None = imitate the real audio."""
    from kanade_stream.vocoder import GRIFFIN_LIM, load_vocoder

    if spec is None:
        local = Path(folder) / "vocoder"
        if not (local / "config.yaml").is_file():
            return None
        spec = str(local)
    if spec == GRIFFIN_LIM:
        return None  # not worth imitating: the real audio is the better target
    return load_vocoder(spec, device=device)


def student_config(settings: DistillSettings, teacher: KanadeTeacher) -> StudentConfig:
    """Preset + overrides, with the distillation targets' sizes taken from the teacher."""
    options = dict(settings.student)
    preset = options.pop("preset", "default")
    if not hasattr(StudentConfig, preset):
        raise SettingsError(f"unknown student preset {preset!r} (tiny, default, large)")
    base = getattr(StudentConfig, preset)().to_dict()
    base.update(options)
    base.update(content_feature_dim=teacher.ssl.feature_dim, global_feature_dim=teacher.ssl.feature_dim,
                global_dim=teacher.global_encoder.output_channels, fsq_levels=list(teacher.local_quantizer.levels))
    config = StudentConfig.from_dict(base)
    if config.sample_rate != teacher.sample_rate or config.hop_length != teacher.config.hop_length:
        raise SettingsError("the student must use the teacher's sample rate and mel hop")
    return config


def save_student(student: KanadeStudent, folder: Path) -> Path:
    student.save(folder)
    return folder


# --------------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="recipe: distill/configs/<name>.yaml or a path (default: tiny)")
    p.add_argument("--teacher", default=None, help="hub id, release folder, training run folder, or 'embedded'")
    p.add_argument("--ssl-model", default=None, help="the teacher's WavLM (hub id or folder) if not bundled")
    p.add_argument("--vocoder", default=None, help="teacher vocoder to imitate (Vocos hub id or folder)")
    p.add_argument("--data", default=None, help="audio folder or manifest.jsonl (default: embedded eSpeak corpus)")
    p.add_argument("--out", default=None, help="output folder (default: from the config)")
    p.add_argument("--stage", default="all", choices=STAGES + ("all",), help="run one stage, or all (default)")
    p.add_argument("--steps", type=int, default=None, help="override the steps of every selected stage")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue the run in --out (finished stages are skipped)")
    p.add_argument("--overwrite", action="store_true", help="start over, deleting what --out holds")
    p.add_argument("--eval-only", action="store_true", help="only write the evaluation report of <out>/export")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
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
        for stage in STAGES:
            settings.phase(stage).batch_size = None
    if args.steps is not None:
        for stage in stages:
            s = settings.phase(stage)
            s.steps = args.steps
            s.val_every = s.ckpt_every = min(s.val_every, args.steps)
            s.log_every = min(s.log_every, args.steps)
    return settings


def run(settings: DistillSettings, stages: list[str], runtime, resume: bool = False, overwrite: bool = False,
        progress: bool = True, stop_after: int | None = None) -> dict:
    from distill.tasks import DistillTask, TeacherTargets

    out = Path(settings.out)
    setup_logging(runtime, out)
    seed_everything(settings.seed + runtime.rank)
    teacher, folder = load_teacher(settings.teacher, settings.ssl_model, runtime.device)
    vocoder = load_teacher_vocoder(settings.teacher_vocoder, folder, runtime.device)
    targets = TeacherTargets(teacher, vocoder)
    config = student_config(settings, teacher)
    if runtime.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "settings.json").write_text(json.dumps(settings.to_dict(), indent=1, default=str))
        log.info("distill: teacher %s, vocoder target %s, student %.2f M parameters, stages %s, output %s", folder,
                 "teacher vocoder" if vocoder is not None else "the real audio",
                 KanadeStudent(config).num_parameters() / 1e6, ", ".join(stages), out.resolve())
    data = Data(settings, runtime, out)
    student = KanadeStudent(config)
    results = {}
    for stage in STAGES:
        stage_dir = out / stage
        previous = out / STAGES[STAGES.index(stage) - 1] / "export" if stage != STAGES[0] else None
        if stage not in stages:
            continue
        if previous is not None and (previous / "model.safetensors").is_file():
            student = load_student(previous, device=runtime.device)  # each stage starts from the one before
        if resume and (stage_dir / "done.json").is_file():
            log.info("%s already finished: skipped", stage)
            continue
        resume_from = prepare_folder(stage_dir, "auto" if resume else None, overwrite, runtime)
        seed_everything(settings.seed + runtime.rank)
        task = DistillTask(stage, runtime, settings.phase(stage), student, targets, save_student)
        stream, val_batches = data.for_phase(stage, settings.seed)
        result = Trainer(task, stream, val_batches, stage_dir, progress=progress).fit(resume_from, stop_after)
        results[stage] = result
        if not result.completed:
            return {"results": results, "completed": False}
        student = task.student
    final = out / STAGES[-1] / "export"
    report = None
    if runtime.is_main and (final / "model.safetensors").is_file():
        if (out / "export").exists():
            shutil.rmtree(out / "export")
        shutil.copytree(final, out / "export")
        report = evaluate_run(settings, teacher, data, out)
    runtime.barrier()
    return {"results": results, "completed": True, "report": report}


def evaluate_run(settings: DistillSettings, teacher: KanadeTeacher, data, out: Path) -> dict:
    from distill.evaluate import evaluate

    student = load_student(out / "export", device=teacher.device)
    history = {stage: out / stage / "logs" / "val.csv" for stage in STAGES}
    return evaluate(student, teacher, data.val, out / "eval", settings.eval_clips, history, settings.seed)


def main(argv=None) -> int:
    args = parse_args(argv)
    stages = list(STAGES) if args.stage == "all" else [args.stage]
    runtime = None
    start = time.time()
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    try:
        settings = apply_overrides(load_settings(args.config), args, stages)
        runtime = init_runtime(settings.precision, args.device)
        if args.eval_only:
            setup_logging(runtime)
            out = Path(settings.out)
            if not (out / "export" / "model.safetensors").is_file():
                raise DistillError(f"{out}/export holds no student: run the distillation first (or pass --out)")
            teacher, _ = load_teacher(settings.teacher, settings.ssl_model, runtime.device)
            report = evaluate_run(settings, teacher, Data(settings, runtime, out), out)
        else:
            outcome = run(settings, stages, runtime, args.resume, args.overwrite, not args.no_progress)
            report = outcome.get("report")
            if not outcome["completed"]:
                return 130
    except (DistillError, SettingsError, DataError, CheckpointError, ConfigError, AudioError, FileNotFoundError,
            OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        if runtime is not None:
            shutdown_runtime()
    if report is not None:
        out = Path(settings.out)
        print(f"\ndistillation finished in {time.time() - start:.0f} s")
        print(f"  student: {(out / 'export').resolve()}")
        print(f"  report:  {(out / 'eval' / 'report.md').resolve()}")
        for key in ("token_agreement", "mel_l1_to_teacher", "streaming_equals_offline", "vc_similarity_to_reference",
                    "vc_similarity_to_source", "vc_content_token_agreement"):
            if key in report:
                print(f"  {key}: {report[key]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
