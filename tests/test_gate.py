"""The noise gate: voice activity on the input gates the converted output, aligned in time, with
hysteresis and fades; noise alone comes out as silence, speech comes through unchanged."""

import json

import numpy as np
import pytest
import soundfile as sf

from kanade_stream.corpus import make_voices, synthesize
from kanade_stream.realtime.gate import EnergyDetector, GatedProcessor, VoiceGate, default_detector
from kanade_stream.realtime.live import run

RATE = 16000


class Scripted:
    """A detector that answers from a list of probabilities, one per 10 ms window."""

    name, rate, window = "scripted", RATE, 160

    def __init__(self, probabilities):
        self.probabilities, self.calls = list(probabilities), 0

    def reset(self):
        self.calls = 0

    def __call__(self, window):
        p = self.probabilities[self.calls] if self.calls < len(self.probabilities) else 0.0
        self.calls += 1
        return p


class Delayed:
    """A processor with a converter's shape: output at 24 kHz, `lookahead` input samples late, in chunks."""

    sample_rate, output_rate, chunk_samples = RATE, 24000, 640

    def __init__(self, lookahead=213):
        self.lookahead = lookahead
        self.latency_ms = 1000 * (self.chunk_samples + lookahead) / RATE
        self.reset()

    def reset(self):
        self.received, self.emitted = np.zeros(0, np.float32), 0

    def push(self, samples):
        self.received = np.concatenate([self.received, np.asarray(samples, np.float32)])
        ready = max((len(self.received) - self.lookahead) // self.chunk_samples * self.chunk_samples, 0)
        out = self.received[self.emitted : ready]
        self.emitted = max(ready, self.emitted)
        return np.repeat(out, 3)[::2]  # 16 kHz -> 24 kHz by repetition: sample j is input time j / 24000

    def flush(self):
        out = self.received[self.emitted :]
        self.emitted = len(self.received)
        return np.repeat(out, 3)[::2]


def run_gated(gated, signal, block=160):
    parts = [gated.push(signal[i : i + block]) for i in range(0, len(signal), block)]
    return np.concatenate(parts + [gated.flush()])


def test_hysteresis_hangover_and_fades_follow_the_windows():
    # 10 ms windows: 20 quiet, 10 voiced, then 0.4 (above the close threshold: stays open), then quiet
    probabilities = [0.0] * 20 + [0.9] * 10 + [0.4] * 5 + [0.0] * 65
    gate = VoiceGate(RATE, Scripted(probabilities), hangover_ms=100, fade_in_ms=5, fade_out_ms=20)
    gated = GatedProcessor(Delayed(), gate)
    signal = np.ones(RATE, np.float32)
    out = run_gated(gated, signal)
    assert len(out) == 24000
    t = np.arange(len(out)) / 24000
    # closed before 195 ms, ramping 195-200 ms, open from the first voiced window (200 ms)
    assert np.all(out[t < 0.195] == 0)
    assert np.all(out[(t >= 0.2) & (t < 0.35)] == 1)
    ramp = out[(t >= 0.195) & (t < 0.2)]
    assert np.all(np.diff(ramp) > 0) and 0 <= ramp[0] < ramp[-1] < 1
    # open while >= 0.35 (to 350 ms) and for the 100 ms hangover; closes at the first window past it
    close = 0.35 + 0.10
    assert np.all(out[(t >= 0.35) & (t < close)] == 1)
    fade = out[(t >= close) & (t < close + 0.02)]
    assert np.all(np.diff(fade) < 0) and fade[0] <= 1 and fade[-1] > 0
    assert np.all(out[t >= close + 0.02] == 0)


def test_a_flickering_detector_does_not_chop_speech():
    probabilities = [0.0] * 10 + [0.9, 0.2] * 20 + [0.0] * 50  # every other window below the close threshold
    gated = GatedProcessor(Delayed(), VoiceGate(RATE, Scripted(probabilities), hangover_ms=100))
    out = run_gated(gated, np.ones(RATE, np.float32))
    t = np.arange(len(out)) / 24000
    assert np.all(out[(t >= 0.1) & (t < 0.5)] == 1)  # one quiet window is within the hangover


def test_output_is_held_only_until_its_decisions_are_known():
    """The gate's lookahead (a window + the fade-in) fits inside the processor's latency: it adds none,
    and each push returns output up to what the detector has decided."""
    gate = VoiceGate(RATE, Scripted([0.9] * 200), fade_in_ms=5)
    processor = Delayed(lookahead=213)  # 40 ms chunks, 13.3 ms lookahead: 53.3 ms latency
    gated = GatedProcessor(processor, gate)
    assert gate.lookahead_ms == pytest.approx(15.0)
    assert gated.latency_ms == processor.latency_ms and gated.gate_delay_ms == 0
    released = 0
    for i in range(0, RATE, 160):
        out = gated.push(np.ones(160, np.float32))
        released += len(out)
        fed = (i + 160) / RATE
        # never past the decided input minus the fade-in; never more than the processor itself returned
        assert released / 24000 <= max(gate.decided_seconds - 0.005, 0) + 1e-9
        assert released <= processor.emitted * 3 // 2
        assert gated.last_push_computed == (processor.emitted > 0 and processor.emitted % 640 == 0 and
                                            (i + 160 - 213) % 640 < 160)
    # a detector with a long window: the gate's delay is counted in the latency
    slow = GatedProcessor(Delayed(), VoiceGate(RATE, type("W", (Scripted,), {"window": 1600})([0.9] * 20)))
    assert slow.gate_delay_ms == pytest.approx(100 + 5 - slow.processor.latency_ms)
    assert slow.latency_ms == pytest.approx(105)


def test_other_input_rates_are_resampled_for_the_detector_without_lookahead():
    gate = VoiceGate(44100, EnergyDetector())
    assert gate.resampler_hold == 0  # quick (cubic) resampling: nothing held back
    gate.feed(np.zeros(44100, np.float32))
    assert gate.windows == 50  # one second in 20 ms windows


@pytest.fixture(scope="module")
def sounds(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gate")
    speaker, target = make_voices(2, seed=7)
    speech = synthesize("The quiet harbour woke as the boats came home.", speaker, RATE)
    rng = np.random.default_rng(0)
    noise = (0.03 * rng.standard_normal(RATE * 3)).astype(np.float32)  # -30 dBFS of hiss, no voice
    hum = (0.05 * np.sin(2 * np.pi * 100 * np.arange(RATE * 2) / RATE)
           + 0.01 * rng.standard_normal(RATE * 2)).astype(np.float32)
    sf.write(folder / "noise.wav", np.concatenate([noise, hum]), RATE, subtype="FLOAT")
    pause = (0.01 * rng.standard_normal(RATE)).astype(np.float32)
    noisy_speech = np.concatenate([pause, speech + 0.01 * rng.standard_normal(len(speech)).astype(np.float32), pause])
    sf.write(folder / "speech.wav", noisy_speech, RATE, subtype="FLOAT")
    sf.write(folder / "ref.wav", synthesize("A reference voice reads this sentence.", target, RATE), RATE)
    return folder, len(pause), len(speech)


DETECTORS = ["default", "energy"]


def convert(folder, name, tmp_path, *extra):
    """The conversion of `name`.wav, without the engine's delay (the compute allowance in it is measured
    at each warm-up, so it differs from run to run)."""
    out = tmp_path / f"{name}.{'-'.join(extra) or 'gated'}.wav"
    assert run("vc", ["--ref", str(folder / "ref.wav"), "--input", str(folder / f"{name}.wav"), "--output", str(out),
                      "--chunk-ms", "40", "--quiet", "--summary-json", str(tmp_path / "s.json"), *extra]) == 0
    audio, rate = sf.read(out, dtype="float32")
    delay = json.loads((tmp_path / "s.json").read_text())["engine_delay_samples"]
    assert np.all(audio[:delay] == 0)
    return audio[delay:], rate


@pytest.mark.parametrize("detector", DETECTORS)
def test_noise_alone_comes_out_as_silence_and_speech_comes_through(sounds, tmp_path, monkeypatch, detector):
    folder, pause, speech_length = sounds
    if detector == "energy":
        monkeypatch.setattr("kanade_stream.realtime.gate.default_detector", EnergyDetector)
    elif default_detector().name != "silero-vad":
        pytest.skip("silero-vad is not installed: the default detector is the energy gate (tested)")
    noise_out, rate = convert(folder, "noise", tmp_path)
    ungated_noise, _ = convert(folder, "noise", tmp_path, "--no-gate")
    assert np.sqrt(np.mean(ungated_noise ** 2)) > 0.005  # without the gate, noise is converted to babble
    assert np.all(noise_out == 0)

    speech_out, _ = convert(folder, "speech", tmp_path)
    ungated, _ = convert(folder, "speech", tmp_path, "--no-gate")
    assert len(speech_out) == len(ungated) == len(sf.read(folder / "speech.wav")[0]) * rate // RATE
    start, stop = pause * rate // RATE, (pause + speech_length) * rate // RATE
    voiced = slice(start + rate // 10, stop - rate // 10)
    kept = np.flatnonzero(speech_out[voiced] == ungated[voiced])
    assert len(kept) > 0.9 * (voiced.stop - voiced.start)  # the voice passes untouched (short pauses may fade)
    assert np.all(speech_out[: start - rate // 10] == 0)  # the hiss before it does not


def test_the_default_detector_leaves_torch_threads_alone(monkeypatch):
    """silero_vad sets torch's thread count to 1 when imported; the rest of the process must not notice
    (it did: in-process tokenization after the gate tests ran on one thread and its floats differed)."""
    import sys

    import torch

    for name in [m for m in sys.modules if m.split(".")[0] == "silero_vad"]:
        monkeypatch.delitem(sys.modules, name)  # imported afresh, as in a new process
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        default_detector()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
