"""A teacher training run: its phases in order (phase 1, GAN phase 2, vocoder), each a `Task` fitted by the
`Trainer` in <out>/<phase>/, its result published to <out>/export.

    from training.pipeline import train_teacher
    from training.runtime import init_runtime
    from training.settings import load_settings

    results = train_teacher(load_settings("tiny"), ["phase1", "phase2", "vocoder"], init_runtime())

`training/run.py` is the command line over `train_teacher`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .checkpoint import check_resume_flags, prepare_folder, seed_everything
from .data import RunData, check_data_given
from .export import publish
from .logs import setup_logging
from .models import phase1_config, recipe_mel, resolve_ssl_model
from .phase1 import Phase1Task
from .phase2 import Phase2Task
from .runtime import Runtime
from .settings import RunSettings
from .trainer import FitResult, Task, Trainer
from .vocoder import VocoderTask

log = logging.getLogger("training")


class RunError(RuntimeError):
    """A run that cannot go on as asked; the message says what to do."""


def make_task(phase: str, settings: RunSettings, runtime: Runtime, ssl_model: str, out: Path,
              init: str | None) -> Task:
    """The Task of one phase; `init` is the release (phases 1, 2) or Vocos (vocoder) to start from."""
    ps = settings.phase(phase)
    if phase == "phase1":
        return Phase1Task(runtime, ps, phase1_config(settings, ssl_model, init), ssl_model, init=init)
    if phase == "phase2":
        if init is None:
            init = out / "phase1" / "export"
            if not (init / "model.safetensors").is_file():
                raise RunError(f"phase 2 starts from phase 1's result, and {init} has none: run --phase 1 first, "
                               "or pass --init <Kanade release folder or hub id>")
        return Phase2Task(runtime, ps, init, ssl_model)
    return VocoderTask(runtime, ps, recipe_mel(settings), settings.data.sample_rate, init=init)


def train_teacher(settings: RunSettings, phases: list[str], runtime: Runtime, resume: str | None = None,
          init: str | None = None, vocoder_init: str | None = None, overwrite: bool = False,
          stop_after: int | None = None, progress: bool = True) -> dict[str, FitResult]:
    """Train `phases` in order into settings.out. `resume`: None (start; a folder that holds a run is refused
    unless `overwrite`), "auto" (continue each unfinished phase, skip finished ones) or a checkpoint file
    (one phase). `init` starts the first phase from a release, `vocoder_init` the vocoder from a Vocos.
    `stop_after` stops each phase after that many steps (with a checkpoint). Stops at the first phase that
    does not complete; the results say how far each got."""
    check_resume_flags(resume, overwrite)
    if set(phases) - {"ssl"}:  # the ssl phase reads its own synthetic corpus
        check_data_given(settings)
    out = Path(settings.out)
    setup_logging(out, runtime.is_main)
    seed_everything(settings.seed + runtime.rank)
    ssl_model = resolve_ssl_model(settings.ssl_model)
    if runtime.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "settings.json").write_text(json.dumps(settings.to_dict(), indent=1, default=str))
        log.info("run: phases %s, %d process(es) on %s (%s), output %s", ", ".join(phases), runtime.world_size,
                 runtime.device, runtime.precision, out.resolve())
    if resume not in (None, "auto") and len(phases) != 1:
        raise RunError("--resume with a checkpoint file needs a single --phase (1, 2 or vocoder); "
                       "plain --resume continues every phase of the run in --out")
    data = RunData(settings, runtime, out)
    results: dict[str, FitResult] = {}
    for i, phase in enumerate(phases):
        folder = out / phase
        if resume is not None and (folder / "done.json").is_file():
            if runtime.is_main:
                log.info("%s already finished (%s): skipped", phase, folder / "done.json")
            continue
        resume_from = prepare_folder(folder, resume, overwrite, runtime)
        phase_init = vocoder_init if phase == "vocoder" and vocoder_init else (init if i == 0 else None)
        seed_everything(settings.seed + runtime.rank)
        task = make_task(phase, settings, runtime, ssl_model, out, phase_init)
        stream, val_batches = data.for_phase(phase, settings.seed,
                                             phone_labels=getattr(task, "uses_phone_labels", False))
        result = Trainer(task, stream, val_batches, folder, progress=progress).fit(resume=resume_from,
                                                                                 stop_after=stop_after)
        results[phase] = result
        if result.completed and runtime.is_main:
            publish(phase, result.export, out)
        runtime.barrier()
        if not result.completed:
            break
    return results


def summary(results: dict[str, FitResult], out: Path, wall_s: float) -> str:
    """What a run did, for the end of the command line's output."""
    lines = []
    for phase, r in results.items():
        first = r.first_val.get("mel_l1")
        last = r.val.get("mel_l1")
        state = "done" if r.completed else ("interrupted" if r.interrupted else "stopped")
        change = f"{first:.3f} -> {last:.3f}" if first is not None and last is not None else \
            (f"{last:.3f}" if last is not None else "n/a")
        extra = " ".join(f"{k}={v:.4g}" for k, v in r.val.items() if k != "mel_l1")
        lines.append(f"  {phase}: {state} at step {r.step} in {r.wall_s:.0f} s; held-out mel L1 {change} {extra}")
    export = out / "export"
    if (export / "model.safetensors").is_file():
        lines.append(f"  teacher: {export.resolve()} (config.yaml + model.safetensors; SSL model in ssl_model.txt)")
    if (export / "vocoder" / "pytorch_model.bin").is_file():
        lines.append(f"  vocoder: {(export / 'vocoder').resolve()} (Vocos: config.yaml + pytorch_model.bin)")
    return f"finished in {wall_s:.0f} s\n" + "\n".join(lines)
