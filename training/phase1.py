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

With `losses.invariance_weight` > 0 (the token-invariance loss) the content branch also hears each batch as
another voice in another room (the `invariance` view: another speed, its pitch moved on its own, another
microphone's bass and treble when `invariance.equaliser_db` > 0, white noise),
its SSL features stretched back to the chunk's frames, and the FSQ latent of that view must match the chunk's
(MSE in units of the rounding grid, so an error under 0.5 keeps the digit; the chunk's latent is the target,
no gradient). Without it a fifth of a semitone or quiet noise replaces most tokens: they followed the voice
and the recording, not the words. Validation measures it on views drawn from a fixed seed.

With `losses.phone_weight` > 0 (the phone loss; needs a voices corpus, whose clips carry phone alignments) a
small head reads each quantised token and names the phone of each SSL frame it covers (cross-entropy against
the corpus's frame labels, through the FSQ's straight-through rounding). The reconstruction losses alone let
the content encoder keep whatever in the SSL features rebuilds a training voice's mel; on a voice it never
heard, most of that fails and the words go with it. Naming the phone asks every token for the part that
carries over. The head is for training only and is not part of a release; validation (held-out voices)
reports its accuracy.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kanade_stream.audio import resample
from kanade_stream.config import KanadeConfig
from kanade_stream.teacher import KanadeTeacher
from kanade_stream.voices.perturb import equalise, microphone_draws, pitch_shift, random_microphone, white_noise
from kanade_stream.voices.phones import PHONES, UNKNOWN

from .data import LabelledBatch, perturbed_rate
from .export import export_teacher
from .losses import codebook_stats, mel_loss
from .models import build_teacher, freeze_ssl, load_teacher_weights
from .runtime import Runtime
from .settings import InvarianceView, Phase1Settings
from .trainer import Task


def heard_as_another_voice(wave: torch.Tensor, sample_rate: int, speed: float = 1.0, semitones: float = 0.0,
                           snr_db: torch.Tensor | None = None, generator: torch.Generator | None = None,
                           microphone: tuple[float, float, float, float] | None = None) -> torch.Tensor:
    """`wave` (B, N) played `speed` times as fast (formants and tempo; N / speed samples), its pitch then moved
    by `semitones` (duration kept), through another `microphone` (bass dB, treble dB, bass Hz, treble Hz:
    `perturb.equalise`), with white noise at `snr_db` (B,) dB below each row's RMS."""
    if speed != 1.0:
        wave = resample(wave, perturbed_rate(sample_rate, speed), sample_rate)
    if semitones:
        wave = pitch_shift(wave, sample_rate, semitones)
    if microphone is not None:
        wave = equalise(wave, sample_rate, *microphone)
    if snr_db is not None:
        wave = white_noise(wave, snr_db[:, None], generator)
    return wave


def uniform(low: float, high: float, generator: torch.Generator | None, size: tuple = ()) -> torch.Tensor:
    return low + (high - low) * torch.rand(size, generator=generator)


class PhoneHead(nn.Module):
    """Reads each quantised token (B, T, dim) and names the phone of each of the `factor` SSL frames it covers:
    logits (B, T * factor, phones). Two layers, so it can act as a lookup from a code to the phones it stands
    for (the token embedding is linear in the code's five digits)."""

    def __init__(self, dim: int, factor: int, num_phones: int = len(PHONES), hidden: int = 256):
        super().__init__()
        self.factor, self.num_phones = factor, num_phones
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, factor * num_phones))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        b, t, _ = embedding.shape
        return self.net(embedding).reshape(b, t * self.factor, self.num_phones)


