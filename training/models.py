"""The teacher a recipe trains: its Kanade config, its frozen SSL model, and the teacher built from both."""

from __future__ import annotations

import logging
from pathlib import Path

from kanade_stream.audio import MelSpectrogram
from kanade_stream.checkpoint import load_release_weights, release_config, resolve_release
from kanade_stream.config import SSL_HUB_IDS, ConfigError, KanadeConfig, tiny_config
from kanade_stream.ssl import SSLFeatureExtractor
from kanade_stream.teacher import KanadeTeacher

from .settings import RunSettings, SettingsError

log = logging.getLogger("training")


def embedded_ssl_model() -> Path:
    """The small WavLM that the embedded teacher uses (pretrained here on synthetic voices; WavLM Base+ is not
    shipped)."""
    from kanade_stream.pretrained import EMBEDDED_TEACHER

    candidate = EMBEDDED_TEACHER / "wavlm"
    if not (candidate / "config.json").is_file():
        raise SettingsError(f"the embedded WavLM is missing ({candidate}): reinstall kanade-stream")
    return candidate


def resolve_ssl_model(name: str) -> str:
    """"embedded", a local transformers folder (absolute, or relative to the working directory), or a hub id."""
    if name == "embedded":
        return str(embedded_ssl_model())
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if path.is_absolute() or name.startswith((".", "~")) or name.count("/") != 1:
        raise SettingsError(f"SSL model {name!r} is neither a folder nor a hub id like microsoft/wavlm-base-plus")
    return name


def ssl_feature_dim(ssl_model: str) -> int:
    from transformers import AutoConfig

    try:
        return int(AutoConfig.from_pretrained(ssl_model).hidden_size)
    except OSError as err:
        raise ConfigError(f"cannot load the SSL model config {ssl_model!r}: {err}\nWithout network access pass a "
                          "local transformers folder (--ssl-model) or --ssl-model embedded for the tiny one.") from err


def model_config(settings: RunSettings, ssl_dim: int) -> KanadeConfig:
    """The Kanade config of the recipe; "tiny" is sized to the SSL model's feature dimension."""
    model = settings.model
    if model == "tiny":
        return tiny_config(ssl_dim=ssl_dim)
    if isinstance(model, dict):
        config = KanadeConfig.from_release_dict({"model": model})
        if config.feature_decoder is None:
            raise SettingsError("the model config has no feature_decoder: phase 1 needs it (SSL reconstruction)")
        return config
    raise SettingsError(f"model must be 'tiny' or a release-form mapping (class_path, init_args), got {model!r}")


def phase1_config(settings: RunSettings, ssl_model: str, init: str | Path | None) -> KanadeConfig:
    """Phase 1 trains the recipe's model, or the release given by --init; a release without the training-only
    feature decoder gets the recipe's."""
    if init is None:
        return model_config(settings, ssl_feature_dim(ssl_model))
    config = release_config(init)
    if config.feature_decoder is None:
        config.feature_decoder = model_config(settings, ssl_feature_dim(ssl_model)).feature_decoder
    return config


def recipe_mel(settings: RunSettings) -> MelSpectrogram:
    """The log-mel of the recipe's model (what the decoder predicts and the vocoder consumes)."""
    config = tiny_config() if settings.model == "tiny" else model_config(settings, 0)
    return MelSpectrogram(config.sample_rate, config.n_fft, config.hop_length, config.n_mels, config.padding)


def build_teacher(config: KanadeConfig, ssl_model: str, with_feature_decoder: bool) -> KanadeTeacher:
    ssl = SSLFeatureExtractor.from_pretrained(ssl_model, num_layers=config.ssl_output_layer)
    expected = config.local_encoder.get("input_dim", config.local_encoder["dim"])
    if ssl.feature_dim != expected:
        raise ConfigError(f"the SSL model {ssl_model} gives {ssl.feature_dim}-dim features but the model config "
                          f"expects {expected}: pick the config that matches the SSL model (--config) or the SSL "
                          "model (--ssl-model)")
    if ssl_model in SSL_HUB_IDS.values():  # record the official name, as a release does
        config.ssl_model = next(k for k, v in SSL_HUB_IDS.items() if v == ssl_model)
    return KanadeTeacher(config, ssl, with_feature_decoder=with_feature_decoder)


def freeze_ssl(teacher: KanadeTeacher) -> None:
    teacher.ssl.requires_grad_(False).eval()


def load_teacher_weights(teacher: KanadeTeacher, release: str | Path) -> None:
    """Released weights (folder or hub id) into `teacher`; a release without the training-only feature
    decoder (as the official ones) leaves the teacher's own, randomly initialised, in place."""
    _, weights = resolve_release(release)
    loaded_parts = load_release_weights(teacher, weights, training_parts_optional=True)
    if teacher.feature_decoder is not None and not loaded_parts:
        log.info("%s has no feature decoder: phase 1 starts it from random weights", release)
