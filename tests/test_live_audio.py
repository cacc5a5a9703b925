"""Real audio: demos/live_vc.py through PyAudio against a real PulseAudio server.

The test starts its own PulseAudio daemon with null sinks wired like this:

    paplay speech.wav -> "feed" (combine) -> "vc_in"    -> vc_in.monitor -> live_vc.py (microphone)
                                          -> "mix_left" -> left of "mix"
    live_vc.py (speakers) -> "mix_right" -> right of "mix"
    parecord mix.monitor -> recording: left = what went in, right = what came out, on one clock

so the latency is measured on a single timeline, against the bound the demo reports.
"""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from kanade_stream.corpus import make_voices, synthesize

pytestmark = pytest.mark.audio
REPO = Path(__file__).resolve().parents[1]
RATE = 44100


def start_pulse(runtime: Path, modules: list[str]):
    """A private PulseAudio daemon (its own socket and runtime folder); returns (process, client env)."""
    if shutil.which("pulseaudio") is None or shutil.which("parecord") is None:
        pytest.skip("PulseAudio is not installed (apt-get install pulseaudio; .ci/run does)")
    env = dict(os.environ, PYTHONPATH=str(REPO), XDG_RUNTIME_DIR=str(runtime), PULSE_RUNTIME_PATH=str(runtime),
               HOME=str(runtime), PULSE_SERVER=f"unix:{runtime}/native")
    modules = [f"module-native-protocol-unix socket={runtime}/native auth-anonymous=1"] + modules
    cmd = ["pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1", "--disallow-exit", "--log-target=stderr",
           "--system=false", "--use-pid-file=false"] + [f"--load={m}" for m in modules]
    log = open(runtime / "pulse.log", "w")
    daemon = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    for _ in range(100):
        if subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode == 0:
            return daemon, env
        if daemon.poll() is not None:
            pytest.fail(f"PulseAudio did not start:\n{(runtime / 'pulse.log').read_text()}")
        time.sleep(0.1)
    daemon.kill()
    pytest.fail("PulseAudio did not answer within 10 s")


@pytest.fixture(scope="module")
def pulse(tmp_path_factory):
    daemon, env = start_pulse(tmp_path_factory.mktemp("pulse"), [
        "module-null-sink sink_name=vc_in channels=1 rate=44100",
        "module-null-sink sink_name=mix channels=2 rate=44100 channel_map=front-left,front-right",
        "module-remap-sink sink_name=mix_left master=mix channels=1 master_channel_map=front-left "
        "channel_map=mono remix=no",
        "module-remap-sink sink_name=mix_right master=mix channels=1 master_channel_map=front-right "
        "channel_map=mono remix=no",
        "module-combine-sink sink_name=feed slaves=vc_in,mix_left channels=1",
    ])
    yield env
    daemon.terminate()
    daemon.wait(timeout=10)


def envelope(x: np.ndarray, hop: int = 441) -> np.ndarray:
    frames = len(x) // hop
    return np.log(np.sqrt((x[: frames * hop].reshape(frames, hop) ** 2).mean(axis=1)) + 1e-5)


