"""One live session as a library call: a streaming processor, a backend, options -> a summary.

    backend = PyAudioBackend()                     # or FileBackend / ArrayBackend / NullBackend
    converter = StreamingConverter(student, reference=ref, sample_rate=backend.input_rate)
    summary = run_session(converter, backend, SessionOptions(duration=10))
    print(summary.to_dict())

A processor with an `output_rate` (a converter) plays through the backend's output; any other (an
encoder) hands its results to `options.on_result`. Set `options.stop` from another thread (or a
signal handler) to end the session early; the summary still comes back.

Warm-up measures the compute of a chunk (`measure_compute`): the engine's compute allowance is set
from it (p99 plus a margin), and `choose_processor` uses it to pick the shortest chunk that keeps up.
The summary and `status_line` break the latency down: algorithmic (the model, and the noise gate's
lookahead where it is longer), compute allowance, device block, resampler, device input and output.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from .backends import AudioBackend, StatusCallback
from .engine import AudioEngine, StreamProcessor
from .outputs import AudioOutput, EngineOutput, ResultOutput
from .priority import raise_priority


@dataclass
class SessionOptions:
    duration: float | None = None  # seconds of streaming (of input, for arrays/files); None: until the end or stop
    stop: threading.Event | None = None  # set it to end the session
    on_status: StatusCallback | None = None  # called a few times a second with the engine (status lines)
    on_start: Callable[[], None] | None = None  # the streams run
    # results (tokens of an encoder) as they become final, on the worker thread; given for a converter,
    # its audio comes here instead of being played
    on_result: Callable[[object], None] | None = None
    # run chunks through the processor first: the first calls pay for allocations and kernel choice, and
    # the timed ones set the compute allowance
    warm_up: bool = True
    warm_up_chunks: int = 25
    max_backlog_ms: float = 400.0  # input the engine may fall behind by before it drops the oldest
    # compute allowance in the fixed delay; None: from the warm-up (p99 + margin), or half a chunk without one
    compute_margin_ms: float | None = None
    # the warm-up's measurement when the caller already made one (choose_processor): not measured again
    compute: "ComputeProfile | None" = None
    realtime: bool = True  # the worker and audio threads ask for real-time scheduling (priority.py)


KEEP_UP_MEDIAN = 0.7  # a chunk's median compute may take this fraction of the chunk...
KEEP_UP_P90 = 1.0  # ...and its 90th percentile the whole chunk (audio threads and the system need the rest)


@dataclass
class ComputeProfile:
    """Compute time per chunk measured at warm-up (milliseconds)."""

    chunk_ms: float
    times_ms: list

    def quantile(self, q: float) -> float:
        return float(np.quantile(self.times_ms, q)) if self.times_ms else 0.0

    @property
    def allowance_ms(self) -> float:
        """The compute allowance: p99 plus a quarter (at least 2 ms) for jitter, at most one chunk (a
        chunk slower than that delays the next one too: no allowance covers it)."""
        p99 = self.quantile(0.99)
        return min(p99 + max(2.0, 0.25 * p99), self.chunk_ms)

    @property
    def keeps_up(self) -> bool:
        return (self.quantile(0.5) <= KEEP_UP_MEDIAN * self.chunk_ms
                and self.quantile(0.9) <= KEEP_UP_P90 * self.chunk_ms)

    def describe(self) -> str:
        return (f"compute per {self.chunk_ms:g} ms chunk p50 {self.quantile(0.5):.1f} ms, p90 {self.quantile(0.9):.1f} ms,"
                f" p99 {self.quantile(0.99):.1f} ms")


def measure_compute(processor: StreamProcessor, chunks: int = 25, seed: int = 0, realtime: bool = False
                    ) -> ComputeProfile:
    """Push `chunks` timed chunks of quiet noise (after two untimed ones) and reset the processor.
    `realtime`: measure on a thread scheduled as the engine's worker will be (priority.py)."""
    if realtime:
        result: list = []

        def measure() -> None:
            raise_priority("worker")
            try:
                result.append(measure_compute(processor, chunks, seed))
            except BaseException as err:  # noqa: BLE001 - raised again on the caller's thread
                result.append(err)

        thread = threading.Thread(target=measure, name="kanade-stream-warm-up")
        thread.start()
        thread.join()
        if isinstance(result[0], BaseException):
            raise result[0]
        return result[0]
    rate = getattr(processor, "sample_rate", None)
    chunk = int(getattr(processor, "chunk_samples"))
    noise = (0.003 * np.random.default_rng(seed).standard_normal((chunks + 2) * chunk)).astype(np.float32)
    times = []
    for i in range(chunks + 2):
        start = time.perf_counter()
        processor.push(noise[i * chunk : (i + 1) * chunk])
        if i >= 2:
            times.append(1000 * (time.perf_counter() - start))
    processor.reset()
    chunk_ms = 1000 * chunk / rate if rate else 0.0
    return ComputeProfile(round(chunk_ms, 3), times)


