"""The streaming API: push audio (or tokens) of any length, get what became final.

    enc = StreamingEncoder(student, sample_rate=48000, chunk_ms=80)
    new_tokens = enc.push(samples)          # LongTensor (T,) of tokens now final
    rest = enc.flush()                      # end of stream
    conv = StreamingConverter(student, reference=ref_wave, sample_rate=48000, chunk_ms=80)
    out = conv.push(samples)                # numpy float32 at conv.output_rate
    dec = StreamingDecoder(student, global_embedding=g)
    audio = dec.push(tokens)

Behaviour (tests/test_streaming_api.py checks each point):
- Any cutting of the input gives the same result as the offline methods of the student
  (`student.encode`, `student.convert`, `student.decode`), which is push(all) + flush().
- Input is processed in whole chunks of `chunk_ms` (the rest waits in a buffer shorter than a chunk), so
  compute happens once per chunk; `latency_ms` is the algorithmic latency: the chunk plus the worst
  wait for a token to complete, the interpolation lookahead, half the ISTFT window and the input
  resampler's delay.
- Samples: 1-D float numpy arrays or tensors. Float16/64 are converted to float32. Refused with an
  AudioError (and the stream state left exactly as it was): integer or complex dtypes, 2-D or other
  shapes, NaN or infinite values. A push of 0 samples is a no-op that returns an empty result.
- After flush() the stream is finished: push() raises until reset().
- The stream's state is one dict of named tensors (`stream.state`, see kanade_stream/modules/streaming.py).
- A stream is used from one thread at a time: a push while another push (or flush, reset) is running in
  another thread raises RuntimeError instead of corrupting the stream.
- `sample_rate` is required: samples carry no rate, and a guessed rate would be silently misread.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import numpy as np
import torch

from ..audio import AudioError, as_waveform, check_sample_rate
from .pipeline import ConverterCore, DecoderCore, EncoderCore, chunk_latency_ms
from .student import KanadeStudent, check_global_embedding, check_tokens

BACKENDS = ("eager", "compile", "torchscript", "aot")
BACKEND_LABELS = {"eager": "eager", "compile": "torch.compile (whole graphs)", "torchscript": "TorchScript",
                  "aot": "torch.export + AOTInductor"}


def check_samples(samples, name: str = "samples") -> torch.Tensor:
    """A push: 1-D float samples -> float32 CPU tensor. Empty is allowed (a no-op)."""
    if isinstance(samples, np.ndarray):
        if samples.dtype.kind not in "f":
            raise AudioError(f"{name} has dtype {samples.dtype}; push float samples in [-1, 1] "
                             "(for int16 PCM divide by 32768)")
        samples = torch.from_numpy(np.ascontiguousarray(samples))
    if not isinstance(samples, torch.Tensor):
        raise AudioError(f"{name} must be a 1-D numpy array or torch tensor, got {type(samples).__name__}")
    if not samples.is_floating_point():
        raise AudioError(f"{name} has dtype {samples.dtype}; push float samples in [-1, 1] "
                         "(for int16 PCM divide by 32768)")
    if samples.dim() != 1:
        raise AudioError(f"{name} must be 1-D (samples,) mono, got shape {tuple(samples.shape)}; "
                         "mix channels down first (e.g. samples.mean(axis=0))")
    if samples.numel() and not torch.isfinite(samples).all():
        bad = int((~torch.isfinite(samples)).sum())
        raise AudioError(f"{name} contains {bad} NaN or infinite samples; the push was rejected "
                         "and the stream is unchanged")
    return samples.detach().to("cpu", torch.float32)


def chunk_samples(chunk_ms: float, sample_rate: int) -> int:
    samples = chunk_ms * sample_rate / 1000
    if chunk_ms <= 0 or abs(samples - round(samples)) > 1e-6:
        raise ValueError(f"chunk_ms={chunk_ms} must be positive and a whole number of samples at {sample_rate} Hz")
    return int(round(samples))


class CoreRunner:
    """Runs a core's step in the chosen form: eager, TorchScript, or compiled for pushes of `push_size`
    (compiled.py): "aot" = torch.export + AOTInductor packages cached on disk, "compile" = torch.compile of
    the same break-free graphs. A compiled runner runs other pushes eagerly, and falls back to eager with a
    warning if it cannot be built; `label` names what actually runs. `init_state` runs outside inference
    mode: the KV rings are written in place by every step, which inference-mode tensors would refuse
    outside inference mode."""

    def __init__(self, core: torch.nn.Module, backend: str, push_size: int | None = None,
                 compile_options: dict | None = None):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.core, self.backend = core, backend
        self.module = core
        self.label = BACKEND_LABELS[backend]
        self.compiled = None
        if backend == "torchscript":
            from .export import script_core

            self.module = script_core(core)
        self.step = self.module.step
        if backend in ("aot", "compile"):
            self._build_compiled(backend, push_size, compile_options or {})

    def _build_compiled(self, backend: str, push_size: int | None, compile_options: dict) -> None:
        import sys
        import warnings

        from .compiled import CompiledStep, CompileUnavailable

        if push_size is None:
            raise ValueError(f"backend {backend!r} compiles the step for one push size: pass push_size")
        try:
            self.compiled = CompiledStep(self.core, push_size, compiler="aot" if backend == "aot" else "inductor",
                                         log=lambda message: print(message, file=sys.stderr, flush=True),
                                         compile_options=compile_options)
        except CompileUnavailable as err:
            warnings.warn(f"the compiled step ({backend}) cannot be built here ({err}); running the step eagerly",
                          RuntimeWarning)
            self.label = f"eager ({BACKEND_LABELS[backend]} unavailable: {err})"
            return
        self.label = self.compiled.label
        self.step = self.compiled.step

    def init_state(self, batch: int = 1) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return self.module.init_state(batch)


class _OneThreadAtATime:
    """Refuses (rather than queues or corrupts) a second concurrent call into a stream."""

    def __init__(self):
        self._lock = threading.Lock()

    @contextmanager
    def __call__(self):
        if not self._lock.acquire(blocking=False):
            raise RuntimeError("this stream is already being pushed to from another thread; a stream keeps one "
                               "ordered state, so use one stream per thread (or serialise the pushes)")
        try:
            yield
        finally:
            self._lock.release()


class _Stream:
    def __init__(self, student: KanadeStudent, sample_rate: int, chunk_ms: float):
        if not isinstance(student, KanadeStudent):
            raise TypeError(f"expected a KanadeStudent, got {type(student).__name__}")
        self.student = student.eval()
        self.sample_rate = check_sample_rate(sample_rate)
        self.chunk_ms = float(chunk_ms)
        self.chunk_samples = chunk_samples(chunk_ms, self.sample_rate)
        self._exclusive = _OneThreadAtATime()

    @property
    def frame_rate(self) -> float:
        """Tokens per second."""
        return float(self.student.config.token_rate)

    @property
    def latency_ms(self) -> float:
        """Algorithmic latency: the chunk plus every wait inside the pipeline (`self.core` of a subclass)."""
        return chunk_latency_ms(self.core.lag_seconds, self.chunk_samples, self.sample_rate)

    @property
    def state(self) -> dict[str, torch.Tensor]:
        """The named state tensors (a shallow copy of the dict; the KV rings are updated in place by pushes,
        use `kanade_stream.modules.streaming.copy_state` to keep a snapshot)."""
        return dict(self._state)

    def reset(self) -> None:
        """Start a new stream (the same voice and settings)."""
        with self._exclusive():
            self._state = self.runner.init_state(1)
            self._pending = torch.zeros(0)
            self._samples_in = self._outputs = 0
            self._finished = False

    def push(self, samples):
        """Samples (any length) -> what became final: tokens (LongTensor) from an encoder, converted audio
        (float32 numpy, at output_rate) from a converter."""
        samples = check_samples(samples)  # before anything runs: a refused push leaves the stream as it was
        with self._exclusive():
            self._check_open()
            run, keep = self._take_chunks(samples)
            out = self._run(run)
            self._pending, self._samples_in = keep, self._samples_in + samples.numel()
            self._outputs += len(out)
            return out

    def flush(self):
        """End of stream: the rest, the last chunk completed with silence, so that the whole output covers
        the whole input."""
        with self._exclusive():
            self._check_open()
            padding = torch.zeros(self.core.flush_padding(self._samples_in))
            out = self._run(torch.cat([self._pending, padding]))
            out = out[: max(self._target_outputs(self._samples_in) - self._outputs, 0)]
            self._outputs += len(out)
            self._pending, self._finished = torch.zeros(0), True
            return out

    def _take_chunks(self, samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(whole chunks to run now, remainder to keep) of pending + samples."""
        pending = torch.cat([self._pending, samples])
        n = pending.numel() // self.chunk_samples * self.chunk_samples
        return pending[:n], pending[n:]

    def _check_open(self) -> None:
        if self._finished:
            raise RuntimeError("the stream was flushed; call reset() to start a new one")


