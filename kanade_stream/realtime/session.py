"""One live session as a library call: a streaming processor, a backend, options -> a summary.

    backend = PyAudioBackend()                     # or FileBackend / ArrayBackend / NullBackend
    converter = StreamingConverter(student, reference=ref, sample_rate=backend.input_rate)
    summary = run_session(converter, backend, SessionOptions(duration=10))
    print(summary.to_dict())

A processor with an `output_rate` (a converter) plays through the backend's output; any other (an
encoder) hands its results to `options.on_result`. Set `options.stop` from another thread (or a
signal handler) to end the session early; the summary still comes back.
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


@dataclass
class SessionOptions:
    duration: float | None = None  # seconds of streaming (of input, for arrays/files); None: until the end or stop
    stop: threading.Event | None = None  # set it to end the session
    on_status: StatusCallback | None = None  # called a few times a second with the engine (status lines)
    on_start: Callable[[], None] | None = None  # the streams run
    # results (tokens of an encoder) as they become final, on the worker thread; given for a converter,
    # its audio comes here instead of being played
    on_result: Callable[[object], None] | None = None
    warm_up: bool = True  # run one silent push first: the first call pays for allocations and kernel choice
    max_backlog_ms: float = 400.0  # input the engine may fall behind by before it drops the oldest
    compute_margin_ms: float | None = None  # compute allowance in the fixed delay (default half a chunk)


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
    # real devices only
    device_latency_ms: float | None = None  # PortAudio's figure when the streams opened
    driver_latency_ms: list[float] | None = None  # worst buffering seen in the callbacks: input, output
    callback_gap_ms: list[float] | None = None  # longest gaps between callbacks: input, output
    latency_bound_ms: float | None = None  # what a listener can expect at most
    input_device: str | None = None
    output_device: str | None = None
    results: int | None = None  # items handed to a result callback (tokens)

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
    if options.warm_up:
        processor.push(np.zeros(2 * chunk, dtype=np.float32))
        processor.reset()
    output = make_output(processor, backend, options.on_result)
    engine = AudioEngine(processor, rate, output, device_block=backend.block, chunk_samples=chunk,
                         max_backlog_ms=options.max_backlog_ms, compute_margin_ms=options.compute_margin_ms)
    started = time.monotonic()
    backend.run(engine, options.stop, on_status=options.on_status, on_start=options.on_start,
                duration=options.duration)
    return summarize(engine, backend, time.monotonic() - started)


def summarize(engine: AudioEngine, backend: AudioBackend, seconds: float) -> Summary:
    stats = engine.stats
    summary = Summary(
        seconds=round(seconds, 3),
        audio_seconds=round(stats.processed_samples / engine.input_rate, 3),
        chunk_ms=round(1000 * engine.chunk_samples / engine.input_rate, 3),
        model_latency_ms=round(engine.processor.latency_ms, 2),
        engine_latency_ms=round(stats.latency_ms, 2),
        engine_delay_samples=stats.delay_samples,
        compute_p50_ms=round(stats.compute_ms(0.5), 2),
        compute_p99_ms=round(stats.compute_ms(0.99), 2),
        real_time_factor=round(stats.real_time_factor, 3),
        **engine.xruns(),
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
        # engine delay + device buffering + the callback gaps (a sample arriving in a burst waits up to one
        # gap for its callback on each side)
        block_ms = 1000 * backend.block / backend.input_rate
        device = max(timing.reported_latency_ms, driver_in + driver_out)
        gaps = max(gap_in, block_ms) + max(gap_out, block_ms)
        summary.latency_bound_ms = round(stats.latency_ms + device + gaps, 2)
        summary.input_device = backend.input_name
        summary.output_device = backend.output_name
    return summary
