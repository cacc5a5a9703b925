"""Phase 2 (DESIGN.md section 1): GAN post-training of the mel decoder with the encoder frozen.

The encoder side (SSL, local branch up to the FSQ, global encoder) is frozen, so the tokens and the
global embedding of an utterance no longer change; the mel side (mel_prenet, mel_conv_upsample,
mel_decoder, mel_postnet) is trained on

    mel_weight * L1(mel) + adv_weight * hinge_G(D(mel)) + fm_weight * feature matching

(30, 1 and 10, as the official recipe), against a multi-band mel-spectrogram discriminator: the 100 mel
bins are cut into 5 frequency bands ([0, .2], [.2, .4], ... of the bins), each judged by its own small
2-D conv stack over (frequency, time). Hinge losses follow Vocos: D: mean(relu(1 - D(real))) +
mean(relu(1 + D(fake))); G: mean(relu(1 - D(fake))); feature matching: the sum over bands and layers of
the mean absolute difference of the feature maps, real ones detached.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from kanade_stream.checkpoint import load_release_weights, resolve_release
from kanade_stream.checkpoint import release_config as load_release_config
from kanade_stream.config import KanadeConfig
from kanade_stream.teacher import KanadeTeacher

from .phase1 import build_teacher, codebook_stats, export_teacher, freeze_ssl
from .trainer import Runtime, Task

log = logging.getLogger("training")

DEFAULT_BANDS = ((0.0, 0.2), (0.2, 0.4), (0.4, 0.6), (0.6, 0.8), (0.8, 1.0))
ENCODER_PREFIXES = ("ssl.", "local_encoder.", "conv_downsample.", "local_quantizer.", "global_encoder.")
DECODER_PREFIXES = ("mel_prenet.", "mel_conv_upsample.", "mel_decoder.", "mel_postnet.")


# --------------------------------------------------------------------------------------------------------
# discriminator and losses (shared with the vocoder's optional GAN)
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

    def __init__(self, n_mels: int = 100, channels: int = 64, kernel_size=(3, 3), dilations=(1, 1, 1),
                 bands=DEFAULT_BANDS):
        super().__init__()
        self.bands = [(int(round(lo * n_mels)), int(round(hi * n_mels))) for lo, hi in bands]
        if any(hi <= lo for lo, hi in self.bands):
            raise ValueError(f"empty discriminator band in {bands} for {n_mels} mel bins")
        self.discriminators = nn.ModuleList(
            BandDiscriminator(channels, tuple(kernel_size), tuple(dilations)) for _ in self.bands)

    def forward(self, mel: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        """Log-mel (B, n_mels, T) -> per-band logits and feature maps."""
        logits, fmaps = [], []
        for (lo, hi), disc in zip(self.bands, self.discriminators):
            out, maps = disc(mel[:, None, lo:hi, :])
            logits.append(out)
            fmaps.append(maps)
        return logits, fmaps


def split_halves(outputs):
    """Outputs of a discriminator run on cat([real, fake]) -> (real part, fake part), nested lists kept."""
    if isinstance(outputs, torch.Tensor):
        n = outputs.shape[0] // 2
        return outputs[:n], outputs[n:]
    pairs = [split_halves(o) for o in outputs]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def discriminator_loss(real: list[torch.Tensor], fake: list[torch.Tensor]) -> torch.Tensor:
    return sum(torch.relu(1 - r).mean() + torch.relu(1 + f).mean() for r, f in zip(real, fake))


def generator_loss(fake: list[torch.Tensor]) -> torch.Tensor:
    return sum(torch.relu(1 - f).mean() for f in fake)


def feature_matching_loss(real_maps, fake_maps) -> torch.Tensor:
    return sum((r.detach() - f).abs().mean() for rs, fs in zip(real_maps, fake_maps) for r, f in zip(rs, fs))


# --------------------------------------------------------------------------------------------------------
# loading a phase-1 result or a release into the teacher
# --------------------------------------------------------------------------------------------------------


def load_teacher_weights(teacher: KanadeTeacher, release: str | Path) -> None:
    """Released weights (folder or hub id) into `teacher`; a release without the training-only feature
    decoder leaves the teacher's own (random) one in place."""
    _, weights = resolve_release(release)
    if not load_release_weights(teacher, weights, training_parts_optional=True) and teacher.feature_decoder is not None:
        log.info("%s has no feature decoder: phase 1 starts it from random weights", release)


def release_config(release: str | Path) -> KanadeConfig:
    return load_release_config(release)


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

    def __init__(self, runtime: Runtime, settings, init: str | Path, ssl_model: str):
        super().__init__(runtime, settings)
        self.ssl_model = ssl_model
        config = release_config(init)
        self.teacher = build_teacher(config, ssl_model, with_feature_decoder=False)
        load_teacher_weights(self.teacher, init)
        self.teacher.to(runtime.device)
        for name, param in self.teacher.named_parameters():
            param.requires_grad_(name.startswith(DECODER_PREFIXES))
        d = dict(settings.model)
        self.discriminator = MelBandDiscriminator(
            n_mels=config.n_mels, channels=int(d.get("channels", 64)), kernel_size=tuple(d.get("kernel_size", (3, 3))),
            dilations=tuple(d.get("dilations", (1, 1, 1))), bands=tuple(map(tuple, d.get("bands", DEFAULT_BANDS))),
        ).to(runtime.device)
        self.models = {"teacher": self.teacher, "discriminator": self.discriminator}
        self.generator = GeneratorModel(self.teacher, runtime)
        self.ddp_generator = runtime.wrap(self.generator)
        self.ddp_discriminator = runtime.wrap(self.discriminator)
        self.add_optimizer("generator", [p for p in self.teacher.parameters() if p.requires_grad])
        self.add_optimizer("discriminator", self.discriminator.parameters())
        w = settings.losses
        self.mel_weight, self.adv_weight, self.fm_weight = (float(w["mel_weight"]), float(w["adv_weight"]),
                                                            float(w["fm_weight"]))

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
            mel_l1 = F.l1_loss(fake, real)
            g_loss = self.mel_weight * mel_l1 + self.adv_weight * adv + self.fm_weight * fm
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
            total += float(F.l1_loss(out["mel"], out["mel_target"])) * wave.shape[0]
            count += wave.shape[0]
            pairs += list(zip(out["mel_target"], out["mel"]))
            indices.append(out["indices"].flatten())
        metrics = {"mel_l1": total / count}
        metrics.update(codebook_stats(torch.cat(indices), self.teacher.local_quantizer.codebook_size))
        return metrics, pairs

    def export(self, folder: Path) -> Path:
        return export_teacher(self.teacher, folder, self.ssl_model)
