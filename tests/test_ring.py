"""Ring buffer: order kept, nothing lost or duplicated under a concurrent producer and consumer."""

import threading

import numpy as np
import pytest

from kanade_stream.realtime import RingBuffer


def test_wraps_and_counts_overrun_and_underrun():
    ring = RingBuffer(8)
    assert ring.write(np.arange(6, dtype=np.float32)) == 6
    out = np.empty(4, dtype=np.float32)
    assert ring.read(out) == 4 and out.tolist() == [0, 1, 2, 3]
    assert ring.write(np.arange(6, 13, dtype=np.float32)) == 6  # 7 offered, 6 free: wraps around
    assert ring.overruns == 1 and len(ring) == 8
    out = np.full(10, -1, dtype=np.float32)
    assert ring.read(out, fill_missing=True) == 8
    assert out.tolist() == [4, 5, 6, 7, 8, 9, 10, 11, 0, 0]  # the dropped sample was the newest, 12
    assert ring.underruns == 2 and len(ring) == 0
    assert ring.read(out) == 0 and ring.underruns == 2  # without fill_missing a short read is no underrun


def test_discard_oldest_keeps_the_newest():
    ring = RingBuffer(16)
    ring.write(np.arange(10, dtype=np.float32))
    assert ring.discard_oldest(keep=3) == 7
    out = np.empty(3, dtype=np.float32)
    ring.read(out)
    assert out.tolist() == [7, 8, 9]
    with pytest.raises(ValueError, match="at least 1 sample"):
        RingBuffer(0)


def test_concurrent_producer_and_consumer_lose_and_duplicate_nothing():
    total, ring = 400_000, RingBuffer(1000)
    source = (np.arange(total) % 4096).astype(np.float32)  # exact in float32, order-sensitive
    received = np.empty(total, dtype=np.float32)
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 300, size=20_000)

    def produce():
        pos, i = 0, 0
        while pos < total:
            n = int(min(sizes[i % len(sizes)], total - pos))
            i += 1
            written = ring.write(source[pos : pos + n])
            pos += written  # a full ring takes fewer; offer the rest again (no loss by construction)

    def consume():
        pos, i = 0, 7
        chunk = np.empty(300, dtype=np.float32)
        while pos < total:
            n = ring.read(chunk[: int(sizes[i % len(sizes)])])
            i += 1
            received[pos : pos + n] = chunk[:n]
            pos += n

    threads = [threading.Thread(target=produce), threading.Thread(target=consume)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    # every partial write re-offers its remainder, so overruns count refused samples, never lost ones
    assert np.array_equal(received, source)
    assert ring.total_written == ring.total_read == total
