"""The real-time engine: audio threads move samples, one worker runs the model.

    device input --callback--> input ring --worker: processor.push--> output ring --callback--> device output

Callbacks only copy into and out of lock-free ring buffers (`on_input`, `on_output`), so a slow model
can never stall the audio device. The worker feeds whatever input has arrived to the streaming
processor (a `StreamingConverter`, or a `StreamingEncoder` whose results go to `on_result`).

Latency is fixed at start: the output ring is primed with `delay_samples` of silence, enough to cover
the processor's chunk and lookahead, its compute time (half a chunk by default) and one device buffer, so from then on output sample k is the
processed input sample k - delay_samples. When compute falls behind, the input backlog is cut back to
one chunk (the dropped samples are counted) and the output ring is never allowed to hold more than the
fixed delay plus one buffer: latency stays bounded, and every sample dropped or played as silence is
counted.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from .ring import RingBuffer


class StreamProcessor(Protocol):
    """What the engine drives: a streaming converter or encoder (kanade_stream.streaming)."""

    latency_ms: float

    def push(self, samples: np.ndarray): ...

    def reset(self) -> None: ...


@dataclass
class EngineStats:
    input_rate: int
    output_rate: int | None
    delay_samples: int
    processed_samples: int = 0
    dropped_input_samples: int = 0
    dropped_output_samples: int = 0
    busy_seconds: float = 0.0
    compute_times: deque = field(default_factory=lambda: deque(maxlen=2000))
    errors: list = field(default_factory=list)

    @property
    def latency_ms(self) -> float:
        """Input-to-output delay through the engine (device buffers excluded)."""
        rate = self.output_rate or self.input_rate
        return 1000.0 * self.delay_samples / rate

    @property
    def real_time_factor(self) -> float:
        audio = self.processed_samples / self.input_rate
        return self.busy_seconds / audio if audio else 0.0

    def compute_ms(self, quantile: float) -> float:
        if not self.compute_times:
            return 0.0
        return 1000.0 * float(np.quantile(np.fromiter(self.compute_times, float), quantile))


class AudioEngine:
    def __init__(
        self,
        processor: StreamProcessor,
        input_rate: int,
        output_rate: int | None,
        device_block: int,
        processor_rate: int | None = None,
        chunk_samples: int | None = None,
        max_backlog_ms: float = 400.0,
        compute_margin_ms: float | None = None,
        ring_seconds: float = 4.0,
        on_result: Callable[[object], None] | None = None,
    ):
        """`input_rate`/`output_rate`: device rates (output None for an encoder). `device_block`:
        frames per device callback. `processor_rate`: the rate of what `processor.push` returns (it is
        resampled to `output_rate`). `chunk_samples`: the processor's chunk at the input rate.
        `compute_margin_ms`: time allowed for computing a chunk before its output is due (default half a
        chunk, the budget a real-time model should keep at p99); slower chunks are counted underruns."""
        self.processor = processor
        self.input_rate, self.output_rate = int(input_rate), output_rate
        self.device_block = int(device_block)
        self.chunk_samples = int(chunk_samples or device_block)
        self.max_backlog = max(int(max_backlog_ms / 1000 * input_rate), self.chunk_samples + self.device_block)
        self.input_ring = RingBuffer(int(ring_seconds * input_rate))
        self.on_result = on_result
        self.output_ring = None
        self._resampler = None
        delay = 0
        if output_rate is not None:
            self.output_ring = RingBuffer(int(ring_seconds * output_rate))
            processor_rate = processor_rate or output_rate
            if processor_rate != output_rate:
                import soxr  # streaming, state-carrying resampler for the device side

                self._resampler = soxr.ResampleStream(processor_rate, output_rate, 1, dtype="float32")
            # chunk + lookahead of the processor, its compute time, and one device buffer of arrival jitter
            if compute_margin_ms is None:
                compute_margin_ms = 500.0 * self.chunk_samples / input_rate
            delay = math.ceil((processor.latency_ms / 1000 + compute_margin_ms / 1000 + self.device_block / input_rate)
                              * output_rate)
            delay += self._resampler_delay(processor_rate, output_rate)
            self.output_ring.write(np.zeros(delay, dtype=np.float32))
        self.stats = EngineStats(self.input_rate, output_rate, delay)
        self._scratch = np.zeros(self.max_backlog + self.device_block, dtype=np.float32)
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._input_started = False
        self._output_started = output_rate is None  # an encoder has no output side to wait for

    @staticmethod
    def _resampler_delay(processor_rate: int | None, output_rate: int) -> int:
        # soxr holds back a few ms of lookahead; cover it so the start does not underrun
        return 0 if processor_rate in (None, output_rate) else math.ceil(0.01 * output_rate)

    # --- audio-thread side: copies only ------------------------------------------------------------

    # Input and output devices start at slightly different moments. The stream begins when both run:
    # input that arrives before the output device pulls is pre-roll, and the output plays silence
    # until the first input; otherwise the primed delay would grow or be eaten before it matters.

    def on_input(self, samples: np.ndarray) -> None:
        if not self._output_started:
            return
        self.input_ring.write(samples)
        self._input_started = True

    def on_output(self, out: np.ndarray) -> None:
        self._output_started = True
        if not self._input_started:
            out[:] = 0.0
            return
        self.output_ring.read(out, fill_missing=True)

    # --- worker side -------------------------------------------------------------------------------

    def process_available(self) -> int:
        """Run the processor on everything that has arrived; returns the input samples consumed."""
        backlog = len(self.input_ring)
        if backlog > self.max_backlog:
            # behind real time: keep only the newest chunk, so latency stays bounded (counted)
            self.stats.dropped_input_samples += self.input_ring.discard_oldest(keep=self.chunk_samples)
        n = self.input_ring.read(self._scratch[: self.max_backlog])
        if n == 0:
            return 0
        block = self._scratch[:n].copy()
        start = time.perf_counter()
        result = self.processor.push(block)
        elapsed = time.perf_counter() - start
        if len(result):  # a push that completed a model chunk: the figure that matters for real time
            self.stats.compute_times.append(elapsed)
        self.stats.busy_seconds += elapsed
        self.stats.processed_samples += n
        self._deliver(result)
        return n

    def _deliver(self, result) -> None:
        if self.output_ring is None:
            if self.on_result is not None and len(result):
                self.on_result(result)
            return
        audio = np.asarray(result, dtype=np.float32)
        if self._resampler is not None:
            audio = self._resampler.resample_chunk(audio)
        # never let the output run further ahead than the fixed delay plus one buffer
        room = self.stats.delay_samples + 2 * self.device_block - len(self.output_ring)
        if len(audio) > room:
            self.stats.dropped_output_samples += len(audio) - max(room, 0)
            audio = audio[: max(room, 0)]
        self.output_ring.write(audio)

    def finish(self) -> None:
        """End of stream (file mode): flush the processor's held-back samples."""
        flush = getattr(self.processor, "flush", None)
        if flush is not None:
            result = flush()
            if self.output_ring is not None:
                audio = np.asarray(result, dtype=np.float32)
                if self._resampler is not None:
                    audio = self._resampler.resample_chunk(audio, last=True)
                self.output_ring.write(audio)
            elif self.on_result is not None and len(result):
                self.on_result(result)

    def start(self) -> None:
        """Start the worker thread (real-time backends)."""
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name="kanade-stream-worker", daemon=True)
        self._worker.start()

    def _work(self) -> None:
        idle = max(self.device_block / self.input_rate / 4, 0.001)
        try:
            while not self._stop.is_set():
                if self.process_available() == 0:
                    self._stop.wait(idle)
        except Exception as err:  # reported by the backend's monitor loop; the audio threads keep running
            self.stats.errors.append(err)

    def stop(self) -> None:
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout=5)
            self._worker = None

    @property
    def failed(self) -> BaseException | None:
        return self.stats.errors[0] if self.stats.errors else None

    def xruns(self) -> dict[str, int]:
        return {
            "input_overrun": self.input_ring.overruns,
            "output_underrun": self.output_ring.underruns if self.output_ring is not None else 0,
            "dropped_input": self.stats.dropped_input_samples,
            "dropped_output": self.stats.dropped_output_samples,
        }

    def status_line(self) -> str:
        s = self.stats
        x = self.xruns()
        return (f"latency {s.latency_ms:5.0f} ms | compute p50 {s.compute_ms(0.5):5.1f} ms p99 {s.compute_ms(0.99):5.1f} ms"
                f" | RTF {s.real_time_factor:4.2f} | xruns in {x['input_overrun']} out {x['output_underrun']}"
                f" | dropped in {x['dropped_input']} out {x['dropped_output']}")
