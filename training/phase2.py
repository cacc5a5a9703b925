"""Phase 2: GAN post-training of the mel decoder with the encoder frozen.

The encoder side (SSL, local branch up to the FSQ, global encoder) is frozen, so the tokens and the
global embedding of an utterance no longer change; the mel side (mel_prenet, mel_conv_upsample,
mel_decoder, mel_postnet) is trained on

    mel_weight * L1(mel) + adv_weight * hinge_G(D(mel)) + fm_weight * feature matching

(30, 1 and 10, as the official recipe), against a multi-band mel-spectrogram discriminator: the 100 mel
bins are cut into 5 frequency bands ([0, .2], [.2, .4], ... of the bins), each judged by its own small
2-D conv stack over (frequency, time). The losses are in training/losses.py.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from kanade_stream.checkpoint import release_config
from kanade_stream.teacher import KanadeTeacher

from .export import export_teacher
from .losses import (codebook_stats, discriminator_loss, feature_matching_loss, generator_loss, mel_loss,
                     split_halves)
from .models import build_teacher, freeze_ssl, load_teacher_weights
from .runtime import Runtime
from .settings import DiscriminatorSettings, Phase2Settings, SettingsError
from .trainer import Task

DECODER_PREFIXES = ("mel_prenet.", "mel_conv_upsample.", "mel_decoder.", "mel_postnet.")


# --------------------------------------------------------------------------------------------------------
# the discriminator
# --------------------------------------------------------------------------------------------------------


class BandDiscriminator(nn.Module):
    def __init__(self, channels: int, kernel_size: tuple[int, int], dilations: tuple[int, ...]):
        super().__init__()
        kf, kt = kernel_size
        layers = [weight_norm(nn.Conv2d(1, channels, (kf, kt), padding=(kf // 2, kt // 2)))]
        for d in dilations:
            layers.append(weight_norm(nn.Conv2d(channels, channels, (kf, kt), dilation=(1, d),
                                                padding=(kf // 2, d * (kt // 2)))))
        self.layers = nn.ModuleList(layers)
        self.post = weight_norm(nn.Conv2d(channels, 1, (kf, kt), padding=(kf // 2, kt // 2)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, 1, bins, T) -> logits (B, 1, bins, T), feature maps."""
        fmaps = []
        for layer in self.layers:
            x = F.leaky_relu(layer(x), 0.1)
            fmaps.append(x)
        x = self.post(x)
        fmaps.append(x)
        return x, fmaps