def choose_processor(make: Callable[[int], StreamProcessor], chunk_options: list[int], chunks: int = 25,
                     realtime: bool = False) -> tuple[StreamProcessor, ComputeProfile, list[str]]:
    """The first of `chunk_options` (ms, shortest first) whose warm-up compute keeps up: (processor, its
    compute profile, notes on the ones that did not). The last option is taken whatever its compute."""
    notes = []
    for i, chunk_ms in enumerate(chunk_options):
        processor = make(chunk_ms)
        profile = measure_compute(processor, chunks, realtime=realtime)
        if profile.keeps_up or i == len(chunk_options) - 1:
            return processor, profile, notes
        notes.append(f"{profile.describe()}: too slow to keep up in real time on this machine "
                     f"(needs p50 <= {KEEP_UP_MEDIAN * chunk_ms:.0f} ms, p90 <= {KEEP_UP_P90 * chunk_ms:.0f} ms); "
                     f"using {chunk_options[i + 1]} ms chunks")
    raise ValueError("no chunk options")


@dataclass
class Summary:
    """What a session did; `to_dict()` gives the flat JSON form the live programs print and save."""

    seconds: float  # wall clock
    audio_seconds: float  # input processed
    chunk_ms: float
    model_latency_ms: float  # the processor's algorithmic latency
    engine_latency_ms: float  # the engine's fixed input-to-output delay (device buffers excluded)
    engine_delay_samples: int  # the same delay in output samples (0 for results)
    compute_p50_ms: float
    compute_p99_ms: float
    real_time_factor: float
    input_overrun: int
    output_underrun: int
    dropped_input: int
    dropped_output: int
    compute_allowance_ms: float = 0.0  # of the engine delay: time allowed for computing a chunk
    late_chunks: int = 0  # chunks whose compute took longer than the allowance (the re-check while running)
    warm_up_compute_p99_ms: float | None = None  # what the allowance was set from
    gate_delay_ms: float | None = None  # latency the noise gate adds on top of the model's (None: no gate)
    # the engine delay part by part (ms): algorithmic, compute, device block, resampler
    latency_parts_ms: dict | None = None
    scheduling: dict | None = None  # what the worker and audio threads got: SCHED_FIFO n, nice n or normal
    # real devices only
    device_latency_ms: float | None = None  # the device's own figure when the streams opened (in + out)
    driver_latency_ms: list[float] | None = None  # worst buffering seen in the callbacks: input, output
    callback_gap_ms: list[float] | None = None  # longest gaps between callbacks: input, output
    device_input_ms: float | None = None  # capture to the engine's input ring
    device_output_ms: float | None = None  # the engine's output ring to the speaker
    latency_bound_ms: float | None = None  # what a listener can expect at most: engine + device input + output
    input_device: str | None = None
    output_device: str | None = None
    results: int | None = None  # items handed to a result callback (tokens)

    def breakdown(self) -> str:
        """`latency 98 ms = model 54 + compute 22 + block 10 + device in 5 + out 7`"""
        return latency_breakdown(self.latency_parts_ms or {}, self.engine_latency_ms, self.device_input_ms,
                                 self.device_output_ms)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def make_output(processor: StreamProcessor, backend: AudioBackend, on_result=None) -> EngineOutput:
    """Audio for the backend's output when the processor makes audio and nobody asked for results."""
    source_rate = getattr(processor, "output_rate", None)
    if on_result is not None or source_rate is None:
        return ResultOutput(on_result)
    if not backend.has_output:
        raise ValueError(f"{type(backend).__name__} has no output for the processor's audio; "
                         "open it with an output device, or pass on_result")
    return AudioOutput(backend.output_rate or source_rate, source_rate=source_rate)


