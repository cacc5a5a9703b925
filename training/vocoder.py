"""Vocoder training: a Vocos (ConvNeXt backbone + ISTFT head) from the teacher's log-mel back to 24 kHz audio.

The input is exactly the mel the teacher predicts (`kanade_stream.audio.MelSpectrogram`: 24 kHz, n_fft
1024, hop 256, 100 mels, power 1, log(clamp(., 1e-7))), which is also what Vocos' own
`MelSpectrogramFeatures` computes, so the result is a regular Vocos folder (config.yaml +
pytorch_model.bin) that `kanade_stream.vocoder.load_vocoder(folder)` and `Vocos.from_hparams` load.

Losses: mel_weight * L1(log-mel of the output, log-mel of the audio) + stft_weight * multi-resolution STFT
loss (spectral convergence + log-magnitude L1 at 512/1024/2048-point STFTs); with `model.gan: true` also
Vocos' multi-period + multi-resolution discriminators (hinge, feature matching, MRD scaled by mrd_weight),
as in the Vocos recipe. `--init charactr/vocos-mel-24khz` (hub) or `--init <folder>` fine-tunes a released
Vocos instead of starting from random weights.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from kanade_stream.audio import MelSpectrogram, save_audio
from kanade_stream.checkpoint import CheckpointError
from kanade_stream.vocoder import load_vocoder

from .export import save_vocos, vocos_config, vocos_config_of
from .losses import (VOCOS_STFT_RESOLUTIONS, discriminator_loss, feature_matching_loss, generator_loss, mel_loss,
                     stft_loss)
from .runtime import Runtime
from .settings import VocoderSettings
from .trainer import Task

log = logging.getLogger("training")


def build_vocos(config: dict) -> nn.Module:
    from vocos import Vocos
    from vocos.pretrained import instantiate_class

    parts = {name: instantiate_class(args=(), init=config[name]) for name in ("feature_extractor", "backbone", "head")}
    return Vocos(**parts)


def load_init(name: str | Path) -> nn.Module:
    """A released Vocos to fine-tune: a hub id (charactr/vocos-mel-24khz) or a Vocos folder."""
    try:
        model = load_vocoder(name)
    except (OSError, RuntimeError, KeyError) as err:
        raise CheckpointError(f"cannot load the vocoder to fine-tune (--init {name}): {err}") from err
    if not hasattr(model, "backbone"):
        raise CheckpointError(f"--init {name} is not a Vocos model")
    return model.train()


def check_mel_match(model: nn.Module, mel: MelSpectrogram) -> None:
    cfg = vocos_config_of(model)["feature_extractor"]["init_args"]
    ours = mel.mel
    expected = {"sample_rate": ours.sample_rate, "n_fft": ours.n_fft, "hop_length": ours.hop_length,
                "n_mels": ours.n_mels, "padding": mel.padding}
    if any(cfg[k] != v for k, v in expected.items()):
        raise CheckpointError(f"the vocoder's mel settings {cfg} differ from the teacher's {expected}")


class VocoderModel(nn.Module):
    """Audio -> (its log-mel, the vocoded audio), as one module for DistributedDataParallel."""

    def __init__(self, vocos: nn.Module, mel: MelSpectrogram, runtime: Runtime):
        super().__init__()
        self.vocos, self.mel, self.runtime = vocos, mel, runtime

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad(), self.runtime.no_autocast():
            mel = self.mel(wave.float())
        hidden = self.vocos.backbone(mel)
        with self.runtime.no_autocast():  # the ISTFT head needs fp32 (complex bf16 does not exist)
            audio = self.vocos.head(hidden.float())
        return mel, audio[..., : wave.shape[-1]]


class Discriminators(nn.Module):
    """Vocos' multi-period and multi-resolution discriminators, one module for DDP."""

    def __init__(self):
        super().__init__()
        from vocos.discriminators import MultiPeriodDiscriminator, MultiResolutionDiscriminator

        self.mpd, self.mrd = MultiPeriodDiscriminator(), MultiResolutionDiscriminator()

    def forward(self, real: torch.Tensor, fake: torch.Tensor):
        return self.mpd(y=real, y_hat=fake), self.mrd(y=real, y_hat=fake)


