"""The real-time engine: audio threads move samples, one worker runs the model.

    device input --callback--> input ring --worker: processor.push--> output --callback--> device output

Callbacks only copy into and out of lock-free ring buffers (`on_input`, `on_output`), so a slow model
can never stall the audio device. The worker feeds whatever input has arrived to the streaming
processor (a `StreamingConverter` or a `StreamingEncoder`) and hands what it returns to the engine's
output (`outputs.py`: audio for a device, or results for a callback).

Latency is fixed at start: the output is primed with a delay that covers the processor's chunk and
lookahead, its compute allowance (`run_session` sets it from the compute measured at warm-up; half a
chunk by default) and one device buffer, so from then on output sample k is the processed input sample
k - delay. Chunks whose compute exceeds the allowance are counted (`late_chunks`): the allowance is
re-checked for as long as the stream runs. When compute falls behind, the input backlog is cut
back to one chunk (the dropped samples are counted) and the output is never allowed to hold more than
the fixed delay plus its headroom: latency stays bounded, and every sample dropped or played as
silence is counted.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .outputs import EngineOutput
from .priority import raise_priority
from .ring import RingBuffer


class StreamProcessor(Protocol):
    """What the engine drives: a streaming converter or encoder (kanade_stream.streaming). A `flush()`
    method, if present, is called at the end of a finite stream."""

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
    busy_seconds: float = 0.0
    compute_allowance_ms: float = 0.0
    late_chunks: int = 0  # chunks whose compute took longer than the allowance
    # the fixed delay, part by part (ms): algorithmic (the processor), compute, device block, resampler
    latency_parts: dict = field(default_factory=dict)
    scheduling: dict = field(default_factory=dict)  # role: what priority.raise_priority got
    compute_times: deque = field(default_factory=lambda: deque(maxlen=2000))
    errors: list = field(default_factory=list)

    @property
    def latency_ms(self) -> float:
        """Input-to-output delay through the engine (device buffers excluded)."""
        return 1000.0 * self.delay_samples / self.output_rate if self.output_rate else 0.0

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
        output: EngineOutput,
        device_block: int,
        chunk_samples: int | None = None,
        max_backlog_ms: float = 400.0,
        compute_margin_ms: float | None = None,
        ring_seconds: float = 4.0,
        realtime: bool = True,
    ):
        """`input_rate`: the input device's rate. `output`: where results go (an `AudioOutput` at the
        output device's rate, or a `ResultOutput`). `device_block`: input frames per device callback.
        `chunk_samples`: the processor's chunk at the input rate. `compute_margin_ms`: time allowed for
        computing a chunk before its output is due (default half a chunk, the budget a real-time model
        should keep at p99); slower chunks are counted (`late_chunks`). `realtime`: the worker and the
        backends' audio threads ask for real-time scheduling (priority.py)."""
        self.processor = processor
        self.realtime = realtime
        self.input_rate = int(input_rate)
        self.output = output
        self.device_block = int(device_block)
        self.chunk_samples = int(chunk_samples or device_block)
        self.max_backlog = max(int(max_backlog_ms / 1000 * input_rate), self.chunk_samples + self.device_block)
        self.input_ring = RingBuffer(int(ring_seconds * input_rate))
        if compute_margin_ms is None:
            compute_margin_ms = 500.0 * self.chunk_samples / self.input_rate
        # chunk + lookahead of the processor, its compute time, and one device buffer of arrival jitter
        parts = {"algorithmic": float(processor.latency_ms), "compute": float(compute_margin_ms),
                 "device block": 1000.0 * self.device_block / self.input_rate}
        output.open(processor.latency_ms / 1000 + compute_margin_ms / 1000 + self.device_block / self.input_rate,
                    self.device_block, self.input_rate)
        resampler_ms = 1000.0 * getattr(output, "resampler_delay", 0) / output.rate if output.rate else 0.0
        if resampler_ms:
            parts["resampler"] = resampler_ms
        if hasattr(output, "input_clock"):  # input that has arrived: the clock an audio output keeps up with
            output.input_clock = lambda: self.input_ring.total_written
        self.stats = EngineStats(self.input_rate, output.rate, output.delay_samples,
                                 compute_allowance_ms=float(compute_margin_ms), latency_parts=parts)
        self._scratch = np.zeros(self.max_backlog + self.device_block, dtype=np.float32)
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._input_started = False

    @property
    def output_rate(self) -> int | None:
        """The rate a device plays the output at; None when there is nothing to play."""
        return self.output.rate

    # --- audio-thread side: copies only ------------------------------------------------------------

    # Input and output devices start at slightly different moments. The stream begins when both run:
    # input that arrives before the output device pulls is pre-roll, and the output plays silence
    # until the first input; otherwise the primed delay would grow or be eaten before it matters.

    def on_input(self, samples: np.ndarray) -> None:
        if not self.output.started:
            return
        self.input_ring.write(samples)
        self._input_started = True

    def on_output(self, out: np.ndarray) -> None:
        self.output.read(out, playing=self._input_started)

    # --- worker side -------------------------------------------------------------------------------

    def process_available(self) -> int:
        """Run the processor on everything that has arrived; returns the input samples consumed."""
        backlog = len(self.input_ring)
        if backlog > self.max_backlog:
            # behind real time: keep only the newest chunk, so latency stays bounded (counted)
            lost = self.input_ring.discard_oldest(keep=self.chunk_samples)
            self.stats.dropped_input_samples += lost
            self.output.lost_input(lost, self.input_rate)
        n = self.input_ring.read(self._scratch[: self.max_backlog])
        if n == 0:
            return 0
        block = self._scratch[:n].copy()
        start = time.perf_counter()
        result = self.processor.push(block)
        elapsed = time.perf_counter() - start
        # a push that completed a model chunk: the figure that matters for real time (a processor that
        # also returns held-back output between chunks says which pushes computed one)
        computed = getattr(self.processor, "last_push_computed", None)
        if computed if computed is not None else len(result):
            self.stats.compute_times.append(elapsed)
            if 1000 * elapsed > self.stats.compute_allowance_ms:
                self.stats.late_chunks += 1
        self.stats.busy_seconds += elapsed
        self.stats.processed_samples += n
        self.output.write(result)
        return n

    def finish(self) -> None:
        """End of a finite stream: flush the processor's held-back samples to the output."""
        flush = getattr(self.processor, "flush", None)
        if flush is not None:
            self.output.write(flush(), last=True)

    def start(self) -> None:
        """Start the worker thread (real-time backends)."""
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name="kanade-stream-worker", daemon=True)
        self._worker.start()

    def _work(self) -> None:
        idle = max(self.device_block / self.input_rate / 4, 0.001)
        self.stats.scheduling["worker"] = raise_priority("worker", self.realtime)
        try:
            while not self._stop.is_set():
                if self.process_available() == 0:
                    self._stop.wait(idle)
        except Exception as err:  # reported by the backend's monitor loop; the audio threads keep running
            self.stats.errors.append(err)

    def stop(self, timeout: float = 2.0) -> bool:
        """Stop the worker thread; False if it is still inside a processor push after `timeout` s."""
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout=timeout)
            if self._worker.is_alive():
                return False
            self._worker = None
        return True

    @property
    def failed(self) -> BaseException | None:
        return self.stats.errors[0] if self.stats.errors else None

    def xruns(self) -> dict[str, int]:
        return {
            "input_overrun": self.input_ring.overruns,
            "output_underrun": self.output.underruns,
            "dropped_input": self.stats.dropped_input_samples,
            "dropped_output": self.output.dropped,
        }

    def status_line(self) -> str:
        s = self.stats
        x = self.xruns()
        late = f" late {s.late_chunks}" if s.late_chunks else ""
        return (f"latency {s.latency_ms:5.0f} ms | compute p50 {s.compute_ms(0.5):5.1f} ms p99 {s.compute_ms(0.99):5.1f} ms"
                f" (allowance {s.compute_allowance_ms:.0f}{late}) | RTF {s.real_time_factor:4.2f}"
                f" | xruns in {x['input_overrun']} out {x['output_underrun']}"
                f" | dropped in {x['dropped_input']} out {x['dropped_output']}")
