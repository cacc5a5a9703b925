"""Distillation recipes: distill/configs/*.yaml read into dataclasses (unknown keys are errors).

    name: student-tiny
    out: runs/student-tiny
    teacher: embedded            # hub id, release folder, training run folder, or "embedded"
    ssl_model: null              # override the teacher's SSL model
    teacher_vocoder: null        # teacher vocoder (hub id / Vocos folder); null = the teacher run's own, if any
    student: {preset: tiny, ...StudentConfig overrides}
    data: {...}                  # as in training (the embedded eSpeak corpus by default)
    ssl: {steps, optim, losses}  # then content, decoder, vocoder, joint
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from training.settings import DataSettings, OptimSettings, PhaseSettings, SettingsError, check_phases, read_recipe

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "tiny.yaml"
STAGES = ("ssl", "content", "decoder", "vocoder", "joint")


def _stage(**losses) -> PhaseSettings:
    return PhaseSettings(steps=200, optim=OptimSettings(lr=1e-3, warmup=0.05), losses=losses, log_every=20,
                         val_every=100, ckpt_every=100, keep_checkpoints=2)


@dataclass
class DistillSettings:
    name: str = "student"
    seed: int = 0
    out: str = "runs/student"
    teacher: str = "embedded"
    ssl_model: str | None = None
    teacher_vocoder: str | None = None
    precision: str = "auto"
    student: dict = field(default_factory=lambda: {"preset": "default"})
    data: DataSettings = field(default_factory=lambda: DataSettings(chunk_seconds=2.0, batch_size=8))
    eval_clips: int = 8  # held-out clips in the evaluation report
    ssl: PhaseSettings = field(default_factory=lambda: _stage(content_weight=1.0, global_weight=1.0))
    content: PhaseSettings = field(default_factory=lambda: _stage(latent_weight=1.0, level_ce_weight=0.1,
                                                                  global_weight=1.0))
    decoder: PhaseSettings = field(default_factory=lambda: _stage(mel_weight=1.0, student_token_prob=0.5))
    vocoder: PhaseSettings = field(default_factory=lambda: _stage(mel_weight=45.0, stft_weight=1.0))
    joint: PhaseSettings = field(default_factory=lambda: _stage(
        feature_weight=1.0, latent_weight=1.0, level_ce_weight=0.1, global_weight=1.0, mel_weight=1.0))

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
    check_phases(settings, STAGES)
    for stage in STAGES:
        seconds = settings.chunk_seconds(stage)
        # chunks of whole teacher tokens (40 ms), so teacher and student frames line up one to one
        if abs(seconds * 25 - round(seconds * 25)) > 1e-9:
            raise SettingsError(f"{stage}: chunk_seconds must be a positive multiple of 0.04 s, got {seconds}")
