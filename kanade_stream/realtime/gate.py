"""A noise gate for the converter: silence and background noise come out as silence, not as babble.

A voice-activity detector reads the *input*; its decisions gate the converted *output*, aligned in
time (output sample j is the conversion of input time j / output_rate). The model never sees the
gate: `GatedProcessor` wraps any streaming processor and is itself one.

    input --+--> processor.push ------------> output held until its decisions are known --> x gain
            +--> detector (windows) -> open/closed per window (hysteresis, hangover) ----^

Hysteresis: a window opens the gate when its speech probability reaches `open_threshold`; once open,
the gate stays open while windows score at least `close_threshold`, and closes after `hangover_ms` of
windows below it. Gains ramp over `fade_in_ms` before a window that opens (so a word's first sound is
not clipped) and over `fade_out_ms` after the gate closes.

The gate's lookahead (one detector window + the fade-in + any resampler hold-back) is its delay. The
converter's own output lags its input by its algorithmic latency, so the gate adds latency only where
its lookahead is longer than that: `latency_ms` of the wrapped processor is the larger of the two.

Detectors: Silero VAD (the `silero-vad` package ships its weights in the wheel; TorchScript, 32 ms
windows at 16 kHz, about a millisecond per window on one thread) when installed, else an energy gate
against an adaptive (minimum-statistics) noise floor.
"""

from __future__ import annotations

import math
import warnings
from collections import deque

import numpy as np


class SileroDetector:
    """Silero VAD: speech probability per 512-sample window at 16 kHz."""

    name = "silero-vad"
    rate = 16000
    window = 512

    def __init__(self):
        import torch

        self._torch = torch
        threads = torch.get_num_threads()
        try:
            # importing the package sets torch's thread count to 1 for the whole process: put it back
            from silero_vad import load_silero_vad  # weights ship in the package: no network

            with warnings.catch_warnings():  # torch.jit.load's deprecation notice: the package ships TorchScript
                warnings.simplefilter("ignore", DeprecationWarning)
                self.model = load_silero_vad()
        finally:
            torch.set_num_threads(threads)
        self.model.eval()

    def reset(self) -> None:
        self.model.reset_states()

    def __call__(self, window: np.ndarray) -> float:
        with self._torch.inference_mode():
            return float(self.model(self._torch.from_numpy(window), self.rate))


class EnergyDetector:
    """Frame energy against a noise floor taken as the minimum of the smoothed energy over the last
    `floor_seconds` (minimum statistics): stationary noise sits at the floor and scores 0, a voice
    rising `open_db` above it scores 0.5 (opens), and `open_db` + 6 dB or more scores 1."""

    name = "energy"
    rate = 16000
    window = 320  # 20 ms

    def __init__(self, open_db: float = 12.0, min_level_db: float = -55.0, floor_seconds: float = 1.5):
        self.open_db, self.min_level_db = open_db, min_level_db
        self.history = max(1, round(floor_seconds * self.rate / self.window))
        self.reset()

    def reset(self) -> None:
        self.levels: deque = deque(maxlen=self.history)
        self.smoothed = None

    def __call__(self, window: np.ndarray) -> float:
        level = 10 * math.log10(float(np.mean(window.astype(np.float64) ** 2)) + 1e-12)
        self.smoothed = level if self.smoothed is None else 0.7 * self.smoothed + 0.3 * level
        self.levels.append(self.smoothed)
        floor = min(self.levels)
        if level < self.min_level_db:
            return 0.0
        return float(np.clip(0.5 + (level - floor - self.open_db) / 12.0, 0.0, 1.0))


def default_detector():
    """Silero VAD when the `silero-vad` package is installed, else the energy gate."""
    try:
        return SileroDetector()
    except ImportError:
        return EnergyDetector()


