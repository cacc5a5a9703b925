"""run_session: a processor and a backend in, a summary out, with no argument parsing in between."""

import json
import threading

import numpy as np
import pytest

from kanade_stream.realtime import ArrayBackend, NullBackend, SessionOptions, run_session
from kanade_stream.realtime.outputs import AudioOutput, ResultOutput
from kanade_stream.realtime.session import make_output

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
