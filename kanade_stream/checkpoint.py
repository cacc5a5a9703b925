"""Finding, checking and writing released checkpoints (config.yaml + model.safetensors).

Loading is strict: a checkpoint with missing, unexpected or mis-shaped parameters is refused with the
full list, because a half-loaded tokenizer produces plausible-looking but wrong tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

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
    from huggingface_hub import hf_hub_download

    try:
        config = hf_hub_download(text, CONFIG_NAME, revision=revision)
        weights = hf_hub_download(text, WEIGHTS_NAME, revision=revision)
    except Exception as err:  # the hub raises many types (offline, not found, gated ...)
        raise CheckpointError(f"cannot download {text!r} from the Hugging Face hub: {err}\n"
                              "Without network access, download the folder elsewhere and pass its path.") from err
    return Path(config), Path(weights)


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


def check_state_dict(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], source: str) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(found[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(found) if found[k].shape != expected[k].shape
    )
    if not (missing or unexpected or mismatched):
        return
    lines = [f"checkpoint {source} does not match the model built from its config:"]
    for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mismatched)):
        if items:
            lines.append(f"  {len(items)} {title}:")
            lines.extend(f"    {item}" for item in items)
    lines.append("Check that config.yaml and model.safetensors come from the same model.")
    raise CheckpointError("\n".join(lines))


def load_release_weights(model: nn.Module, weights_path: str | Path) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        found = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"cannot read {weights_path} as safetensors: {err}") from err
    # optional training-only parts may ride along in our own exports; load them when the model has them
    expected = model.release_state_dict(include_feature_decoder=model.feature_decoder is not None)
    optional = tuple(p for p in ("feature_decoder.", "conv_upsample.") if model.feature_decoder is None)
    found = {k: v for k, v in found.items() if not k.startswith(optional)} if optional else found
    check_state_dict(expected, found, str(weights_path))
    model.load_state_dict(found, strict=False)


def save_release(model: nn.Module, folder: str | Path, include_feature_decoder: bool = False) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.to_yaml(folder / CONFIG_NAME)
    state = {k: v.detach().cpu().contiguous() for k, v in model.release_state_dict(include_feature_decoder).items()}
    save_file(state, str(folder / WEIGHTS_NAME))
    return folder