class MelBandDiscriminator(nn.Module):
    """Multi-band mel-spectrogram discriminator: one conv stack per frequency band."""

    def __init__(self, n_mels: int, settings: DiscriminatorSettings):
        super().__init__()
        self.bands = [(int(round(lo * n_mels)), int(round(hi * n_mels))) for lo, hi in settings.bands]
        if any(hi <= lo for lo, hi in self.bands):
            raise SettingsError(f"phase2.model.bands: empty band in {settings.bands} for {n_mels} mel bins")
        self.discriminators = nn.ModuleList(
            BandDiscriminator(settings.channels, settings.kernel_size, settings.dilations) for _ in self.bands)

    def forward(self, mel: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        """Log-mel (B, n_mels, T) -> per-band logits and feature maps."""
        logits, fmaps = [], []
        for (lo, hi), disc in zip(self.bands, self.discriminators):
            out, maps = disc(mel[:, None, lo:hi, :])
            logits.append(out)
            fmaps.append(maps)
        return logits, fmaps


# --------------------------------------------------------------------------------------------------------
# phase 2
# --------------------------------------------------------------------------------------------------------


class GeneratorModel(nn.Module):
    """Frozen encoder -> trainable mel decoder, as one module for DistributedDataParallel."""

    def __init__(self, teacher: KanadeTeacher, runtime: Runtime):
        super().__init__()
        self.teacher, self.runtime = teacher, runtime

    def encode(self, wave: torch.Tensor):
        teacher = self.teacher
        with torch.no_grad():
            content_in, global_in = teacher.ssl_features(wave)
            with self.runtime.no_autocast():
                mel_target = teacher.mel_spectrogram(wave.float())
                embedding, indices, _ = teacher.local_quantizer(teacher.content_latent(content_in.float()))
                global_embedding = teacher.global_encoder(global_in.float())
        return embedding, global_embedding, indices, mel_target

    def forward(self, wave: torch.Tensor) -> dict[str, torch.Tensor]:
        embedding, global_embedding, indices, mel_target = self.encode(wave)
        mel = self.teacher.forward_mel(embedding, global_embedding, mel_target.shape[-1]).float()
        return {"mel": mel, "mel_target": mel_target, "indices": indices}


class Phase2Task(Task):
    phase = "phase2"

    def __init__(self, runtime: Runtime, settings: Phase2Settings, init: str | Path, ssl_model: str):
        super().__init__(runtime, settings)
        self.ssl_model = ssl_model
        config = release_config(init)
        self.teacher = build_teacher(config, ssl_model, with_feature_decoder=False)
        load_teacher_weights(self.teacher, init)
        self.teacher.to(runtime.device)
        for name, param in self.teacher.named_parameters():
            param.requires_grad_(name.startswith(DECODER_PREFIXES))
        self.discriminator = MelBandDiscriminator(config.n_mels, settings.model).to(runtime.device)
        self.models = {"teacher": self.teacher, "discriminator": self.discriminator}
        self.generator = GeneratorModel(self.teacher, runtime)
        self.ddp_generator = runtime.wrap(self.generator)
        self.ddp_discriminator = runtime.wrap(self.discriminator)
        self.add_optimizer("generator", [p for p in self.teacher.parameters() if p.requires_grad])
        self.add_optimizer("discriminator", self.discriminator.parameters())
        self.losses = settings.losses

    def train(self) -> None:
        self.teacher.train()
        self.discriminator.train()
        for name, module in self.teacher.named_children():  # the frozen encoder stays in eval mode
            if not name.startswith(tuple(p.rstrip(".") for p in DECODER_PREFIXES)):
                module.eval()
        freeze_ssl(self.teacher)

    def train_step(self, batch: torch.Tensor, step: int) -> dict[str, float]:
        with self.runtime.autocast():
            out = self.ddp_generator(batch)
        real, fake = out["mel_target"], out["mel"]
        # discriminator: one DDP forward over real and (detached) fake together
        with self.runtime.autocast():
            logits, _ = self.ddp_discriminator(torch.cat([real, fake.detach()]))
        real_logits, fake_logits = split_halves(logits)
        d_loss = discriminator_loss(real_logits, fake_logits)
        d_norm = self.optimize("discriminator", d_loss)
        # generator: the discriminator is only evaluated, so it runs outside DDP with frozen parameters
        self.discriminator.requires_grad_(False)
        try:
            with self.runtime.autocast():
                logits, fmaps = self.discriminator(torch.cat([real, fake]))
            (_, fake_logits), (real_maps, fake_maps) = split_halves(logits), split_halves(fmaps)
            adv = generator_loss(fake_logits)
            fm = feature_matching_loss(real_maps, fake_maps)
            mel_l1 = mel_loss(fake, real)
            w = self.losses
            g_loss = w.mel_weight * mel_l1 + w.adv_weight * adv + w.fm_weight * fm
            g_norm = self.optimize("generator", g_loss)
        finally:
            self.discriminator.requires_grad_(True)
        return {"loss": g_loss.item(), "mel_l1": mel_l1.item(), "adv": adv.item(), "fm": fm.item(),
                "d_loss": d_loss.item(), "grad_norm": g_norm, "d_grad_norm": d_norm}

    def validate(self, batches: list[torch.Tensor]):
        total, count, pairs, indices = 0.0, 0, [], []
        for wave in batches:
            with self.runtime.autocast():
                out = self.generator(wave)
            total += float(mel_loss(out["mel"], out["mel_target"])) * wave.shape[0]
            count += wave.shape[0]
            pairs += list(zip(out["mel_target"], out["mel"]))
            indices.append(out["indices"].flatten())
        metrics = {"mel_l1": total / count}
        metrics.update(codebook_stats(torch.cat(indices), self.teacher.local_quantizer.codebook_size))
        return metrics, pairs

    def export(self, folder: Path) -> Path:
        return export_teacher(self.teacher, folder, self.ssl_model)
