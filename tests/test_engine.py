"""The real-time engine: exact delayed output through the file backend, bounded latency under overload."""

import math

import numpy as np
import pytest
import soundfile as sf

from kanade_stream.realtime.backends import ArrayBackend, FileBackend, NullBackend
from kanade_stream.realtime.engine import AudioEngine
from kanade_stream.realtime.outputs import AudioOutput, ResultOutput


class ChunkedGain:
    """A streaming processor with a model's timing: output comes in whole chunks, `lookahead` samples
    late, like the streaming converter (whose exactness is tested in the streaming tests)."""

    def __init__(self, rate=24000, chunk_ms=80, lookahead=240, work=None, up=1):
        self.rate, self.chunk, self.lookahead, self.work = rate, rate * chunk_ms // 1000, lookahead, work
        self.up = up  # output samples per input sample: a model whose output rate is `up` times its input rate
        self.latency_ms = 1000 * (self.chunk + lookahead) / rate
        self.reset()

    def reset(self):
        self.pending = np.zeros(0, np.float32)
        self.emitted = 0
        self.received = 0

    def push(self, samples):
        self.pending = np.concatenate([self.pending, samples])
        self.received += len(samples)
        ready = max((self.received - self.lookahead) // self.chunk * self.chunk - self.emitted, 0)
        out, self.pending = 0.5 * self.pending[:ready], self.pending[ready:]
        self.emitted += ready
        if self.work:
            self.work()
        return np.repeat(out, self.up)

    def flush(self):
        out, self.pending = 0.5 * self.pending, np.zeros(0, np.float32)
        return np.repeat(out, self.up)


def offline(samples, up=1):
    return np.repeat(0.5 * samples, up)


@pytest.mark.parametrize("block", [64, 441, 2400])
def test_file_backend_gives_offline_output_delayed_by_the_reported_latency(tmp_path, block):
    rng = np.random.default_rng(1)
    signal = (rng.standard_normal(24000 * 2) * 0.1).astype(np.float32)
    sf.write(tmp_path / "in.wav", signal, 24000, subtype="FLOAT")
    processor = ChunkedGain()
    backend = FileBackend(tmp_path / "in.wav", tmp_path / "out.wav", block_ms=1000 * block / 24000)
    engine = AudioEngine(processor, backend.input_rate, AudioOutput(24000), device_block=backend.block,
                         chunk_samples=processor.chunk)
    backend.run(engine)
    out, rate = sf.read(tmp_path / "out.wav", dtype="float32")
    delay = engine.stats.delay_samples
    margin = processor.chunk / 24000 / 2  # default compute allowance: half a chunk
    assert delay == math.ceil((processor.latency_ms / 1000 + margin + backend.block / 24000) * 24000)
    assert engine.stats.latency_ms == pytest.approx(1000 * delay / 24000)
    assert np.all(out[:delay] == 0)
    np.testing.assert_array_equal(out[delay:], offline(signal))
    assert engine.xruns() == {"input_overrun": 0, "output_underrun": 0, "dropped_input": 0, "dropped_output": 0}


@pytest.mark.parametrize("block", [100, 160, 512])
def test_16k_in_48k_out_drops_nothing_and_gives_offline_output_delayed(block):
    """The output's headroom is counted in output samples: a device buffer of `block` input frames is
    3 * block frames at 48 kHz. (Counted in input frames, whole chunks arriving right at a block's end
    did not fit and were dropped.)"""
    rng = np.random.default_rng(2)
    signal = (rng.standard_normal(16000 * 2) * 0.1).astype(np.float32)
    processor = ChunkedGain(rate=16000, lookahead=0, up=3)  # 16 kHz in, 48 kHz out, chunks end on block edges
    engine = AudioEngine(processor, 16000, AudioOutput(48000), device_block=block, chunk_samples=processor.chunk)
    out = ArrayBackend(signal, 16000, block).run(engine)
    delay = engine.stats.delay_samples
    assert delay == math.ceil((processor.latency_ms / 1000 + processor.chunk / 16000 / 2 + block / 16000) * 48000)
    assert engine.xruns() == {"input_overrun": 0, "output_underrun": 0, "dropped_input": 0, "dropped_output": 0}
    assert np.all(out[:delay] == 0)
    np.testing.assert_array_equal(out[delay:], offline(signal, up=3))


def test_device_rate_differs_from_model_rate():
    signal = np.sin(np.arange(48000) * 2 * np.pi * 440 / 48000).astype(np.float32) * 0.3
    processor = ChunkedGain(rate=48000)
    engine = AudioEngine(processor, 48000, AudioOutput(44100, source_rate=48000), device_block=480,
                         chunk_samples=processor.chunk)
    out = ArrayBackend(signal, 48000, 480).run(engine)
    delay = engine.stats.delay_samples
    assert len(out) == math.ceil(48000 * 44100 / 48000) + delay
    assert engine.xruns()["output_underrun"] == 0
    body = out[delay + 4410 : delay + 30000]
    # a 440 Hz tone at half amplitude, now at 44.1 kHz
    assert abs(np.abs(body).max() - 0.15) < 0.01
    crossings = np.sum(np.diff(np.signbit(body)) != 0) / 2 / (len(body) / 44100)
    assert abs(crossings - 440) < 5


def test_overload_keeps_latency_bounded_and_counts_drops():
    """A model three times slower than real time: each worker pass finds three passes' worth of input."""
    processor = ChunkedGain()
    block = 240
    engine = AudioEngine(processor, 24000, AudioOutput(24000), device_block=block, chunk_samples=processor.chunk,
                         max_backlog_ms=200)
    out = np.zeros(block, np.float32)
    levels = []
    for step in range(2000):
        engine.on_input(np.ones(block, np.float32))
        if step % 3 == 0:  # the worker only gets a turn every third block
            engine.process_available()
        engine.on_output(out)
        levels.append(len(engine.output.ring))
        assert len(engine.input_ring) <= engine.max_backlog + block
    xruns = engine.xruns()
    assert xruns["output_underrun"] == 0  # a 3x-slow worker is still within the backlog: nothing dropped
    # now starve the worker long enough to exceed the backlog: bounded, and every drop counted
    for step in range(400):
        engine.on_input(np.ones(block, np.float32))
        if step % 40 == 0:
            engine.process_available()
        engine.on_output(out)
        levels.append(len(engine.output.ring))
    xruns = engine.xruns()
    assert xruns["dropped_input"] > 0 and xruns["output_underrun"] > 0
    assert max(levels) <= engine.stats.delay_samples + 2 * block  # the output never runs ahead: latency bounded
    assert len(engine.input_ring) <= engine.max_backlog + 40 * block
    # recovery: once the worker keeps up again, gaps stop (after the processor's first chunks refill)
    def run_in_time(blocks):
        for _ in range(blocks):
            engine.on_input(np.ones(block, np.float32))
            engine.process_available()
            engine.on_output(out)

    run_in_time(50)
    before = engine.xruns()
    run_in_time(300)
    assert engine.xruns() == before


def test_paced_mode_runs_the_worker_thread():
    processor = ChunkedGain()
    signal = np.full(24000 // 2, 0.2, np.float32)  # half a second in real time
    engine = AudioEngine(processor, 24000, AudioOutput(24000), device_block=480, chunk_samples=processor.chunk)
    out = ArrayBackend(signal, 24000, 480, paced=True).run(engine)
    delay = engine.stats.delay_samples
    np.testing.assert_allclose(out[delay:], 0.1, atol=1e-7)
    assert engine.stats.processed_samples == len(signal)


def test_worker_errors_surface():
    def broken():
        raise RuntimeError("model exploded")

    engine = AudioEngine(ChunkedGain(work=broken), 24000, AudioOutput(24000), device_block=480, chunk_samples=1920)
    with pytest.raises(RuntimeError, match="model exploded"):
        ArrayBackend(np.zeros(24000, np.float32), 24000, 480, paced=True).run(engine)


def test_null_backend_and_encoder_results():
    results = []
    processor = ChunkedGain()
    engine = AudioEngine(processor, 24000, ResultOutput(results.append), device_block=480,
                         chunk_samples=processor.chunk)
    assert NullBackend(1.0, 24000, 480).run(engine) is None
    assert sum(len(r) for r in results) == 24000


def test_late_output_is_skipped_not_played_late():
    """A worker that stalls for 200 ms: the device plays silence meanwhile (counted), the late samples are
    thrown away when they come, and from then on the output is on the original timeline again (before,
    they were played late and every later sample carried their lateness)."""
    processor = ChunkedGain()
    block = 240
    signal = (np.random.default_rng(4).standard_normal(24000 * 3) * 0.1).astype(np.float32)
    engine = AudioEngine(processor, 24000, AudioOutput(24000), device_block=block, chunk_samples=processor.chunk)
    out = np.zeros(block, np.float32)
    played = []
    engine.on_output(out[:0])
    for step in range(len(signal) // block):
        engine.on_input(signal[step * block : (step + 1) * block])
        if not 100 <= step < 120:  # the worker stalls for 20 blocks
            engine.process_available()
        engine.on_output(out)
        played.append(out.copy())
    played = np.concatenate(played)
    delay = engine.stats.delay_samples
    xruns = engine.xruns()
    assert xruns["output_underrun"] > 0 and xruns["dropped_output"] > 0 and xruns["dropped_input"] == 0
    expected = np.concatenate([np.zeros(delay, np.float32), offline(signal)])[: len(played)]
    wrong = np.flatnonzero(played != expected)
    assert len(wrong) <= xruns["output_underrun"]  # only the silence played while the worker stalled differs
    np.testing.assert_array_equal(played[150 * block :], expected[150 * block :])  # back on the timeline
