"""Phase 1 (DESIGN.md section 1): the whole teacher but the frozen SSL model, trained on

    ssl_weight * L2(feature decoder(upsampled content embedding), normalised SSL content features)
  + mel_weight * L1(mel decoder(content embedding, global embedding), log-mel of the audio)

with 30 and 30 as the paper's weights. The SSL reconstruction runs through `conv_upsample` (ConvTranspose
with the downsampling factor) and the `feature_decoder` transformer; both exist only for training and are
not part of a release. When the SSL frame count is not a multiple of the downsampling factor the
reconstruction is one token's worth shorter, and the loss is taken over the frames both have.

The FSQ runs in fp32 even under bf16 autocast, so training and inference round to the same codes.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kanade_stream.config import SSL_HUB_IDS, ConfigError, KanadeConfig
from kanade_stream.ssl import SSLFeatureExtractor
from kanade_stream.teacher import KanadeTeacher

from .trainer import Runtime, Task

log = logging.getLogger("training")

SSL_MODEL_FILE = "ssl_model.txt"
COPY_SSL_LIMIT = 64 * 2**20  # local SSL folders up to this size are copied into exports (the tiny WavLM)


def build_teacher(config: KanadeConfig, ssl_model: str, with_feature_decoder: bool) -> KanadeTeacher:
    ssl = SSLFeatureExtractor.from_pretrained(ssl_model, num_layers=config.ssl_output_layer)
    if ssl.feature_dim != config.local_encoder.get("input_dim", config.local_encoder["dim"]):
        raise ConfigError(f"the SSL model {ssl_model} gives {ssl.feature_dim}-dim features but the model config "
                         f"expects {config.local_encoder.get('input_dim', config.local_encoder['dim'])}: "
                         "pick the config that matches the SSL model (--config) or the SSL model (--ssl-model)")
    if ssl_model in SSL_HUB_IDS.values():  # record the official name, as a release does
        config.ssl_model = next(k for k, v in SSL_HUB_IDS.items() if v == ssl_model)
    teacher = KanadeTeacher(config, ssl, with_feature_decoder=with_feature_decoder)
    return teacher


def freeze_ssl(teacher: KanadeTeacher) -> None:
    teacher.ssl.requires_grad_(False).eval()


def export_teacher(teacher: KanadeTeacher, folder: Path, ssl_model: str) -> Path:
    """Release format (config.yaml + model.safetensors) plus `ssl_model.txt` naming the SSL model used; a
    small local SSL model is also copied to `wavlm/`, so the folder is self-contained."""
    folder = Path(folder)
    teacher.save_pretrained(folder)
    (folder / SSL_MODEL_FILE).write_text(str(ssl_model) + "\n")
    local = Path(ssl_model)
    if local.is_dir():
        size = sum(p.stat().st_size for p in local.rglob("*") if p.is_file())
        if size <= COPY_SSL_LIMIT:
            shutil.copytree(local, folder / "wavlm", dirs_exist_ok=True)
    return folder


def ssl_model_of(folder: str | Path) -> str | None:
    """The SSL model an export was trained with (`ssl_model.txt`), or its copy in `wavlm/`."""
    folder = Path(folder)
    side = folder / SSL_MODEL_FILE
    if side.is_file():
        name = side.read_text().strip()
        if not Path(name).is_absolute() or Path(name).is_dir():
            return name
    if (folder / "wavlm" / "config.json").is_file():
        return str(folder / "wavlm")
    return None


def codebook_stats(indices: torch.Tensor, codebook_size: int) -> dict[str, float]:
    counts = torch.bincount(indices.flatten().cpu(), minlength=codebook_size).double()
    probs = counts / counts.sum().clamp_min(1)
    entropy = -(probs * torch.log(probs + 1e-12)).sum()
    return {"perplexity": float(torch.exp(entropy)), "codebook_usage": float((counts > 0).sum() / codebook_size),
            "bits_per_token": float(entropy / math.log(2))}


class Phase1Model(nn.Module):
    """The forward pass of phase 1 as one module, so DistributedDataParallel can wrap it."""

    def __init__(self, teacher: KanadeTeacher, runtime: Runtime):
        super().__init__()
        self.teacher = teacher
        self.runtime = runtime

    def targets(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Frozen SSL features (normalised content, global) and the target log-mel, all fp32."""
        teacher = self.teacher
        with torch.no_grad():
            content_in, global_in = teacher.ssl_features(wave)
            with self.runtime.no_autocast():
                mel = teacher.mel_spectrogram(wave.float())
        return content_in.float(), global_in.float(), mel

    def quantize(self, content_in: torch.Tensor):
        latent = self.teacher.content_latent(content_in)
        with self.runtime.no_autocast():
            return self.teacher.local_quantizer(latent.float())

    def forward(self, wave: torch.Tensor) -> dict[str, torch.Tensor]:
        teacher = self.teacher
        content_in, global_in, mel_target = self.targets(wave)
        embedding, indices, perplexity = self.quantize(content_in)
        upsampled = teacher.conv_upsample(embedding.transpose(1, 2)).transpose(1, 2)
        recon = teacher.feature_decoder(upsampled)
        frames = min(recon.shape[1], content_in.shape[1])
        ssl_l2 = F.mse_loss(recon[:, :frames].float(), content_in[:, :frames])
        global_embedding = teacher.global_encoder(global_in)
        mel = teacher.forward_mel(embedding, global_embedding, mel_target.shape[-1]).float()
        mel_l1 = F.l1_loss(mel, mel_target)
        return {"ssl_l2": ssl_l2, "mel_l1": mel_l1, "perplexity": perplexity, "indices": indices, "mel": mel,
                "mel_target": mel_target}


