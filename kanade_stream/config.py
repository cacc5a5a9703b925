"""The Kanade model configuration, read from and written to the official release form.

A release's `config.yaml` is in jsonargparse form: `model.init_args.config` holds the scalar settings
and every component is `{class_path, init_args}`. We read the init_args of the components we know by
their class name (whatever package prefix the class_path has) and refuse settings we do not implement,
instead of silently computing something else. Exports write the same form, so the official code can
load our checkpoints too.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

COMPONENT_CLASSES = {
    "ssl_feature_extractor": "kanade_tokenizer.module.ssl_extractor.SSLFeatureExtractor",
    "local_encoder": "kanade_tokenizer.module.transformer.Transformer",
    "local_quantizer": "kanade_tokenizer.module.fsq.FiniteScalarQuantizer",
    "feature_decoder": "kanade_tokenizer.module.transformer.Transformer",
    "global_encoder": "kanade_tokenizer.module.global_encoder.GlobalEncoder",
    "mel_prenet": "kanade_tokenizer.module.transformer.Transformer",
    "mel_decoder": "kanade_tokenizer.module.transformer.Transformer",
    "mel_postnet": "kanade_tokenizer.module.postnet.PostNet",
}
MODEL_CLASS = "kanade_tokenizer.model.KanadeModel"

# official SSL names -> transformers hub ids
SSL_HUB_IDS = {
    "wavlm_base_plus": "microsoft/wavlm-base-plus",
    "wavlm_base": "microsoft/wavlm-base",
    "wavlm_large": "microsoft/wavlm-large",
}

# Transformer init_args accepted without effect on inference: max_seq_len, use_flash_attention, dropout,
# use_xavier_init (flash attention is a kernel choice, max_seq_len only sizes a RoPE cache, dropout is off
# in eval, xavier init is overwritten by weights).
# Transformer init_args whose non-default values we do not implement.
_TRANSFORMER_FIXED = {"qkv_bias": False, "proj_bias": False, "multiple_of": 256, "ffn_dim_multiplier": None,
                      "causal": False}


class ConfigError(ValueError):
    pass


# --- what each setting must be: a misspelt key or a wrong type is an error naming it ------------------

_OPTIONAL = type(None)
_SCALAR_TYPES = {
    "ssl_model": str, "ssl_output_layer": int, "local_ssl_layers": "int list", "global_ssl_layers": "int list",
    "normalize_ssl_features": bool, "downsample_factor": int, "mel_upsample_factor": int,
    "use_conv_downsample": bool, "mel_interpolation_mode": str, "local_interpolation_mode": str,
    "sample_rate": int, "n_fft": int, "hop_length": int, "n_mels": int, "padding": str,
}
_TRANSFORMER_TYPES = {
    "dim": int, "n_layers": int, "n_heads": int, "window_size": (int, _OPTIONAL), "use_rope": bool,
    "rope_theta": float, "input_dim": (int, _OPTIONAL), "output_dim": (int, _OPTIONAL),
    "adanorm_condition_dim": (int, _OPTIONAL), "use_adaln_zero": bool, "norm_eps": float,
    "max_seq_len": (int, _OPTIONAL), "use_flash_attention": bool, "dropout": float, "use_xavier_init": bool,
    "qkv_bias": bool, "proj_bias": bool, "multiple_of": int, "ffn_dim_multiplier": (float, _OPTIONAL),
    "causal": bool,
}
COMPONENT_TYPES = {
    "ssl_feature_extractor": {"model_name": str, "output_layer": int, "sample_rate": int},
    "local_encoder": _TRANSFORMER_TYPES,
    "feature_decoder": _TRANSFORMER_TYPES,
    "mel_prenet": _TRANSFORMER_TYPES,
    "mel_decoder": _TRANSFORMER_TYPES,
    "local_quantizer": {"input_dim": int, "output_dim": int, "levels": "int list"},
    "global_encoder": {"input_channels": int, "output_channels": int, "num_layers": int, "dim": int,
                       "intermediate_dim": int},
    "mel_postnet": {"input_channels": int, "channels": int, "kernel_size": int, "num_layers": int,
                    "use_layer_norm": bool},
}
_REQUIRED = {
    "local_encoder": ("dim", "n_layers", "n_heads"), "feature_decoder": ("dim", "n_layers", "n_heads"),
    "mel_prenet": ("dim", "n_layers", "n_heads"), "mel_decoder": ("dim", "n_layers", "n_heads"),
    "local_quantizer": ("input_dim", "output_dim", "levels"),
    "global_encoder": ("input_channels", "output_channels", "num_layers", "dim", "intermediate_dim"),
}


def _type_name(expected) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", _OPTIONAL: "null"}
    if expected == "int list":
        return "a list of integers"
    if isinstance(expected, tuple):
        return " or ".join(names[t] for t in expected)
    return names[expected]


def _has_type(value, expected) -> bool:
    if expected == "int list":
        return isinstance(value, (list, tuple)) and all(_has_type(v, int) for v in value)
    if isinstance(expected, tuple):
        return any(_has_type(value, t) for t in expected)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is _OPTIONAL:
        return value is None
    return isinstance(value, expected)


def check_settings(section: str, settings: dict, types: dict, required: tuple = ()) -> None:
    """Refuse unknown keys, missing required keys and values of the wrong type, naming each."""
    if not isinstance(settings, dict):
        raise ConfigError(f"{section}: expected a mapping of settings, got {settings!r}")
    unknown = sorted(set(settings) - set(types))
    if unknown:
        raise ConfigError(f"{section}: unknown setting(s) {unknown}; known: {sorted(types)}")
    missing = [key for key in required if key not in settings]
    if missing:
        raise ConfigError(f"{section}: missing required setting(s) {missing}")
    for key, value in settings.items():
        if not _has_type(value, types[key]):
            raise ConfigError(f"{section}.{key}: expected {_type_name(types[key])}, got {value!r}")


@dataclass
class KanadeConfig:
    # SSL features
    ssl_model: str = "wavlm_base_plus"
    ssl_output_layer: int = 9
    local_ssl_layers: tuple[int, ...] = (6, 9)
    global_ssl_layers: tuple[int, ...] = (1, 2)
    normalize_ssl_features: bool = True
    # rates
    downsample_factor: int = 2
    mel_upsample_factor: int = 4
    use_conv_downsample: bool = True
    mel_interpolation_mode: str = "linear"
    # mel
    sample_rate: int = 24000
    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 100
    padding: str = "center"
    # components: init_args as in the release config
    local_encoder: dict = field(default_factory=dict)
    local_quantizer: dict = field(default_factory=dict)
    feature_decoder: dict | None = None
    global_encoder: dict = field(default_factory=dict)
    mel_prenet: dict = field(default_factory=dict)
    mel_decoder: dict = field(default_factory=dict)
    mel_postnet: dict = field(default_factory=dict)

    @property
    def token_rate(self) -> float:
        return 50.0 / self.downsample_factor

    def transformer_kwargs(self, name: str) -> dict:
        """Keyword arguments of `modules.Transformer` for the component `name`, checked."""
        args = dict(getattr(self, name))
        check_settings(name, args, _TRANSFORMER_TYPES, _REQUIRED[name])
        for key, supported in _TRANSFORMER_FIXED.items():
            if key in args and args[key] != supported:
                raise ConfigError(f"{name}: {key}={args[key]!r} is not supported (only {supported!r})")
        condition_dim = args.get("adanorm_condition_dim")
        if condition_dim is not None and not args.get("use_adaln_zero", False):
            raise ConfigError(f"{name}: conditioning without AdaLN-Zero (use_adaln_zero: false) is not supported")
        return dict(
            dim=args["dim"], n_layers=args["n_layers"], n_heads=args["n_heads"],
            window_size=args.get("window_size"), input_dim=args.get("input_dim"), output_dim=args.get("output_dim"),
            condition_dim=condition_dim if args.get("use_adaln_zero", False) else None,
            use_rope=args.get("use_rope", True), rope_theta=args.get("rope_theta", 500000.0),
            eps=args.get("norm_eps", 1e-5),
        )

    # --- the release form -------------------------------------------------------------------------

    @classmethod
    def from_release_dict(cls, data: dict) -> "KanadeConfig":
        try:
            model = data["model"]["init_args"]
            scalars = model["config"]
        except (KeyError, TypeError) as err:
            raise ConfigError("not a Kanade release config: expected model.init_args.config") from err
        check_settings("config", scalars, _SCALAR_TYPES)
        known = {f.name for f in fields(cls)}
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in scalars.items() if k in known}
        for name in COMPONENT_CLASSES:
            component = model.get(name)
            if component is None:
                if name in ("feature_decoder",):
                    continue
                raise ConfigError(f"the config has no `{name}` component")
            expected = COMPONENT_CLASSES[name].rsplit(".", 1)[1]
            class_path = component.get("class_path", "")
            if class_path.rsplit(".", 1)[-1] != expected:
                raise ConfigError(f"{name}: expected a {expected}, got class_path {class_path!r}")
            args = dict(component.get("init_args") or {})
            check_settings(name, args, COMPONENT_TYPES[name], _REQUIRED.get(name, ()))
            if name == "ssl_feature_extractor":
                kwargs["ssl_model"] = args.get("model_name", cls.ssl_model)
                kwargs["ssl_output_layer"] = int(args.get("output_layer", cls.ssl_output_layer))
            else:
                kwargs[name] = args
        config = cls(**kwargs)
        config.validate()
        return config

    @classmethod
    def from_yaml(cls, path: str | Path) -> "KanadeConfig":
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from err
        try:
            return cls.from_release_dict(data)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from err

    def to_release_dict(self, include_feature_decoder: bool = True) -> dict:
        scalars = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()
                   if k not in COMPONENT_CLASSES and k not in ("ssl_model", "ssl_output_layer")}
        init_args: dict = {"config": scalars}
        for name, class_path in COMPONENT_CLASSES.items():
            if name == "ssl_feature_extractor":
                args = {"model_name": self.ssl_model, "output_layer": self.ssl_output_layer,
                        "sample_rate": self.sample_rate}
            else:
                args = copy.deepcopy(getattr(self, name))
                if args is None or (name == "feature_decoder" and not include_feature_decoder):
                    continue
            init_args[name] = {"class_path": class_path, "init_args": args}
        return {"model": {"class_path": MODEL_CLASS, "init_args": init_args}}

    def to_yaml(self, path: str | Path, include_feature_decoder: bool = True) -> Path:
        path = Path(path)
        path.write_text(yaml.safe_dump(self.to_release_dict(include_feature_decoder), sort_keys=False))
        return path

    def validate(self) -> None:
        for name in ("local_quantizer", "global_encoder", "mel_postnet"):
            check_settings(name, getattr(self, name), COMPONENT_TYPES[name], _REQUIRED.get(name, ()))
        if self.padding not in ("center", "same"):
            raise ConfigError(f"padding {self.padding!r} is not supported (center or same)")
        if self.mel_interpolation_mode != "linear":
            raise ConfigError(f"mel_interpolation_mode {self.mel_interpolation_mode!r} is not supported (linear)")
        if not self.use_conv_downsample:
            raise ConfigError("use_conv_downsample: false (average pooling) is not supported")
        deepest = max(self.local_ssl_layers + self.global_ssl_layers)
        if deepest > self.ssl_output_layer:
            raise ConfigError(f"SSL layer {deepest} is used but ssl output_layer is {self.ssl_output_layer}")
        for name in ("local_encoder", "mel_prenet", "mel_decoder") + (("feature_decoder",) if self.feature_decoder else ()):
            self.transformer_kwargs(name)


def tiny_config(**overrides) -> KanadeConfig:
    """A very small architecture with the real structure, for tests and the embedded default."""
    ssl_dim = overrides.pop("ssl_dim", 64)
    base = dict(
        local_encoder=dict(dim=64, n_layers=2, n_heads=4, window_size=15, use_rope=True, rope_theta=10000.0),
        local_quantizer=dict(input_dim=64, output_dim=64, levels=[8, 8, 8, 5, 5]),
        feature_decoder=dict(dim=64, n_layers=1, n_heads=4, window_size=15, use_rope=True, rope_theta=10000.0),
        global_encoder=dict(input_channels=ssl_dim, output_channels=16, num_layers=2, dim=32, intermediate_dim=64),
        mel_prenet=dict(dim=64, n_layers=2, n_heads=4, window_size=9, use_rope=True, rope_theta=10000.0, output_dim=48),
        mel_decoder=dict(dim=48, n_layers=2, n_heads=4, window_size=9, use_rope=True, rope_theta=10000.0,
                         output_dim=100, adanorm_condition_dim=16, use_adaln_zero=True),
        mel_postnet=dict(input_channels=100, channels=32, kernel_size=7, num_layers=4, use_layer_norm=True),
    )
    if ssl_dim != 64:
        base["local_encoder"]["input_dim"] = ssl_dim
        base["feature_decoder"]["output_dim"] = ssl_dim
    base.update(overrides)
    config = KanadeConfig(**base)
    config.validate()
    return config