class StreamingEncoder(_Stream):
    """Audio at `sample_rate` -> tokens (25 Hz), pushed in any sizes; also a global embedding that
    refines as audio accumulates (`global_embedding`, when with_global)."""

    def __init__(self, student: KanadeStudent, *, sample_rate: int, chunk_ms: float = 80,
                 with_global: bool = True, backend: str = "eager"):
        super().__init__(student, sample_rate, chunk_ms)
        self.core = EncoderCore(self.student, self.sample_rate, with_global)
        self.runner = CoreRunner(self.core, backend, push_size=self.chunk_samples)
        self.with_global = with_global
        self.reset()

    def _run(self, samples: torch.Tensor) -> torch.Tensor:
        if samples.numel() == 0:
            return torch.zeros(0, dtype=torch.long)
        with torch.inference_mode():
            tokens, self._state = self.runner.step(samples[None].to(self.student.device), self._state)
        return tokens[0].cpu()

    def _target_outputs(self, num_samples: int) -> int:
        return self.core.target_tokens(num_samples)

    @property
    def global_embedding(self) -> torch.Tensor | None:
        """Global embedding (global_dim,) of the audio so far; None before the first 20 ms frame."""
        if not self.with_global:
            raise RuntimeError("this encoder was made with with_global=False")
        processed = self._samples_in - self._pending.numel()
        if self.core.resampler.num_outputs(processed) < self.core.ssl_hop:
            return None
        return self._state[self.core.global_key][0].detach().cpu().clone()