class Phase1Task(Task):
    phase = "phase1"

    def __init__(self, runtime: Runtime, settings, config: KanadeConfig, ssl_model: str,
                 init: str | Path | None = None):
        super().__init__(runtime, settings)
        self.ssl_model = ssl_model
        self.teacher = build_teacher(config, ssl_model, with_feature_decoder=True)
        if init is not None:
            from .gan import load_teacher_weights

            load_teacher_weights(self.teacher, init)
        self.teacher.to(runtime.device)
        freeze_ssl(self.teacher)
        self.models = {"teacher": self.teacher}
        self.model = Phase1Model(self.teacher, runtime)
        self.ddp = runtime.wrap(self.model)
        self.add_optimizer("teacher", self.teacher.parameters())
        losses = settings.losses
        self.ssl_weight, self.mel_weight = float(losses["ssl_weight"]), float(losses["mel_weight"])

    def train(self) -> None:
        self.teacher.train()
        freeze_ssl(self.teacher)

    def train_step(self, batch: torch.Tensor, step: int) -> dict[str, float]:
        with self.runtime.autocast():
            out = self.ddp(batch)
        loss = self.ssl_weight * out["ssl_l2"] + self.mel_weight * out["mel_l1"]
        grad_norm = self.optimize("teacher", loss)
        return {"loss": loss.item(), "mel_l1": out["mel_l1"].item(), "ssl_l2": out["ssl_l2"].item(),
                "perplexity": float(out["perplexity"]), "grad_norm": grad_norm}

    def validate(self, batches: list[torch.Tensor]):
        totals, count, indices, pairs = {"mel_l1": 0.0, "ssl_l2": 0.0}, 0, [], []
        for wave in batches:
            with self.runtime.autocast():
                out = self.model(wave)
            n = wave.shape[0]
            totals["mel_l1"] += float(out["mel_l1"]) * n
            totals["ssl_l2"] += float(out["ssl_l2"]) * n
            count += n
            indices.append(out["indices"].flatten())
            pairs += list(zip(out["mel_target"], out["mel"]))
        metrics = {k: v / count for k, v in totals.items()}
        metrics.update(codebook_stats(torch.cat(indices), self.teacher.local_quantizer.codebook_size))
        return metrics, pairs

    def export(self, folder: Path) -> Path:
        return export_teacher(self.teacher, folder, self.ssl_model)