def phone_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy and accuracy over the frames both have whose label is known (UNKNOWN is ignored)."""
    frames = min(logits.shape[1], labels.shape[1])
    logits, labels = logits[:, :frames].float(), labels[:, :frames]
    known = labels != UNKNOWN
    loss = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=UNKNOWN)
    accuracy = (logits.argmax(-1) == labels)[known].float().mean() if known.any() else logits.new_zeros(())
    return loss, accuracy


class Phase1Model(nn.Module):
    """The forward pass of phase 1 as one module, so DistributedDataParallel can wrap it."""

    def __init__(self, teacher: KanadeTeacher, runtime: Runtime, content_perturbation: float = 0.0,
                 invariance: InvarianceView | None = None, phone_head: PhoneHead | None = None):
        super().__init__()
        self.teacher = teacher
        self.runtime = runtime
        self.content_perturbation = content_perturbation
        self.invariance = invariance  # the token-invariance loss's view; None = off
        self.phone_head = phone_head  # the phone loss's head; None = off

    def targets(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Frozen SSL features (normalised content, global) and the target log-mel, all fp32."""
        teacher = self.teacher
        with torch.no_grad():
            content_in, global_in = teacher.ssl_features(wave)
            with self.runtime.no_autocast():
                mel = teacher.mel_spectrogram(wave.float())
        return content_in.float(), global_in.float(), mel

    def view_content(self, wave: torch.Tensor, frames: int, speed: float = 1.0, semitones: float = 0.0,
                     snr_db: torch.Tensor | None = None, generator: torch.Generator | None = None,
                     microphone: tuple[float, float, float, float] | None = None) -> torch.Tensor:
        """The normalised content features of `wave` heard as another voice (`heard_as_another_voice`; one
        speed and pitch for the batch, so it stays one SSL forward), stretched back to `frames` so they line up
        with the chunk's own."""
        rate = self.teacher.config.sample_rate
        with torch.no_grad():
            with self.runtime.no_autocast():  # the filters (resampling, pitch, equaliser) run in fp32
                heard = heard_as_another_voice(wave.float(), rate, speed, semitones, snr_db, generator, microphone)
            content, _ = self.teacher.ssl_features(heard)
        content = F.interpolate(content.float().transpose(1, 2), size=frames, mode="linear", align_corners=False)
        return content.transpose(1, 2)

    def perturbed_content(self, wave: torch.Tensor, frames: int) -> torch.Tensor:
        """The content features of `wave` played at a random speed (`content_perturbation`)."""
        spread = self.content_perturbation
        return self.view_content(wave, frames, speed=1.0 + float(uniform(-spread, spread, None)))

    def invariance_view(self, wave: torch.Tensor, frames: int, generator: torch.Generator | None) -> torch.Tensor:
        """The content features of the token-invariance loss's view of `wave`, drawn from `generator`."""
        view = self.invariance
        speed = 1.0 + float(uniform(-view.speed_spread, view.speed_spread, generator))
        semitones = float(uniform(-view.semitones, view.semitones, generator))
        snr = uniform(*view.snr_db, generator, (wave.shape[0],)) if view.snr_db else None
        microphone = None
        if view.equaliser_db:  # bass shelf at 100-400 Hz, treble shelf at 1-4 kHz, each within +- equaliser_db
            draws = torch.rand(microphone_draws(view.tilt_db), generator=generator)
            microphone = random_microphone(view.equaliser_db, draws, view.tilt_db)
        return self.view_content(wave, frames, speed, semitones, snr, generator, microphone)

    def bounded_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """The FSQ's latent just before rounding: integers there are the code digits."""
        with self.runtime.no_autocast():
            return self.teacher.local_quantizer.unrounded(latent.float())

    def quantize(self, latent: torch.Tensor):
        with self.runtime.no_autocast():
            return self.teacher.local_quantizer(latent.float())

    def forward(self, wave: torch.Tensor, view_seed: int | None = None,
                labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The losses of a batch. With the invariance loss on, training draws its view from the global RNG and
        evaluation measures it when given `view_seed` (the same views every time). With the phone loss on,
        `labels` (B, SSL frames) are the chunk's phone labels."""
        teacher = self.teacher
        content_in, global_in, mel_target = self.targets(wave)
        if self.teacher.training and self.content_perturbation:  # validation hears the chunk as it is
            content_in = self.perturbed_content(wave, content_in.shape[1])
        latent = teacher.content_latent(content_in)
        embedding, indices, perplexity = self.quantize(latent)
        upsampled = teacher.conv_upsample(embedding.transpose(1, 2)).transpose(1, 2)
        recon = teacher.feature_decoder(upsampled)
        frames = min(recon.shape[1], content_in.shape[1])
        ssl_l2 = F.mse_loss(recon[:, :frames].float(), content_in[:, :frames])
        global_embedding = teacher.global_encoder(global_in)
        mel = teacher.forward_mel(embedding, global_embedding, mel_target.shape[-1]).float()
        mel_l1 = mel_loss(mel, mel_target)
        out = {"ssl_l2": ssl_l2, "mel_l1": mel_l1, "perplexity": perplexity, "indices": indices, "mel": mel,
               "mel_target": mel_target}
        if self.phone_head is not None and labels is not None:
            out["phone_ce"], out["phone_accuracy"] = phone_loss(self.phone_head(embedding), labels)
        if self.invariance is not None and (teacher.training or view_seed is not None):
            generator = None if view_seed is None else torch.Generator().manual_seed(view_seed)
            view_latent = self.bounded_latent(teacher.content_latent(
                self.invariance_view(wave, content_in.shape[1], generator)))
            target = self.bounded_latent(latent).detach()
            out["invariance"] = F.mse_loss(view_latent, target)
            out["tokens_kept"] = (view_latent.round() == target.round()).all(dim=-1).float().mean()
        return out


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
        phone_head = None
        if self.uses_phone_labels:
            phone_head = PhoneHead(self.teacher.local_quantizer.proj_out.out_features, config.downsample_factor)
            phone_head.to(runtime.device)
            self.models["phone_head"] = phone_head
        self.model = Phase1Model(self.teacher, runtime, settings.content_perturbation,
                                 settings.invariance if settings.losses.invariance_weight > 0 else None, phone_head)
        self.ddp = runtime.wrap(self.model)
        self.add_optimizer("teacher", [p for m in self.models.values() for p in m.parameters()])
        self.losses = settings.losses

    @property
    def uses_phone_labels(self) -> bool:
        """Whether batches must carry phone labels (LabelledBatch): the phone loss is on."""
        return self.settings.losses.phone_weight > 0

    def train(self) -> None:
        self.teacher.train()
        freeze_ssl(self.teacher)

    def train_step(self, batch: torch.Tensor | LabelledBatch, step: int) -> dict[str, float]:
        wave, labels = (batch.wave, batch.labels) if isinstance(batch, LabelledBatch) else (batch, None)
        with self.runtime.autocast():
            out = self.ddp(wave, labels=labels)
        w = self.losses
        loss = w.ssl_weight * out["ssl_l2"] + w.mel_weight * out["mel_l1"]
        if "invariance" in out:
            loss = loss + w.invariance_weight * out["invariance"]
        if "phone_ce" in out:
            loss = loss + w.phone_weight * out["phone_ce"]
        grad_norm = self.optimize("teacher", loss)
        metrics = {"loss": loss.item(), "mel_l1": out["mel_l1"].item(), "ssl_l2": out["ssl_l2"].item(),
                   "perplexity": float(out["perplexity"]), "grad_norm": grad_norm}
        metrics.update({k: float(out[k].detach()) for k in self.EXTRA_METRICS if k in out})
        return metrics

    EXTRA_METRICS = ("invariance", "tokens_kept", "phone_ce", "phone_accuracy")

    def validate(self, batches: list[torch.Tensor | LabelledBatch]):
        totals, count, indices, pairs = {}, 0, [], []
        for number, batch in enumerate(batches):
            wave, labels = (batch.wave, batch.labels) if isinstance(batch, LabelledBatch) else (batch, None)
            with self.runtime.autocast():
                out = self.model(wave, view_seed=number, labels=labels)  # the same views at every validation
            n = wave.shape[0]
            for key in ("mel_l1", "ssl_l2") + self.EXTRA_METRICS:
                if key in out:
                    totals[key] = totals.get(key, 0.0) + float(out[key]) * n
            count += n
            indices.append(out["indices"].flatten())
            pairs += list(zip(out["mel_target"], out["mel"]))
        metrics = {k: v / count for k, v in totals.items()}
        metrics.update(codebook_stats(torch.cat(indices), self.teacher.local_quantizer.codebook_size))
        return metrics, pairs

    def export(self, folder: Path) -> Path:
        return export_teacher(self.teacher, folder, self.ssl_model)
