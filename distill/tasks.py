"""What each distillation stage trains, and against which teacher outputs.

Frames line up one to one: training chunks are whole teacher tokens (40 ms), so at 16 kHz the student's
causal front end makes n // 320 frames and the teacher's padded WavLM ceil(n / 320) = the same number;
student frame i ends where teacher frame i is centred plus half a hop. Mel frames share the teacher's
centred 24 kHz / hop 256 grid, and the student's vocoder output sample k is time k.

Stages (each a `training.trainer.Task`, so checkpoints, resume, torchrun and logs come from training; the
losses are training.losses'):
    ssl      causal SSL encoder -> the teacher's normalised content features and its global features
    content  content encoder + FSQ on the teacher's features -> the teacher's pre-rounding FSQ values
             (so the student's tokens are the teacher's tokens); global encoder -> the teacher's embedding
    decoder  streaming mel decoder -> the teacher's mel, from teacher tokens and (some batches) student tokens
    vocoder  streaming vocoder -> the teacher vocoder's audio (or the real audio when there is none)
    joint    everything but the vocoder, end to end on the student's own features
    int8     (optional) joint's terms plus the vocoder's, with the int8 layers computing through int8
             rounding (kanade_stream/streaming/int8.py), so the student keeps its quality in int8
With `equaliser_db` every training chunk is first heard through another microphone (heard_through_microphones).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kanade_stream.audio import MelSpectrogram, resample
from kanade_stream.streaming import KanadeStudent
from kanade_stream.streaming.int8 import fake_quantize
from kanade_stream.teacher import KanadeTeacher
from kanade_stream.vocoder import vocode
from kanade_stream.voices.perturb import equalise, microphone_draws, random_microphone
from training.losses import STUDENT_STFT_RESOLUTIONS, fsq_matching_losses, mel_loss, stft_loss
from training.runtime import Runtime
from training.trainer import Task

STAGE_PARTS = {
    "ssl": ("frontend", "ssl_lower", "ssl_upper", "content_head", "global_head"),
    "content": ("content_encoder", "downsample", "quantizer.proj_in", "global_encoder"),
    "decoder": ("quantizer.proj_out", "mel_prenet", "mel_upsample", "mel_decoder", "mel_postnet"),
    "vocoder": ("vocoder",),
    "joint": ("frontend", "ssl_lower", "ssl_upper", "content_head", "global_head", "content_encoder", "downsample",
              "quantizer", "global_encoder", "mel_prenet", "mel_upsample", "mel_decoder", "mel_postnet"),
}
STAGE_PARTS["int8"] = STAGE_PARTS["joint"] + ("vocoder",)
END_TO_END = ("joint", "int8")


@dataclass
class Targets:
    content: torch.Tensor  # (B, T, C) normalised content features
    global_features: torch.Tensor  # (B, T, C)
    bounded: torch.Tensor  # (B, T/2, levels) FSQ values before rounding
    indices: torch.Tensor  # (B, T/2)
    global_embedding: torch.Tensor  # (B, G)
    mel: torch.Tensor  # (B, n_mels, frames)
    audio: torch.Tensor | None  # (B, samples) what the vocoder should make


class TeacherTargets(nn.Module):
    """The frozen teacher (and its vocoder) computing every target of a batch of 24 kHz chunks."""

    def __init__(self, teacher: KanadeTeacher, vocoder: nn.Module | None):
        super().__init__()
        self.teacher = teacher.eval().requires_grad_(False)
        self.vocoder = vocoder.eval().requires_grad_(False) if vocoder is not None else None

    @torch.no_grad()
    def forward(self, wave: torch.Tensor, with_audio: bool = False) -> Targets:
        t = self.teacher
        content, global_features = t.ssl_features(wave)
        latent = t.content_latent(content)
        fsq = t.local_quantizer
        bounded = fsq.bound(fsq.proj_in(latent))
        codes = torch.round(bounded) / fsq.half_width
        indices = fsq.codes_to_indices(codes)
        g = t.global_encoder(global_features)
        mel = t.forward_mel(fsq.proj_out(codes), g, t.mel_length(wave.shape[-1]))
        audio = None
        if with_audio:
            audio = vocode(self.vocoder, mel) if self.vocoder is not None else wave
        return Targets(content, global_features, bounded, indices, g, mel, audio)


def fsq_losses(student: KanadeStudent, latent: torch.Tensor, target: Targets):
    """The student's FSQ values against the teacher's: (MSE, level cross-entropy, token agreement, level
    agreement); see training.losses.fsq_matching_losses."""
    fsq = student.quantizer
    return fsq_matching_losses(fsq.bound(fsq.proj_in(latent)), target.bounded, fsq.levels)


def heard_through_microphones(batch: torch.Tensor, sample_rate: int, max_db: float,
                              generator: torch.Generator | None, tilt_db: float = 0.0) -> torch.Tensor:
    """Each chunk of `batch` (B, samples) through a microphone of its own (bass and treble within +- max_db,
    the whole spectrum also tilted within +- tilt_db; as it is when max_db is 0): the student learns the teacher
    on recordings whose bass and treble differ from the corpus's, as the held-out voices' do."""
    if not max_db:
        return batch
    draws = microphone_draws(tilt_db)
    with torch.no_grad():
        return torch.stack([equalise(wave, sample_rate, *random_microphone(
                                max_db, torch.rand(draws, generator=generator), tilt_db))
                            for wave in batch])


class DistillModel(nn.Module):
    """A stage's forward pass in one module, so DistributedDataParallel can wrap it."""

    def __init__(self, stage: str, student: KanadeStudent, targets: TeacherTargets, losses):
        super().__init__()
        self.stage, self.student, self.losses = stage, student, losses
        self.targets = [targets]  # a list: not a submodule, so DDP and checkpoints skip the teacher
        c = student.config
        self.mel = MelSpectrogram(c.sample_rate, 1024, c.hop_length, c.n_mels)

    def student_input(self, wave: torch.Tensor) -> torch.Tensor:
        return resample(wave, self.student.config.sample_rate, self.student.config.ssl_sample_rate)

    def forward(self, wave: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        s, w = self.student, self.losses
        target = self.targets[0](wave, with_audio=self.stage in ("vocoder", "int8"))
        out: dict[str, torch.Tensor] = {"mel_target": target.mel}
        terms = {}
        if self.stage in ("ssl",) + END_TO_END:
            content, global_features = s.ssl_features(self.student_input(wave))
            n = min(content.shape[1], target.content.shape[1])
            terms["feature_mse"] = (F.mse_loss(content[:, :n], target.content[:, :n]), w.feature_weight)
            terms["global_feature_mse"] = (F.mse_loss(global_features[:, :n], target.global_features[:, :n]),
                                           w.global_feature_weight)
        if self.stage in ("content",) + END_TO_END:
            features = target.content if self.stage == "content" else content
            gfeatures = target.global_features if self.stage == "content" else global_features
            latent = s.content_latent(features)
            mse, ce, agree, level_agree = fsq_losses(s, latent, target)
            terms["latent_mse"] = (mse, w.latent_weight)
            terms["level_ce"] = (ce, w.level_ce_weight)
            out["token_agreement"], out["level_agreement"] = agree.detach(), level_agree.detach()
            g = s.global_from_features(gfeatures)
            terms["global_mse"] = (F.mse_loss(g, target.global_embedding), w.global_weight)
        if self.stage in ("decoder",) + END_TO_END:
            if self.stage in END_TO_END:
                embedding, _ = s.quantizer.encode(latent)
                condition = g
            else:
                use_student = torch.rand((), generator=generator).item() < w.student_token_prob
                if use_student:  # the decoder must also cope with the student's (imperfect) tokens
                    with torch.no_grad():
                        latent = s.content_latent(target.content)
                        _, indices = s.quantizer.encode(latent)
                else:
                    indices = target.indices
                embedding = s.quantizer.decode(indices)
                condition = target.global_embedding
            mel = s.decode_mel(embedding, condition)
            m = min(mel.shape[-1], target.mel.shape[-1])
            terms["mel_l1"] = (mel_loss(mel, target.mel), w.mel_weight)
            out["mel"] = mel[..., :m]
            out["mel_target"] = target.mel[..., :m]
        if self.stage in ("vocoder", "int8"):
            audio = s.vocode(target.mel)
            goal = target.audio[..., : audio.shape[-1]]
            mel_a, mel_b = self.mel(audio), self.mel(goal)
            name, weight = ("mel_l1", w.mel_weight) if self.stage == "vocoder" else ("vocoder_mel_l1",
                                                                                   w.vocoder_mel_weight)
            terms[name] = (mel_loss(mel_a, mel_b), weight)
            terms["stft"] = (stft_loss(audio, goal, STUDENT_STFT_RESOLUTIONS, floor=1e-5), w.stft_weight)
            if self.stage == "vocoder":
                out["mel"], out["mel_target"] = mel_a, mel_b
        out["loss"] = sum(value * weight for value, weight in terms.values())
        for name, (value, _) in terms.items():
            out[name] = value.detach()
        return out


class DistillTask(Task):
    """One stage: trains the stage's parts of the student, everything else frozen."""

    def __init__(self, stage: str, runtime: Runtime, settings, student: KanadeStudent, targets: TeacherTargets,
                 export_fn, equaliser_db: float = 0.0, tilt_db: float = 0.0):
        super().__init__(runtime, settings)
        self.equaliser_db, self.tilt_db = equaliser_db, tilt_db
        self.phase = stage
        self.student = student.to(runtime.device)
        if stage == "int8":  # the int8 layers compute through int8 rounding from here on
            fake_quantize(self.student)
            self.student.config.int8_trained = True
        self.models = {"student": self.student}
        self.model = DistillModel(stage, self.student, targets, settings.losses).to(runtime.device)  # its mel too
        self.ddp = runtime.wrap(self.model)
        self.trainable = [student.get_submodule(name) for name in STAGE_PARTS[stage]]
        self.student.requires_grad_(False)
        for part in self.trainable:
            part.requires_grad_(True)
        self.add_optimizer("student", [p for part in self.trainable for p in part.parameters()])
        self.seed = 1234 + 1_000_003 * runtime.rank
        self.export_fn = export_fn

    def train(self) -> None:
        self.student.eval()
        for part in self.trainable:
            part.train()

    def train_step(self, batch: torch.Tensor, step: int) -> dict[str, float]:
        # the step's draws (microphones, the decoder's token source) come from the step: a resumed run makes the same
        generator = torch.Generator().manual_seed(self.seed + step)
        batch = heard_through_microphones(batch, self.student.config.sample_rate, self.equaliser_db, generator,
                                          self.tilt_db)
        with self.runtime.autocast():
            out = self.ddp(batch, generator)
        grad_norm = self.optimize("student", out["loss"])
        return {k: float(v.detach()) for k, v in out.items() if v.dim() == 0} | {"grad_norm": grad_norm}

    def validate(self, batches):
        totals, count, pairs = {}, 0, []
        for wave in batches:
            out = self.model(wave, torch.Generator().manual_seed(0))
            n = wave.shape[0]
            for key, value in out.items():
                if value.dim() == 0:
                    totals[key] = totals.get(key, 0.0) + float(value) * n
            count += n
            if "mel" in out:
                pairs += list(zip(out["mel_target"], out["mel"]))
        return {k: v / count for k, v in totals.items()}, pairs

    def export(self, folder: Path) -> Path:
        return self.export_fn(self.student, folder)