class StreamingConverter(_Stream):
    """Live voice conversion: audio at `sample_rate` -> audio with the voice of `reference` at output_rate.

    reference: a clip (1-D, at `reference_rate`, default `sample_rate`) or a global embedding
    (global_dim,); or pass `global_embedding=` explicitly.
    """

    def __init__(self, student: KanadeStudent, reference=None, *, sample_rate: int, chunk_ms: float = 80,
                 global_embedding=None, reference_rate: int | None = None, backend: str = "eager"):
        super().__init__(student, sample_rate, chunk_ms)
        global_dim = self.student.config.global_dim
        if global_embedding is None:
            if reference is None:
                raise ValueError("StreamingConverter needs a reference clip or a global_embedding")
            if isinstance(reference, (torch.Tensor, np.ndarray)) and tuple(reference.shape) == (global_dim,):
                global_embedding = reference  # a global embedding, not a 128-sample clip
            else:
                ref = as_waveform(reference, name="reference")
                global_embedding = self.student.global_embedding(ref, reference_rate or self.sample_rate)
        self.global_embedding = check_global_embedding(global_embedding, global_dim).to(self.student.device)
        self.core = ConverterCore(self.student, self.sample_rate)
        self.runner = CoreRunner(self.core, backend, push_size=self.chunk_samples)
        self.output_rate = self.student.output_rate
        self.reset()

    def _run(self, samples: torch.Tensor) -> np.ndarray:
        if samples.numel() == 0:
            return np.zeros(0, dtype=np.float32)
        with torch.inference_mode():
            audio, self._state = self.runner.step(samples[None].to(self.student.device), self._state,
                                                  self.global_embedding[None])
        return audio[0].cpu().numpy().astype(np.float32, copy=False)

    def _target_outputs(self, num_samples: int) -> int:
        return self.core.target_outputs(num_samples)


class StreamingDecoder:
    """Tokens (25 Hz) + a global embedding -> 24 kHz audio, pushed token by token or in any groups."""

    def __init__(self, student: KanadeStudent, global_embedding, backend: str = "eager", push_tokens: int = 1):
        """backend "aot" compiles the step for pushes of `push_tokens` tokens (others run eagerly)."""
        if not isinstance(student, KanadeStudent):
            raise TypeError(f"expected a KanadeStudent, got {type(student).__name__}")
        self.student = student.eval()
        self.global_embedding = check_global_embedding(global_embedding, student.config.global_dim).to(student.device)
        self.core = DecoderCore(self.student)
        self.runner = CoreRunner(self.core, backend, push_size=push_tokens)
        self.output_rate = self.student.output_rate
        self._exclusive = _OneThreadAtATime()
        self.reset()

    def reset(self) -> None:
        with self._exclusive():
            self._state = self.runner.init_state(1)
            self._tokens_in = self._samples_out = 0
            self._finished = False

    @property
    def frame_rate(self) -> float:
        return float(self.student.config.token_rate)

    @property
    def latency_ms(self) -> float:
        """Wait between a token's end (when it is pushed) and its audio being complete."""
        return self.core.latency_ms()

    @property
    def state(self) -> dict[str, torch.Tensor]:
        """The named state tensors (a shallow copy of the dict)."""
        return dict(self._state)

    def push(self, tokens) -> np.ndarray:
        tokens = check_tokens(tokens, self.student.quantizer.codebook_size)
        with self._exclusive():
            if self._finished:
                raise RuntimeError("the stream was flushed; call reset() to start a new one")
            if tokens.numel() == 0:
                return np.zeros(0, dtype=np.float32)
            with torch.inference_mode():
                audio, self._state = self.runner.step(tokens[None].to(self.student.device), self._state,
                                                      self.global_embedding[None])
            self._tokens_in += tokens.numel()
            self._samples_out += audio.shape[-1]
            return audio[0].cpu().numpy().astype(np.float32, copy=False)

    def flush(self) -> np.ndarray:
        """End of stream: the rest of the last tokens' audio (total = tokens x token_samples)."""
        with self._exclusive():
            if self._finished:
                raise RuntimeError("the stream was flushed; call reset() to start a new one")
            self._finished = True
            if self._tokens_in == 0:
                return np.zeros(0, dtype=np.float32)
            with torch.inference_mode():
                audio, self._state = self.runner.module.flush(self._state, self.global_embedding[None],
                                                              self.core.flush_mel_frames(self._tokens_in))
            audio = audio[0, : max(self._tokens_in * self.core.token_samples - self._samples_out, 0)]
            self._samples_out += audio.shape[-1]
            return audio.cpu().numpy().astype(np.float32, copy=False)

