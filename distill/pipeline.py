"""A distillation run: the stages in order (ssl, content, decoder, vocoder, joint), each a `DistillTask`
fitted by training's `Trainer` in <out>/<stage>/ and starting from the stage before; then the final
student in <out>/export and its evaluation report in <out>/eval.

    from distill.pipeline import distill_student
    from distill.settings import STAGES, load_settings
    from training.runtime import init_runtime

    outcome = distill_student(load_settings("tiny"), list(STAGES), init_runtime())

`distill/run.py` is the command line over `distill_student` and `evaluate_run`.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from kanade_stream.streaming import KanadeStudent, StudentLoadError, load_student
from kanade_stream.streaming.int8 import quantize_int8
from kanade_stream.teacher import KanadeTeacher
from training.checkpoint import check_resume_flags, prepare_folder, seed_everything
from training.data import RunData, check_data_given
from training.logs import setup_logging
from training.runtime import Runtime
from training.trainer import Trainer

from .evaluate import evaluate
from .models import (DistillError, deepen, load_teacher, load_teacher_vocoder, save_student, student_config,
                     teacher_shapes)
from .settings import ALL_STAGES, STAGES, DistillSettings
from .tasks import DistillTask, TeacherTargets

log = logging.getLogger("training")


def distill_student(settings: DistillSettings, stages: list[str], runtime: Runtime, resume: bool = False,
                    overwrite: bool = False, progress: bool = True, stop_after: int | None = None,
                    init: str | Path | None = None, add_layers: dict[str, int] | None = None) -> dict:
    """Run `stages` into settings.out. With `resume` finished stages are skipped and an unfinished one goes
    on from its checkpoint. `init` (a student folder) is the student the first stage starts from instead of a
    fresh one: to fine-tune a shipped student, or to train more steps of some stages of one (its sizes are
    kept; the teacher must match it), with `add_layers` ({"ssl": 3, "content": 1}) more layers on top of those
    transformers, each starting as the identity (models.deepen). Returns {"results": {stage: FitResult},
    "completed": bool, "report": dict | None}."""
    check_resume_flags(resume, overwrite)
    check_data_given(settings)
    out = Path(settings.out)
    setup_logging(out, runtime.is_main)
    seed_everything(settings.seed + runtime.rank)
    teacher, folder = load_teacher(settings.teacher, settings.ssl_model, runtime)
    setup_logging(out, runtime.is_main)  # training the embedded teacher logged into its own run folder
    vocoder = load_teacher_vocoder(settings.teacher_vocoder, folder, runtime.device)
    targets = TeacherTargets(teacher, vocoder)
    config = student_config(settings, teacher)
    add_layers = {part: n for part, n in (add_layers or {}).items() if n}
    if any(n < 0 for n in add_layers.values()):
        raise DistillError(f"layers can only be added (counts >= 1), got {add_layers}")
    if add_layers and init is None:
        raise DistillError("--add-ssl-layers / --add-content-layers deepen the student given by --init; a new "
                           "student takes its depths from the recipe (student: {ssl_layers: N, content_layers: M})")
    student = KanadeStudent(config) if init is None else init_student(init, teacher, runtime)
    if add_layers:
        student = deepen(student, add_layers)
        log.info("distill: layers added on top, each starting as the identity: %s (%.2f M parameters now)",
                 ", ".join(f"{n} to {part}" for part, n in add_layers.items()), student.num_parameters() / 1e6)
    if runtime.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "settings.json").write_text(json.dumps(settings.to_dict(), indent=1, default=str))
        log.info("distill: teacher %s, vocoder target %s, student %.2f M parameters, stages %s, output %s", folder,
                 "teacher vocoder" if vocoder is not None else "the real audio",
                 student.num_parameters() / 1e6, ", ".join(stages), out.resolve())
    data = RunData(settings, runtime, out)
    results = {}
    if not set(stages) & set(ALL_STAGES):
        raise DistillError(f"no stage to run in {stages}: choose from {', '.join(ALL_STAGES)}")
    first = next(stage for stage in ALL_STAGES if stage in stages)
    for stage in ALL_STAGES:
        stage_dir = out / stage
        previous = out / ALL_STAGES[ALL_STAGES.index(stage) - 1] / "export" if stage != ALL_STAGES[0] else None
        if stage not in stages:
            continue
        starts_from_init = init is not None and stage == first
        if previous is not None and (previous / "model.safetensors").is_file() and not starts_from_init:
            student = load_student(previous, device=runtime.device)  # each stage starts from the one before
        if resume and (stage_dir / "done.json").is_file():
            log.info("%s already finished: skipped", stage)
            if (stage_dir / "export" / "model.safetensors").is_file():  # the next selected stage starts from it
                student = load_student(stage_dir / "export", device=runtime.device)
            continue
        resume_from = prepare_folder(stage_dir, "auto" if resume else None, overwrite, runtime)
        seed_everything(settings.seed + runtime.rank)
        task = DistillTask(stage, runtime, settings.phase(stage), student, targets, save_student,
                           equaliser_db=settings.equaliser_db, tilt_db=settings.tilt_db)
        stream, val_batches = data.for_phase(stage, settings.seed)
        result = Trainer(task, stream, val_batches, stage_dir, progress=progress).fit(resume_from, stop_after)
        results[stage] = result
        if not result.completed:
            return {"results": results, "completed": False}
        student = task.student
    final = out / STAGES[-1] / "export"
    report = int8_report = None
    if runtime.is_main and set(stages) & set(STAGES) and (final / "model.safetensors").is_file():
        if (out / "export").exists():
            shutil.rmtree(out / "export")
        shutil.copytree(final, out / "export")
        report = evaluate_run(settings, teacher, data, out)
    if runtime.is_main and "int8" in stages:
        int8_report = evaluate_run(settings, teacher, data, out, student_dir=out / "int8" / "export", int8=True)
    runtime.barrier()
    return {"results": results, "completed": True, "report": report, "int8_report": int8_report}


def init_student(folder: str | Path, teacher: KanadeTeacher, runtime: Runtime) -> KanadeStudent:
    """The student in `folder`, checked against the teacher whose targets it will learn."""
    try:
        student = load_student(folder, device=runtime.device)
    except (FileNotFoundError, StudentLoadError) as err:
        raise DistillError(f"--init: {err}") from None
    actual = student.config.to_dict()
    wrong = [f"{key} {actual[key]} (the teacher's: {value})" for key, value in teacher_shapes(teacher).items()
             if actual[key] != value]
    if wrong:
        raise DistillError(f"--init {folder} was not distilled from a teacher like this one: " + "; ".join(wrong))
    log.info("distill: starting from the student in %s (%.2f M parameters; the recipe's student sizes are not used)",
             folder, student.num_parameters() / 1e6)
    return student


def evaluate_run(settings: DistillSettings, teacher: KanadeTeacher, data: RunData, out: Path,
                 student_dir: Path | None = None, int8: bool = False) -> dict | None:
    """The evaluation report of <out>/export (or `student_dir`) on the held-out clips, written to
    <out>/eval; with `int8`, of that student run in int8 (on CPU), written to <student_dir>/../eval."""
    student_dir = out / "export" if student_dir is None else student_dir
    student = load_student(student_dir, device=teacher.device)
    folder = out / "eval"
    if int8:
        if teacher.device.type != "cpu":
            log.info("int8 runs on CPU: evaluate %s with --eval-only on a CPU machine", student_dir)
            return None
        student, folder = quantize_int8(student), student_dir.parent / "eval"
    history = {stage: out / stage / "logs" / "val.csv" for stage in (("int8",) if int8 else STAGES)}
    return evaluate(student, teacher, data.val, folder, settings.eval_clips, history, settings.seed)
