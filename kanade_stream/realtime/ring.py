"""Lock-free single-producer / single-consumer ring buffer of float32 samples.

The audio callback threads only copy samples in and out of these; the copies are numba-compiled and
release the GIL, so a callback never allocates, never waits for the model worker, and never blocks on
the interpreter lock while it copies.

Positions are two monotonically increasing int64 counters (samples ever written / ever read): the
producer alone advances `written`, the consumer alone advances `read`, and each publishes its counter
only after its copy is done, so the other side never sees half-copied data. The copy and the publish
are separate compiled calls, so the compiler cannot move the counter store ahead of the copy; x86 and
ARM64 release/acquire ordering through the interpreter's call boundary does the rest.
"""

from __future__ import annotations

import numba
import numpy as np

WRITTEN, READ, OVERRUN, UNDERRUN = 0, 1, 2, 3


@numba.njit(nogil=True, cache=True)
def _write(buffer, counters, samples):
    capacity = buffer.shape[0]
    free = capacity - (counters[WRITTEN] - counters[READ])
    n = min(samples.shape[0], free)
    start = counters[WRITTEN] % capacity
    first = min(n, capacity - start)
    buffer[start : start + first] = samples[:first]
    buffer[: n - first] = samples[first:n]
    counters[OVERRUN] += samples.shape[0] - n  # the newest samples that did not fit are dropped
    return n


@numba.njit(nogil=True, cache=True)
def _read(buffer, counters, out, fill_missing):
    capacity = buffer.shape[0]
    available = counters[WRITTEN] - counters[READ]
    n = min(out.shape[0], available)
    start = counters[READ] % capacity
    first = min(n, capacity - start)
    out[:first] = buffer[start : start + first]
    out[first:n] = buffer[: n - first]
    if fill_missing and n < out.shape[0]:
        out[n:] = 0.0  # an output device must be fed: play silence and count the gap
        counters[UNDERRUN] += out.shape[0] - n
    return n


@numba.njit(nogil=True, cache=True)
def _publish(counters, which, n):
    counters[which] += n


@numba.njit(nogil=True, cache=True)
def _discard(counters, keep):
    available = counters[WRITTEN] - counters[READ]
    dropped = max(available - keep, 0)
    counters[READ] += dropped
    return dropped


@numba.njit(nogil=True, cache=True)
def _skip(counters, n):
    skipped = min(max(n, 0), counters[WRITTEN] - counters[READ])
    counters[READ] += skipped
    return skipped


def _compile_kernels() -> None:
    """Compile the copies now, not in the first audio callback: numba compiles on first call (seconds,
    holding the interpreter lock), which would stall a live stream right at its start."""
    buffer, counters, samples = np.zeros(4, np.float32), np.zeros(4, np.int64), np.zeros(2, np.float32)
    _publish(counters, WRITTEN, _write(buffer, counters, samples))
    frozen = np.frombuffer(samples.tobytes(), np.float32)  # what a PyAudio callback hands over: read-only
    _publish(counters, WRITTEN, _write(buffer, counters, frozen))
    _publish(counters, READ, _read(buffer, counters, samples, True))
    _discard(counters, 0)
    _skip(counters, 0)


class RingBuffer:
    """Fixed-capacity sample FIFO for one producer thread and one consumer thread."""

    _compiled = False

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"ring buffer capacity must be at least 1 sample, got {capacity}")
        if not RingBuffer._compiled:
            _compile_kernels()
            RingBuffer._compiled = True
        self._buffer = np.zeros(int(capacity), dtype=np.float32)
        self._counters = np.zeros(4, dtype=np.int64)

    @property
    def capacity(self) -> int:
        return self._buffer.shape[0]

    def write(self, samples: np.ndarray) -> int:
        """Append float32 samples; returns how many fit. The rest count as overrun."""
        n = _write(self._buffer, self._counters, samples)
        _publish(self._counters, WRITTEN, n)
        return int(n)

    def read(self, out: np.ndarray, fill_missing: bool = False) -> int:
        """Copy up to len(out) samples into `out`; returns how many were there. With `fill_missing`
        the rest of `out` is zeroed and counted as underrun (what an output callback wants)."""
        n = _read(self._buffer, self._counters, out, fill_missing)
        _publish(self._counters, READ, n)
        return int(n)

    def discard_oldest(self, keep: int) -> int:
        """Consumer side: drop all but the newest `keep` samples (bounded catch-up after overload)."""
        return int(_discard(self._counters, keep))

    def skip(self, n: int) -> int:
        """Consumer side: drop up to `n` of the oldest samples; returns how many were there to drop."""
        return int(_skip(self._counters, n))

    def __len__(self) -> int:
        return int(self._counters[WRITTEN] - self._counters[READ])

    @property
    def overruns(self) -> int:
        return int(self._counters[OVERRUN])

    @property
    def underruns(self) -> int:
        return int(self._counters[UNDERRUN])

    @property
    def total_written(self) -> int:
        return int(self._counters[WRITTEN])

    @property
    def total_read(self) -> int:
        return int(self._counters[READ])
