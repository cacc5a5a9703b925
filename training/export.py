"""What training leaves behind, in release formats that the rest of the project (and the originals) load.

- teacher: the official Kanade release (config.yaml + model.safetensors) plus `ssl_model.txt` naming the
  SSL model it was trained with, and a copy of that model in `wavlm/` when it is a small local folder
- vocoder: a regular Vocos folder (config.yaml + pytorch_model.bin), as `Vocos.from_hparams` and
  `kanade_stream.vocoder.load_vocoder` read it
- `publish`: the latest teacher into <out>/export, the vocoder into <out>/export/vocoder
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import yaml
from torch import nn

from kanade_stream.teacher import KanadeTeacher

from .checkpoint import link_or_copy

SSL_MODEL_FILE = "ssl_model.txt"
COPY_SSL_LIMIT = 64 * 2**20  # local SSL folders up to this size are copied into exports (the embedded WavLM)
VOCOS_WEIGHTS = "pytorch_model.bin"
VOCOS_CONFIG = "config.yaml"


def export_teacher(teacher: KanadeTeacher, folder: Path, ssl_model: str) -> Path:
    """Release format plus `ssl_model.txt`; a small local SSL model is also copied to `wavlm/`, so the
    folder is self-contained."""
    folder = Path(folder)
    teacher.save_pretrained(folder)
    (folder / SSL_MODEL_FILE).write_text(str(ssl_model) + "\n")
    local = Path(ssl_model)
    if local.is_dir():
        size = sum(p.stat().st_size for p in local.rglob("*") if p.is_file())
        if size <= COPY_SSL_LIMIT:
            shutil.copytree(local, folder / "wavlm", dirs_exist_ok=True)
    return folder


def vocos_config(dim: int = 512, intermediate_dim: int = 1536, num_layers: int = 8, sample_rate: int = 24000,
                 n_fft: int = 1024, hop_length: int = 256, n_mels: int = 100, padding: str = "center") -> dict:
    """A Vocos config.yaml in the released form (the defaults are charactr/vocos-mel-24khz)."""
    return {
        "feature_extractor": {"class_path": "vocos.feature_extractors.MelSpectrogramFeatures", "init_args": {
            "sample_rate": sample_rate, "n_fft": n_fft, "hop_length": hop_length, "n_mels": n_mels,
            "padding": padding}},
        "backbone": {"class_path": "vocos.models.VocosBackbone", "init_args": {
            "input_channels": n_mels, "dim": dim, "intermediate_dim": intermediate_dim, "num_layers": num_layers}},
        "head": {"class_path": "vocos.heads.ISTFTHead", "init_args": {
            "dim": dim, "n_fft": n_fft, "hop_length": hop_length, "padding": "same"}},
    }


def vocos_config_of(model: nn.Module) -> dict:
    """The config.yaml of a (loaded) Vocos, read back from its modules."""
    from vocos.feature_extractors import MelSpectrogramFeatures
    from vocos.heads import ISTFTHead
    from vocos.models import VocosBackbone

    fe, backbone, head = model.feature_extractor, model.backbone, model.head
    if not (isinstance(fe, MelSpectrogramFeatures) and isinstance(backbone, VocosBackbone)
            and isinstance(head, ISTFTHead)) or backbone.adanorm:
        raise ValueError("only mel Vocos models (MelSpectrogramFeatures + VocosBackbone + ISTFTHead) are supported")
    mel = fe.mel_spec
    config = vocos_config(dim=backbone.embed.out_channels, intermediate_dim=backbone.convnext[0].pwconv1.out_features,
                          num_layers=len(backbone.convnext), sample_rate=mel.sample_rate, n_fft=mel.n_fft,
                          hop_length=mel.hop_length, n_mels=mel.n_mels, padding=fe.padding)
    config["head"]["init_args"]["padding"] = head.istft.padding
    return config


def save_vocos(model: nn.Module, folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = vocos_config_of(model)
    (folder / VOCOS_CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, folder / VOCOS_WEIGHTS)
    return folder


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
