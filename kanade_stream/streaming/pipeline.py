"""Whole-pipeline streaming steps ("cores"): the student's blocks chained into one step, for the three
streaming uses.

- EncoderCore: audio at any input rate -> final tokens (the running global embedding is the state entry
  `EncoderCore.global_key`)
- DecoderCore: tokens (or content embeddings) + a global embedding -> 24 kHz audio
- ConverterCore: audio at any input rate + a global embedding -> converted 24 kHz audio

Every core follows the streaming contract (kanade_stream/modules/streaming.py): `init_state(batch)` gives
one dict of named state tensors, `step(x, state, condition)` returns (output, state), where `condition`
is the global embedding (B, global_dim) of the target voice (unused by the encoder). A core's `step` is
what gets compiled (`torch.compile`) or exported (TorchScript, see export.py): its scripted form runs
without this package. The offline `forward` chains the blocks' offline forms; the Python-only helpers
(`num_tokens`, `flush_padding`, `lag_seconds`, `offline` ...) hold the integer bookkeeping shared by the
streaming API and the student's offline methods, so the two agree.
No `from __future__ import annotations` here: TorchScript reads the annotations.
"""

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modules.streaming import name_states
from .rates import StreamingResampler


class EncoderCore(nn.Module):
    def __init__(self, student: nn.Module, input_rate: int, with_global: bool = True):
        super().__init__()
        c = student.config
        self.input_rate, self.ssl_rate, self.with_global = int(input_rate), c.ssl_sample_rate, with_global
        self.ssl_hop, self.downsample_factor, self.token_hop = c.ssl_hop, c.downsample_factor, c.token_hop
        self.resampler = StreamingResampler(input_rate, c.ssl_sample_rate).to(student.device)
        name_states(self.resampler, "resampler")
        self.frontend, self.ssl_lower, self.ssl_upper = student.frontend, student.ssl_lower, student.ssl_upper
        self.content_head, self.content_encoder = student.content_head, student.content_encoder
        self.downsample, self.quantizer = student.downsample, student.quantizer
        # the global branch only when asked for (a converter takes its voice from a reference instead)
        self.global_head = student.global_head if with_global else None
        self.global_encoder = student.global_encoder if with_global else None
        self.global_key = student.global_encoder.pooling.state_prefix + "embedding"

    @torch.jit.export
    def init_state(self, batch: int = 1) -> Dict[str, Tensor]:
        state = self.resampler.init_state(batch)
        state.update(self.frontend.init_state(batch))
        state.update(self.ssl_lower.init_state(batch))
        state.update(self.ssl_upper.init_state(batch))
        state.update(self.content_encoder.init_state(batch))
        state.update(self.downsample.init_state(batch))
        if self.global_encoder is not None:
            state.update(self.global_encoder.init_state(batch))
        return state

    @torch.jit.export
    def encode_step(self, samples: Tensor, state: Dict[str, Tensor]) -> Tuple[Tensor, Tensor, Dict[str, Tensor]]:
        """samples (B, n) at input_rate -> (new final tokens (B, T), their content embeddings (B, T, D), state)."""
        wave, state = self.resampler.step(samples, state)
        frames, state = self.frontend.step(wave, state)
        lower, state = self.ssl_lower.step(frames, state)
        upper, state = self.ssl_upper.step(lower, state)
        content, state = self.content_encoder.step(self.content_head(upper), state)
        latent, state = self.downsample.step(content.transpose(1, 2), state)
        embedding, tokens = self.quantizer.encode(latent.transpose(1, 2))
        if self.global_encoder is not None and self.global_head is not None:
            _, state = self.global_encoder.step(self.global_head(lower), state)
        return tokens, embedding, state

    @torch.jit.export
    def step(self, samples: Tensor, state: Dict[str, Tensor],
             condition: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
        """samples (B, n) at input_rate -> (new final tokens (B, T), state)."""
        tokens, _, state = self.encode_step(samples, state)
        return tokens, state

    def forward(self, samples: Tensor) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """Offline: (B, n) -> (tokens, embeddings, global embedding or None)."""
        lower = self.ssl_lower(self.frontend(self.resampler(samples)))
        content = self.content_encoder(self.content_head(self.ssl_upper(lower)))
        latent = self.downsample(content.transpose(1, 2)).transpose(1, 2)
        embedding, tokens = self.quantizer.encode(latent)
        global_embedding: Optional[Tensor] = None
        if self.global_encoder is not None and self.global_head is not None and lower.shape[1] > 0:
            global_embedding = self.global_encoder(self.global_head(lower))
        return tokens, embedding, global_embedding

    # --- integer bookkeeping (Python only) ---------------------------------------------------------

    @property
    def delay_seconds(self) -> float:
        return self.resampler.delay_seconds

    def num_tokens(self, num_samples: int) -> int:
        """Tokens final after `num_samples` input samples."""
        return self.resampler.num_outputs(num_samples) // self.ssl_hop // self.downsample_factor

    def samples_for_tokens(self, num_tokens: int) -> int:
        """Fewest input samples that make `num_tokens` tokens final."""
        needed = num_tokens * self.token_hop
        if self.resampler.identity:
            return needed
        return -(-needed // self.resampler.new) * self.resampler.orig

    def target_tokens(self, num_samples: int) -> int:
        """Tokens that cover all of `num_samples` input samples (resampler delay included)."""
        delayed = (num_samples + self.resampler.width) * self.resampler.new  # in units of 1 / (orig * ssl_rate)
        return -(-delayed // (self.resampler.orig * self.token_hop)) if num_samples else 0

    def flush_padding(self, num_samples: int) -> int:
        """Zero samples to append at the end of a stream so that its last tokens become final."""
        return max(self.samples_for_tokens(self.target_tokens(num_samples)) - num_samples, 0)

    def lag_seconds(self, num_samples: int) -> float:
        """Input time not yet covered by final tokens after `num_samples` samples."""
        covered = self.num_tokens(num_samples) * self.token_hop / self.ssl_rate - self.delay_seconds
        return num_samples / self.input_rate - covered

    def min_global_samples(self) -> int:
        return self.samples_for_tokens(1) // self.downsample_factor  # one SSL frame

    def offline(self, wave: Tensor) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """1-D wave -> what push(wave) + flush() of a stream gives: tokens (T,), embeddings (T, D), global."""
        n = wave.shape[-1]
        padded = F.pad(wave, (0, self.flush_padding(n)))[None]
        tokens, embedding, global_embedding = self.forward(padded)
        target = self.target_tokens(n)
        return tokens[0, :target], embedding[0, :target], None if global_embedding is None else global_embedding[0]

    def global_only(self, wave: Tensor) -> Tensor:
        """1-D reference clip (no end padding) -> global embedding (global_dim,)."""
        lower = self.ssl_lower(self.frontend(self.resampler(wave[None])))
        return self.global_encoder(self.global_head(lower))[0]


class DecoderCore(nn.Module):
    def __init__(self, student: nn.Module):
        super().__init__()
        c = student.config
        self.output_rate, self.token_samples, self.hop = c.sample_rate, c.token_samples, c.hop_length
        self.token_rate = float(c.token_rate)
        self.upsample_factor, self.global_dim = c.upsample_factor, c.global_dim
        self.quantizer, self.mel_prenet, self.mel_upsample = student.quantizer, student.mel_prenet, student.mel_upsample
        self.mel_interpolator, self.mel_decoder = student.mel_interpolator, student.mel_decoder
        self.mel_postnet, self.vocoder = student.mel_postnet, student.vocoder

    @torch.jit.export
    def init_state(self, batch: int = 1) -> Dict[str, Tensor]:
        state = self.mel_prenet.init_state(batch)
        state.update(self.mel_interpolator.init_state(batch))
        state.update(self.mel_decoder.init_state(batch))
        state.update(self.mel_postnet.init_state(batch))
        state.update(self.vocoder.init_state(batch))
        return state

    # A step is two parts, so that a compiled step (compiled.py) can compile each for a fixed shape: the latent
    # frames a push makes depend on its size alone; the mel frames the interpolation then emits vary from push
    # to push (its taps, computed outside, set how many), one graph of the second part per count.

    def latent_step(self, embedding: Tensor, state: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
        """Content embeddings (B, T, token_dim) -> latent frames (B, C, T * upsample_factor) before the
        interpolation to the mel grid."""
        hidden, state = self.mel_prenet.step(embedding, state)
        return self.mel_upsample(hidden.transpose(1, 2)), state

    def modulation(self, condition: Tensor) -> Tensor:
        """Global embedding (B, global_dim) -> what the mel decoder's AdaLN-Zero norms read of it (B, 1, D).
        It depends on the target voice alone, so a compiled step computes it once per voice."""
        modulation = self.mel_decoder.modulation(condition[:, None, :])
        assert modulation is not None
        return modulation

    def mel_audio_step_undropped(self, latent: Tensor, state: Dict[str, Tensor], taps: Tensor,
                                 modulation: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        """Latent frames (B, C, T) + the interpolation's `step_taps` for them (m >= 1 mel frames) ->
        m * hop samples, before the ISTFT's start drop."""
        latent, state = self.mel_interpolator.step_with_taps(latent, state, taps)
        return self.audio_step_undropped(latent, state, modulation)

    def audio_step_undropped(self, latent: Tensor, state: Dict[str, Tensor],
                             modulation: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        """Latent on the mel grid (B, C, m >= 1) + `modulation(condition)` -> m * hop samples through decoder,
        PostNet and vocoder, before the ISTFT's start drop (`start_drop`)."""
        mel, state = self.mel_decoder.step(latent.transpose(1, 2), state, modulation=modulation)
        mel, state = self.mel_postnet.step(mel.transpose(1, 2), state)
        return self.vocoder.step_undropped(mel, state)

    def start_drop(self, state: Dict[str, Tensor], m: int) -> int:
        """Samples of the next m mel frames' audio that the ISTFT drops (the start of a stream)."""
        return self.vocoder.istft.start_drop(int(state[self.vocoder.istft.state_prefix + "frames"]), m)

    def _from_mel_latent(self, latent: Tensor, state: Dict[str, Tensor],
                         condition: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        """Latent on the mel grid (B, C, m) -> new final audio."""
        m = latent.shape[-1]
        if m == 0:
            return latent.new_zeros(latent.shape[0], 0), state
        drop = self.start_drop(state, m)
        audio, state = self.audio_step_undropped(latent, state, self.modulation(condition))
        return audio[:, drop:], state

    @torch.jit.export
    def step_embedding(self, embedding: Tensor, state: Dict[str, Tensor],
                       condition: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
        """Content embeddings (B, T, token_dim) of new tokens + global embedding (B, global_dim) ->
        (new final audio (B, n), state)."""
        assert condition is not None, "the decoder needs the global embedding as its condition"
        latent, state = self.latent_step(embedding, state)
        latent, state = self.mel_interpolator.step(latent, state)
        return self._from_mel_latent(latent, state, condition)

    @torch.jit.export
    def step(self, tokens: Tensor, state: Dict[str, Tensor],
             condition: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
        """Token indices (B, T) + global embedding (B, global_dim) -> (new final audio (B, n), state)."""
        return self.step_embedding(self.quantizer.decode(tokens), state, condition)

    @torch.jit.export
    def flush(self, state: Dict[str, Tensor], condition: Optional[Tensor],
              num_mel_frames: int) -> Tuple[Tensor, Dict[str, Tensor]]:
        """End of stream: complete the mel frames up to `num_mel_frames` (holding the last latent frame)."""
        assert condition is not None, "the decoder needs the global embedding as its condition"
        latent, state = self.mel_interpolator.flush(state, num_mel_frames)
        return self._from_mel_latent(latent, state, condition)

    def forward(self, embedding: Tensor, global_embedding: Tensor, num_mel_frames: int = -1) -> Tensor:
        """Offline: (B, T, token_dim) + (B, global_dim) -> audio (B, n)."""
        latent = self.mel_upsample(self.mel_prenet(embedding).transpose(1, 2))
        latent = self.mel_interpolator(latent, num_mel_frames).transpose(1, 2)
        mel = self.mel_decoder(latent, global_embedding[:, None, :]).transpose(1, 2)
        return self.vocoder(self.mel_postnet(mel))

    # --- integer bookkeeping (Python only) ---------------------------------------------------------

    def num_samples(self, num_tokens: int) -> int:
        """Audio samples final after `num_tokens` tokens."""
        mel_frames = self.mel_interpolator.num_outputs(num_tokens * self.upsample_factor)
        return self.vocoder.istft.num_outputs(mel_frames)

    def flush_mel_frames(self, num_tokens: int) -> int:
        """Mel frames that make the audio of `num_tokens` tokens complete (num_tokens * token_samples)."""
        return -(-num_tokens * self.token_samples // self.hop) + self.vocoder.istft.drop_frames

    def lag_seconds(self, num_tokens: int) -> float:
        return num_tokens / self.token_rate - self.num_samples(num_tokens) / self.output_rate

    def latency_ms(self) -> float:
        """Worst wait between a token's end and the end of its audio (the interpolation's one latent frame
        of lookahead and half the ISTFT window, on the mel grid)."""
        return 1000 * max(self.lag_seconds(t) for t in range(16, 16 + 64))

    def offline(self, embedding: Tensor, global_embedding: Tensor) -> Tensor:
        """What push(tokens) + flush() of a stream gives: (B, T, D) -> (B, T * token_samples)."""
        num_tokens = embedding.shape[1]
        audio = self.forward(embedding, global_embedding, self.flush_mel_frames(num_tokens))
        return audio[:, : num_tokens * self.token_samples]


class ConverterCore(nn.Module):
    def __init__(self, student: nn.Module, input_rate: int):
        super().__init__()
        self.encoder = EncoderCore(student, input_rate, with_global=False)
        self.decoder = DecoderCore(student)
        self.input_rate, self.output_rate = int(input_rate), student.config.sample_rate

    @torch.jit.export
    def init_state(self, batch: int = 1) -> Dict[str, Tensor]:
        state = self.encoder.init_state(batch)
        state.update(self.decoder.init_state(batch))
        return state

    @torch.jit.export
    def step(self, samples: Tensor, state: Dict[str, Tensor],
             condition: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
        """samples (B, n) at input_rate + target global embedding (B, global_dim) -> (new final converted
        audio (B, m) at output_rate, state)."""
        _, embedding, state = self.encoder.encode_step(samples, state)
        return self.decoder.step_embedding(embedding, state, condition)

    def forward(self, samples: Tensor, global_embedding: Tensor) -> Tensor:
        _, embedding, _ = self.encoder(samples)
        return self.decoder(embedding, global_embedding)

    # --- integer bookkeeping (Python only) ---------------------------------------------------------

    def num_outputs(self, num_samples: int) -> int:
        return self.decoder.num_samples(self.encoder.num_tokens(num_samples))

    def target_outputs(self, num_samples: int) -> int:
        """Output samples covering all input (the input duration plus the resampler delay)."""
        width = self.encoder.resampler.width
        return -(-(num_samples + width) * self.output_rate // self.input_rate) if num_samples else 0

    def flush_padding(self, num_samples: int) -> int:
        target = self.target_outputs(num_samples)
        tokens = self.encoder.num_tokens(num_samples)
        while self.decoder.num_samples(tokens) < target:
            tokens += 1
        return max(self.encoder.samples_for_tokens(tokens) - num_samples, 0)

    def lag_seconds(self, num_samples: int) -> float:
        covered = self.num_outputs(num_samples) / self.output_rate - self.encoder.delay_seconds
        return num_samples / self.input_rate - covered

    def offline(self, wave: Tensor, global_embedding: Tensor) -> Tensor:
        """1-D source -> what push(source) + flush() of a stream gives (1-D, target_outputs samples)."""
        n = wave.shape[-1]
        audio = self.forward(F.pad(wave, (0, self.flush_padding(n)))[None], global_embedding)
        return audio[0, : self.target_outputs(n)]


def chunk_latency_ms(lag_seconds, chunk_samples: int, rate: int, pushes: int = 240) -> float:
    """Algorithmic latency of pushing `chunk_samples` at a time: the chunk itself plus the worst input
    time not yet covered by output after a push (steady state, over many pushes)."""
    worst = max(lag_seconds(k * chunk_samples) for k in range(pushes // 2, pushes))
    return 1000 * (chunk_samples / rate + max(worst, 0.0))
