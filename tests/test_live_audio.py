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
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from kanade_stream.cache import cache_root
from kanade_stream.corpus import make_voices, synthesize

pytestmark = pytest.mark.audio
REPO = Path(__file__).resolve().parents[1]
RATE = 44100


def start_pulse(runtime: Path, modules: list[str]):
    """A private PulseAudio daemon (its own socket and runtime folder); returns (process, client env)."""
    if shutil.which("pulseaudio") is None or shutil.which("parecord") is None:
        pytest.skip("PulseAudio is not installed (apt-get install pulseaudio; .ci/run does)")
    # HOME moves (the daemon's cookie and config stay private); the compiled-step cache stays the user's, so
    # the programs started here compile their step once per test session, not once per test
    env = dict(os.environ, PYTHONPATH=str(REPO), XDG_RUNTIME_DIR=str(runtime), PULSE_RUNTIME_PATH=str(runtime),
               HOME=str(runtime), PULSE_SERVER=f"unix:{runtime}/native", KANADE_STREAM_CACHE=str(cache_root()))
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


def summary_line(stderr: str) -> str:
    return next((line for line in stderr.splitlines() if line.startswith("latency ")), "")


def envelope(x: np.ndarray, hop: int = 441) -> np.ndarray:
    frames = len(x) // hop
    return np.log(np.sqrt((x[: frames * hop].reshape(frames, hop) ** 2).mean(axis=1)) + 1e-5)


