"""run_session: a processor and a backend in, a summary out, with no argument parsing in between."""

import json
import threading

import numpy as np
import pytest

from kanade_stream.realtime import ArrayBackend, NullBackend, SessionOptions, run_session
from kanade_stream.realtime.outputs import AudioOutput, ResultOutput
from kanade_stream.realtime.session import make_output, status_line

from .test_engine import ChunkedGain, offline


class Upsampler(ChunkedGain):
    """A converter-like processor: audio in at 16 kHz, audio out at 48 kHz (`output_rate`)."""

    sample_rate, output_rate = 16000, 48000

    def __init__(self):
        super().__init__(rate=16000, lookahead=0, up=3)
        self.chunk_samples = self.chunk


def test_a_converter_session_plays_the_offline_output_delayed_and_summarises():
    signal = (np.random.default_rng(3).standard_normal(16000) * 0.1).astype(np.float32)
    backend = ArrayBackend(signal, 16000, 160)
    summary = run_session(Upsampler(), backend)
    delay = summary.engine_delay_samples
    assert summary.engine_latency_ms == pytest.approx(1000 * delay / 48000, abs=0.01)
    np.testing.assert_array_equal(backend.output[delay:], offline(signal, up=3))
    values = json.loads(json.dumps(summary.to_dict()))
    assert values["audio_seconds"] == 1.0 and values["chunk_ms"] == 80
    assert [values[k] for k in ("input_overrun", "output_underrun", "dropped_input", "dropped_output")] == [0] * 4
    assert "latency_bound_ms" not in values and "results" not in values  # no device, no result callback


def test_results_go_to_the_callback_and_are_counted():
    results = []
    summary = run_session(Upsampler(), NullBackend(0.5, 16000, 160), SessionOptions(on_result=results.append))
    assert summary.results == sum(len(r) for r in results) == 3 * 8000
    assert summary.engine_delay_samples == 0


def test_stop_ends_a_session_early_and_it_still_summarises():
    stop = threading.Event()
    # the first status report (after the first block) asks to stop
    options = SessionOptions(stop=stop, on_status=lambda engine: stop.set())
    summary = run_session(Upsampler(), NullBackend(5.0, 16000, 160), options)
    assert summary.audio_seconds == 0.01


def test_outputs_follow_the_processor_and_the_backend():
    backend = NullBackend(0.1, 16000, 160)
    assert isinstance(make_output(Upsampler(), backend), AudioOutput)
    assert isinstance(make_output(ChunkedGain(), backend), ResultOutput)  # no output_rate: results
    assert isinstance(make_output(Upsampler(), backend, on_result=print), ResultOutput)
    backend.has_output = False
    with pytest.raises(ValueError, match="has no output"):
        make_output(Upsampler(), backend)
    with pytest.raises(ValueError, match="takes 16000 Hz"):
        run_session(Upsampler(), NullBackend(0.1, 24000, 240))


class FakeClock:
    """perf_counter for session.py and engine.py, advanced only by the processors below: compute
    times are exact and the tests never depend on how busy the machine is."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now

    def monotonic(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    import types

    from kanade_stream.realtime import engine, session

    fake = FakeClock()
    for module in (engine, session):
        monkeypatch.setattr(module, "time", types.SimpleNamespace(perf_counter=fake.perf_counter,
                                                                   monotonic=fake.monotonic))
    return fake


class Costly(Upsampler):
    """An Upsampler whose every completed chunk costs `chunk_ms * cost` of (fake) compute."""

    def __init__(self, clock, chunk_ms, cost):
        ChunkedGain.__init__(self, rate=16000, chunk_ms=chunk_ms, lookahead=0, up=3)
        self.chunk_samples = self.chunk
        self.clock, self.cost_ms = clock, chunk_ms * cost

    def push(self, samples):
        out = super().push(samples)
        if len(out):
            self.clock.now += self.cost_ms / 1000
        return out


def test_the_compute_allowance_comes_from_the_warm_up(clock):
    from kanade_stream.realtime.session import measure_compute

    profile = measure_compute(Costly(clock, 40, 0.3), chunks=25)
    assert profile.chunk_ms == 40 and profile.quantile(0.99) == pytest.approx(12.0)
    assert profile.allowance_ms == pytest.approx(12.0 + 3.0) and profile.keeps_up  # p99 + a quarter
    summary = run_session(Costly(clock, 40, 0.3), NullBackend(0.5, 16000, 160))
    assert summary.compute_allowance_ms == pytest.approx(15.0) and summary.warm_up_compute_p99_ms == 12.0
    assert summary.latency_parts_ms == {"algorithmic": 40.0, "compute": 15.0, "device block": 10.0}
    assert summary.engine_latency_ms == pytest.approx(65.0, abs=0.1) and summary.late_chunks == 0
    assert summary.breakdown() == "latency 65 ms = model 40 + compute 15 + device block 10"


def test_chunks_slower_than_the_allowance_are_counted(clock):
    from kanade_stream.realtime.session import ComputeProfile

    processor = Costly(clock, 40, 0.3)
    lines = []
    options = SessionOptions(compute=ComputeProfile(40, [5.0] * 25),  # a warm-up faster than the run
                             on_status=lambda engine: lines.append(status_line(engine)))
    summary = run_session(processor, NullBackend(1.0, 16000, 160), options)
    assert summary.compute_allowance_ms == pytest.approx(7.0)
    assert summary.late_chunks == 25  # every 40 ms chunk of the second took 12 ms
    assert "(allowance 7 late" in lines[-1] and lines[-1].startswith("latency 57 ms = model 40 + compute 7")


def test_the_shortest_chunk_that_keeps_up_is_chosen(clock):
    from kanade_stream.realtime.session import choose_processor

    made = []

    def make(cost):
        def build(chunk_ms):
            made.append(chunk_ms)
            return Costly(clock, chunk_ms, cost[chunk_ms])
        return build

    processor, profile, notes = choose_processor(make({40: 0.5, 80: 0.5}), [40, 80])
    assert processor.chunk_samples == 640 and profile.keeps_up and notes == [] and made == [40]
    made.clear()
    # 40 ms chunks that take 36 ms (p50 > 70 % of the chunk) cannot keep up: 80 ms, said why
    processor, profile, notes = choose_processor(make({40: 0.9, 80: 0.5}), [40, 80])
    assert processor.chunk_samples == 1280 and made == [40, 80] and profile.chunk_ms == 80
    assert len(notes) == 1 and "compute per 40 ms chunk p50 36.0 ms" in notes[0] and "using 80 ms chunks" in notes[0]
    # the last option is taken whatever its compute
    processor, profile, notes = choose_processor(make({40: 2.0, 80: 2.0}), [40, 80])
    assert processor.chunk_samples == 1280 and not profile.keeps_up
