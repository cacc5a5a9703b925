"""Train the Kanade teacher (phase 1, GAN phase 2) and its Vocos vocoder.

    python training/run.py                        # tiny teacher + vocoder on the embedded corpus, CPU, minutes
    python training/run.py --config kanade_25hz --data /data/LibriTTS --phase 1
    torchrun --nproc_per_node 8 training/run.py --config kanade_25hz --data /data/LibriTTS
    python training/run.py --phase vocoder --init charactr/vocos-mel-24khz --data /data/LibriTTS
    python training/run.py --resume               # continue the run in --out where it stopped

Everything lands in --out (default from the config, runs/teacher-tiny for the tiny one): one folder per
phase (checkpoints, CSV/TensorBoard logs, mel PNGs) and `export/`, the latest teacher in the official
release format (config.yaml + model.safetensors + ssl_model.txt) with the vocoder in `export/vocoder/`.
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

from kanade_stream.audio import AudioError, MelSpectrogram  # noqa: E402
from kanade_stream.checkpoint import CheckpointError  # noqa: E402
from kanade_stream.config import ConfigError, tiny_config  # noqa: E402
from training.checkpoint import LAST, link_or_copy, seed_everything  # noqa: E402
from training.data import (BatchStream, ChunkDataset, DataError, filter_clips, load_data,  # noqa: E402
                           read_manifest, split_train_val, validation_batches, MANIFEST_NAME)
from training.settings import (PHASES, RunSettings, SettingsError, check_settings, load_settings,  # noqa: E402
                               model_config, resolve_ssl_model)
from training.trainer import FitResult, Runtime, Trainer, init_runtime, shutdown_runtime  # noqa: E402

log = logging.getLogger("training")

PHASE_ALIASES = {"1": ["phase1"], "2": ["phase2"], "phase1": ["phase1"], "phase2": ["phase2"],
                 "vocoder": ["vocoder"], "all": list(PHASES)}


class RunError(RuntimeError):
    pass


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python training/run.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--config", default=None,
                   help="recipe: tiny (default), kanade_25hz, kanade_12hz, or a YAML file (see training/configs)")
    p.add_argument("--phase", default="all", choices=["1", "2", "vocoder", "all"],
                   help="what to train: 1 (tokenizer), 2 (GAN post-training of the mel decoder), vocoder, or all in turn")
    p.add_argument("--data", default=None,
                   help="a folder of audio (scanned recursively; speaker = folder), a manifest.jsonl, or a folder "
                        "holding one (default: the embedded eSpeak corpus)")
    p.add_argument("--out", default=None, help="output folder (default: the config's, e.g. runs/teacher-tiny)")
    p.add_argument("--steps", type=int, default=None, help="training steps of each phase run (default: the config's)")
    p.add_argument("--batch-size", type=int, default=None, help="global batch size, split over torchrun processes")
    p.add_argument("--chunk-seconds", type=float, default=None, help="training chunk length (paper: 5.76)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate of each phase run")
    p.add_argument("--num-workers", type=int, default=None, help="data loader workers per process")
    p.add_argument("--ssl-model", default=None,
                   help="WavLM: hub id (microsoft/wavlm-base-plus), local transformers folder, or 'embedded' (tiny)")
    p.add_argument("--init", default=None,
                   help="starting weights of the first phase run: a Kanade release (folder or hub id) for phases "
                        "1/2; a Vocos (charactr/vocos-mel-24khz or a folder) for --phase vocoder")
    p.add_argument("--vocoder-init", default=None, help="a Vocos to fine-tune when --phase all reaches the vocoder")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue where the run in --out stopped (or from the given checkpoint file)")
    p.add_argument("--overwrite", action="store_true", help="start over, deleting an earlier run of the same phase")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop (with a checkpoint) after this many steps of the phase; the schedule still spans --steps")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16"],
                   help="auto: bf16 autocast on GPU, fp32 on CPU")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per process (torch.set_num_threads); 1 avoids thrashing on a busy machine")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--val-every", type=int, default=None, help="validation interval in steps")
    p.add_argument("--ckpt-every", type=int, default=None, help="checkpoint interval in steps")
    p.add_argument("--log-every", type=int, default=None, help="logging interval in steps")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return p.parse_args(argv)


def apply_overrides(settings: RunSettings, args: argparse.Namespace, phases: list[str]) -> RunSettings:
    data = settings.data
    for attr, value in (("path", args.data), ("batch_size", args.batch_size), ("chunk_seconds", args.chunk_seconds),
                        ("num_workers", args.num_workers)):
        if value is not None:
            setattr(data, attr, value)
    for attr, value in (("out", args.out), ("ssl_model", args.ssl_model), ("precision", args.precision),
                        ("seed", args.seed)):
        if value is not None:
            setattr(settings, attr, value)
    for phase in phases:
        ps = settings.phase(phase)
        for attr, value in (("steps", args.steps), ("val_every", args.val_every), ("ckpt_every", args.ckpt_every),
                            ("log_every", args.log_every)):
            if value is not None:
                setattr(ps, attr, value)
        if args.batch_size is not None:
            ps.batch_size = None
        if args.chunk_seconds is not None:
            ps.chunk_seconds = None
        if args.lr is not None:
            ps.optim.lr = args.lr
    check_settings(settings)
    return settings


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (it may be replaced, e.g. by pytest)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(runtime: Runtime, out: Path | None = None) -> None:
    log.setLevel(logging.INFO if runtime.is_main else logging.WARNING)
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("[training] %(message)s"))
        log.addHandler(handler)
    log.propagate = False
    if out is not None and runtime.is_main:
        out.mkdir(parents=True, exist_ok=True)
        for h in [h for h in log.handlers if isinstance(h, logging.FileHandler)]:
            log.removeHandler(h)
            h.close()
        handler = logging.FileHandler(out / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)


# --------------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------------


class Data:
    """The run's manifest split into training and held-out validation clips (built once, on rank 0 first)."""

    def __init__(self, settings: RunSettings, runtime: Runtime, out: Path):
        self.settings, self.runtime = settings, runtime
        path = settings.data.path
        scanned = path is not None and Path(path).is_dir() and not (Path(path) / MANIFEST_NAME).is_file()
        if runtime.is_main:  # builds the embedded corpus, or scans the folder once and writes its manifest
            manifest = load_data(path, cache_dir=out if scanned else None)
        runtime.barrier()
        if not runtime.is_main:
            manifest = read_manifest(out / MANIFEST_NAME) if scanned else load_data(path)
        self.manifest = manifest
        self.train, self.val, how = split_train_val(manifest, settings.data.heldout_speakers)
        if runtime.is_main:
            speakers = lambda recs: len({r["speaker"] for r in recs})  # noqa: E731
            log.info("data: %d training clips (%d speakers, %.1f min), %d validation clips (%d speakers; %s)",
                     len(self.train), speakers(self.train), sum(r["duration"] for r in self.train) / 60,
                     len(self.val), speakers(self.val), how)
            for reason, n in manifest.skipped.items():
                log.info("data: %d file(s) skipped while reading the data: %s", n, reason)

    def for_phase(self, phase: str, seed: int) -> tuple[BatchStream, list[torch.Tensor]]:
        s, runtime = self.settings, self.runtime
        rate = s.data.sample_rate
        chunk_seconds = s.chunk_seconds(phase)
        chunk = int(round(chunk_seconds * rate))
        train, counts = filter_clips(self.train, chunk_seconds, s.data.short_clips, s.data.min_seconds)
        val, val_counts = filter_clips(self.val, chunk_seconds, "pad", s.data.min_seconds)
        if runtime.is_main:
            for name, n in counts.items():
                log.info("data [%s]: %d training clip(s) %s (chunk %.2f s, short_clips=%s, min %.2f s)", phase, n,
                         name.replace("_", " "), chunk_seconds, s.data.short_clips, s.data.min_seconds)
        if not train:
            raise DataError(f"no training clip is long enough for {chunk_seconds} s chunks (short_clips="
                            f"{s.data.short_clips}, min_seconds={s.data.min_seconds}): use --chunk-seconds or pad")
        if not val:
            raise DataError(f"no validation clip is at least {s.data.min_seconds} s long")
        batch = s.batch_size(phase)
        if batch % runtime.world_size:
            raise SettingsError(f"batch size {batch} does not split over {runtime.world_size} processes")
        dataset = ChunkDataset(train, chunk, rate, seed=seed)
        stream = BatchStream(dataset, batch // runtime.world_size, s.data.num_workers, runtime.rank,
                             runtime.world_size, seed, pin_memory=runtime.device.type == "cuda")
        val_batches = (validation_batches(val, chunk, rate, s.data.val_clips, s.data.val_batch_size)
                       if runtime.is_main else [])
        return stream, val_batches


