"""Training recipes: a YAML file (training/configs/*.yaml) read into dataclasses, then command-line overrides.

    name: kanade-25hz
    seed: 0
    out: runs/kanade-25hz
    ssl_model: microsoft/wavlm-base-plus     # hub id, local transformers folder, or "embedded"
    model: {class_path: ..., init_args: ...} # the Kanade model in the release form, or "tiny"
    data: {chunk_seconds: 5.76, batch_size: 128, ...}
    phase1: {steps: ..., optim: {...}, losses: {...}}
    phase2: {steps: ..., optim: {...}, losses: {...}, model: {discriminator settings}}
    vocoder: {steps: ..., optim: {...}, losses: {...}, model: {Vocos settings}}

Unknown keys are errors (a typo must not silently train something else).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kanade_stream.config import KanadeConfig, tiny_config

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "tiny.yaml"
PHASES = ("phase1", "phase2", "vocoder")


class SettingsError(ValueError):
    pass


@dataclass
class OptimSettings:
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 1e-4
    warmup: float = 0.1  # fraction of the steps with a linear warm-up
    lr_div_factor: float = 10.0  # warm-up starts at lr / lr_div_factor (the official OneCycle settings)
    final_div_factor: float = 1.0  # the cosine ends at lr / lr_div_factor / final_div_factor
    grad_clip: float = 1.0  # max global gradient norm; 0 = off


@dataclass
class PhaseSettings:
    steps: int = 1000
    optim: OptimSettings = field(default_factory=OptimSettings)
    log_every: int = 50
    val_every: int = 1000
    ckpt_every: int = 1000
    keep_checkpoints: int = 3
    plot_clips: int = 3  # validation clips drawn as mel PNGs
    batch_size: int | None = None  # overrides data.batch_size for this phase
    chunk_seconds: float | None = None  # overrides data.chunk_seconds for this phase
    losses: dict = field(default_factory=dict)  # loss weights, phase-specific names
    model: dict = field(default_factory=dict)  # discriminator (phase 2) or vocoder (vocoder) settings


@dataclass
class DataSettings:
    path: str | None = None  # folder or manifest.jsonl; None = the embedded eSpeak corpus
    sample_rate: int = 24000
    chunk_seconds: float = 5.76
    batch_size: int = 128  # global: split over the processes of a torchrun job
    num_workers: int = 4
    short_clips: str = "pad"  # clips shorter than a chunk: "pad" (zeros at the end) or "skip"
    min_seconds: float = 0.5  # shorter clips are always skipped
    heldout_speakers: int = 2  # held-out voices when the data has no heldout split
    val_clips: int = 16
    val_batch_size: int = 8


@dataclass
class RunSettings:
    name: str = "teacher"
    seed: int = 0
    out: str = "runs/teacher"
    ssl_model: str = "microsoft/wavlm-base-plus"
    model: object = "tiny"  # "tiny" or the release-form dict {class_path, init_args}
    precision: str = "auto"  # auto = bf16 autocast on GPU, fp32 on CPU; or "fp32", "bf16"
    data: DataSettings = field(default_factory=DataSettings)
    phase1: PhaseSettings = field(default_factory=lambda: PhaseSettings(losses={"ssl_weight": 30.0, "mel_weight": 30.0}))
    phase2: PhaseSettings = field(default_factory=lambda: PhaseSettings(
        losses={"mel_weight": 30.0, "adv_weight": 1.0, "fm_weight": 10.0}))
    vocoder: PhaseSettings = field(default_factory=PhaseSettings)

    def phase(self, name: str) -> PhaseSettings:
        return getattr(self, name)

    def batch_size(self, phase: str) -> int:
        return self.phase(phase).batch_size or self.data.batch_size

    def chunk_seconds(self, phase: str) -> float:
        return self.phase(phase).chunk_seconds or self.data.chunk_seconds

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _merge(default, data, where: str):
    """A dataclass instance updated with the mapping `data` (nested)."""
    if data is None:
        return default
    if not isinstance(data, dict):
        raise SettingsError(f"{where}: expected a mapping, got {data!r}")
    known = {f.name for f in dataclasses.fields(default)}
    unknown = set(data) - known
    if unknown:
        raise SettingsError(f"{where}: unknown setting(s) {sorted(unknown)}; known: {sorted(known)}")
    updates = {}
    for name, value in data.items():
        current = getattr(default, name)
        if dataclasses.is_dataclass(current):
            updates[name] = _merge(current, value, f"{where}.{name}")
        elif isinstance(current, tuple) and isinstance(value, list):
            updates[name] = tuple(value)
        elif name == "losses" and isinstance(value, dict):
            updates[name] = {**current, **value}
        else:
            updates[name] = value
    return dataclasses.replace(default, **updates)


def read_recipe(path: str | Path | None, default, config_dir: Path, default_path: Path, what: str):
    """The dataclass `default` updated from a YAML recipe; a bare name means <config_dir>/<name>.yaml."""
    path = Path(path) if path is not None else default_path
    if not path.is_file() and (config_dir / f"{path}.yaml").is_file():
        path = config_dir / f"{path}.yaml"
    if not path.is_file():
        choices = ", ".join(sorted(p.stem for p in config_dir.glob("*.yaml")))
        raise SettingsError(f"no {what} config {path} (built-in: {choices})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise SettingsError(f"{path} is not valid YAML: {err}") from err
    try:
        return _merge(default, data, path.name)
    except TypeError as err:
        raise SettingsError(f"{path}: {err}") from err


def load_settings(path: str | Path | None = None) -> RunSettings:
    """Read a recipe; a bare name ("tiny", "kanade_25hz") means training/configs/<name>.yaml."""
    settings = read_recipe(path, RunSettings(), CONFIG_DIR, DEFAULT_CONFIG, "training")
    check_settings(settings)
    return settings


def check_settings(settings: RunSettings) -> None:
    check_phases(settings, PHASES)


def check_phases(settings, phases) -> None:
    """Steps, warm-up, batch size and chunk length of each phase, and the precision, of a recipe (training's
    or distillation's: anything with .phase(name), .batch_size(name), .chunk_seconds(name), .precision)."""
    for phase in phases:
        p = settings.phase(phase)
        if int(p.steps) < 1:
            raise SettingsError(f"{phase}.steps must be >= 1, got {p.steps}")
        if not 0 <= p.optim.warmup < 1:
            raise SettingsError(f"{phase}.optim.warmup must be a fraction in [0, 1), got {p.optim.warmup}")
        if settings.batch_size(phase) < 1:
            raise SettingsError(f"{phase}: batch size must be >= 1")
        if settings.chunk_seconds(phase) <= 0:
            raise SettingsError(f"{phase}: chunk_seconds must be > 0")
    if settings.precision not in ("auto", "fp32", "bf16"):
        raise SettingsError(f"precision must be auto, fp32 or bf16, got {settings.precision!r}")


# --------------------------------------------------------------------------------------------------------
# model and SSL
# --------------------------------------------------------------------------------------------------------


def embedded_ssl_model() -> Path:
    """The tiny random-weight WavLM that the embedded teacher uses (pretrained WavLM is not shipped)."""
    from kanade_stream.pretrained import EMBEDDED_TEACHER

    for candidate in (EMBEDDED_TEACHER / "wavlm", REPO_ROOT / "tests/data/kanade_official_tiny_25hz/wavlm"):
        if (candidate / "config.json").is_file():
            return candidate
    raise SettingsError("the embedded tiny WavLM is missing (kanade_stream/assets/teacher-tiny/wavlm)")


def resolve_ssl_model(name: str) -> str:
    """"embedded", a local folder (relative to the working directory or the repository), or a hub id."""
    if name == "embedded":
        return str(embedded_ssl_model())
    path = Path(name).expanduser()
    for candidate in (path, REPO_ROOT / path):
        if candidate.is_dir():
            return str(candidate.resolve())
    if path.is_absolute() or name.startswith((".", "~")) or name.count("/") != 1:
        raise SettingsError(f"SSL model {name!r} is neither a folder nor a hub id like microsoft/wavlm-base-plus")
    return name


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