def test_live_vc_through_pulseaudio(pulse, tmp_path):
    voice_a, voice_b = make_voices(2, seed=3)
    speech = synthesize("Every morning the small boat crossed the quiet bay to the market.", voice_a, RATE)
    source = np.concatenate([np.zeros(RATE, np.float32), speech, np.zeros(RATE, np.float32)])
    sf.write(tmp_path / "speech.wav", source, RATE)
    sf.write(tmp_path / "ref.wav", synthesize("A reference voice reads this sentence aloud for us.", voice_b, RATE), RATE)

    app_env = dict(pulse, PULSE_SOURCE="vc_in.monitor", PULSE_SINK="mix_right")
    seconds = len(source) / RATE + 3.0
    app = subprocess.Popen(
        [sys.executable, str(REPO / "demos" / "live_vc.py"), "--ref", str(tmp_path / "ref.wav"),
         "--input-device", "pulse", "--output-device", "pulse", "--duration", f"{seconds:.1f}",
         "--summary-json", str(tmp_path / "summary.json"), "--quiet", "--chunk-ms", "40"],
        env=app_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    recorder = subprocess.Popen(
        ["parecord", "--device=mix.monitor", "--channels=2", f"--rate={RATE}", "--format=float32le",
         "--file-format=wav", str(tmp_path / "mix.wav")], env=pulse)
    # wait until the demo says its streams run (a cold start compiles and loads for a while)
    for line in app.stderr:
        if line.startswith("streaming:"):
            break
    else:
        pytest.fail(f"live_vc.py ended before streaming: {app.wait()}")
    subprocess.run(["paplay", "--device=feed", str(tmp_path / "speech.wav")], env=pulse, check=True, timeout=60)
    out, err = app.communicate(timeout=120)
    recorder.terminate()
    recorder.wait(timeout=10)
    assert app.returncode == 0, err
    summary = json.loads((tmp_path / "summary.json").read_text())

    mix, rate = sf.read(tmp_path / "mix.wav", dtype="float32")
    went_in, came_out = mix[:, 0], mix[:, 1]
    assert np.abs(went_in).max() > 0.1, "the source never reached the input"
    env_in, env_out = envelope(went_in), envelope(came_out)
    # speech came out: the output is far louder while the input speaks than before the input starts
    onset = int(np.argmax(env_in > env_in.max() - 4.0))
    assert onset > 10
    speech_frames = slice(onset, onset + len(speech) * rate // RATE // 441)
    assert env_out[speech_frames].max() > np.median(env_out[:onset]) + 2.0

    # latency: the lag that best aligns the output's loudness contour with the input's (10 ms frames)
    lags = range(0, 60)  # 0 .. 600 ms
    a = env_in[speech_frames] - env_in[speech_frames].mean()
    scores = []
    for lag in lags:
        b = env_out[speech_frames.start + lag : speech_frames.stop + lag]
        b = b - b.mean()
        scores.append(float(np.dot(a[: len(b)], b) / (np.linalg.norm(a[: len(b)]) * np.linalg.norm(b) + 1e-9)))
    measured_ms = 10.0 * int(np.argmax(scores))
    assert max(scores) > 0.3, f"output loudness does not follow the input (best correlation {max(scores):.2f}): {summary}"
    print(f"measured latency {measured_ms:.0f} ms, reported bound {summary['latency_bound_ms']} ms, summary {summary}")
    # one envelope frame of measurement resolution
    assert measured_ms <= summary["latency_bound_ms"] + 10.0
    assert summary["input_overrun"] == 0


def test_sound_server_vanishing_mid_stream_ends_cleanly(tmp_path):
    daemon, env = start_pulse(tmp_path, ["module-null-sink sink_name=s1"])
    sf.write(tmp_path / "ref.wav", synthesize("The reference voice speaks for two seconds.", make_voices(1)[0], RATE), RATE)
    app = subprocess.Popen(
        [sys.executable, str(REPO / "demos" / "live_vc.py"), "--ref", str(tmp_path / "ref.wav"), "--input-device",
         "pulse", "--output-device", "pulse", "--duration", "60", "--quiet"],
        env=dict(env, PULSE_SOURCE="s1.monitor", PULSE_SINK="s1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    for line in app.stderr:
        if line.startswith("streaming:"):
            break
    time.sleep(1)  # a moment of streaming
    daemon.kill()  # the "device" goes away
    daemon.wait(timeout=10)
    out, err = app.communicate(timeout=60)
    assert app.returncode == 1
    assert "error: the audio" in err and "Traceback" not in err


class PipeFeeder:
    """Writes a tone into a PulseAudio pipe source in real time until `stop_feeding`, then keeps the pipe
    open and silent: the source stops delivering, as a stalled or suspended microphone does."""

    def __init__(self, fifo: Path, rate: int = RATE):
        self.fifo, self.rate = fifo, rate
        self.feeding, self.done = threading.Event(), threading.Event()
        self.feeding.set()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        block = self.rate // 100
        tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(block) / self.rate)).astype(np.float32).tobytes()
        with open(self.fifo, "wb", buffering=0) as pipe:
            start, sent = time.monotonic(), 0
            while self.feeding.is_set():
                pipe.write(tone)
                sent += 1
                time.sleep(max(start + sent / 100 - time.monotonic(), 0))  # pacing, not an assertion
            self.done.wait()

    def stop_feeding(self):
        self.feeding.clear()

    def close(self):
        self.feeding.clear()
        self.done.set()
        self.thread.join(timeout=10)


@pytest.mark.parametrize("program", ["live_vc", "live_tokenize"])
def test_a_stalled_input_is_reported_and_the_program_exits(tmp_path, program):
    fifo = tmp_path / "mic.fifo"
    daemon, env = start_pulse(tmp_path, [
        f"module-pipe-source source_name=pipe_in file={fifo} format=float32le rate={RATE} channels=1",
        "module-null-sink sink_name=s1",
    ])
    feeder = PipeFeeder(fifo)
    try:
        args = ["--input-device", "pulse", "--duration", "120", "--quiet"]
        if program == "live_vc":
            sf.write(tmp_path / "ref.wav", synthesize("The reference voice speaks for two seconds.",
                                                     make_voices(1)[0], RATE), RATE)
            args += ["--ref", str(tmp_path / "ref.wav"), "--output-device", "pulse"]
        app = subprocess.Popen([sys.executable, str(REPO / "demos" / f"{program}.py"), *args],
                               env=dict(env, PULSE_SOURCE="pipe_in", PULSE_SINK="s1"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in app.stderr:
            if line.startswith("streaming:"):
                break
        else:
            pytest.fail(f"{program} ended before streaming: {app.wait()}")
        feeder.stop_feeding()  # the microphone goes quiet: no more input callbacks
        try:
            out, err = app.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            app.kill()
            # without a per-side stall check live_vc ran on (its output playing silence, counted as
            # underruns) until --duration; and stopping a stalled stream instead of aborting it hung
            pytest.fail(f"{program} still runs 30 s after its input stopped")
    finally:
        feeder.close()
        daemon.terminate()
        daemon.wait(timeout=10)
    assert app.returncode == 1, err
    assert "error: the audio input delivered no samples" in err and "Traceback" not in err
    if program == "live_vc":
        assert "while the output kept running" in err
