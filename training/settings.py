"""Training recipes: a YAML file (training/configs/*.yaml) read into typed dataclasses, then command-line overrides.

    name: kanade-25hz
    seed: 0
    out: runs/kanade-25hz
    ssl_model: microsoft/wavlm-base-plus     # hub id, local transformers folder, or "embedded"
    model: {class_path: ..., init_args: ...} # the Kanade model in the release form, or "tiny"
    data: {chunk_seconds: 5.76, batch_size: 128, ...}
    phase1: {steps: ..., optim: {...}, losses: {ssl_weight, mel_weight}}
    phase2: {steps: ..., optim: {...}, losses: {mel_weight, adv_weight, fm_weight}, model: {discriminator}}
    vocoder: {steps: ..., optim: {...}, losses: {mel_weight, stft_weight, ...}, model: {Vocos size, gan}}

Every section is a dataclass with typed fields. An unknown or misspelt key anywhere, or a value of the
wrong type, is an error that names the key and says what is allowed: a typo must not silently train
something else. `read_recipe` is shared with the distillation recipes (distill/settings.py).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union

import yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "tiny.yaml"
PHASES = ("phase1", "phase2", "vocoder")
PRECISIONS = ("auto", "fp32", "bf16")
DEFAULT_BANDS = ((0.0, 0.2), (0.2, 0.4), (0.4, 0.6), (0.6, 0.8), (0.8, 1.0))  # of the mel bins


class SettingsError(ValueError):
    pass


# --------------------------------------------------------------------------------------------------------
# the sections of a recipe
# --------------------------------------------------------------------------------------------------------


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
    """What every phase (and distillation stage) has; subclasses add their typed `losses` (and `model`)."""

    steps: int = 1000
    optim: OptimSettings = field(default_factory=OptimSettings)
    log_every: int = 50
    val_every: int = 1000
    ckpt_every: int = 1000
    keep_checkpoints: int = 3
    plot_clips: int = 3  # validation clips drawn as mel PNGs
    batch_size: int | None = None  # overrides data.batch_size for this phase
    chunk_seconds: float | None = None  # overrides data.chunk_seconds for this phase


@dataclass
class Phase1Losses:
    ssl_weight: float = 30.0  # L2 of the SSL feature reconstruction
    mel_weight: float = 30.0  # L1 of the log-mel
    invariance_weight: float = 0.0  # MSE between the FSQ latents of a chunk and of its `invariance` view (0 = off)
    phone_weight: float = 0.0  # cross-entropy of the phone each token names against the corpus's labels (0 = off)


@dataclass
class InvarianceView:
    """How phase 1's token-invariance loss hears each chunk again as another voice in another room: played up
    to `speed_spread` faster or slower (formants and tempo), its pitch then moved by up to `semitones` on its
    own, through another microphone (bass and treble shelves each within +- `equaliser_db` dB; 0 = none; the
    whole spectrum also tilted within +- `tilt_db`, as ssl.tilt_db), with white noise at an SNR (dB, against
    each chunk's RMS) drawn from `snr_db` (() = none)."""

    speed_spread: float = 0.15
    semitones: float = 3.0
    snr_db: tuple[float, ...] = (15.0, 40.0)
    equaliser_db: float = 0.0
    tilt_db: float = 0.0


@dataclass
class Phase1Settings(PhaseSettings):
    losses: Phase1Losses = field(default_factory=Phase1Losses)
    # the content branch hears each training batch played up to this much faster or slower (0.15: 0.85x to
    # 1.15x; pitch and formants move), its SSL features stretched back to the chunk's frames (the SSL
    # reconstruction aims at those); the global branch and the mel target hear the chunk as it is, so the voice
    # of the output can only come from the global embedding (disentanglement by perturbing the content input; 0 = off, as the paper)
    content_perturbation: float = 0.0
    # the view of each chunk that losses.invariance_weight compares it with
    invariance: InvarianceView = field(default_factory=InvarianceView)


@dataclass
class Phase2Losses:
    mel_weight: float = 30.0
    adv_weight: float = 1.0  # hinge loss of the generator
    fm_weight: float = 10.0  # feature matching


@dataclass
class DiscriminatorSettings:
    """The multi-band mel discriminator of phase 2."""

    channels: int = 64
    kernel_size: tuple[int, int] = (3, 3)  # (frequency, time)
    dilations: tuple[int, ...] = (1, 1, 1)  # one conv layer per dilation (in time)
    bands: tuple[tuple[float, float], ...] = DEFAULT_BANDS


@dataclass
class Phase2Settings(PhaseSettings):
    losses: Phase2Losses = field(default_factory=Phase2Losses)
    model: DiscriminatorSettings = field(default_factory=DiscriminatorSettings)


@dataclass
class VocoderLosses:
    mel_weight: float = 45.0
    stft_weight: float = 1.0  # multi-resolution STFT
    adv_weight: float = 1.0  # with model.gan only, as the next three
    fm_weight: float = 1.0
    mrd_weight: float = 0.1  # scales the multi-resolution discriminator's terms


@dataclass
class VocosSettings:
    """The Vocos size (when not fine-tuning one given by --init) and whether to train it with GANs."""

    dim: int = 512
    intermediate_dim: int = 1536
    num_layers: int = 8
    gan: bool = False  # Vocos' multi-period + multi-resolution discriminators


@dataclass
class VocoderSettings(PhaseSettings):
    losses: VocoderLosses = field(default_factory=VocoderLosses)
    model: VocosSettings = field(default_factory=VocosSettings)


@dataclass
class SSLModelSettings:
    """The WavLM that the SSL phase pretrains (conv front end as WavLM's: 7 layers, 320 samples a frame)."""

    hidden_size: int = 96
    num_layers: int = 9  # the Kanade configs read hidden states up to layer 9
    num_heads: int = 4
    intermediate_size: int = 192
    conv_dim: int = 64
    pos_conv_kernel: int = 32
    pos_conv_groups: int = 4
    dropout: float = 0.0


@dataclass
class SSLLosses:
    masked_weight: float = 1.0  # cross-entropy of the phone of masked frames
    unmasked_weight: float = 0.2  # ... and of the other frames
    # speaker-adversarial: a frame-level speaker classifier on the content layers; the model is pushed to make
    # its output uniform over the voices (confusion loss, this weight) so those layers lose the voice; 0 = off
    speaker_adversarial_weight: float = 0.0
    adversary_layers: tuple[int, ...] = (6, 9)  # hidden states it reads (their mean)
    adversary_warmup: float = 0.1  # fraction of the steps over which the confusion weight ramps up from 0
    # the adversary has its own optimizer (no warm-up) and learns on the batch's detached features this many
    # times a step: sharing the model's optimizer, a 110-way frame classifier never left chance
    adversary_lr: float = 3.0e-3
    adversary_steps: int = 2
    # cross-view consistency (the idea of ContentVec): each training chunk is heard a second time as another
    # voice (speed 1 +- view_speed_spread moves formants and tempo, then the pitch moves by up to
    # +- view_semitones); every frame of the content layers must pick the aligned frame of the second view out
    # of that view's other frames (InfoNCE; the second view is the target and gets no gradient). The phone
    # labels say what is said; this takes out of the layers Kanade reads what a change of voice changes. 0 = off
    consistency_weight: float = 0.0
    consistency_layers: tuple[int, ...] = (6, 9)  # each layer's loss, averaged
    consistency_temperature: float = 0.1
    view_speed_spread: float = 0.2
    view_semitones: float = 4.0


@dataclass
class SSLSettings(PhaseSettings):
    """--phase ssl: masked phone prediction on the synthetic voice corpus (training/ssl_phase.py)."""

    steps: int = 200
    optim: OptimSettings = field(default_factory=lambda: OptimSettings(lr=1.0e-3, weight_decay=0.01, warmup=0.1))
    log_every: int = 10
    val_every: int = 50
    ckpt_every: int = 50
    plot_clips: int = 0
    batch_size: int | None = 8
    chunk_seconds: float | None = 2.0
    # kanade_stream.voices.builder recipe, or "prebuilt": the voice corpus already in corpus_dir, as it is
    corpus: Literal["tiny", "small", "full", "prebuilt"] = "tiny"
    corpus_dir: str | None = None  # default: <cache>/ssl-corpus-<corpus>
    # a voice corpus's manifest.jsonl (or its folder), or a subset of its lines (some voices), read instead of
    # the corpus above; --data sets it with --phase ssl
    manifest: str | None = None
    # voice (shell-style pattern over the training voices' names, 'pi-joe-*') -> how often its clips are heard
    # against the others' (2: twice as often, 0.5: half as; a voice no pattern names: 1). --voice-weight sets it.
    voice_weights: dict[str, float] = field(default_factory=dict)
    corpus_jobs: int = 1  # synthesis processes
    num_workers: int = 0  # loader processes making batches ahead (GPU runs); --num-workers sets it too
    val_clips: int = 16  # from the corpus's held-out voices
    mask_prob: float = 0.08  # a frame starts a masked span with this probability
    mask_length: int = 10
    speed_perturbation: float = 0.0  # as data.speed_perturbation; the phone labels are stretched with the audio
    # (low, high): each training chunk, and its second view apart, gets white noise at a signal-to-noise
    # ratio (dB, against the chunk's RMS) drawn from this range; () = clean. The synthetic corpus is
    # digitally clean, and a model that never heard noise flips half its phone decisions at 26 dB SNR.
    noise_snr_db: tuple[float, ...] = ()
    # each training chunk, and its second view apart, heard through another microphone: bass and treble
    # shelves with gains uniform in +- this many dB (0 = as synthesised). The synthesizers' voices share a
    # thin low end; the held-out ARCTIC voices have more, and cutting it (9 dB below 300 Hz) raised the SSL
    # model's phone accuracy on them from 0.45 to 0.53.
    equaliser_db: float = 0.0
    # with equaliser_db: the microphone also tilts, bass up and treble down together (or the reverse) by one
    # draw within +- this many dB (perturb.random_microphone). The ARCTIC voices put 7-15 dB more below 300 Hz,
    # relative to 600-2400 Hz, than any training voice, and independent bass and treble draws rarely reach that.
    tilt_db: float = 0.0
    losses: SSLLosses = field(default_factory=SSLLosses)
    model: SSLModelSettings = field(default_factory=SSLModelSettings)


@dataclass
class DataSettings:
    path: str | None = None  # folder or manifest.jsonl; None = the embedded eSpeak corpus
    require_path: bool = False  # real-scale recipes: refuse to fall back on the embedded corpus without --data
    sample_rate: int = 24000
    chunk_seconds: float = 5.76
    batch_size: int = 128  # global: split over the processes of a torchrun job
    num_workers: int = 4
    short_clips: Literal["pad", "skip"] = "pad"  # clips shorter than a chunk: zeros at the end, or left out
    min_seconds: float = 0.5  # shorter clips are always skipped
    heldout_speakers: int = 2  # held-out voices when the data has no heldout split
    # training chunks played up to this much faster or slower (0.1: 0.9x to 1.1x; pitch, formants and tempo
    # together, as speed perturbation does): more voices from the same clips; validation clips never
    speed_perturbation: float = 0.0
    val_clips: int = 16
    val_batch_size: int = 8


@dataclass
class RunSettings:
    name: str = "teacher"
    seed: int = 0
    out: str = "runs/teacher"
    ssl_model: str = "microsoft/wavlm-base-plus"
    model: str | dict = "tiny"  # "tiny" or the release-form mapping {class_path, init_args}
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto = bf16 autocast on GPU, fp32 on CPU
    data: DataSettings = field(default_factory=DataSettings)
    phase1: Phase1Settings = field(default_factory=Phase1Settings)
    phase2: Phase2Settings = field(default_factory=Phase2Settings)
    vocoder: VocoderSettings = field(default_factory=VocoderSettings)
    ssl: SSLSettings = field(default_factory=SSLSettings)

    def phase(self, name: str) -> PhaseSettings:
        return getattr(self, name)

    def batch_size(self, phase: str) -> int:
        return self.phase(phase).batch_size or self.data.batch_size

    def chunk_seconds(self, phase: str) -> float:
        return self.phase(phase).chunk_seconds or self.data.chunk_seconds

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------------------
# reading: every key known, every value of its field's type
# --------------------------------------------------------------------------------------------------------


def type_name(tp) -> str:
    """A field type as a recipe author reads it: float, int | None, list of 2 float, 'pad' or 'skip' ..."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " | ".join("null" if a is type(None) else type_name(a) for a in args)
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {type_name(args[0])}"
        return f"list of {len(args)} {type_name(args[0])}" if len(set(args)) == 1 else \
            f"list [{', '.join(type_name(a) for a in args)}]"
    if tp is dict or origin is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def convert(value, tp, where: str):
    """`value` as type `tp`, or SettingsError naming `where`, the expected type and what was given."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)

    def wrong(extra: str = ""):
        return SettingsError(f"{where}: expected {type_name(tp)}, got {value!r} ({type(value).__name__}){extra}")

    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return convert(value, option, where)
            except SettingsError:
                pass
        raise wrong()
    if origin is Literal:
        if value in args and any(type(value) is type(a) for a in args):
            return value
        raise wrong()
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise wrong()
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise wrong(f": {len(value)} values instead of {len(args)}")
        return tuple(convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is dict or origin is dict:
        if not isinstance(value, Mapping):
            raise wrong()
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise wrong()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong()
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # PyYAML reads 1e-3 (no dot) as text: say so, it is the usual cause
            raise wrong(" (YAML needs a dot in exponent numbers: write 1.0e-3, not 1e-3)"
                        if isinstance(value, str) and _is_number(value) else "")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise wrong()
        return value
    raise TypeError(f"{where}: unsupported setting type {tp!r}")  # a field type this reader does not know


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def merge(default, data, where: str = ""):
    """The dataclass instance `default` with the mapping `data` over it (nested sections merged key by key).
    A key that is not a field is refused with the allowed keys (and the new name when it was renamed: a
    section class may map old names to new ones in `RENAMED`); a value is converted to its field's type."""
    if data is None:
        return default
    section = where or "the recipe"
    if not isinstance(data, Mapping):
        raise SettingsError(f"{section}: expected a mapping of settings, got {data!r}")
    cls = type(default)
    hints = typing.get_type_hints(cls)
    allowed = [f.name for f in dataclasses.fields(default)]
    updates = {}
    for key, value in data.items():
        name = f"{where}.{key}" if where else str(key)
        if key not in allowed:
            renamed = getattr(cls, "RENAMED", {}).get(key)
            hint = f" (renamed {renamed!r})" if renamed else ""
            raise SettingsError(f"{name}: unknown setting{hint}; allowed in {section}: {', '.join(allowed)}")
        current = getattr(default, key)
        if dataclasses.is_dataclass(current):
            updates[key] = merge(current, value, name)
        else:
            updates[key] = convert(value, hints[key], name)
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
        return merge(default, data)
    except SettingsError as err:
        raise SettingsError(f"{path}: {err}") from None


def load_settings(path: str | Path | None = None) -> RunSettings:
    """Read a recipe; a bare name ("tiny", "kanade_25hz") means training/configs/<name>.yaml."""
    settings = read_recipe(path, RunSettings(), CONFIG_DIR, DEFAULT_CONFIG, "training")
    check_settings(settings)
    return settings


def check_microphone(equaliser_db: float, tilt_db: float, prefix: str = "") -> None:
    """The other microphones' settings (perturb.random_microphone), named `prefix`equaliser_db / tilt_db in errors:
    used by the SSL phase and by distillation."""
    if not 0 <= equaliser_db <= 24:
        raise SettingsError(f"{prefix}equaliser_db must be in [0, 24] dB (12: bass and treble each moved by up to "
                            f"+-12 dB), got {equaliser_db}")
    if not 0 <= tilt_db <= 12 or tilt_db and not equaliser_db:
        raise SettingsError(f"{prefix}tilt_db must be in [0, 12] dB and needs {prefix}equaliser_db > 0 (--equaliser 12 "
                            f"--tilt 9), got tilt_db {tilt_db} with equaliser_db {equaliser_db}")


def check_settings(settings: RunSettings) -> None:
    check_phases(settings, PHASES + ("ssl",))
    ssl = settings.ssl
    if ssl.corpus == "prebuilt" and not ssl.corpus_dir:
        raise SettingsError("ssl.corpus: prebuilt needs ssl.corpus_dir (a folder made by kanade_stream.voices.builder)")
    if ssl.noise_snr_db and (len(ssl.noise_snr_db) != 2 or ssl.noise_snr_db[0] > ssl.noise_snr_db[1]):
        raise SettingsError(f"ssl.noise_snr_db must be [] (clean) or [low, high] in dB, got {list(ssl.noise_snr_db)}")
    check_microphone(ssl.equaliser_db, ssl.tilt_db, "ssl.")
    for pattern, weight in ssl.voice_weights.items():
        if not isinstance(pattern, str) or isinstance(weight, bool) or not isinstance(weight, (int, float)) \
                or not 0 <= weight <= 100:
            raise SettingsError(f"ssl.voice_weights: each entry is a voice pattern and a weight in [0, 100] ('pi-joe-*': "
                                f"2 hears those voices twice as often as the others), got {pattern!r}: {weight!r}")
    if not 0 <= ssl.speed_perturbation < 0.5 or not 0 <= settings.data.speed_perturbation < 0.5:
        raise SettingsError("speed_perturbation must be in [0, 0.5) (0.1: chunks played 0.9x to 1.1x as fast)")
    if not 0 <= settings.phase1.content_perturbation < 0.5:
        raise SettingsError("phase1.content_perturbation must be in [0, 0.5) (0.15: the content branch hears "
                            f"chunks played 0.85x to 1.15x as fast), got {settings.phase1.content_perturbation}")
    view = settings.phase1.invariance
    if settings.phase1.losses.invariance_weight < 0 or not 0 <= view.speed_spread < 0.5 or not 0 <= view.semitones <= 12 \
            or not 0 <= view.equaliser_db <= 24 or view.snr_db and (len(view.snr_db) != 2 or view.snr_db[0] > view.snr_db[1]) \
            or not 0 <= view.tilt_db <= 12 or view.tilt_db and not view.equaliser_db:
        raise SettingsError("phase1.losses.invariance_weight must be >= 0, phase1.invariance.speed_spread in [0, 0.5), "
                            "semitones in [0, 12], equaliser_db in [0, 24], tilt_db in [0, 12] (with equaliser_db > 0) "
                            f"and snr_db [] or [low, high] in dB; got {settings.phase1.losses.invariance_weight}, {view}")
    if settings.phase1.losses.phone_weight < 0:
        raise SettingsError(f"phase1.losses.phone_weight must be >= 0, got {settings.phase1.losses.phone_weight}")
    if not 0 < ssl.mask_prob < 1 or ssl.mask_length < 1:
        raise SettingsError(f"ssl.mask_prob must be in (0, 1) and ssl.mask_length >= 1, got {ssl.mask_prob}, "
                            f"{ssl.mask_length}")
    losses = ssl.losses
    if losses.consistency_weight < 0 or losses.consistency_weight > 0 and (
            not losses.consistency_layers or not all(1 <= i <= ssl.model.num_layers for i in losses.consistency_layers)
            or losses.consistency_temperature <= 0 or not 0 <= losses.view_speed_spread < 0.5
            or not 0 <= losses.view_semitones <= 12):
        raise SettingsError("ssl.losses: consistency_weight >= 0; when on, consistency_layers in 1.."
                            f"{ssl.model.num_layers}, consistency_temperature > 0, view_speed_spread in [0, 0.5) "
                            f"and view_semitones in [0, 12] (got {losses.consistency_weight}, "
                            f"{losses.consistency_layers}, {losses.consistency_temperature}, "
                            f"{losses.view_speed_spread}, {losses.view_semitones})")
    if ssl.model.hidden_size % ssl.model.num_heads or ssl.model.hidden_size % ssl.model.pos_conv_groups:
        raise SettingsError("ssl.model.hidden_size must be a multiple of num_heads and pos_conv_groups")


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
    if settings.precision not in PRECISIONS:
        raise SettingsError(f"precision must be auto, fp32 or bf16, got {settings.precision!r}")
