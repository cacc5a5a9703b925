"""The one training loop shared by phase 1, phase 2 (GAN), the vocoder and the distillation stages.

A `Task` owns its models, optimizers and losses and knows how to take one step, validate and export;
the `Trainer` owns everything around that: batches, mixed precision, LR schedules, logging (tqdm, CSV,
TensorBoard, mel PNGs), periodic and on-interrupt checkpoints and exact resumption.

Folder of one phase (`<out>/<phase>/`):
    checkpoints/step_XXXXXXX.pt, checkpoints/last.pt   resumable training state
    logs/train.csv, logs/val.csv, logs/tensorboard/    metrics
    plots/step_XXXXXXX_clipN.png                       validation mels: target above, model below
    export/                                            the trained model in its release format
    done.json                                          written when the phase has finished
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from kanade_stream.checkpoint import CheckpointError

from .checkpoint import (LAST, check_compatible, link_or_copy, prune_checkpoints, read_checkpoint, rng_state,
                         save_checkpoint, set_rng_state)
from .data import BatchStream
from .logs import MetricLogger, format_metrics, save_mel_plots
from .runtime import Runtime
from .settings import OptimSettings, PhaseSettings

log = logging.getLogger("training")


# --------------------------------------------------------------------------------------------------------
# optimisation
# --------------------------------------------------------------------------------------------------------


def lr_factor(step: int, total: int, optim: OptimSettings) -> float:
    """Linear warm-up from lr / lr_div_factor to lr over `warmup` of the steps, then cosine down to
    lr / lr_div_factor / final_div_factor (the official OneCycle settings)."""
    start = 1.0 / optim.lr_div_factor
    end = start / optim.final_div_factor
    warmup = int(optim.warmup * total)
    if step < warmup:
        return start + (1.0 - start) * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(parameters, optim: OptimSettings, total_steps: int):
    params = [p for p in parameters if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: every parameter is frozen")
    optimizer = torch.optim.AdamW(params, lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, optim))
    return optimizer, scheduler


# --------------------------------------------------------------------------------------------------------
# tasks
# --------------------------------------------------------------------------------------------------------


class Task:
    """One phase's models and losses. Subclasses set `phase`, fill `self.models` (checkpointed by name),
    call `self.add_optimizer(name, parameters)` and implement `train_step`, `validate` and `export`."""

    phase = "task"

    def __init__(self, runtime: Runtime, settings: PhaseSettings):
        self.runtime, self.settings = runtime, settings
        self.models: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = {}

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    def add_optimizer(self, name: str, parameters, optim: OptimSettings | None = None) -> None:
        """An AdamW with the phase's LR schedule (`optim`: other settings than the phase's)."""
        self.optimizers[name], self.schedulers[name] = make_optimizer(parameters, optim or self.settings.optim,
                                                                      self.settings.steps)

    def optimize(self, name: str, loss: torch.Tensor) -> float:
        """Backward, clip, step and advance the LR schedule of optimizer `name`. Returns the grad norm."""
        optimizer = self.optimizers[name]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        clip = self.settings.optim.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        optimizer.step()
        self.schedulers[name].step()
        return float(norm)

    def train(self) -> None:
        """Put the models in training mode (frozen parts stay in eval mode)."""
        for model in self.models.values():
            model.train()

    def eval(self) -> None:
        for model in self.models.values():
            model.eval()

    def train_step(self, batch: torch.Tensor, step: int) -> dict[str, float]:
        raise NotImplementedError

    def validate(self, batches: list[torch.Tensor]) -> tuple[dict[str, float], list]:
        """Metrics and (target mel, model mel) pairs to draw."""
        raise NotImplementedError

    def export(self, folder: Path) -> Path:
        raise NotImplementedError

    def extra_outputs(self, folder: Path, step: int, batches: list[torch.Tensor]) -> None:
        """Anything else to write at validation time (e.g. vocoded audio)."""


# --------------------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------------------


@dataclass
class FitResult:
    step: int
    completed: bool
    interrupted: bool
    wall_s: float
    val: dict[str, float]
    first_val: dict[str, float]
    export: Path | None
    folder: Path
    data_failures: int = 0
    models: dict[str, nn.Module] = field(default_factory=dict, repr=False)  # the trained models, in memory


class _StopFlag:
    """SIGINT/SIGTERM: finish the current step, save a checkpoint, stop. A second SIGINT stops at once."""

    def __init__(self):
        self.raised = False
        self._previous = {}

    def __enter__(self):
        if _in_main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.raised and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.raised = True
        log.warning("%s received: saving a checkpoint after this step (Ctrl-C again to abort at once)",
                    signal.Signals(signum).name)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class Trainer:
    def __init__(self, task: Task, stream: BatchStream, val_batches: list[torch.Tensor], folder: str | Path,
                 progress: bool = True, tensorboard: bool = True):
        self.task, self.stream, self.val_batches = task, stream, val_batches
        self.runtime = task.runtime
        self.settings = task.settings
        self.folder = Path(folder)
        self.ckpt_dir = self.folder / "checkpoints"
        self.progress = progress
        self.logger = MetricLogger(self.folder / "logs" if self.runtime.is_main else None, tensorboard)
        self.step = 0
        self.data_failures = 0
        self.first_val: dict[str, float] = {}  # validation before any training, kept across resumes

    # --- checkpoints ------------------------------------------------------------------------------

    def state(self) -> dict:
        task = self.task
        return {
            "phase": task.phase,
            "step": self.step,
            "models": {k: m.state_dict() for k, m in task.models.items()},
            "optimizers": {k: o.state_dict() for k, o in task.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in task.schedulers.items()},
            "data": self.stream.state_dict(),
            "data_failures": self.data_failures,
            "first_val": self.first_val,
            "world_size": self.runtime.world_size,
        }

    def save(self) -> Path | None:
        rngs = self.runtime.gather(rng_state())  # a collective: every rank takes part
        path = None
        if self.runtime.is_main:
            path = save_checkpoint(self.ckpt_dir / f"step_{self.step:07d}.pt", {**self.state(), "rng": rngs})
            link_or_copy(path, self.ckpt_dir / LAST)
            prune_checkpoints(self.ckpt_dir, self.settings.keep_checkpoints)
        self.runtime.barrier()
        return path

    def load(self, path: str | Path) -> None:
        state = read_checkpoint(path)
        task = self.task
        check_compatible(state, task.phase, task.models, str(path))
        if set(state.get("optimizers", {})) != set(task.optimizers):
            raise CheckpointError(f"{path}: optimizers {sorted(state.get('optimizers', {}))} do not match "
                                  f"{sorted(task.optimizers)}")
        for name, model in task.models.items():
            model.load_state_dict(state["models"][name])
        try:
            for name, optimizer in task.optimizers.items():
                optimizer.load_state_dict(state["optimizers"][name])
            for name, scheduler in task.schedulers.items():
                scheduler.load_state_dict(state["schedulers"][name])
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"{path}: the optimizer state does not fit this model ({err})") from err
        self.step = int(state["step"])
        self.data_failures = int(state.get("data_failures", 0))
        self.first_val = dict(state.get("first_val") or {})
        if state.get("world_size", 1) != self.runtime.world_size:
            log.warning("%s was written by %d process(es), resuming with %d: the data order changes from here",
                        path, state.get("world_size", 1), self.runtime.world_size)
            self.stream.load_state_dict({"epoch": state["data"]["epoch"] + 1, "batch_in_epoch": 0})
        else:
            self.stream.load_state_dict(state["data"])
            rngs = state.get("rng") or []
            if len(rngs) > self.runtime.rank:
                set_rng_state(rngs[self.runtime.rank])
        if self.runtime.is_main:
            log.info("resumed %s from %s at step %d", task.phase, path, self.step)

    # --- validation -------------------------------------------------------------------------------

    def validate(self) -> dict[str, float]:
        metrics = {}
        if self.runtime.is_main:
            self.task.eval()
            with torch.no_grad():
                batches = [b.to(self.runtime.device) for b in self.val_batches]
                metrics, pairs = self.task.validate(batches)
                plots = self.folder / "plots"
                save_mel_plots(plots, self.step, pairs[: self.settings.plot_clips], self.logger)
                self.task.extra_outputs(plots, self.step, batches)
            self.task.train()
            self.logger.log("val", self.step, metrics)
            tqdm.write(f"[{self.task.phase}] step {self.step} validation: {format_metrics(metrics)}")
        self.runtime.barrier()
        return metrics

    # --- the loop ---------------------------------------------------------------------------------

    def fit(self, resume: str | Path | None = None, stop_after: int | None = None) -> FitResult:
        """Train to `settings.steps` (or stop after `stop_after` steps, for tests and staged runs)."""
        start_time = time.time()
        settings, runtime = self.settings, self.runtime
        if resume is not None:
            self.load(resume)
        total = settings.steps
        if self.step == 0:
            self.first_val = self.validate()
        first_val = self.first_val
        self.task.train()
        sums: dict[str, float] = {}
        count, interval_start, last_val = 0, time.time(), {}
        bar = tqdm(total=total, initial=self.step, desc=self.task.phase, dynamic_ncols=True,
                   disable=not (self.progress and runtime.is_main), mininterval=1.0)
        interrupted = False
        with _StopFlag() as stop, torch.enable_grad():  # whatever grad mode the caller left on
            while self.step < total:
                batch, failures = next(self.stream)
                self.data_failures += failures
                batch = batch.to(runtime.device, non_blocking=True)
                metrics = self.task.train_step(batch, self.step)
                self.step += 1
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + value
                count += 1
                bar.update(1)
                if self.step % settings.log_every == 0 or self.step == total:
                    means = {k: v / count for k, v in sums.items()}
                    means["lr"] = next(iter(self.task.schedulers.values())).get_last_lr()[0]
                    means["clips_per_s"] = count * batch.shape[0] * runtime.world_size / (time.time() - interval_start)
                    means["unreadable_clips"] = self.data_failures
                    self.logger.log("train", self.step, means)
                    bar.set_postfix({k: f"{v:.3g}" for k, v in list(means.items())[:3]})
                    sums, count, interval_start = {}, 0, time.time()
                if self.step % settings.val_every == 0 or self.step == total:
                    last_val = self.validate()
                interrupted = runtime.any(stop.raised)
                stopping = interrupted or (stop_after is not None and self.step >= stop_after)
                if self.step % settings.ckpt_every == 0 or self.step == total or stopping:
                    self.save()
                if stopping:
                    break
        bar.close()
        completed = self.step >= total
        export = None
        if completed and runtime.is_main:
            export = self.task.export(self.folder / "export")
            (self.folder / "done.json").write_text(json.dumps(
                {"step": self.step, "val": last_val, "first_val": first_val, "export": str(export),
                 "data_failures": self.data_failures}, indent=1))
        runtime.barrier()
        if interrupted and runtime.is_main:
            tqdm.write(f"[{self.task.phase}] interrupted at step {self.step}: checkpoint saved in "
                       f"{self.ckpt_dir}; continue with --resume")
        self.logger.close()
        return FitResult(self.step, completed, interrupted, time.time() - start_time, last_val, first_val, export,
                         self.folder, self.data_failures, dict(self.task.models))