class VoiceGate:
    """Open/closed per detector window from the input, and the output gains that follow from it."""

    def __init__(self, input_rate: int, detector=None, open_threshold: float = 0.5, close_threshold: float = 0.35,
                 hangover_ms: float = 200.0, fade_in_ms: float = 5.0, fade_out_ms: float = 20.0):
        self.detector = detector if detector is not None else default_detector()
        self.input_rate = int(input_rate)
        self.open_threshold, self.close_threshold = open_threshold, close_threshold
        self.hangover = hangover_ms / 1000
        self.fade_in, self.fade_out = fade_in_ms / 1000, fade_out_ms / 1000
        self.window_seconds = self.detector.window / self.detector.rate
        self._resampler = None
        self.resampler_hold = 0.0
        if self.input_rate != self.detector.rate:
            self.resampler_hold = self._measure_resampler_hold()
        self.reset()

    def _new_resampler(self):
        import soxr

        # quick (cubic) quality: no filter lookahead, and aliasing above 8 kHz does not sway a VAD
        return soxr.ResampleStream(self.input_rate, self.detector.rate, 1, dtype="float32", quality="QQ")

    def _measure_resampler_hold(self) -> float:
        """Seconds of input the streaming resampler holds back (its filter's lookahead)."""
        probe = self._new_resampler()
        given = self.input_rate  # one second
        got = len(probe.resample_chunk(np.zeros(given, np.float32)))
        return max(given * self.detector.rate / self.input_rate - got, 0) / self.detector.rate

    @property
    def lookahead_ms(self) -> float:
        """How far past an output sample's time the input must have arrived before its gain is known."""
        return 1000 * (self.window_seconds + self.fade_in + self.resampler_hold)

    def reset(self) -> None:
        self.detector.reset()
        if self.input_rate != self.detector.rate:
            self._resampler = self._new_resampler()
        self._pending = np.zeros(0, np.float32)
        self._open: list[bool] = []  # per decided window, from window index `_first`
        self._first = 0
        self._is_open = False
        self._quiet = 0.0  # seconds below the close threshold while open
        self.windows = self.open_windows = 0

    @property
    def decided_seconds(self) -> float:
        """Input time up to which every window is decided."""
        return (self._first + len(self._open)) * self.window_seconds

    def feed(self, samples: np.ndarray, last: bool = False) -> None:
        """Input samples (at `input_rate`), in order. `last`: the end of the stream: the final partial
        window is decided too (padded with silence)."""
        x = np.asarray(samples, dtype=np.float32)
        if self._resampler is not None:
            x = self._resampler.resample_chunk(x, last=last)
        x = np.concatenate([self._pending, x])
        w = self.detector.window
        whole = len(x) // w * w
        for start in range(0, whole, w):
            self._decide(self.detector(np.ascontiguousarray(x[start : start + w])))
        self._pending = x[whole:]
        if last and len(self._pending):
            self._decide(self.detector(np.concatenate([self._pending, np.zeros(w - len(self._pending), np.float32)])))
            self._pending = np.zeros(0, np.float32)

    def _decide(self, probability: float) -> None:
        if probability >= self.open_threshold:
            self._is_open, self._quiet = True, 0.0
        elif self._is_open:
            if probability >= self.close_threshold:
                self._quiet = 0.0
            else:
                self._quiet += self.window_seconds
                if self._quiet > self.hangover:
                    self._is_open = False
        self._open.append(self._is_open)
        self.windows += 1
        self.open_windows += self._is_open

    def ready_until(self) -> float:
        """Output time up to which gains are known."""
        return self.decided_seconds - self.fade_in

    def gains(self, start: int, count: int, rate: int) -> np.ndarray:
        """Gains for output samples start .. start + count - 1 at `rate` (all must be before `ready_until`,
        except at the end of a stream)."""
        if count == 0:
            return np.zeros(0, np.float32)
        t = (start + np.arange(count)) / rate
        window = np.floor(t / self.window_seconds).astype(np.int64)
        known = np.array(self._open, dtype=bool)

        def is_open(index: np.ndarray) -> np.ndarray:
            index = index - self._first
            inside = (index >= 0) & (index < len(known))
            out = np.zeros(len(index), dtype=bool)
            out[inside] = known[index[inside]]
            return out

        w = self.window_seconds
        gains = is_open(window).astype(np.float64)
        # ramps up before an open window starts, down after one ends (fades may span several windows)
        reach_in = math.ceil(self.fade_in / w) if self.fade_in > 0 else 0
        reach_out = math.ceil(self.fade_out / w) if self.fade_out > 0 else 0
        for j in range(1, reach_in + 1):
            ramp = np.clip(1 - ((window + j) * w - t) / self.fade_in, 0, 1)
            gains = np.maximum(gains, ramp * is_open(window + j))
        for j in range(1, reach_out + 1):
            ramp = np.clip(1 - (t - (window - j + 1) * w) / self.fade_out, 0, 1)
            gains = np.maximum(gains, ramp * is_open(window - j))
        gains[gains < 1e-6] = 0.0  # the ends of ramps: exactly silent, not float dust
        gains = gains.astype(np.float32)
        # forget the windows no later output sample can need
        keep_from = int(window[-1]) - reach_out - self._first
        if keep_from > 0:
            del self._open[:keep_from]
            self._first += keep_from
        return gains


class GatedProcessor:
    """A streaming processor whose output is gated by voice activity on its input (see the module doc).
    Same interface as the processor: push, flush, reset, latency_ms, sample_rate, output_rate,
    chunk_samples; `last_push_computed` tells the engine which pushes ran a model chunk."""

    def __init__(self, processor, gate: VoiceGate):
        self.processor, self.gate = processor, gate
        self.sample_rate = processor.sample_rate
        self.output_rate = processor.output_rate
        self.chunk_samples = processor.chunk_samples
        self.last_push_computed = False
        self._held = np.zeros(0, np.float32)
        self._released = 0  # output samples returned so far

    @property
    def latency_ms(self) -> float:
        return max(float(self.processor.latency_ms), self.gate.lookahead_ms)

    @property
    def gate_delay_ms(self) -> float:
        """Latency the gate adds on top of the processor's (0 when its lookahead fits inside it)."""
        return max(self.gate.lookahead_ms - float(self.processor.latency_ms), 0.0)

    def reset(self) -> None:
        self.processor.reset()
        self.gate.reset()
        self._held = np.zeros(0, np.float32)
        self._released = 0

    def push(self, samples) -> np.ndarray:
        out = np.asarray(self.processor.push(samples), dtype=np.float32)  # refuses bad input before the gate sees it
        self.gate.feed(np.asarray(samples, dtype=np.float32))
        self.last_push_computed = len(out) > 0
        return self._release(out, last=False)

    def flush(self) -> np.ndarray:
        out = np.asarray(self.processor.flush(), dtype=np.float32)
        self.gate.feed(np.zeros(0, np.float32), last=True)
        self.last_push_computed = len(out) > 0
        return self._release(out, last=True)

    def _release(self, out: np.ndarray, last: bool) -> np.ndarray:
        held = np.concatenate([self._held, out]) if len(self._held) else out
        if last:
            n = len(held)
        else:
            n = min(len(held), max(math.floor(self.gate.ready_until() * self.output_rate) - self._released, 0))
        ready, self._held = held[:n], held[n:]
        gained = ready * self.gate.gains(self._released, n, self.output_rate)
        self._released += n
        return gained