# --------------------------------------------------------------------------------------------------------
# phases
# --------------------------------------------------------------------------------------------------------


def ssl_feature_dim(ssl_model: str) -> int:
    from transformers import AutoConfig

    try:
        return int(AutoConfig.from_pretrained(ssl_model).hidden_size)
    except OSError as err:
        raise RunError(f"cannot load the SSL model config {ssl_model!r}: {err}\nWithout network access pass a local "
                       "transformers folder (--ssl-model) or --ssl-model embedded for the tiny one.") from err


def mel_of(settings: RunSettings) -> MelSpectrogram:
    config = tiny_config() if settings.model == "tiny" else model_config(settings, 0)
    return MelSpectrogram(config.sample_rate, config.n_fft, config.hop_length, config.n_mels, config.padding)


def make_task(phase: str, settings: RunSettings, runtime: Runtime, ssl_model: str, out: Path, init: str | None):
    ps = settings.phase(phase)
    if phase == "phase1":
        from training.phase1 import Phase1Task

        if init is not None:
            from training.gan import release_config

            config = release_config(init)
            if config.feature_decoder is None:
                config.feature_decoder = model_config(settings, ssl_feature_dim(ssl_model)).feature_decoder
        else:
            config = model_config(settings, ssl_feature_dim(ssl_model))
        return Phase1Task(runtime, ps, config, ssl_model, init=init)
    if phase == "phase2":
        from training.gan import Phase2Task

        if init is None:
            init = out / "phase1" / "export"
            if not (init / "model.safetensors").is_file():
                raise RunError(f"phase 2 starts from phase 1's result, and {init} has none: run --phase 1 first, "
                               "or pass --init <Kanade release folder or hub id>")
        return Phase2Task(runtime, ps, init, ssl_model)
    from training.vocoder import VocoderTask

    return VocoderTask(runtime, ps, mel_of(settings), settings.data.sample_rate, init=init)


