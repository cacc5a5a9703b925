"""Distillation recipes: distill/configs/*.yaml read into typed dataclasses, as training's recipes are.

    name: student-tiny
    out: runs/student-tiny
    teacher: embedded            # hub id, release folder, training run folder, or "embedded"
    ssl_model: null              # override the teacher's SSL model
    teacher_vocoder: null        # teacher vocoder (hub id / Vocos folder); null = the teacher run's own, if any
    student: {preset: tiny, ...StudentConfig overrides}
    data: {...}                  # as in training (the embedded eSpeak corpus by default)
    ssl: {steps, optim, losses}  # then content, decoder, vocoder, joint (and int8, run on request)

Each stage's `losses` has its own fields: a loss term has one weight name in every stage that uses it
(feature_weight, global_feature_weight, latent_weight, level_ce_weight, global_weight, mel_weight,
stft_weight). An unknown or misspelt key anywhere, or a value of the wrong type, is an error naming it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from kanade_stream.streaming import StudentConfig
from training.settings import (DataSettings, OptimSettings, PhaseSettings, SettingsError, check_microphone,
                               check_phases, read_recipe)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "tiny.yaml"
STAGES = ("ssl", "content", "decoder", "vocoder", "joint")  # `--stage all`: the float student
OPTIONAL_STAGES = ("int8",)  # after joint, on request: fine-tuning through int8 rounding (streaming/int8.py)
ALL_STAGES = STAGES + OPTIONAL_STAGES
STUDENT_PRESETS = ("tiny", "default", "large")  # StudentConfig.<preset>()

# the weight names of the loss terms (the metric each one weights in val.csv)
#   feature_weight         feature_mse         student SSL content features vs the teacher's (normalised)
#   global_feature_weight  global_feature_mse  student global-branch features vs the teacher's
#   latent_weight          latent_mse          pre-rounding FSQ values vs the teacher's
#   level_ce_weight        level_ce            per-level cross-entropy on the rounded FSQ values
#   global_weight          global_mse          global (speaker) embedding vs the teacher's
#   mel_weight             mel_l1              log-mel vs the teacher's (decoder) or the target audio's (vocoder)
#   stft_weight            stft                multi-resolution STFT vs the target audio
#   vocoder_mel_weight     vocoder_mel_l1      int8 stage: the vocoder's log-mel vs the target audio's


@dataclass
class SslLosses:
    RENAMED = {"content_weight": "feature_weight", "global_weight": "global_feature_weight"}  # older recipes
    feature_weight: float = 1.0
    global_feature_weight: float = 1.0


@dataclass
class ContentLosses:
    latent_weight: float = 1.0
    level_ce_weight: float = 0.1
    global_weight: float = 1.0


@dataclass
class DecoderLosses:
    mel_weight: float = 1.0
    student_token_prob: float = 0.5  # share of batches decoded from the student's tokens instead of the teacher's


@dataclass
class VocoderLosses:
    mel_weight: float = 45.0
    stft_weight: float = 1.0


@dataclass
class JointLosses:
    RENAMED = {"content_weight": "feature_weight"}
    feature_weight: float = 1.0
    global_feature_weight: float = 1.0
    latent_weight: float = 1.0
    level_ce_weight: float = 0.1
    global_weight: float = 1.0
    mel_weight: float = 1.0


@dataclass
class SslStage(PhaseSettings):
    losses: SslLosses = field(default_factory=SslLosses)


@dataclass
class ContentStage(PhaseSettings):
    losses: ContentLosses = field(default_factory=ContentLosses)


@dataclass
class DecoderStage(PhaseSettings):
    losses: DecoderLosses = field(default_factory=DecoderLosses)


@dataclass
class VocoderStage(PhaseSettings):
    losses: VocoderLosses = field(default_factory=VocoderLosses)


@dataclass
class JointStage(PhaseSettings):
    losses: JointLosses = field(default_factory=JointLosses)


@dataclass
class Int8Losses(JointLosses):
    # the vocoder runs in int8 too, so it is fine-tuned on the teacher's mel as in the vocoder stage
    vocoder_mel_weight: float = 45.0  # the vocoder stage's mel_weight (that name here weights the decoder's)
    stft_weight: float = 1.0


@dataclass
class Int8Stage(PhaseSettings):
    losses: Int8Losses = field(default_factory=Int8Losses)


def _stage(cls):
    """A stage's defaults: short, at a higher learning rate than the teacher's phases."""
    return lambda: cls(steps=200, optim=OptimSettings(lr=1e-3, warmup=0.05), log_every=20, val_every=100,
                       ckpt_every=100, keep_checkpoints=2)


@dataclass
class DistillSettings:
    name: str = "student"
    seed: int = 0
    out: str = "runs/student"
    teacher: str = "embedded"
    ssl_model: str | None = None
    teacher_vocoder: str | None = None
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    student: dict = field(default_factory=lambda: {"preset": "default"})  # preset + StudentConfig overrides
    data: DataSettings = field(default_factory=lambda: DataSettings(chunk_seconds=2.0, batch_size=8))
    eval_clips: int = 8  # held-out clips in the evaluation report
    # every training chunk heard through another microphone before teacher and student see it: bass and treble
    # shelves each moved by up to +- this many dB (voices.perturb.random_microphone; 0 = as recorded)
    equaliser_db: float = 0.0
    # with equaliser_db: each microphone also tilts, bass up and treble down together (or the reverse) by one draw
    # within +- this many dB, as the teacher's SSL model may have heard (training's ssl.tilt_db)
    tilt_db: float = 0.0
    ssl: SslStage = field(default_factory=_stage(SslStage))
    content: ContentStage = field(default_factory=_stage(ContentStage))
    decoder: DecoderStage = field(default_factory=_stage(DecoderStage))
    vocoder: VocoderStage = field(default_factory=_stage(VocoderStage))
    joint: JointStage = field(default_factory=_stage(JointStage))
    int8: Int8Stage = field(default_factory=lambda: Int8Stage(
        steps=200, optim=OptimSettings(lr=2e-4, warmup=0.05), log_every=20, val_every=100, ckpt_every=100,
        keep_checkpoints=2))

    def phase(self, name: str) -> PhaseSettings:
        return getattr(self, name)

    def batch_size(self, stage: str) -> int:
        return self.phase(stage).batch_size or self.data.batch_size

    def chunk_seconds(self, stage: str) -> float:
        return self.phase(stage).chunk_seconds or self.data.chunk_seconds

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_settings(path: str | Path | None = None) -> DistillSettings:
    """A recipe file, or a bare name of one in distill/configs/."""
    settings = read_recipe(path, DistillSettings(), CONFIG_DIR, DEFAULT_CONFIG, "distillation")
    check_settings(settings)
    return settings


def check_settings(settings: DistillSettings) -> None:
    check_phases(settings, ALL_STAGES)
    check_microphone(settings.equaliser_db, settings.tilt_db)
    for stage in ALL_STAGES:
        seconds = settings.chunk_seconds(stage)
        # chunks of whole teacher tokens (40 ms), so teacher and student frames line up one to one
        if abs(seconds * 25 - round(seconds * 25)) > 1e-9:
            raise SettingsError(f"{stage}: chunk_seconds must be a positive multiple of 0.04 s, got {seconds}")
    # the student section is StudentConfig's own: check its keys here, its values when the student is built
    allowed = ["preset"] + [f.name for f in dataclasses.fields(StudentConfig)]
    for key in settings.student:
        if key not in allowed:
            raise SettingsError(f"student.{key}: unknown setting; allowed in student: {', '.join(allowed)}")
    preset = settings.student.get("preset", "default")
    if preset not in STUDENT_PRESETS:
        raise SettingsError(f"student.preset: expected {' or '.join(map(repr, STUDENT_PRESETS))}, got {preset!r}")
