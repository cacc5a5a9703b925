"""The models of a distillation: the teacher (and the vocoder whose audio the student imitates) and the
student, sized from the recipe and the teacher."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from kanade_stream.streaming import KanadeStudent, StudentConfig, StudentLoadError
from kanade_stream.teacher import KanadeTeacher
from kanade_stream.vocoder import GRIFFIN_LIM, load_vocoder
from training.pipeline import train_teacher
from training.runtime import Runtime
from training.settings import PHASES, SettingsError, load_settings as load_training_settings

from .settings import ALL_STAGES, DistillSettings

log = logging.getLogger("training")

# where `teacher: embedded` is trained when missing: the default output of `python training/run.py`
EMBEDDED_TEACHER_RUN = Path("runs") / "teacher-tiny"


class DistillError(RuntimeError):
    pass


def teacher_folder(spec: str, runtime: Runtime) -> str:
    """A release folder or hub id for `spec`: "embedded" (the tiny teacher of the training recipe, trained
    here first when missing), a training run folder, a release folder, or a hub id."""
    if spec == "embedded":
        export = EMBEDDED_TEACHER_RUN / "export"
        if not (export / "model.safetensors").is_file():
            log.info("the embedded tiny teacher is not trained yet: training it first in %s", EMBEDDED_TEACHER_RUN)
            settings = load_training_settings("tiny")
            settings.out = str(EMBEDDED_TEACHER_RUN)
            results = train_teacher(settings, list(PHASES), runtime, resume="auto")
            if not all(r.completed for r in results.values()):
                raise DistillError(f"training the embedded teacher in {EMBEDDED_TEACHER_RUN} did not finish "
                                   "(see above); run `python training/run.py --resume` to complete it")
        return str(export)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".pt":
        raise DistillError(f"{path} is a training checkpoint: pass its run folder (with export/) or the export "
                           "folder, which hold the config with the weights")
    if (path / "export" / "model.safetensors").is_file():
        return str(path / "export")
    return spec


def load_teacher(spec: str, ssl_model: str | None, runtime: Runtime) -> tuple[KanadeTeacher, str]:
    folder = teacher_folder(spec, runtime)
    return KanadeTeacher.from_pretrained(folder, ssl_model=ssl_model, device=runtime.device), folder


def load_teacher_vocoder(spec: str | None, folder: str, device):
    """The vocoder whose audio the student's vocoder imitates; None = imitate the real audio."""
    if spec is None:
        local = Path(folder) / "vocoder"
        if not (local / "config.yaml").is_file():
            return None
        spec = str(local)
    if spec == GRIFFIN_LIM:
        return None  # not worth imitating: the real audio is the better target
    return load_vocoder(spec, device=device)


def teacher_shapes(teacher: KanadeTeacher) -> dict:
    """The student settings that the teacher decides: its targets' sizes and its token and mel rates."""
    return dict(content_feature_dim=teacher.ssl.feature_dim, global_feature_dim=teacher.ssl.feature_dim,
                global_dim=teacher.global_encoder.output_channels, fsq_levels=list(teacher.local_quantizer.levels),
                downsample_factor=teacher.config.downsample_factor,
                upsample_factor=teacher.config.mel_upsample_factor, sample_rate=teacher.sample_rate,
                hop_length=teacher.config.hop_length)


def student_config(settings: DistillSettings, teacher: KanadeTeacher) -> StudentConfig:
    """Preset + overrides, with the distillation targets' sizes and the token rate taken from the teacher
    (kanade-12.5hz: 4 SSL frames a token, 8 mel-rate steps a token)."""
    options = dict(settings.student)
    preset = options.pop("preset", "default")
    base = getattr(StudentConfig, preset)().to_dict()
    base.update(options)
    shapes = teacher_shapes(teacher)
    rate, hop = shapes.pop("sample_rate"), shapes.pop("hop_length")  # the recipe's own must agree (checked)
    base.update(shapes)
    try:
        config = StudentConfig.from_dict(base)
    except (StudentLoadError, TypeError, ValueError) as err:
        raise SettingsError(f"student: {err}") from err
    if config.sample_rate != rate or config.hop_length != hop:
        raise SettingsError("the student must use the teacher's sample rate and mel hop")
    token_seconds = 1 / teacher.config.token_rate
    for stage in ALL_STAGES:  # whole teacher tokens per chunk, so teacher and student frames line up one to one
        tokens = settings.chunk_seconds(stage) / token_seconds
        if abs(tokens - round(tokens)) > 1e-6:
            raise SettingsError(f"{stage}: chunk_seconds must be a multiple of this teacher's token length "
                                f"({token_seconds:g} s), got {settings.chunk_seconds(stage)}")
    return config


# the student's transformers that can grow deeper: name -> (module, its StudentConfig depth)
DEEPENABLE = {"ssl": ("ssl_upper", "ssl_layers"), "content": ("content_encoder", "content_layers")}


def deepen(student: KanadeStudent, extra_layers: dict[str, int]) -> KanadeStudent:
    """`student` with more layers on top of some of its transformers ({"ssl": 3}: the causal SSL encoder after
    the global branch's layer, before the content head; {"content": 1}: the content encoder, before the
    downsampling and FSQ), each new layer starting as the identity: its attention and feed-forward output
    projections are zero, so the deeper student computes exactly what `student` did and training adds from
    there. How a trained student gains capacity without starting over."""
    unknown = set(extra_layers) - set(DEEPENABLE)
    if unknown or any(n < 0 for n in extra_layers.values()):
        raise ValueError(f"extra layers are counts >= 0 for {', '.join(DEEPENABLE)}; got {extra_layers}")
    config = student.config.to_dict()
    for part, count in extra_layers.items():
        config[DEEPENABLE[part][1]] += count
    deeper = KanadeStudent(StudentConfig.from_dict(config)).to(student.device)
    result = deeper.load_state_dict(student.state_dict(), strict=False)
    new_prefixes = []
    for part, count in extra_layers.items():
        module = DEEPENABLE[part][0]
        kept = len(student.get_submodule(module).layers)
        new_prefixes += [f"{module}.layers.{i}." for i in range(kept, kept + count)]
        for block in deeper.get_submodule(module).layers[kept:]:
            torch.nn.init.zeros_(block.attention.wo.weight)
            torch.nn.init.zeros_(block.feed_forward.w2.weight)
    unexplained = [k for k in result.missing_keys if not k.startswith(tuple(new_prefixes))]
    assert not unexplained and not result.unexpected_keys, (unexplained, result.unexpected_keys)
    return deeper.train(student.training)


def save_student(student: KanadeStudent, folder: Path) -> Path:
    student.save(folder)
    return folder
