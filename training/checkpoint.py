"""Training checkpoints (resumable state) and exports (release formats).

A training checkpoint is one `torch.save` file holding everything needed to continue exactly: the models,
optimizers and LR schedulers, the step, the data position (epoch, batches done in it) and the RNG states
of python, numpy and torch (CPU and CUDA) of every process. It is written atomically (temp file + rename),
so an interrupt while saving never leaves a broken `last.pt`.

Loading checks everything before touching the model: a truncated or foreign file, a checkpoint of another
phase, or one whose parameters do not match the model built from the config are refused with a message
that says which, instead of a shape error deep inside `load_state_dict`.
"""

from __future__ import annotations

import logging
import os
import random
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, **state}, tmp)
    os.replace(tmp, path)
    return path


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
                              "The file is corrupt or incomplete (e.g. the disk filled up while saving); "
                              "resume from an older checkpoint in the same folder, or start again.") from err
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
    """Periodic checkpoints step_*.pt in step order."""
    return sorted(Path(folder).glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1]))


def prune_checkpoints(folder: str | os.PathLike, keep: int) -> None:
    for old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)


def link_or_copy(source: Path, target: Path) -> None:
    tmp = target.with_name(target.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


# --------------------------------------------------------------------------------------------------------
# a phase's folder: resume, start or refuse
# --------------------------------------------------------------------------------------------------------


class ResumeError(CheckpointError):
    """A run folder that cannot be resumed or started as asked; the message says what was found."""


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
            raise ResumeError(f"{folder} already holds a training run: continue it with --resume, start over with "
                              "--overwrite, or choose another --out")
    if existing and (overwrite or resume == "auto"):
        if runtime.is_main:
            shutil.rmtree(folder)
        runtime.barrier()
    return None
