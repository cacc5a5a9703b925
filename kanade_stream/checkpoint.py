"""Finding, checking and writing released checkpoints (config.yaml + model.safetensors).

Loading is strict: a checkpoint with missing, unexpected or mis-shaped parameters is refused with what
does not fit (`check_state_dict`, the one state-dict check of the project), because a half-loaded
tokenizer produces plausible-looking but wrong tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .config import KanadeConfig
from .hub import HubUnavailable, hub_download

CONFIG_NAME = "config.yaml"
WEIGHTS_NAME = "model.safetensors"


class CheckpointError(RuntimeError):
    pass


def resolve_release(name_or_path: str | Path, revision: str | None = None) -> tuple[Path, Path]:
    """A local folder, or a hub repo id (downloaded once into the Hugging Face cache)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        config, weights = path / CONFIG_NAME, path / WEIGHTS_NAME
        missing = [p.name for p in (config, weights) if not p.is_file()]
        if missing:
            raise CheckpointError(f"{path} is not a Kanade release folder: missing {', '.join(missing)}")
        return config, weights
    text = str(name_or_path)
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise CheckpointError(f"no Kanade model at {text!r}: give a folder with {CONFIG_NAME} + {WEIGHTS_NAME} "
                              "or a hub id such as frothywater/kanade-25hz")
    try:
        config = hub_download(text, CONFIG_NAME, "Kanade model", revision)
        weights = hub_download(text, WEIGHTS_NAME, "Kanade model", revision)
    except HubUnavailable as err:
        raise CheckpointError(str(err)) from err
    except Exception as err:  # the hub raises many types (not found, gated ...)
        raise CheckpointError(f"cannot download {text!r} from the Hugging Face hub: {err}\n"
                              "Without network access, download the folder elsewhere and pass its path.") from err
    return config, weights


def bundled_ssl_model(folder: Path) -> str | None:
    """The SSL model a release folder names for itself: a `wavlm/` subfolder, or a path or hub id in
    `ssl_model.txt` (relative paths are relative to the folder)."""
    if (folder / "wavlm" / "config.json").is_file():
        return str(folder / "wavlm")
    note = folder / "ssl_model.txt"
    if note.is_file():
        name = note.read_text().strip()
        local = folder / name
        return str(local) if name and local.exists() else name or None
    return None


RELEASE_HINT = "Check that config.yaml and model.safetensors come from the same model."
TRAINING_ONLY = ("feature_decoder.", "conv_upsample.")  # parts a release may or may not carry
SHOWN_NAMES = 20  # names listed per kind of problem; the count is always complete


def check_state_dict(expected: Mapping[str, torch.Tensor], loaded: Mapping[str, torch.Tensor], *, where: str,
                     strict: bool = True, hint: str | None = None) -> None:
    """Refuse `loaded` weights that do not fit a model whose state dict is `expected`.

    Raises CheckpointError naming the missing, unexpected and shape-mismatched parameters (counts, and up
    to SHOWN_NAMES names each), `where` (the file or checkpoint) first and `hint` (what to do) last.
    With strict=False missing and unexpected names are allowed and only shape mismatches are refused,
    as `nn.Module.load_state_dict(strict=False)` would load them.
    """
    missing = sorted(set(expected) - set(loaded)) if strict else []
    unexpected = sorted(set(loaded) - set(expected)) if strict else []
    mismatched = sorted(f"{k}: checkpoint {tuple(loaded[k].shape)} vs model {tuple(expected[k].shape)}"
                        for k in set(expected) & set(loaded) if loaded[k].shape != expected[k].shape)
    if not (missing or unexpected or mismatched):
        return
    lines = [f"{where} does not match the model:"]
    for title, names in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if names:
            more = f" ... ({len(names) - SHOWN_NAMES} more)" if len(names) > SHOWN_NAMES else ""
            lines.append(f"  {title} ({len(names)}): " + ", ".join(names[:SHOWN_NAMES]) + more)
    if hint:
        lines.append(hint)
    raise CheckpointError("\n".join(lines))


def release_config(name_or_path: str | Path, revision: str | None = None) -> KanadeConfig:
    """The KanadeConfig of a release (folder or hub id)."""
    config_path, _ = resolve_release(name_or_path, revision)
    return KanadeConfig.from_yaml(config_path)


def load_release_weights(model: nn.Module, weights_path: str | Path, training_parts_optional: bool = False) -> bool:
    """Released weights into a Kanade teacher, strictly: every released parameter must be there and fit.

    The training-only parts (feature decoder, conv_upsample) are loaded when the model has them and the
    file holds them, and ignored when the model has none. With `training_parts_optional` a model that has
    them may also start them from its own (random) weights when the file has none, as training from an
    official release does. Returns whether the training-only parts were loaded.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        found = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"cannot read {weights_path} as safetensors: {err}") from err
    has_parts = model.feature_decoder is not None
    expected = model.release_state_dict(include_feature_decoder=has_parts)
    if not has_parts:
        found = {k: v for k, v in found.items() if not k.startswith(TRAINING_ONLY)}
    elif training_parts_optional and not any(k.startswith(TRAINING_ONLY) for k in found):
        expected = {k: v for k, v in expected.items() if not k.startswith(TRAINING_ONLY)}
        has_parts = False
    check_state_dict(expected, found, where=f"checkpoint {weights_path}", hint=RELEASE_HINT)
    model.load_state_dict(found, strict=False)
    return has_parts


def save_release(model: nn.Module, folder: str | Path, include_feature_decoder: bool = False) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.to_yaml(folder / CONFIG_NAME)
    state = {k: v.detach().cpu().contiguous() for k, v in model.release_state_dict(include_feature_decoder).items()}
    save_file(state, str(folder / WEIGHTS_NAME))
    return folder
