"""Training checkpoints: the resumable state of a phase, and which checkpoint a phase resumes from.

A training checkpoint is one `torch.save` file holding everything needed to continue exactly: the models,
optimizers and LR schedulers, the step, the data position (epoch, batches done in it) and the RNG states
of python, numpy and torch (CPU and CUDA) of every process. It is written atomically (temp file, fsync,
rename), so an interrupt or a full disk while saving never leaves a broken `last.pt`.

Loading checks everything before touching the model: a truncated or foreign file, a checkpoint of another
phase, or one whose parameters do not match the model built from the config are refused with a message
that says which, instead of a shape error deep inside `load_state_dict`.

Resuming never deletes anything: when `last.pt` is missing or unreadable the newest readable
`step_*.pt` is used, and a folder whose checkpoints are all unreadable is refused with what was found.
Only `--overwrite` deletes a phase folder, and only when starting it over.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kanade_stream.checkpoint import CheckpointError, check_state_dict

from .runtime import Runtime

log = logging.getLogger("training")

FORMAT = "kanade-stream-training/1"
LAST = "last.pt"


# --------------------------------------------------------------------------------------------------------
# RNG state
# --------------------------------------------------------------------------------------------------------


def rng_state() -> dict:
    """The RNG states of python, numpy and torch as plain picklable data (bytes, ints: no tensors, so they
    pass through `all_gather_object` and `torch.load(weights_only=True)` alike)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (name, np.asarray(keys, dtype=np.uint32).tobytes(), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state().numpy().tobytes(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.numpy().tobytes() for s in torch.cuda.get_rng_state_all()]
    return state


def _byte_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def set_rng_state(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.frombuffer(keys, dtype=np.uint32).copy(), pos, has_gauss, cached))
    torch.set_rng_state(_byte_tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = [_byte_tensor(s) for s in state["cuda"]]
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------------------
# save / load
# --------------------------------------------------------------------------------------------------------


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write atomically: a temp file, flushed and fsynced, then renamed over `path`. A crash or a full disk
    leaves the previous file whole (and at worst a stray .tmp)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save({"format": FORMAT, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (POSIX); where folders cannot be opened (Windows) there is nothing to do."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise CheckpointError(f"no training checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, not a torch file, pickled foreign objects ...
        raise CheckpointError(f"cannot read training checkpoint {path}: {type(err).__name__}: {err}\n"
                              "The file is corrupt or incomplete. Plain --resume falls back to the newest readable "
                              "step_*.pt of the phase; --resume <file> picks one.") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a kanade-stream training checkpoint (format "
                              f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r}); "
                              "to start from released weights use --init")
    return state


def check_compatible(state: dict, phase: str, modules: dict[str, nn.Module], source: str) -> None:
    """Refuse a checkpoint of another phase or with parameters that do not fit `modules`."""
    if state.get("phase") != phase:
        raise CheckpointError(f"{source} is a checkpoint of phase {state.get('phase')!r}, not {phase!r}")
    saved = state.get("models", {})
    if set(saved) != set(modules):
        raise CheckpointError(f"{source} holds models {sorted(saved)}, expected {sorted(modules)}")
    for name, module in modules.items():
        check_state_dict(module.state_dict(), saved[name], where=f"checkpoint {source} [{name}]",
                         hint="The checkpoint was made with another model config (--config); "
                              "resume with the config it was trained with.")


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """Periodic checkpoints step_<digits>.pt in step order."""
    found = [p for p in Path(folder).glob("step_*.pt") if re.fullmatch(r"step_\d+\.pt", p.name)]
    return sorted(found, key=lambda p: int(p.stem.split("_")[1]))


def prune_checkpoints(folder: str | os.PathLike, keep: int) -> None:
    for old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)


def link_or_copy(source: Path, target: Path) -> None:
    """`target` becomes a hard link to `source` (a durable copy where links are not possible), atomically."""
    tmp = target.with_name(target.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(tmp, target)
    _fsync_dir(target.parent)


# --------------------------------------------------------------------------------------------------------
# a phase's folder: resume, start or refuse
# --------------------------------------------------------------------------------------------------------


class ResumeError(CheckpointError):
    """A run folder that cannot be resumed or started as asked; the message says what was found."""


def check_resume_flags(resume, overwrite: bool) -> None:
    if resume and overwrite:
        raise ResumeError("--resume continues a run and --overwrite deletes it: pass one of them")


def prepare_folder(folder: str | os.PathLike, resume: str | None, overwrite: bool, runtime: Runtime) -> Path | None:
    """The checkpoint a phase resumes from, or None to start it. Nothing is deleted unless `overwrite`.

    resume=None: start. A folder that already holds files is refused unless `overwrite` (which deletes it).
    resume="auto": continue from checkpoints/last.pt; when it is missing or unreadable, from the newest
        readable step_*.pt (and the log says so). Checkpoints none of which can be read are refused with
        what was found; a folder without checkpoints starts the phase and keeps its files.
    resume=<file>: that checkpoint.
    """
    folder = Path(folder)
    check_resume_flags(resume, overwrite)
    if resume not in (None, "auto"):
        return Path(resume)
    if resume == "auto":
        return _resume_point(folder, runtime)
    if folder.exists() and any(folder.iterdir()):
        found = _contents(folder)
        if not overwrite:
            raise ResumeError(f"{folder} already holds a training run ({found}): continue it with --resume, start "
                              "over with --overwrite (deletes it), or choose another --out")
        if runtime.is_main:
            log.warning("--overwrite: deleting %s (%s)", folder, found)
            shutil.rmtree(folder)
        runtime.barrier()
    return None


def _resume_point(folder: Path, runtime: Runtime) -> Path | None:
    checkpoints = folder / "checkpoints"
    candidates = [checkpoints / LAST] + list_checkpoints(checkpoints)[::-1]  # last.pt, then newest first
    problems = []
    for path in candidates:
        if not path.is_file():
            problems.append(f"{path.name} is missing")
            continue
        try:
            read_checkpoint(path)
        except CheckpointError as err:
            problems.append(str(err).splitlines()[0])
            continue
        if problems and runtime.is_main:
            log.warning("%s: %s; resuming from %s, the newest readable checkpoint", folder, "; ".join(problems), path)
        return path
    if len(problems) > 1 or (checkpoints / LAST).exists():
        raise ResumeError(f"cannot resume {folder}: no readable checkpoint ({'; '.join(problems)}). Resume from a "
                          "file elsewhere with --resume <file> and a single --phase, or start this phase over with "
                          "--overwrite (deletes the folder)")
    if runtime.is_main and folder.exists() and any(folder.iterdir()):
        log.info("%s holds no checkpoint to resume: starting this phase (its files are kept)", folder)
    return None


def _contents(folder: Path) -> str:
    """What a run folder holds, for messages: its checkpoints, else its top-level entries."""
    checkpoints = folder / "checkpoints"
    names = [p.name for p in list_checkpoints(checkpoints)] + ([LAST] if (checkpoints / LAST).exists() else [])
    if names:
        return "checkpoints " + ", ".join(names)
    return ", ".join(sorted(p.name for p in folder.iterdir()))
