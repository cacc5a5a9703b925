"""The streaming student: a causal, chunked, state-cached Kanade tokenizer + voice converter.

Data path (every stage causal, every stage with an offline and a streaming form, see
kanade_stream/modules/streaming.py for the contract):

  16 kHz audio -> causal strided conv front end (hop 320 = 20 ms) -> SSL transformer, lower part
     |-> global head -> global features (B, T, global_feature_dim) -> causal ConvNeXt -> running
     |   attentive statistics -> global embedding (B, global_dim)
     `-> SSL transformer, upper part -> content head -> content features (B, T, content_feature_dim)
         -> content encoder transformer -> strided conv (x2, 25 Hz) -> FSQ [8,8,8,5,5] -> tokens
  tokens -> FSQ embedding -> mel prenet transformer -> transposed conv (x4, 100 Hz) -> linear
     interpolation to the mel grid (24 kHz / hop 256 = 93.75 Hz, phase carried) -> AdaLN-Zero mel decoder
     conditioned on the global embedding -> causal PostNet -> log-mel (B, 100, M)
  log-mel -> causal ConvNeXt vocoder -> ISTFT head (n_fft 512, hop 256) -> 24 kHz audio

All attention is frame-causal (chunk of 1 frame) with a bounded past window, so the result of any
cutting of the stream into pushes is the offline result; the only waits are a token (40 ms), the
interpolation's one-latent-frame lookahead and half the ISTFT window. The content / global feature heads
have the teacher's SSL dimension by default so a distillation stage can regress the teacher's normalised
content features and global features directly.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from fractions import Fraction
from pathlib import Path

import torch
from torch import nn

from ..audio import AudioError, as_waveform, check_sample_rate
from ..checkpoint import CheckpointError, check_state_dict
from ..modules.fsq import FiniteScalarQuantizer
from ..modules.streaming import name_states
from ..modules.transformer import Transformer
from ..teacher import KanadeFeatures
from .convs import CausalConv1d, CausalConvFrontend, CausalPostNet
from .pooling import CausalGlobalEncoder
from .rates import FrameInterpolator, TokenUpsampler
from .vocoder import CausalVocoder

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "kanade-stream-student"


class StudentLoadError(ValueError):
    """A student folder that cannot be loaded as asked; the message lists what is wrong."""


@dataclass
class StudentConfig:
    # rates
    sample_rate: int = 24000  # output audio and mel rate
    ssl_sample_rate: int = 16000  # input rate of the SSL encoder
    hop_length: int = 256  # mel hop at sample_rate
    n_mels: int = 100
    # causal SSL encoder: (channels, kernel, stride) per causal conv; the strides multiply to the SSL hop
    frontend: list = field(default_factory=lambda: [[64, 10, 5], [128, 8, 4], [256, 4, 4], [256, 4, 4]])
    ssl_dim: int = 384
    ssl_heads: int = 6
    ssl_layers: int = 4
    global_feature_layer: int = 1  # the global branch reads the SSL encoder after this many layers
    ssl_past: int = 100  # frames of left context (50 Hz: 2 s)
    content_feature_dim: int = 768  # teacher SSL dim: the distillation target of the content head
    global_feature_dim: int = 768  # likewise for the global head
    # content branch
    content_dim: int = 384
    content_layers: int = 1
    content_heads: int = 6
    content_past: int = 50
    downsample_factor: int = 2
    fsq_levels: list = field(default_factory=lambda: [8, 8, 8, 5, 5])
    token_dim: int = 384  # FSQ output: the content embedding
    # global branch
    global_dim: int = 128
    global_encoder_dim: int = 192
    global_encoder_intermediate: int = 576
    global_encoder_layers: int = 2
    # mel decoder
    prenet_dim: int = 256
    prenet_layers: int = 3
    prenet_heads: int = 4
    prenet_past: int = 25  # tokens (25 Hz: 1 s)
    prenet_output_dim: int = 256
    upsample_factor: int = 4
    decoder_dim: int = 256
    decoder_layers: int = 3
    decoder_heads: int = 4
    decoder_past: int = 94  # mel frames (93.75 Hz: 1 s)
    postnet_channels: int = 192
    postnet_kernel: int = 7
    postnet_layers: int = 4
    # vocoder: n_fft 512 (not Vocos' 1024) keeps half the ISTFT window, the vocoder's wait, at 10.7 ms
    vocoder_dim: int = 256
    vocoder_intermediate: int = 768
    vocoder_layers: int = 5
    vocoder_kernel: int = 7
    n_fft: int = 512
    rope_theta: float = 1e4
    int8_trained: bool = False  # fine-tuned through int8 rounding (distillation's int8 stage): run it in int8

    # --- presets ----------------------------------------------------------------------------------

    @classmethod
    def default(cls) -> "StudentConfig":
        """Sized for real time on a 2-core CPU: ~21.6 M parameters, ~19.7 M on the converter path
        (see benchmarks/streaming_table.py)."""
        return cls()

    @classmethod
    def tiny(cls) -> "StudentConfig":
        """For tests: real rates and hops, minimal widths."""
        return cls(frontend=[[8, 10, 5], [8, 8, 4], [16, 4, 4], [16, 4, 4]], ssl_dim=16, ssl_heads=2, ssl_layers=2,
                   global_feature_layer=1, ssl_past=8, content_feature_dim=12, global_feature_dim=10, content_dim=16,
                   content_layers=1, content_heads=2, content_past=6, token_dim=16, global_dim=8,
                   global_encoder_dim=8, global_encoder_intermediate=16, global_encoder_layers=1, prenet_dim=16,
                   prenet_layers=1, prenet_heads=2, prenet_past=4, prenet_output_dim=16, decoder_dim=16,
                   decoder_layers=1, decoder_heads=2, decoder_past=10, postnet_channels=16, postnet_kernel=5,
                   postnet_layers=2, vocoder_dim=16, vocoder_intermediate=32, vocoder_layers=1)

    @classmethod
    def large(cls) -> "StudentConfig":
        """Closer to the teacher's widths (for a GPU or a bigger CPU)."""
        return cls(frontend=[[256, 10, 5], [512, 8, 4], [512, 4, 4], [512, 4, 4]], ssl_dim=768, ssl_heads=12,
                   ssl_layers=8, global_feature_layer=2, ssl_past=125, content_dim=768, content_layers=4,
                   postnet_channels=256,
                   content_heads=12, token_dim=768, global_encoder_dim=384, global_encoder_intermediate=1152,
                   global_encoder_layers=4, prenet_dim=768, prenet_layers=6, prenet_heads=12, prenet_past=50,
                   prenet_output_dim=512, decoder_dim=512, decoder_layers=6, decoder_heads=8, decoder_past=125,
                   vocoder_dim=512, vocoder_intermediate=1536, vocoder_layers=8)

    # --- derived rates ----------------------------------------------------------------------------

    @property
    def ssl_hop(self) -> int:
        return math.prod(stride for _, _, stride in self.frontend)

    @property
    def token_hop(self) -> int:
        """Input samples (at ssl_sample_rate) per token."""
        return self.ssl_hop * self.downsample_factor

    @property
    def token_rate(self) -> Fraction:
        return Fraction(self.ssl_sample_rate, self.token_hop)

    @property
    def token_samples(self) -> int:
        """Output samples (at sample_rate) per token."""
        return int(self.sample_rate / self.token_rate)

    @property
    def latent_rate(self) -> Fraction:
        return self.token_rate * self.upsample_factor

    @property
    def mel_rate(self) -> Fraction:
        return Fraction(self.sample_rate, self.hop_length)

    def validate(self) -> None:
        problems = []
        if self.sample_rate / self.token_rate != self.token_samples:
            problems.append(f"a token ({float(1000 / self.token_rate):g} ms) must be a whole number of output samples")
        if not 1 <= self.global_feature_layer <= self.ssl_layers:
            problems.append(f"global_feature_layer must be in 1..ssl_layers ({self.ssl_layers})")
        for name in ("ssl", "content", "prenet", "decoder"):
            dim, heads = getattr(self, f"{name}_dim"), getattr(self, f"{name}_heads")
            if dim % heads or (dim // heads) % 2:
                problems.append(f"{name}_dim {dim} must split into {heads} heads of even size (RoPE pairs)")
        if self.n_fft % self.hop_length or (self.n_fft // 2) % self.hop_length:
            problems.append(f"n_fft ({self.n_fft}) and n_fft / 2 must be multiples of hop_length ({self.hop_length})")
        if any(k < s for _, k, s in self.frontend):
            problems.append("every front-end conv needs kernel >= stride")
        if problems:
            raise ValueError("invalid StudentConfig: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "StudentConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise StudentLoadError(f"unknown student config settings {unknown}")
        config = cls(**data)
        config.validate()
        return config


class KanadeStudent(nn.Module):
    def __init__(self, config: StudentConfig | None = None):
        super().__init__()
        config = config if config is not None else StudentConfig()
        config.validate()
        self.config = c = config
        # where the model lives, whatever its layers become (an int8 Linear has no weight Parameter)
        self.register_buffer("device_anchor", torch.zeros(0), persistent=False)
        self.frontend = CausalConvFrontend(c.frontend, c.ssl_dim)
        causal = dict(rope_theta=c.rope_theta, exact_rope=True)  # float64 angles: exact hours into a stream
        ssl = dict(dim=c.ssl_dim, n_heads=c.ssl_heads, causal_past=c.ssl_past, **causal)
        self.ssl_lower = Transformer(n_layers=c.global_feature_layer, **ssl)
        self.ssl_upper = Transformer(n_layers=c.ssl_layers - c.global_feature_layer, **ssl)
        self.content_head = nn.Linear(c.ssl_dim, c.content_feature_dim)
        self.global_head = nn.Linear(c.ssl_dim, c.global_feature_dim)
        self.content_encoder = Transformer(c.content_dim, c.content_layers, c.content_heads,
                                           causal_past=c.content_past, input_dim=c.content_feature_dim, **causal)
        self.downsample = CausalConv1d(c.content_dim, c.content_dim, c.downsample_factor, c.downsample_factor)
        self.quantizer = FiniteScalarQuantizer(c.content_dim, c.token_dim, c.fsq_levels)
        self.global_encoder = CausalGlobalEncoder(c.global_feature_dim, c.global_dim, c.global_encoder_layers,
                                                  c.global_encoder_dim, c.global_encoder_intermediate)
        self.mel_prenet = Transformer(c.prenet_dim, c.prenet_layers, c.prenet_heads, causal_past=c.prenet_past,
                                      input_dim=c.token_dim, output_dim=c.prenet_output_dim, **causal)
        self.mel_upsample = TokenUpsampler(c.prenet_output_dim, c.upsample_factor)
        self.mel_interpolator = FrameInterpolator(c.prenet_output_dim, c.latent_rate, c.mel_rate)
        self.mel_decoder = Transformer(c.decoder_dim, c.decoder_layers, c.decoder_heads, causal_past=c.decoder_past,
                                       input_dim=c.prenet_output_dim, output_dim=c.n_mels,
                                       condition_dim=c.global_dim, **causal)
        self.mel_postnet = CausalPostNet(c.n_mels, c.postnet_channels, c.postnet_kernel, c.postnet_layers)
        self.vocoder = CausalVocoder(c.n_mels, c.vocoder_dim, c.vocoder_intermediate, c.vocoder_layers, c.n_fft,
                                     c.hop_length, c.vocoder_kernel)
        name_states(self)  # state entries are named by module path: "ssl_lower.layers.0.keys", ...

    # --- saving and loading -----------------------------------------------------------------------

    def save(self, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write `config.json` + `model.safetensors` to `folder` (created); with `dtype` (torch.float16 for the
        shipped students: half the size, loaded back as float32) the floating-point weights are stored in it."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_NAME).write_text(json.dumps({"format": FORMAT, "config": self.config.to_dict()}, indent=2))
        weights = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        if dtype is not None:
            weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
        save_file(weights, str(folder / WEIGHTS_NAME))
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> "KanadeStudent":
        return load_student(folder, device)

    # --- sizes --------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.device_anchor.device

    @property
    def output_rate(self) -> int:
        return self.config.sample_rate

    @property
    def sample_rate(self) -> int:
        """The rate `encode`, `global_embedding` and `convert` assume when no `sample_rate` is given: 24 kHz,
        like the teacher (the official API). Other rates are resampled inside, exactly as in a stream."""
        return self.config.sample_rate

    def num_parameters(self, part: str | None = None) -> int:
        module = self if part is None else getattr(self, part)
        return sum(p.numel() for p in module.parameters())

    # --- offline forms (training, evaluation); each equals the streaming result ----------------------

    def ssl_features(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, samples) at ssl_sample_rate -> (content features (B, T, content_feature_dim),
        global features (B, T, global_feature_dim)); T = samples // 320."""
        lower = self.ssl_lower(self.frontend(wave))
        return self.content_head(self.ssl_upper(lower)), self.global_head(lower)

    def content_latent(self, content_features: torch.Tensor) -> torch.Tensor:
        """(B, T, content_feature_dim) -> pre-quantisation latent (B, T // downsample_factor, content_dim)."""
        encoded = self.content_encoder(content_features)
        return self.downsample(encoded.transpose(1, 2)).transpose(1, 2)

    def global_from_features(self, global_features: torch.Tensor) -> torch.Tensor:
        return self.global_encoder(global_features)

    def decode_mel(self, content_embedding: torch.Tensor, global_embedding: torch.Tensor,
                   num_frames: int = -1) -> torch.Tensor:
        """(B, T, token_dim) + (B, global_dim) -> log-mel (B, n_mels, M). By default M = the frames the
        stream has made from T tokens; num_frames >= 0 extends the end as `StreamingDecoder.flush` does."""
        latent = self.mel_upsample(self.mel_prenet(content_embedding).transpose(1, 2))
        latent = self.mel_interpolator(latent, num_frames).transpose(1, 2)
        mel = self.mel_decoder(latent, condition=global_embedding[:, None, :]).transpose(1, 2)
        return self.mel_postnet(mel)

    def vocode(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, M) -> (B, (M - n_fft / 2 / hop) * hop) audio at sample_rate."""
        return self.vocoder(mel)

    # --- the offline API (same results as the streaming classes in api.py) -------------------------

    @torch.inference_mode()
    def encode(self, waveform, sample_rate: int | None = None, return_global: bool = True) -> KanadeFeatures:
        """Mono waveform (at `sample_rate`, default 24 kHz as for the teacher) -> tokens (T,), content embedding
        (T, token_dim), global embedding (global_dim,): what StreamingEncoder push(...) + flush() gives."""
        from .pipeline import EncoderCore

        rate = self.sample_rate if sample_rate is None else check_sample_rate(sample_rate)
        wave = as_waveform(waveform).to(self.device)
        core = EncoderCore(self, rate, with_global=return_global)
        tokens, embedding, global_embedding = core.offline(wave)
        return KanadeFeatures(tokens, embedding, global_embedding if return_global else None)

    @torch.inference_mode()
    def global_embedding(self, waveform, sample_rate: int | None = None) -> torch.Tensor:
        """Reference clip (at `sample_rate`, default 24 kHz) -> global embedding (global_dim,)."""
        from .pipeline import EncoderCore

        rate = self.sample_rate if sample_rate is None else check_sample_rate(sample_rate)
        wave = as_waveform(waveform, name="reference").to(self.device)
        core = EncoderCore(self, rate, with_global=True)
        needed = core.min_global_samples()
        if wave.numel() < needed:
            raise AudioError(f"reference is too short: {wave.numel()} samples at {rate} Hz; a global embedding needs "
                             f"at least {needed} samples ({1000 * needed / rate:.1f} ms)")
        return core.global_only(wave)

    @torch.inference_mode()
    def decode(self, global_embedding, content_token_indices=None, content_embedding=None) -> torch.Tensor:
        """Tokens (T,) or content embedding (T, token_dim) + global embedding -> audio (T * token_samples,)
        at sample_rate: what StreamingDecoder push(...) + flush() gives."""
        from .pipeline import DecoderCore

        if content_embedding is None:
            if content_token_indices is None:
                raise ValueError("decode needs content_token_indices or content_embedding")
            tokens = check_tokens(content_token_indices, self.quantizer.codebook_size).to(self.device)
            content_embedding = self.quantizer.decode(tokens)
        g = check_global_embedding(global_embedding, self.config.global_dim).to(self.device)
        return DecoderCore(self).offline(content_embedding.to(self.device)[None], g[None])[0]

    @torch.inference_mode()
    def convert(self, source, reference=None, sample_rate: int | None = None, global_embedding=None,
                reference_rate: int | None = None) -> torch.Tensor:
        """Voice conversion, offline: content of `source` (at `sample_rate`, default 24 kHz), voice of `reference`
        (a clip at `reference_rate`, default `sample_rate`, or a `global_embedding`) -> audio at output_rate,
        the length of the source (what StreamingConverter push(...) + flush() gives)."""
        from .pipeline import ConverterCore

        rate = self.sample_rate if sample_rate is None else check_sample_rate(sample_rate)
        if global_embedding is None:
            if reference is None:
                raise ValueError("convert needs a reference clip or a global_embedding")
            global_embedding = self.global_embedding(reference, reference_rate or rate)
        g = check_global_embedding(global_embedding, self.config.global_dim).to(self.device)
        wave = as_waveform(source, name="source").to(self.device)
        return ConverterCore(self, rate).offline(wave, g[None])


def check_tokens(tokens, codebook_size: int) -> torch.Tensor:
    """Token indices as a 1-D int64 tensor; refuses floats, other shapes and out-of-range values."""
    if not isinstance(tokens, torch.Tensor):
        try:
            tokens = torch.as_tensor(tokens)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"tokens must be a 1-D array of integer indices: {err}") from err
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise ValueError(f"tokens must be integer indices, got dtype {tokens.dtype}")
    if tokens.dim() != 1:
        raise ValueError(f"tokens must be 1-D (T,), got shape {tuple(tokens.shape)}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= codebook_size):
        raise ValueError(f"token indices must be in [0, {codebook_size}), got [{int(tokens.min())}, {int(tokens.max())}]")
    return tokens.long()


def check_global_embedding(embedding, global_dim: int) -> torch.Tensor:
    g = torch.as_tensor(embedding)
    if not g.is_floating_point():
        raise ValueError(f"a global embedding must be float, got dtype {g.dtype}")
    g = g.float().reshape(-1) if g.dim() == 2 and g.shape[0] == 1 else g.float()
    if g.shape != (global_dim,):
        raise ValueError(f"global embedding must have shape ({global_dim},), got {tuple(g.shape)}")
    if not torch.isfinite(g).all():
        raise ValueError("global embedding contains NaN or infinite values")
    return g


def load_student(folder: str | Path, device: str | torch.device = "cpu", strict: bool = True) -> KanadeStudent:
    """Load a folder written by `KanadeStudent.save` (config.json + model.safetensors)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    missing_files = [p.name for p in (config_path, weights_path) if not p.is_file()]
    if missing_files:
        raise FileNotFoundError(f"{folder} is not a student folder: missing {', '.join(missing_files)}")
    try:
        data = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise StudentLoadError(f"{config_path} is not valid JSON: {err}") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT or "config" not in data:
        raise StudentLoadError(f"{config_path} is not a {FORMAT} config (expected keys 'format' and 'config')")
    try:
        config = StudentConfig.from_dict(data["config"])
    except (TypeError, ValueError) as err:
        raise StudentLoadError(f"{config_path}: {err}") from err
    model = KanadeStudent(config)
    try:
        weights = load_file(str(weights_path))
    except (SafetensorError, OSError) as err:
        raise StudentLoadError(f"cannot read {weights_path}: {err}") from err
    try:
        check_state_dict(model.state_dict(), weights, where=str(weights_path), strict=strict,
                         hint=f"the weights do not match the config in {config_path}")
    except CheckpointError as err:
        raise StudentLoadError(str(err)) from None
    model.load_state_dict(weights, strict=strict)
    return model.to(device).eval()
