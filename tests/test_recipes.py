"""Training and distillation recipes are typed: a misspelt key or a value of the wrong type, in any section,
is refused with a message that names it; and every loss weight of a distillation stage is used."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml

from distill.settings import ALL_STAGES, DistillSettings
from distill.settings import load_settings as load_distill_settings
from training.settings import SettingsError, load_settings

from .conftest import REFERENCE


def write_recipe(tmp_path, section: str, key: str, value) -> str:
    """A recipe file setting `key` to `value` in the (dotted) `section`; everything else is the default."""
    data = {key: value}
    for part in reversed(section.split(".") if section else []):
        data = {part: data}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def dotted(section: str, key: str) -> str:
    return f"{section}.{key}" if section else key


TRAINING_SECTIONS = ["", "data", "phase1", "phase1.optim", "phase1.losses", "phase2", "phase2.optim", "phase2.losses",
                     "phase2.model", "vocoder", "vocoder.optim", "vocoder.losses", "vocoder.model"]
DISTILL_SECTIONS = ["", "data"] + [f"{stage}{part}" for stage in ALL_STAGES for part in ("", ".optim", ".losses")]


def section_of(settings, section: str):
    for part in section.split(".") if section else []:
        settings = getattr(settings, part)
    return settings


@pytest.mark.parametrize("section", TRAINING_SECTIONS)
def test_training_recipe_refuses_a_misspelt_key(tmp_path, section):
    allowed = [f.name for f in dataclasses.fields(section_of(load_settings("tiny"), section))]
    with pytest.raises(SettingsError) as err:
        load_settings(write_recipe(tmp_path, section, "stpes", 3))
    message = str(err.value)
    assert f"{dotted(section, 'stpes')}: unknown setting" in message
    assert ", ".join(allowed) in message  # the keys that would have been right


@pytest.mark.parametrize("section", DISTILL_SECTIONS)
def test_distill_recipe_refuses_a_misspelt_key(tmp_path, section):
    allowed = [f.name for f in dataclasses.fields(section_of(DistillSettings(), section))]
    with pytest.raises(SettingsError) as err:
        load_distill_settings(write_recipe(tmp_path, section, "mel_wieght", 1.0))
    assert f"{dotted(section, 'mel_wieght')}: unknown setting" in str(err.value)
    assert ", ".join(allowed) in str(err.value)


@pytest.mark.parametrize("section, key, value, expected", [
    ("", "seed", "zero", "expected int, got 'zero' (str)"),
    ("", "precision", "fp16", "expected 'auto' or 'fp32' or 'bf16'"),
    ("", "model", 3, "expected str | mapping"),
    ("data", "path", 5, "expected str | null"),
    ("data", "batch_size", 8.5, "expected int"),
    ("data", "short_clips", "trim", "expected 'pad' or 'skip'"),
    ("phase1", "steps", "many", "expected int"),
    ("phase1", "chunk_seconds", "long", "expected float | null"),
    ("phase1.optim", "betas", [0.9], "expected list of 2 float, got [0.9] (list): 1 values instead of 2"),
    ("phase1.losses", "ssl_weight", "30", "expected float"),
    ("phase2.optim", "grad_clip", True, "expected float, got True (bool)"),
    ("phase2.losses", "fm_weight", None, "expected float, got None"),
    ("phase2.model", "channels", 1.5, "expected int"),
    ("phase2.model", "bands", [[0.0, "x"]], "phase2.model.bands[0][1]: expected float"),
    ("vocoder", "keep_checkpoints", [3], "expected int"),
    ("vocoder.losses", "stft_weight", [1.0], "expected float"),
    ("vocoder.model", "gan", "yes", "expected bool"),
    ("vocoder.optim", "lr", "1e-3", "write 1.0e-3, not 1e-3"),  # PyYAML reads 1e-3 as text
])
def test_training_recipe_refuses_a_wrong_type(tmp_path, section, key, value, expected):
    with pytest.raises(SettingsError) as err:
        load_settings(write_recipe(tmp_path, section, key, value))
    assert expected in str(err.value) and dotted(section, key) in str(err.value)


@pytest.mark.parametrize("section", DISTILL_SECTIONS)
def test_distill_recipe_refuses_a_wrong_type(tmp_path, section):
    fields = dataclasses.fields(section_of(DistillSettings(), section))
    key = next(f.name for f in fields if f.type in ("float", "int", "str"))
    with pytest.raises(SettingsError, match=rf"{dotted(section, key)}(\[\d+\])?: expected (float|int|str), got \[\]"):
        load_distill_settings(write_recipe(tmp_path, section, key, []))


def test_distill_recipe_student_section_and_renamed_weights(tmp_path):
    with pytest.raises(SettingsError, match="student.ssl_dimm: unknown setting; allowed in student: preset, "):
        load_distill_settings(write_recipe(tmp_path, "student", "ssl_dimm", 64))
    with pytest.raises(SettingsError, match="student.preset: expected 'tiny' or 'default' or 'large', got 'huge'"):
        load_distill_settings(write_recipe(tmp_path, "student", "preset", "huge"))
    # a recipe written with an older weight name is told the new one
    renamed = r"ssl.losses.content_weight: unknown setting \(renamed 'feature_weight'\)"
    with pytest.raises(SettingsError, match=renamed):
        load_distill_settings(write_recipe(tmp_path, "ssl.losses", "content_weight", 1.0))


def test_a_recipe_overrides_only_what_it_names(tmp_path):
    settings = load_settings(write_recipe(tmp_path, "phase2.losses", "fm_weight", 5))
    assert settings.phase2.losses.fm_weight == 5.0 and isinstance(settings.phase2.losses.fm_weight, float)
    assert (settings.phase2.losses.mel_weight, settings.phase2.losses.adv_weight) == (30.0, 1.0)
    assert settings.phase1.steps == 1000  # RunSettings' default, not the tiny recipe's
    assert load_settings("tiny").phase2.model.bands[0] == (0.0, 0.2)  # YAML lists become tuples


def test_every_distillation_weight_changes_the_loss():
    """Doubling any loss weight of a stage changes that stage's loss: no weight is silently ignored."""
    from distill.models import student_config
    from distill.tasks import DistillModel, TeacherTargets
    from kanade_stream import KanadeTeacher
    from kanade_stream.streaming import KanadeStudent
    from kanade_stream.streaming.testing import randomize

    teacher = KanadeTeacher.from_pretrained(REFERENCE)
    settings = DistillSettings(student={"preset": "tiny"})
    student = randomize(KanadeStudent(student_config(settings, teacher)))
    targets = TeacherTargets(teacher, None)
    wave = torch.randn(2, 24000 * 24 // 25) * 0.1  # whole teacher tokens
    for stage in ALL_STAGES:
        losses = settings.phase(stage).losses
        weights = [f.name for f in dataclasses.fields(losses) if f.name.endswith("_weight")]
        assert weights, stage

        def loss_with(changed):
            model = DistillModel(stage, student, targets, changed)
            with torch.no_grad():
                return float(model(wave, torch.Generator().manual_seed(0))["loss"])

        base = loss_with(losses)
        for name in weights:
            doubled = dataclasses.replace(losses, **{name: 2 * getattr(losses, name)})
            assert loss_with(doubled) != pytest.approx(base, rel=1e-6), (stage, name)