def measure_through_pulse(pulse, folder: Path, backend: str, chunk_ms: int, source: np.ndarray, speech_len: int):
    """One run of live_vc.py in the wiring above; returns (summary, stderr, lags in 10 ms frames, correlation
    of the output's loudness contour with the input's at each lag)."""
    folder.mkdir()
    sf.write(folder / "speech.wav", source, RATE)
    app_env = dict(pulse, PULSE_SOURCE="vc_in.monitor", PULSE_SINK="mix_right")
    seconds = len(source) / RATE + 3.0
    app = subprocess.Popen(
        [sys.executable, str(REPO / "demos" / "live_vc.py"), "--ref", str(folder.parent / "ref.wav"),
         "--input-device", "pulse", "--output-device", "pulse", "--duration", f"{seconds:.1f}",
         "--summary-json", str(folder / "summary.json"), "--quiet", "--backend", backend,
         "--chunk-ms", str(chunk_ms)],
        env=app_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    recorder = subprocess.Popen(
        ["parecord", "--device=mix.monitor", "--channels=2", f"--rate={RATE}", "--format=float32le",
         "--file-format=wav", str(folder / "mix.wav")], env=pulse)
    # wait until the demo says its streams run (a cold start compiles and loads for a while)
    for line in app.stderr:
        if line.startswith("streaming:"):
            break
    else:
        pytest.fail(f"live_vc.py ended before streaming: {app.wait()}")
    subprocess.run(["paplay", "--device=feed", str(folder / "speech.wav")], env=pulse, check=True, timeout=60)
    out, err = app.communicate(timeout=120)
    recorder.terminate()
    recorder.wait(timeout=10)
    assert app.returncode == 0, err
    summary = json.loads((folder / "summary.json").read_text())

    mix, rate = sf.read(folder / "mix.wav", dtype="float32")
    went_in, came_out = mix[:, 0], mix[:, 1]
    assert np.abs(went_in).max() > 0.1, "the source never reached the input"
    env_in, env_out = envelope(went_in), envelope(came_out)
    # speech came out: the output is far louder while the input speaks than before the input starts
    onset = int(np.argmax(env_in > env_in.max() - 4.0))
    assert onset > 40
    speech_frames = slice(onset, onset + speech_len * rate // RATE // 441)
    assert env_out[speech_frames].max() > np.median(env_out[: onset - 30]) + 2.0

    # latency: the lag that best aligns the output's loudness contour with the input's (10 ms frames); negative
    # lags are looked at too, so that a sound path that skewed shows as such
    lags = list(range(-30, 60))  # -300 .. 600 ms
    a = env_in[speech_frames] - env_in[speech_frames].mean()
    scores = []
    for lag in lags:
        b = env_out[speech_frames.start + lag : speech_frames.stop + lag]
        b = b - b.mean()
        scores.append(float(np.dot(a[: len(b)], b) / (np.linalg.norm(a[: len(b)]) * np.linalg.norm(b) + 1e-9)))
    return summary, err, lags, scores


@pytest.mark.parametrize("backend, chunk_ms", [("pulse", 40), ("pulse", 80), ("portaudio", 80)])
def test_live_vc_through_pulseaudio(pulse, tmp_path, backend, chunk_ms):
    """Mouth-to-ear on one recording clock is within the bound the program reports (engine delay +
    device input + device output). No timed assertion beyond that: the figures are printed."""
    voice_a, voice_b = make_voices(2, seed=3)
    speech = synthesize("Every morning the small boat crossed the quiet bay to the market.", voice_a, RATE)
    source = np.concatenate([np.zeros(RATE, np.float32), speech, np.zeros(RATE, np.float32)])
    sf.write(tmp_path / "ref.wav", synthesize("A reference voice reads this sentence aloud for us.", voice_b, RATE), RATE)

    # The loudness-contour measurement needs the test's own sound path to behave. Once, in CI, the output's
    # contour matched no lag (best correlation 0.24, falling from lag 0) while the program's figures were
    # normal (0 underruns); it did not happen again here, loaded or not. The suspect is the combine sink's
    # two branches drifting apart on a loaded machine. Another time the contour matched well but too early
    # (correlation 0.82 at -60 ms, then 0.79 at -30 ms, 80 ms chunks) where a run alone peaks at +120 ms
    # (0.80) and reads -0.13 at -60 ms: the recorded channels had slipped against each other. A contour that
    # matches nothing, or matches best before the input, is a failed measurement: it is retried up to twice,
    # and every attempt is reported if the last fails too.
    failures = []
    for attempt in range(3):
        summary, err, lags, scores = measure_through_pulse(pulse, tmp_path / f"try{attempt}", backend, chunk_ms,
                                                           source, len(speech))
        if max(scores) > 0.3 and lags[int(np.argmax(scores))] >= 0:
            break
        best = int(np.argmax(scores))
        failures.append(f"attempt {attempt + 1}: best correlation {scores[best]:.2f} at lag {10 * lags[best]} ms, "
                        f"summary {summary}")
        print(f"measurement failed, {failures[-1]}")
    else:
        pytest.fail("output loudness does not follow the input:\n" + "\n".join(failures))
    measured_ms = 10.0 * lags[int(np.argmax(scores))]
    print(f"{backend}, {chunk_ms} ms chunks: measured mouth-to-ear {measured_ms:.0f} ms (correlation "
          f"{max(scores):.2f}), reported bound {summary['latency_bound_ms']} ms ({summary_line(err)}), "
          f"summary {summary}")
    # one envelope frame of measurement resolution
    assert measured_ms <= summary["latency_bound_ms"] + 10.0
    if backend == "pulse":
        # no output comes before the model's own latency: an earlier lag would be a failed measurement. (Through
        # PortAudio's ALSA plugin the output arrives in bursts up to ~200 ms apart, which now and then defeats
        # the loudness-contour measurement: there only the bound is checked, as before.)
        assert measured_ms >= summary["model_latency_ms"] - 10.0
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


# --- the virtual microphone -------------------------------------------------------------------------


def sources(env) -> list[str]:
    listing = subprocess.run(["pactl", "list", "short", "sources"], env=env, capture_output=True, text=True, check=True)
    return [line.split("\t")[1] for line in listing.stdout.splitlines()]


def kanade_modules(env) -> list[str]:
    listing = subprocess.run(["pactl", "list", "short", "modules"], env=env, capture_output=True, text=True, check=True)
    return [line for line in listing.stdout.splitlines() if "kanade_stream.owner" in line]


def wait_for(condition, seconds: float = 20.0) -> bool:
    """Poll until `condition()` holds (a deadline for a slow machine, not a timing assertion)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def start_live_vc(env, tmp_path, *args) -> subprocess.Popen:
    app = subprocess.Popen([sys.executable, str(REPO / "demos" / "live_vc.py"), "--ref", str(tmp_path / "ref.wav"),
                            "--quiet", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in app.stderr:
        if line.startswith("streaming:"):
            return app
    pytest.fail(f"live_vc.py ended before streaming ({app.wait()}): {app.stderr.read()}")


@pytest.fixture
def voices(tmp_path):
    voice_a, voice_b = make_voices(2, seed=11)
    sf.write(tmp_path / "ref.wav", synthesize("A reference voice reads this sentence aloud for us.", voice_b, RATE), RATE)
    speech = synthesize("Every morning the small boat crossed the quiet bay to the market.", voice_a, RATE)
    sf.write(tmp_path / "speech.wav", np.concatenate([np.zeros(RATE // 2, np.float32), speech]), RATE)
    return tmp_path


def test_virtual_microphone_carries_the_converted_voice_and_goes_away(pulse, voices):
    name, source = "Kanade test voice", "Kanade_test_voice"
    app = start_live_vc(dict(pulse, PULSE_SOURCE="vc_in.monitor"), voices, "--virtual-mic", name,
                        "--duration", "12", "--summary-json", str(voices / "summary.json"))
    try:
        assert source in sources(pulse)
        description = subprocess.run(["pactl", "list", "sources"], env=pulse, capture_output=True, text=True).stdout
        assert f"Description: {name}" in description
        # another program records from it, as it would from a microphone
        recorder = subprocess.Popen(["parecord", f"--device={source}", "--channels=1", f"--rate={RATE}",
                                     "--format=float32le", "--file-format=wav", str(voices / "mic.wav")], env=pulse)
        subprocess.run(["paplay", "--device=vc_in", str(voices / "speech.wav")], env=pulse, check=True, timeout=60)
        recorder.terminate()
        recorder.wait(timeout=10)
        out, err = app.communicate(timeout=60)
    finally:
        app.kill()
    assert app.returncode == 0, err
    recorded, _ = sf.read(voices / "mic.wav", dtype="float32")
    assert np.sqrt(np.mean(recorded ** 2)) > 0.01, "nothing came out of the virtual microphone"
    assert json.loads((voices / "summary.json").read_text())["virtual_mic"] == source
    assert source not in sources(pulse) and kanade_modules(pulse) == []  # removed on exit


def test_virtual_microphone_is_removed_after_sigkill_and_leftovers_on_the_next_start(pulse, voices):
    import signal as signals

    env = dict(pulse, PULSE_SOURCE="vc_in.monitor")
    app = start_live_vc(env, voices, "--virtual-mic", "--duration", "60")
    assert "Kanade_voice" in sources(pulse)
    app.send_signal(signals.SIGKILL)
    app.wait(timeout=10)
    # its watchdog (a shell waiting on a pipe only the program held) unloads the modules
    assert wait_for(lambda: "Kanade_voice" not in sources(pulse)), kanade_modules(pulse)

    # leftovers whose owner is gone (say, the watchdog was killed too) go on the next start
    dead = subprocess.Popen(["true"])
    dead.wait()
    owner = f"{socket.gethostname()}:{dead.pid}:1"
    stale = subprocess.run(["pactl", "load-module", "module-null-sink", "sink_name=stale_feed",
                            f"sink_properties=\"device.description='stale' kanade_stream.owner={owner}\""],
                           env=pulse, capture_output=True, text=True, check=True).stdout.strip()
    assert any(line.startswith(f"{stale}\t") for line in kanade_modules(pulse))
    app = start_live_vc(env, voices, "--virtual-mic", "--duration", "2")
    try:
        assert not any(line.startswith(f"{stale}\t") for line in kanade_modules(pulse))
        assert len(kanade_modules(pulse)) == 2 and "Kanade_voice" in sources(pulse)  # its own sink and source
        out, err = app.communicate(timeout=60)
    finally:
        app.kill()
    assert app.returncode == 0, err
    assert kanade_modules(pulse) == [] and "Kanade_voice" not in sources(pulse)


def test_ctrl_c_removes_the_virtual_microphone(pulse, voices):
    import signal as signals

    app = start_live_vc(dict(pulse, PULSE_SOURCE="vc_in.monitor"), voices, "--virtual-mic", "--duration", "60")
    assert "Kanade_voice" in sources(pulse)
    app.send_signal(signals.SIGINT)
    out, err = app.communicate(timeout=60)
    assert app.returncode == 0 and "summary:" in err, err
    assert kanade_modules(pulse) == []


def test_virtual_microphone_without_a_sound_server_is_one_clear_error(tmp_path, monkeypatch, capsys):
    from kanade_stream.realtime.live import run

    sf.write(tmp_path / "ref.wav", synthesize("The reference voice speaks for two seconds.", make_voices(1)[0], RATE),
             RATE)
    monkeypatch.setenv("PULSE_SERVER", f"unix:{tmp_path}/no-server-here")
    assert run("vc", ["--ref", str(tmp_path / "ref.wav"), "--virtual-mic"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no PulseAudio / PipeWire server") and "\n" not in err
    monkeypatch.setenv("PATH", str(tmp_path))  # no pactl
    assert run("vc", ["--ref", str(tmp_path / "ref.wav"), "--virtual-mic"]) == 1
    assert "pactl was not found" in capsys.readouterr().err
