"""The full bidirectional Kanade tokenizer (the teacher), with the official inference API.

Data path: 24 kHz audio -> symmetric zero padding -> 16 kHz -> WavLM layers
1..9 -> content branch (normalised mean of layers 6 and 9 -> local transformer -> strided conv -> FSQ)
and global branch (mean of layers 1 and 2 -> ConvNeXt -> attentive stats pooling); tokens + global
embedding -> mel prenet -> transposed conv -> linear interpolation to the mel length -> AdaLN-Zero mel
decoder -> PostNet -> log-mel for the Vocos vocoder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .audio import AudioError, MelSpectrogram, as_waveform, resample
from .checkpoint import bundled_ssl_model, load_release_weights, resolve_release, save_release
from .config import SSL_HUB_IDS, KanadeConfig
from .modules.convnets import GlobalEncoder, PostNet
from .modules.fsq import FiniteScalarQuantizer
from .modules.transformer import Transformer
from .ssl import SSLFeatureExtractor


@dataclass
class KanadeFeatures:
    content_token_indices: torch.Tensor | None = None  # (T,) long
    content_embedding: torch.Tensor | None = None  # (T, D)
    global_embedding: torch.Tensor | None = None  # (G,)


class KanadeTeacher(nn.Module):
    # parts of the model that a release does not carry
    NOT_RELEASED = ("ssl.", "feature_decoder.", "conv_upsample.", "mel_spectrogram.")

    def __init__(self, config: KanadeConfig, ssl: SSLFeatureExtractor, with_feature_decoder: bool = False):
        super().__init__()
        config.validate()
        self.config = config
        self.ssl = ssl
        dim = config.transformer_kwargs("local_encoder")["dim"]
        self.local_encoder = Transformer(**config.transformer_kwargs("local_encoder"))
        self.conv_downsample = nn.Conv1d(dim, dim, config.downsample_factor, stride=config.downsample_factor)
        self.local_quantizer = FiniteScalarQuantizer(**config.local_quantizer)
        self.global_encoder = GlobalEncoder(**config.global_encoder)
        self.mel_prenet = Transformer(**config.transformer_kwargs("mel_prenet"))
        prenet_out = self.mel_prenet.output_dim
        self.mel_conv_upsample = nn.ConvTranspose1d(
            prenet_out, prenet_out, config.mel_upsample_factor, stride=config.mel_upsample_factor
        ) if config.mel_upsample_factor > 1 else None
        self.mel_decoder = Transformer(**config.transformer_kwargs("mel_decoder"))
        self.mel_postnet = PostNet(**config.mel_postnet)
        self.feature_decoder = self.conv_upsample = None
        if with_feature_decoder:
            if config.feature_decoder is None:
                raise ValueError("the config has no feature_decoder: it cannot be trained for SSL reconstruction")
            self.conv_upsample = nn.ConvTranspose1d(dim, dim, config.downsample_factor, stride=config.downsample_factor)
            self.feature_decoder = Transformer(**config.transformer_kwargs("feature_decoder"))
        self.mel_spectrogram = MelSpectrogram(config.sample_rate, config.n_fft, config.hop_length, config.n_mels,
                                              config.padding)

    # --- loading and saving -----------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        ssl_model: str | Path | None = None,
        revision: str | None = None,
        device: str | torch.device = "cpu",
    ) -> "KanadeTeacher":
        """Load a released model: a hub id (e.g. frothywater/kanade-25hz) or a folder holding
        config.yaml + model.safetensors. `ssl_model` overrides the WavLM named by the config
        (hub id or local transformers folder); a `wavlm/` folder or an `ssl_model.txt` inside the
        release folder names a bundled one."""
        config_path, weights_path = resolve_release(name_or_path, revision)
        config = KanadeConfig.from_yaml(config_path)
        if ssl_model is None:
            ssl_model = bundled_ssl_model(config_path.parent) or SSL_HUB_IDS.get(config.ssl_model, config.ssl_model)
        ssl = SSLFeatureExtractor.from_pretrained(ssl_model, num_layers=config.ssl_output_layer)
        teacher = cls(config, ssl)
        load_release_weights(teacher, weights_path)
        return teacher.to(device).eval()

    def release_state_dict(self, include_feature_decoder: bool = False) -> dict[str, torch.Tensor]:
        skip = tuple(p for p in self.NOT_RELEASED if not (include_feature_decoder and p in ("feature_decoder.", "conv_upsample.")))
        return {k: v for k, v in self.state_dict().items() if not k.startswith(skip)}

    def save_pretrained(self, folder: str | Path, include_feature_decoder: bool = False) -> Path:
        """Write the official release format: config.yaml + model.safetensors (without WavLM)."""
        return save_release(self, folder, include_feature_decoder)

    # --- lengths ----------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.conv_downsample.weight.device

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    def _ssl_samples_to_ours(self, n: float) -> float:
        return n / self.ssl.sample_rate * self.config.sample_rate

    def waveform_padding(self, num_samples: int) -> int:
        """Zero padding on each side so that WavLM yields exactly ceil(n_16k / hop) frames."""
        n_ssl = num_samples / self.config.sample_rate * self.ssl.sample_rate
        frames = math.ceil(n_ssl / self.ssl.hop_size)
        needed = self._ssl_samples_to_ours(self.ssl.min_input_length(frames))
        return math.ceil((needed - num_samples) / 2)

    def audio_length_for_tokens(self, num_tokens: int) -> int:
        needed = self.ssl.min_input_length(num_tokens * self.config.downsample_factor)
        return math.ceil(self._ssl_samples_to_ours(needed))

    def mel_length(self, num_samples: int) -> int:
        return self.mel_spectrogram.num_frames(num_samples)

    @property
    def min_samples(self) -> int:
        """Shortest input that yields one token (two SSL frames are also needed for a time std)."""
        frames = max(self.config.downsample_factor, 2)
        return math.ceil(self._ssl_samples_to_ours(self.ssl.hop_size * (frames - 1) + 1))

    # --- encoder ----------------------------------------------------------------------------------

    def _prepare(self, waveform, sample_rate: int | None, name: str) -> torch.Tensor:
        wave = as_waveform(waveform, name=name)
        if sample_rate is not None:
            wave = resample(wave, sample_rate, self.config.sample_rate)
        if wave.numel() < self.min_samples:
            raise AudioError(
                f"{name} is too short: {wave.numel()} samples at {self.config.sample_rate} Hz; the tokenizer needs "
                f"at least {self.min_samples} samples ({1000 * self.min_samples / self.config.sample_rate:.0f} ms)"
            )
        return wave.to(self.device)

    def mix_layers(self, layers: list[torch.Tensor], which: tuple[int, ...]) -> torch.Tensor:
        return torch.stack([layers[i - 1] for i in which]).mean(dim=0)

    def normalize_content(self, features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        """Per-utterance normalisation over time, (B, T, C); unbiased std as in the official code."""
        if not self.config.normalize_ssl_features:
            return features
        return (features - features.mean(dim=1, keepdim=True)) / (features.std(dim=1, keepdim=True) + eps)

    def ssl_features(self, wave_24k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, samples) at the model rate -> (normalised content input, global input), each (B, frames, C)."""
        pad = self.waveform_padding(wave_24k.shape[-1])
        padded = F.pad(wave_24k, (pad, pad))
        layers = self.ssl(resample(padded, self.config.sample_rate, self.ssl.sample_rate))
        content = self.normalize_content(self.mix_layers(layers, self.config.local_ssl_layers))
        return content, self.mix_layers(layers, self.config.global_ssl_layers)

    def content_latent(self, content_features: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised SSL features (B, T, C) -> pre-quantisation latent (B, T // factor, C)."""
        encoded = self.local_encoder(content_features, key_padding_mask=key_padding_mask)
        return self.conv_downsample(encoded.transpose(1, 2)).transpose(1, 2)

    @torch.inference_mode()
    def encode(self, waveform, sample_rate: int | None = None, return_content: bool = True,
               return_global: bool = True) -> KanadeFeatures:
        """Mono waveform (samples,) at the model rate (or at `sample_rate`, resampled) -> features."""
        wave = self._prepare(waveform, sample_rate, "waveform")[None]
        content_in, global_in = self.ssl_features(wave)
        result = KanadeFeatures()
        if return_content:
            embedding, indices = self.local_quantizer.encode(self.content_latent(content_in))
            result.content_embedding, result.content_token_indices = embedding[0], indices[0]
        if return_global:
            result.global_embedding = self.global_encoder(global_in)[0]
        return result

    @torch.inference_mode()
    def encode_batch(self, waveforms: list, sample_rate: int | None = None) -> list[KanadeFeatures]:
        """Several utterances of different lengths at once; the same results as `encode` one by one."""
        if not waveforms:
            return []
        waves = [self._prepare(w, sample_rate, f"waveform {i}") for i, w in enumerate(waveforms)]
        ssl_inputs = []
        for wave in waves:
            pad = self.waveform_padding(wave.numel())
            ssl_inputs.append(resample(F.pad(wave, (pad, pad)), self.config.sample_rate, self.ssl.sample_rate))
        layers, mask = self.ssl.forward_batch(ssl_inputs)
        lengths = mask.sum(dim=1).tolist()
        content = self.mix_layers(layers, self.config.local_ssl_layers)
        content = torch.nn.utils.rnn.pad_sequence(
            [self.normalize_content(content[i : i + 1, :n])[0] for i, n in enumerate(lengths)], batch_first=True
        )
        embeddings, indices = self.local_quantizer.encode(self.content_latent(content, key_padding_mask=mask))
        global_embeddings = self.global_encoder(self.mix_layers(layers, self.config.global_ssl_layers), mask)
        results = []
        for i, n in enumerate(lengths):
            tokens = n // self.config.downsample_factor
            results.append(KanadeFeatures(indices[i, :tokens], embeddings[i, :tokens], global_embeddings[i]))
        return results

    # --- decoder ----------------------------------------------------------------------------------

    def forward_mel(self, content_embedding: torch.Tensor, global_embedding: torch.Tensor, mel_length: int) -> torch.Tensor:
        """(B, T, D) content + (B, G) global -> mel (B, n_mels, mel_length)."""
        latent = self.mel_prenet(content_embedding).transpose(1, 2)
        if self.mel_conv_upsample is not None:
            latent = self.mel_conv_upsample(latent)
        latent = F.interpolate(latent, size=mel_length, mode="linear").transpose(1, 2)
        mel = self.mel_decoder(latent, condition=global_embedding[:, None, :]).transpose(1, 2)
        return self.mel_postnet(mel)

    @torch.inference_mode()
    def decode(self, global_embedding: torch.Tensor, content_token_indices: torch.Tensor | None = None,
               content_embedding: torch.Tensor | None = None, target_audio_length: int | None = None) -> torch.Tensor:
        """Tokens (T,) or content embedding (T, D) + global embedding (G,) -> log-mel (n_mels, frames)."""
        if content_embedding is None:
            if content_token_indices is None:
                raise ValueError("decode needs content_token_indices or content_embedding")
            tokens = torch.as_tensor(content_token_indices, device=self.device)
            if tokens.dim() != 1 or tokens.numel() == 0 or tokens.is_floating_point():
                raise ValueError(f"content_token_indices must be a non-empty 1-D integer tensor, got "
                                 f"shape {tuple(tokens.shape)} dtype {tokens.dtype}")
            content_embedding = self.local_quantizer.decode(tokens)
        global_embedding = torch.as_tensor(global_embedding, device=self.device, dtype=torch.float32)
        expected = self.global_encoder.output_channels
        if global_embedding.shape != (expected,):
            raise ValueError(f"global_embedding must have shape ({expected},), got {tuple(global_embedding.shape)}")
        if target_audio_length is None:
            target_audio_length = self.audio_length_for_tokens(content_embedding.shape[0])
        mel = self.forward_mel(content_embedding[None].to(self.device), global_embedding[None],
                               self.mel_length(target_audio_length))
        return mel[0]

    @torch.inference_mode()
    def voice_conversion(self, source_waveform, reference_waveform, sample_rate: int | None = None) -> torch.Tensor:
        """Content of the source, voice of the reference -> log-mel (n_mels, frames) of the source's length."""
        source = self._prepare(source_waveform, sample_rate, "source waveform")
        reference = self._prepare(reference_waveform, sample_rate, "reference waveform")
        content = self.encode(source, return_global=False).content_embedding
        speaker = self.encode(reference, return_content=False).global_embedding
        return self.decode(speaker, content_embedding=content, target_audio_length=source.numel())