class VocoderTask(Task):
    phase = "vocoder"

    def __init__(self, runtime: Runtime, settings: VocoderSettings, mel: MelSpectrogram, sample_rate: int = 24000,
                 init: str | Path | None = None):
        super().__init__(runtime, settings)
        arch = settings.model
        self.use_gan = arch.gan
        if init is not None:
            self.vocos = load_init(init)
            check_mel_match(self.vocos, mel)
            log.info("vocoder: fine-tuning %s", init)
        else:
            self.vocos = build_vocos(vocos_config(
                dim=arch.dim, intermediate_dim=arch.intermediate_dim, num_layers=arch.num_layers,
                sample_rate=sample_rate, n_fft=mel.mel.n_fft, hop_length=mel.hop_length, n_mels=mel.mel.n_mels,
                padding=mel.padding))
        self.sample_rate = sample_rate
        self.vocos.to(runtime.device)
        self.mel = mel.to(runtime.device)
        self.models = {"vocos": self.vocos}
        self.model = VocoderModel(self.vocos, self.mel, runtime)
        self.ddp = runtime.wrap(self.model)
        self.add_optimizer("vocos", [p for p in self.vocos.parameters()])
        if self.use_gan:
            self.discriminators = Discriminators().to(runtime.device)
            self.models["discriminators"] = self.discriminators
            self.ddp_discriminators = runtime.wrap(self.discriminators)
            self.add_optimizer("discriminators", self.discriminators.parameters())
        self.losses = settings.losses

    def reconstruction(self, audio: torch.Tensor, wave: torch.Tensor, mel: torch.Tensor) -> dict[str, torch.Tensor]:
        with self.runtime.no_autocast():
            mel_hat = self.mel(audio.float())
            return {"mel_l1": mel_loss(mel_hat, mel),
                    "stft": stft_loss(audio.float(), wave.float(), VOCOS_STFT_RESOLUTIONS), "mel_hat": mel_hat}

    def train_step(self, batch: torch.Tensor, step: int) -> dict[str, float]:
        w = self.losses
        with self.runtime.autocast():
            mel, audio = self.ddp(batch)
        metrics = {}
        if self.use_gan:
            with self.runtime.autocast():
                (mp_r, mp_g, _, _), (mr_r, mr_g, _, _) = self.ddp_discriminators(batch, audio.detach())
            d_loss = discriminator_loss(mp_r, mp_g) + w.mrd_weight * discriminator_loss(mr_r, mr_g)
            metrics["d_grad_norm"] = self.optimize("discriminators", d_loss)
            metrics["d_loss"] = d_loss.item()
        rec = self.reconstruction(audio, batch, mel)
        loss = w.mel_weight * rec["mel_l1"] + w.stft_weight * rec["stft"]
        if self.use_gan:
            self.discriminators.requires_grad_(False)
            try:
                with self.runtime.autocast():
                    (_, mp_g, mp_fr, mp_fg), (_, mr_g, mr_fr, mr_fg) = self.discriminators(batch, audio)
                adv = generator_loss(mp_g) + w.mrd_weight * generator_loss(mr_g)
                fm = feature_matching_loss(mp_fr, mp_fg) + w.mrd_weight * feature_matching_loss(mr_fr, mr_fg)
                loss = loss + w.adv_weight * adv + w.fm_weight * fm
                metrics.update(adv=adv.item(), fm=fm.item())
                grad_norm = self.optimize("vocos", loss)
            finally:
                self.discriminators.requires_grad_(True)
        else:
            grad_norm = self.optimize("vocos", loss)
        return {"loss": loss.item(), "mel_l1": rec["mel_l1"].item(), "stft": rec["stft"].item(),
                "grad_norm": grad_norm, **metrics}

    def validate(self, batches: list[torch.Tensor]):
        totals, count, pairs = {"mel_l1": 0.0, "stft": 0.0}, 0, []
        for wave in batches:
            with self.runtime.autocast():
                mel, audio = self.model(wave)
            rec = self.reconstruction(audio, wave, mel)
            for key in totals:
                totals[key] += float(rec[key]) * wave.shape[0]
            count += wave.shape[0]
            pairs += list(zip(mel, rec["mel_hat"]))
        return {k: v / count for k, v in totals.items()}, pairs

    def extra_outputs(self, folder: Path, step: int, batches: list[torch.Tensor]) -> None:
        with self.runtime.autocast():
            _, audio = self.model(batches[0][:1])
        save_audio(Path(folder) / f"step_{step:07d}_clip0.wav", audio[0].float().clamp(-1, 1), self.sample_rate)

    def export(self, folder: Path) -> Path:
        return save_vocos(self.vocos, folder)
