"""Where the engine's samples come from and go to.

Every backend implements `AudioBackend`: the same device-side facts (rates, block, device timing) and
one `run` signature, so a session can drive a sound card, a file or an array alike. The PyAudio
backend (microphone and speakers) lives in `devices.py`; arrays and files are here.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from ..audio import load_audio, save_audio
from .engine import AudioEngine

StatusCallback = Callable[[AudioEngine], None]


class DeviceError(RuntimeError):
    """An audio device is missing, unusable, stalled, or went away mid-stream."""


@dataclass
class DeviceTiming:
    """What a real device reported and what its callbacks showed (milliseconds)."""

    reported_latency_ms: float = 0.0  # PortAudio's input + output latency when the streams opened
    # worst seen in the callbacks: how long ago the input was captured / until the output is heard
    driver_latency_ms: tuple[float, float] = (0.0, 0.0)
    # longest gap between callbacks, input / output (samples arriving in bursts wait that long)
    callback_gap_ms: tuple[float, float] = (0.0, 0.0)
    # the reported figure split by side, where the device gives it per side
    reported_split_ms: tuple[float, float] | None = None

    def device_ms(self, block_ms: float) -> tuple[float, float]:
        """Device input and output latency: the buffering seen (or reported, if larger) on each side plus
        the longest callback gap (at least a block: a sample arriving in a burst waits that long)."""
        reported = self.reported_split_ms or (self.reported_latency_ms / 2, self.reported_latency_ms / 2)
        sides = []
        for driver, reported_side, gap in zip(self.driver_latency_ms, reported, self.callback_gap_ms):
            sides.append(max(driver, reported_side) + max(gap, block_ms))
        return sides[0], sides[1]


class AudioBackend(Protocol):
    """A source (and maybe a sink) of samples that drives an engine.

    `input_rate`: rate of the samples it delivers. `output_rate`: the rate its output plays at, or None
    when it takes whatever rate the processor produces (arrays, files). `block`: input frames per
    callback. `has_output`: it can take audio (tokens need none). `input_name`/`output_name`: for
    messages. `timing`: a `DeviceTiming` for a real device clock, None otherwise."""

    input_rate: int
    output_rate: int | None
    block: int
    has_output: bool
    input_name: str
    output_name: str | None
    timing: DeviceTiming | None

    def run(self, engine: AudioEngine, stop: threading.Event | None = None, on_status: StatusCallback | None = None,
            on_start: Callable[[], None] | None = None, duration: float | None = None):
        """Stream until the input ends, `stop` is set or `duration` seconds (of input) have passed;
        returns what the backend collected (the output audio of an array backend) or None."""


class ArrayBackend:
    """Feeds an array through the engine in device-sized blocks, collecting what comes out.

    `paced=False` runs as fast as possible and fully deterministic (the worker runs inline after each
    block); `paced=True` delivers blocks in real time from this thread while the engine's worker
    thread computes, like a sound card would. After `run`, `output` holds the collected audio
    (starting with the engine's delay), or None when the engine plays nothing.
    """

    output_rate = None
    has_output = True
    timing = None
    output_name = None

    def __init__(self, samples: np.ndarray, sample_rate: int, block: int, paced: bool = False):
        self.samples = np.ascontiguousarray(samples, dtype=np.float32)
        self.input_rate, self.block, self.paced = int(sample_rate), int(block), paced
        self.input_name = f"array of {len(self.samples)} samples"
        self.output: np.ndarray | None = None

    def run(self, engine: AudioEngine, stop: threading.Event | None = None, on_status: StatusCallback | None = None,
            on_start: Callable[[], None] | None = None, duration: float | None = None) -> np.ndarray | None:
        plays = engine.output_rate is not None
        out_rate = engine.output_rate or self.input_rate
        out = np.zeros(-(-self.block * out_rate // self.input_rate), dtype=np.float32)
        end = len(self.samples) if duration is None else min(len(self.samples), round(duration * self.input_rate))
        stop = stop if stop is not None else threading.Event()
        collected = []
        engine.on_output(out[:0])  # the output side is ready from the first block on
        if self.paced:
            engine.start()
        if on_start is not None:
            on_start()
        start, fed = time.perf_counter(), 0
        try:
            for i, pos in enumerate(range(0, end, self.block)):
                if stop.is_set():
                    break
                if self.paced:  # wait for the moment this block would arrive from a device
                    delay = start + pos / self.input_rate - time.perf_counter()
                    if delay > 0:
                        stop.wait(delay)
                block = self.samples[pos : min(pos + self.block, end)]
                engine.on_input(block)
                fed += len(block)
                if not self.paced:
                    engine.process_available()
                if plays:
                    engine.on_output(out)
                    collected.append(out.copy())
                if on_status is not None and i % 25 == 0:
                    on_status(engine)
            if self.paced:  # let the worker drain what is queued before flushing
                while len(engine.input_ring) and engine.failed is None and not stop.is_set():
                    time.sleep(0.005)
        finally:
            stopped = engine.stop()
        if engine.failed is not None:
            raise engine.failed
        if not stopped:
            raise RuntimeError("the model worker is still inside a push after 2 s; the stream is incomplete")
        engine.process_available()  # what the worker had not taken yet
        engine.finish()
        if not plays:
            return None
        # everything still in the output is the tail of the stream
        audio = np.concatenate(collected + [engine.output.drain()])
        self.output = audio[: math.ceil(fed * out_rate / self.input_rate) + engine.stats.delay_samples]
        return self.output


class FileBackend(ArrayBackend):
    """wav in -> wav out through the engine (`output_path` None: the output is only collected)."""

    def __init__(self, input_path: str | Path, output_path: str | Path | None, block_ms: float = 10.0,
                 paced: bool = False, mix: str | None = None):
        samples, rate = load_audio(input_path, mix=mix)
        super().__init__(samples.numpy(), rate, max(1, round(rate * block_ms / 1000)), paced)
        self.output_path = Path(output_path) if output_path is not None else None
        self.input_name = str(input_path)
        self.output_name = str(output_path) if output_path is not None else None

    def run(self, engine: AudioEngine, stop: threading.Event | None = None, on_status: StatusCallback | None = None,
            on_start: Callable[[], None] | None = None, duration: float | None = None) -> np.ndarray | None:
        audio = super().run(engine, stop, on_status, on_start, duration)
        if audio is not None and self.output_path is not None:
            save_audio(self.output_path, audio, engine.output_rate)
        return audio


class NullBackend(ArrayBackend):
    """Silence in, output collected but meant to be ignored: exercises the engine with no device and no file."""

    def __init__(self, seconds: float, sample_rate: int, block: int):
        super().__init__(np.zeros(int(seconds * sample_rate), dtype=np.float32), sample_rate, block)
        self.input_name = f"{seconds:g} s of silence"
