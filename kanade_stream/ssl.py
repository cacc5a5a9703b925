"""Self-supervised speech features from a WavLM checkpoint through `transformers`.

The teacher needs hidden states up to layer 9 only, so the encoder is cut there at load time: the
unused layers are neither kept in memory nor run. Layer i's output is `layers[i - 1]` here, the same
as `hidden_states[i]` of `transformers` and `extract_features(...)[0][i - 1]` of torchaudio.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

DEFAULT_SSL_MODEL = "microsoft/wavlm-base-plus"


# WavLM's (and HuBERT's) conv front end as (kernel, stride): a 400-sample window every 320 at 16 kHz
WAVLM_CONV = ((10, 5), (3, 2), (3, 2), (3, 2), (3, 2), (2, 2), (2, 2))


def conv_frames(num_samples: int, conv=WAVLM_CONV) -> int:
    """How many frames a conv front end of (kernel, stride) layers gives for `num_samples` samples."""
    for kernel, stride in conv:
        num_samples = (num_samples - kernel) // stride + 1
    return max(num_samples, 0)


class SSLFeatureExtractor(nn.Module):
    def __init__(self, model: nn.Module, num_layers: int, sample_rate: int = 16000):
        super().__init__()
        total = len(model.encoder.layers)
        if not 1 <= num_layers <= total:
            raise ValueError(f"the SSL model has {total} transformer layers; cannot compute {num_layers} of them")
        model.encoder.layers = model.encoder.layers[:num_layers]
        self.model = model.eval().requires_grad_(False)
        self.num_layers = num_layers
        self.sample_rate = sample_rate
        self.stable_layer_norm = bool(getattr(model.config, "do_stable_layer_norm", False))

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path = DEFAULT_SSL_MODEL, num_layers: int = 9) -> "SSLFeatureExtractor":
        """A hub id (e.g. microsoft/wavlm-base-plus) or a local folder in `transformers` format."""
        from transformers import WavLMModel

        path = Path(name_or_path)
        if path.exists() and not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a transformers WavLM folder (no config.json in it)")
        if not path.exists():  # a hub id: fail at once when it cannot be fetched
            from .hub import require_hub

            require_hub(str(name_or_path), "SSL model", cached_probe="config.json")
        try:
            model = WavLMModel.from_pretrained(str(name_or_path))
        except OSError as err:
            raise OSError(
                f"cannot load the SSL model {name_or_path!r}: {err}\n"
                "Pass a local folder with config.json + model.safetensors (ssl_model=...), or make the hub "
                "reachable (it is downloaded once, then cached)."
            ) from err
        sample_rate = 16000
        preprocessor = path / "preprocessor_config.json"
        if preprocessor.is_file():
            sample_rate = int(json.loads(preprocessor.read_text()).get("sampling_rate", sample_rate))
        return cls(model, num_layers, sample_rate)

    @property
    def feature_dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def conv_config(self) -> list[tuple[int, int]]:
        return list(zip(self.model.config.conv_kernel, self.model.config.conv_stride))

    @property
    def hop_size(self) -> int:
        return math.prod(stride for _, stride in self.conv_config)

    def min_input_length(self, num_frames: int) -> int:
        """Fewest input samples for which the conv front end yields `num_frames` frames."""
        length = num_frames
        for kernel, stride in reversed(self.conv_config):
            length = (length - 1) * stride + kernel
        return length

    def num_frames(self, num_samples: int) -> int:
        return conv_frames(num_samples, self.conv_config)

    def _run_encoder(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> list[torch.Tensor]:
        encoder = self.model.encoder
        if mask is not None:
            hidden = hidden.masked_fill(~mask[..., None], 0.0)  # padded frames read as the conv's zero padding
        hidden = hidden + encoder.pos_conv_embed(hidden)
        if not self.stable_layer_norm:
            hidden = encoder.layer_norm(hidden)
        outputs, position_bias = [], None
        for index, layer in enumerate(encoder.layers):
            hidden, position_bias = layer(hidden, attention_mask=mask, position_bias=position_bias, index=index)
            outputs.append(hidden)
        return outputs

    @torch.no_grad()
    def forward(self, waveform: torch.Tensor) -> list[torch.Tensor]:
        """Waveform (B, samples) at `sample_rate` -> [layer 1, ..., layer num_layers], each (B, frames, dim)."""
        if waveform.dim() == 1:
            waveform = waveform[None]
        features = self.model.feature_extractor(waveform).transpose(1, 2)
        hidden, _ = self.model.feature_projection(features)
        return self._run_encoder(hidden, None)

    @torch.no_grad()
    def forward_batch(self, waveforms: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Utterances of different lengths at once; each result equals `forward` on that utterance alone.

        The conv front end normalises over time (GroupNorm), so it runs per utterance; the transformer,
        where most of the time goes, runs on the padded batch with a key padding mask.
        Returns the per-layer features (B, max_frames, dim) and the frame mask (B, max_frames).
        """
        projected = []
        for wave in waveforms:
            features = self.model.feature_extractor(wave[None]).transpose(1, 2)
            projected.append(self.model.feature_projection(features)[0][0])
        lengths = torch.tensor([p.shape[0] for p in projected], device=projected[0].device)
        hidden = nn.utils.rnn.pad_sequence(projected, batch_first=True)
        mask = torch.arange(hidden.shape[1], device=hidden.device)[None] < lengths[:, None]
        return self._run_encoder(hidden, mask), mask