def run_session(processor: StreamProcessor, backend: AudioBackend, options: SessionOptions | None = None) -> Summary:
    """Stream `backend`'s input through `processor` in real time (or as fast as an array backend goes)
    until the input ends, `options.duration` passes or `options.stop` is set. The processor must run at
    the backend's input rate. Device and model errors propagate (DeviceError, the processor's own)."""
    options = options or SessionOptions()
    rate = backend.input_rate
    if getattr(processor, "sample_rate", rate) != rate:
        raise ValueError(f"the processor takes {processor.sample_rate} Hz but {backend.input_name} "
                         f"delivers {rate} Hz")
    chunk = getattr(processor, "chunk_samples", backend.block)
    profile = options.compute
    if profile is None and options.warm_up:
        profile = measure_compute(processor, options.warm_up_chunks, realtime=options.realtime)
    allowance = options.compute_margin_ms
    if allowance is None and profile is not None:
        allowance = profile.allowance_ms
    output = make_output(processor, backend, options.on_result)
    engine = AudioEngine(processor, rate, output, device_block=backend.block, chunk_samples=chunk,
                         max_backlog_ms=options.max_backlog_ms, compute_margin_ms=allowance,
                         realtime=options.realtime)
    started = time.monotonic()
    backend.run(engine, options.stop, on_status=options.on_status, on_start=options.on_start,
                duration=options.duration)
    summary = summarize(engine, backend, time.monotonic() - started)
    if profile is not None:
        summary.warm_up_compute_p99_ms = round(profile.quantile(0.99), 2)
    return summary


def latency_breakdown(parts: dict, engine_ms: float, device_in: float | None = None,
                      device_out: float | None = None) -> str:
    """One line: the total and what it is made of (ms)."""
    parts = dict(parts)
    gate = parts.pop("gate", 0.0)
    algorithmic = parts.pop("algorithmic", 0.0)
    terms = [f"model {algorithmic - gate:.0f}"] + ([f"gate {gate:.0f}"] if gate >= 0.5 else [])
    terms += [f"{name} {ms:.0f}" for name, ms in parts.items()]
    total = engine_ms
    if device_in is not None and device_out is not None:
        terms += [f"device in {device_in:.0f}", f"out {device_out:.0f}"]
        total += device_in + device_out
    return f"latency {total:.0f} ms = " + " + ".join(terms)


def device_latency(backend: AudioBackend) -> tuple[float, float] | None:
    """The backend's current device input and output latency (ms), None for arrays and files."""
    figures = getattr(backend, "device_latency_ms", None)
    return figures() if figures is not None else None


def status_line(engine: AudioEngine, backend: AudioBackend | None = None) -> str:
    """The live status: the latency breakdown (device parts as measured so far), then the engine's line."""
    device = device_latency(backend) if backend is not None else None
    line = latency_breakdown(_parts(engine), engine.stats.latency_ms, *(device or (None, None)))
    return f"{line} | {engine.status_line()}"


def _parts(engine: AudioEngine) -> dict:
    parts = dict(engine.stats.latency_parts)
    gate = getattr(engine.processor, "gate_delay_ms", None)
    if gate:
        parts["gate"] = gate
    return parts


def summarize(engine: AudioEngine, backend: AudioBackend, seconds: float) -> Summary:
    stats = engine.stats
    gate = getattr(engine.processor, "gate_delay_ms", None)
    summary = Summary(
        seconds=round(seconds, 3),
        audio_seconds=round(stats.processed_samples / engine.input_rate, 3),
        chunk_ms=round(1000 * engine.chunk_samples / engine.input_rate, 3),
        model_latency_ms=round(engine.processor.latency_ms - (gate or 0.0), 2),
        engine_latency_ms=round(stats.latency_ms, 2),
        engine_delay_samples=stats.delay_samples,
        compute_p50_ms=round(stats.compute_ms(0.5), 2),
        compute_p99_ms=round(stats.compute_ms(0.99), 2),
        real_time_factor=round(stats.real_time_factor, 3),
        **engine.xruns(),
        compute_allowance_ms=round(stats.compute_allowance_ms, 2),
        late_chunks=stats.late_chunks,
        gate_delay_ms=None if gate is None else round(gate, 2),
        latency_parts_ms={k: round(v, 2) for k, v in _parts(engine).items()},
        scheduling=dict(stats.scheduling) or None,
    )
    if isinstance(engine.output, ResultOutput):
        summary.results = engine.output.items
    timing = backend.timing
    if timing is not None:
        driver_in, driver_out = timing.driver_latency_ms
        gap_in, gap_out = timing.callback_gap_ms
        summary.device_latency_ms = round(timing.reported_latency_ms, 2)
        summary.driver_latency_ms = [round(driver_in, 2), round(driver_out, 2)]
        summary.callback_gap_ms = [round(gap_in, 2), round(gap_out, 2)]
        device_in, device_out = timing.device_ms(1000 * backend.block / backend.input_rate)
        summary.device_input_ms, summary.device_output_ms = round(device_in, 2), round(device_out, 2)
        summary.latency_bound_ms = round(stats.latency_ms + device_in + device_out, 2)
        summary.input_device = backend.input_name
        summary.output_device = backend.output_name
    return summary
