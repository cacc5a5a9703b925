"""Phase 1: the whole teacher but the frozen SSL model, trained on

    ssl_weight * L2(feature decoder(upsampled content embedding), normalised SSL content features)
  + mel_weight * L1(mel decoder(content embedding, global embedding), log-mel of the audio)

with 30 and 30 as the paper's weights. The SSL reconstruction runs through `conv_upsample` (ConvTranspose
with the downsampling factor) and the `feature_decoder` transformer; both exist only for training and are
not part of a release. When the SSL frame count is not a multiple of the downsampling factor the
reconstruction is one token's worth shorter, and the loss is taken over the frames both have.

The FSQ runs in fp32 even under bf16 autocast, so training and inference round to the same codes.

With `content_perturbation` > 0 the content branch hears each training batch played faster or slower (its
pitch and formants moved), its SSL features stretched back in time to the chunk's frames (the SSL
reconstruction aims at those), while the global branch and the mel target hear the chunk as it is: tokens that kept the voice would no longer help the mel
decoder, so the voice has to come through the global embedding. Validation always hears the chunk as it is.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kanade_stream.audio import resample
from kanade_stream.config import KanadeConfig
from kanade_stream.teacher import KanadeTeacher

from .data import perturbed_rate
from .export import export_teacher
from .losses import codebook_stats, mel_loss
from .models import build_teacher, freeze_ssl, load_teacher_weights
from .runtime import Runtime
from .settings import Phase1Settings
from .trainer import Task


class Phase1Model(nn.Module):
    """The forward pass of phase 1 as one module, so DistributedDataParallel can wrap it."""

    def __init__(self, teacher: KanadeTeacher, runtime: Runtime, content_perturbation: float = 0.0):
        super().__init__()
        self.teacher = teacher
        self.runtime = runtime
        self.content_perturbation = content_perturbation

    def targets(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Frozen SSL features (normalised content, global) and the target log-mel, all fp32."""
        teacher = self.teacher
        with torch.no_grad():
            content_in, global_in = teacher.ssl_features(wave)
            with self.runtime.no_autocast():
                mel = teacher.mel_spectrogram(wave.float())
        return content_in.float(), global_in.float(), mel

    def perturbed_content(self, wave: torch.Tensor, frames: int) -> torch.Tensor:
        """The normalised content features of `wave` played at a random speed (one for the batch, so it stays
        one SSL forward), stretched back to `frames` so they line up with the unperturbed targets."""
        spread = self.content_perturbation
        speed = 1.0 + spread * (2.0 * float(torch.rand(())) - 1.0)
        rate = self.teacher.config.sample_rate
        with torch.no_grad():
            content, _ = self.teacher.ssl_features(resample(wave, perturbed_rate(rate, speed), rate))
        content = F.interpolate(content.float().transpose(1, 2), size=frames, mode="linear", align_corners=False)
        return content.transpose(1, 2)

    def quantize(self, content_in: torch.Tensor):
        latent = self.teacher.content_latent(content_in)
        with self.runtime.no_autocast():
            return self.teacher.local_quantizer(latent.float())

    def forward(self, wave: torch.Tensor) -> dict[str, torch.Tensor]:
        teacher = self.teacher
        content_in, global_in, mel_target = self.targets(wave)
        if self.teacher.training and self.content_perturbation:  # validation hears the chunk as it is
            content_in = self.perturbed_content(wave, content_in.shape[1])
        embedding, indices, perplexity = self.quantize(content_in)
        upsampled = teacher.conv_upsample(embedding.transpose(1, 2)).transpose(1, 2)
        recon = teacher.feature_decoder(upsampled)
        frames = min(recon.shape[1], content_in.shape[1])
        ssl_l2 = F.mse_loss(recon[:, :frames].float(), content_in[:, :frames])
        global_embedding = teacher.global_encoder(global_in)
        mel = teacher.forward_mel(embedding, global_embedding, mel_target.shape[-1]).float()
        mel_l1 = mel_loss(mel, mel_target)
        return {"ssl_l2": ssl_l2, "mel_l1": mel_l1, "perplexity": perplexity, "indices": indices, "mel": mel,
                "mel_target": mel_target}


class Phase1Task(Task):
    phase = "phase1"

    def __init__(self, runtime: Runtime, settings: Phase1Settings, config: KanadeConfig, ssl_model: str,
                 init: str | Path | None = None):
        super().__init__(runtime, settings)
        self.ssl_model = ssl_model
        self.teacher = build_teacher(config, ssl_model, with_feature_decoder=True)
        if init is not None:
            load_teacher_weights(self.teacher, init)
        self.teacher.to(runtime.device)
        freeze_ssl(self.teacher)
        self.models = {"teacher": self.teacher}
        self.model = Phase1Model(self.teacher, runtime, settings.content_perturbation)
        self.ddp = runtime.wrap(self.model)
        self.add_optimizer("teacher", self.teacher.parameters())
        self.losses = settings.losses

    def train(self) -> None:
        self.teacher.train()
        freeze_ssl(self.teacher)

    def train_step(self, batch: torch.Tensor, step: int) -> dict[str, float]:
        with self.runtime.autocast():
            out = self.ddp(batch)
        w = self.losses
        loss = w.ssl_weight * out["ssl_l2"] + w.mel_weight * out["mel_l1"]
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