def publish(phase: str, export: Path, out: Path) -> Path:
    """The latest teacher goes to <out>/export, the vocoder to <out>/export/vocoder (hard links or copies)."""
    target = out / "export" / ("vocoder" if phase == "vocoder" else "")
    target.mkdir(parents=True, exist_ok=True)
    for path in export.rglob("*"):
        if path.is_file():
            dest = target / path.relative_to(export)
            dest.parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(path, dest)
    return target


def prepare_folder(folder: Path, resume: str | None, overwrite: bool, runtime: Runtime) -> Path | None:
    """The checkpoint to resume from (None = start), after checking what is already in `folder`."""
    last = folder / "checkpoints" / LAST
    if resume not in (None, "auto"):
        return Path(resume)
    if resume == "auto":
        if last.is_file():
            return last
        if runtime.is_main and folder.exists():
            log.info("%s has no checkpoint to resume: starting this phase", folder)
    existing = folder.exists() and any(folder.iterdir())
    if existing and resume is None:
        if not overwrite:
            raise RunError(f"{folder} already holds a training run: continue it with --resume, start over with "
                           "--overwrite, or choose another --out")
    if existing and (overwrite or resume == "auto"):
        if runtime.is_main:
            shutil.rmtree(folder)
        runtime.barrier()
    return None


def run(settings: RunSettings, phases: list[str], runtime: Runtime, resume: str | None = None,
        init: str | None = None, vocoder_init: str | None = None, overwrite: bool = False,
        stop_after: int | None = None, progress: bool = True) -> dict[str, FitResult]:
    out = Path(settings.out)
    setup_logging(runtime, out)
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
    data = Data(settings, runtime, out)
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
        stream, val_batches = data.for_phase(phase, settings.seed)
        trainer = Trainer(task, stream, val_batches, folder, progress=progress)
        result = trainer.fit(resume=resume_from, stop_after=stop_after)
        results[phase] = result
        if result.completed and runtime.is_main:
            publish(phase, result.export, out)
        runtime.barrier()
        if not result.completed:
            break
    return results


def summary(results: dict[str, FitResult], out: Path, wall_s: float) -> str:
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


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the per-load "Loading weights" bar of the SSL model
    except ImportError:
        pass
    phases = PHASE_ALIASES[args.phase]
    start = time.time()
    runtime = None
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    try:
        settings = apply_overrides(load_settings(args.config), args, phases)
        runtime = init_runtime(settings.precision, args.device)
        results = run(settings, phases, runtime, resume=args.resume, init=args.init, vocoder_init=args.vocoder_init,
                      overwrite=args.overwrite, stop_after=args.stop_after, progress=not args.no_progress)
    except (DataError, CheckpointError, SettingsError, ConfigError, AudioError, RunError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if runtime is not None:
            shutdown_runtime()
    if runtime.is_main:
        print(summary(results, Path(settings.out), time.time() - start))
    return 0 if all(r.completed for r in results.values()) or args.stop_after else 1


if __name__ == "__main__":
    sys.exit(main())
