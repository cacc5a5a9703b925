"""Where the engine's results go: one small interface, two kinds.

- `AudioOutput`: audio for a device to play. The worker writes into a ring buffer (resampled to the
  device rate with soxr when the processor's rate differs); the device callback reads from it. The
  ring is primed with a fixed delay of silence so output sample k is input sample k - delay.
- `ResultOutput`: each non-empty result (tokens, or audio a caller wants as it comes) is handed to a
  callback on the worker thread; nothing is played.

The engine calls the same four methods on either, so it never asks which kind it has.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Callable, Protocol

import numpy as np

from .ring import RingBuffer


LAG_WINDOW = 25  # worker writes (one per device block or chunk) a lag must last before the output skips


class EngineOutput(Protocol):
    """The output side of the engine.

    `rate`: samples per second of what a device reads (None: nothing to play). `delay_samples`: the
    fixed delay primed at `open`, in those samples. `started`: the consumer runs (a device has pulled
    once); until then the engine treats input as pre-roll. `underruns`/`dropped`: samples played as
    silence / thrown away to keep latency bounded, in `rate` samples."""

    rate: int | None
    delay_samples: int
    started: bool
    underruns: int
    dropped: int

    def open(self, delay_seconds: float, device_block: int, input_rate: int) -> None:
        """Prepare for a stream: prime `delay_seconds` of delay; `device_block` input frames arrive per
        device callback at `input_rate` (the output sizes its headroom from that)."""

    def write(self, result, last: bool = False) -> None:
        """Worker side: what one processor push returned (`last`: the final flush)."""

    def read(self, out: np.ndarray, playing: bool = True) -> None:
        """Device side: fill `out` (silence while not `playing`, i.e. before the first input)."""

    def lost_input(self, samples: int, input_rate: int) -> None:
        """Worker side: the engine threw away `samples` input samples (at `input_rate`) to catch up."""


class AudioOutput:
    """Audio for a device: ring buffer + device-rate resampling, read from the device callback.

    The delay stays what it was primed to, whatever goes wrong: samples the device asked for before they
    were computed were played as silence (underruns), so when they arrive late they are skipped, not
    played late (which would add their lateness to the latency from then on); input the engine threw
    away to catch up leaves a gap of silence of its length, so what follows still plays on time; and an
    output device that falls behind the input device (it started late, paused, or its clock is slower)
    skips ahead once it is behind by more than the headroom for a while, instead of carrying the lag.
    Skipped samples count as dropped."""

    def __init__(self, rate: int, source_rate: int | None = None, ring_seconds: float = 4.0):
        """`rate`: the device's rate. `source_rate`: the rate of what the processor returns (default
        `rate`); it is resampled to `rate`."""
        self.rate = int(rate)
        self.source_rate = int(source_rate or rate)
        self.ring = RingBuffer(int(ring_seconds * self.rate))
        self._resampler = None
        if self.source_rate != self.rate:
            import soxr  # streaming, state-carrying resampler for the device side

            self._resampler = soxr.ResampleStream(self.source_rate, self.rate, 1, dtype="float32")
        self.delay_samples = 0
        self.resampler_delay = 0  # of the delay, the samples that cover the device-rate resampler
        self.headroom = 0
        self.started = False
        self.dropped = 0
        # The timeline, in output samples since the stream started: `_target` is where the next sample
        # the worker writes belongs; the ring's end is at its total written plus `_missed`, the silence
        # the device played in place of samples not there yet (incremented by the device side only).
        self._target = 0
        self._missed = 0
        # Device side: samples delivered while playing, and skips done; worker side: skips asked for.
        self._played = 0
        self._skip_done = 0
        self._skip_requested = 0
        self._shift = 0  # device samples the timeline was moved forward by: skips and cuts at the cap
        self._lags: deque = deque(maxlen=LAG_WINDOW)
        # what the engine has received (input samples, its rate): the clock the output must keep up with
        self.input_clock: Callable[[], int] | None = None
        self.input_rate: int | None = None

    def open(self, delay_seconds: float, device_block: int, input_rate: int) -> None:
        self.resampler_delay = self._resampler_delay()
        self.delay_samples = math.ceil(delay_seconds * self.rate) + self.resampler_delay
        # Input and output callbacks interleave, so right after a push the ring may hold up to one device
        # buffer beyond the delay; allow two. Counted in this ring's samples: a device buffer of
        # `device_block` input frames is `device_block * rate / input_rate` output frames.
        self.headroom = 2 * -(-device_block * self.rate // input_rate)
        self.ring.write(np.zeros(self.delay_samples, dtype=np.float32))
        self._target = self.ring.total_written
        self.input_rate = int(input_rate)

    def _resampler_delay(self) -> int:
        # soxr holds back a few ms of lookahead; cover it so the start does not underrun
        return 0 if self._resampler is None else math.ceil(0.01 * self.rate)

    def lost_input(self, samples: int, input_rate: int) -> None:
        self._target += round(samples * self.rate / input_rate)

    def write(self, result, last: bool = False) -> None:
        audio = np.asarray(result, dtype=np.float32)
        if self._resampler is not None:
            audio = self._resampler.resample_chunk(audio, last=last)
        # where the next sample written will be played, in device samples since the stream started
        gap = self._target - (self.ring.total_written + self._missed - self._skip_requested)
        self._target += len(audio)
        if gap > 0:  # input was thrown away: silence in its place keeps what follows on time
            audio = np.concatenate([np.zeros(gap, np.float32), audio])
        elif gap < 0 and len(audio):  # late: the device already played silence in their place
            skip = min(-gap, len(audio))
            audio = audio[skip:]
            self.dropped += skip
        if not last:
            # never let the output run further ahead than the fixed delay plus the headroom (device clocks
            # that drift apart); what is cut is forgotten by the timeline too
            room = max(self.delay_samples + self.headroom - len(self.ring), 0)
            if len(audio) > room:
                self.dropped += len(audio) - room
                self._target -= len(audio) - room
                self._shift += len(audio) - room
                audio = audio[:room]
        self.ring.write(audio)
        if not last and self.input_clock is not None:
            self._keep_up()

    def _keep_up(self) -> None:
        """Skip ahead when the device has played less than the input has delivered, by more than the
        headroom, at every write for a while (input arrives in bursts: a single late look is no lag)."""
        arrived = self.input_clock() * self.rate // self.input_rate
        # what the device has played, plus what the timeline was moved forward by (skips and cuts)
        self._lags.append(arrived - self._played - self._shift)
        lag = min(self._lags)
        if len(self._lags) == self._lags.maxlen and lag > self.headroom:
            skip = min(lag - self.headroom // 2, len(self.ring))  # only what is queued can be skipped
            self._skip_requested += skip
            self._shift += skip
            self._target -= skip  # what follows is played that much earlier too
            self.dropped += skip
            self._lags.clear()

    def read(self, out: np.ndarray, playing: bool = True) -> None:
        self.started = True
        if not playing:
            out[:] = 0.0
            return
        pending = self._skip_requested - self._skip_done
        if pending > 0:
            self._skip_done += self.ring.skip(pending)
        self._missed += len(out) - self.ring.read(out, fill_missing=True)
        self._played += len(out)

    def drain(self) -> np.ndarray:
        """Everything still queued (the tail of a finished stream)."""
        rest = np.zeros(len(self.ring), dtype=np.float32)
        self.ring.read(rest)
        return rest

    @property
    def underruns(self) -> int:
        return self.ring.underruns


class ResultOutput:
    """Results to a callback (on the worker thread), nothing to play. Counts the items delivered."""

    rate = None
    delay_samples = 0
    started = True  # no device to wait for
    underruns = 0
    dropped = 0

    def __init__(self, on_result: Callable[[object], None] | None = None):
        self.on_result = on_result
        self.items = 0

    def open(self, delay_seconds: float, device_block: int, input_rate: int) -> None:
        pass  # results are delivered as soon as they are final: no delay to prime

    def lost_input(self, samples: int, input_rate: int) -> None:
        pass  # counted by the engine; results carry their own positions

    def write(self, result, last: bool = False) -> None:
        if len(result):
            self.items += len(result)
            if self.on_result is not None:
                self.on_result(result)

    def read(self, out: np.ndarray, playing: bool = True) -> None:
        out[:] = 0.0
