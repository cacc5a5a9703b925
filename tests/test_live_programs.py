"""The live programs (demos/live_vc.py, demos/live_tokenize.py) in file mode, on the embedded student:
what they write equals the offline streaming result, and their errors are one line and exit code 1."""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from kanade_stream.corpus import make_voices, synthesize
from kanade_stream.pretrained import default_student
from kanade_stream.realtime.live import Interrupts, run
from kanade_stream.streaming import StreamingConverter, StreamingEncoder, load_student

RATE = 16000
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    speaker, target = make_voices(2, seed=5)
    speech = synthesize("The small boat crossed the bay.", speaker, RATE)
    sf.write(folder / "speech.wav", speech, RATE, subtype="FLOAT")
    sf.write(folder / "ref.wav", synthesize("A reference voice reads this sentence.", target, RATE), RATE)
    return folder


@pytest.fixture(scope="module")
def demo_student():
    return load_student(default_student())


def test_live_vc_file_mode_equals_the_offline_conversion_delayed(clips, demo_student, tmp_path):
    out = tmp_path / "out.wav"
    code = run("vc", ["--ref", str(clips / "ref.wav"), "--input", str(clips / "speech.wav"), "--output", str(out),
                      "--summary-json", str(tmp_path / "summary.json"), "--quiet", "--chunk-ms", "80", "--no-gate"])
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["mode"] == "vc"
    xruns = ("input_overrun", "output_underrun", "dropped_input", "dropped_output")
    assert [summary[k] for k in xruns] == [0, 0, 0, 0]
    converted, rate = sf.read(out, dtype="float32")
    speech, _ = sf.read(clips / "speech.wav", dtype="float32")
    reference, _ = sf.read(clips / "ref.wav", dtype="float32")
    with torch.no_grad():
        converter = StreamingConverter(demo_student, reference=reference, sample_rate=RATE, chunk_ms=80)
        expected = np.concatenate([converter.push(speech), converter.flush()])
    delay = summary["engine_delay_samples"]
    assert rate == converter.output_rate and delay > 0
    assert np.all(converted[:delay] == 0)
    # the engine pushes blocks of other sizes than one whole array: equal up to float rounding
    np.testing.assert_allclose(converted[delay:], expected, rtol=0, atol=1e-4 * np.abs(expected).max())


def test_live_vc_int8_runs_the_int8_student_and_says_so(clips, demo_student, tmp_path, capsys):
    from kanade_stream.streaming.int8 import quantize_int8

    out = tmp_path / "out.wav"
    code = run("vc", ["--ref", str(clips / "ref.wav"), "--input", str(clips / "speech.wav"), "--output", str(out),
                      "--summary-json", str(tmp_path / "summary.json"), "--quiet", "--chunk-ms", "40", "--no-gate",
                      "--precision", "int8"])
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["model"] in ("int8 weights, torch.export + AOTInductor, C++ kernels step",
                                "int8 weights, TorchScript step")  # the latter where no C++ compiler is found
    assert "not fine-tuned for int8" in capsys.readouterr().err  # the shipped student was not
    converted, _ = sf.read(out, dtype="float32")
    speech, _ = sf.read(clips / "speech.wav", dtype="float32")
    reference, _ = sf.read(clips / "ref.wav", dtype="float32")
    with torch.no_grad():
        converter = StreamingConverter(quantize_int8(demo_student), reference=reference, sample_rate=RATE, chunk_ms=40)
        expected = np.concatenate([converter.push(speech), converter.flush()])
    delay = summary["engine_delay_samples"]
    got = converted[delay:delay + expected.size]
    # int8 rounds each push's input on its own range and the engine pushes other block sizes: close, not equal
    assert np.linalg.norm(got - expected) < 0.2 * np.linalg.norm(expected)


def test_live_tokenize_file_mode_prints_the_offline_tokens(clips, demo_student, tmp_path, capsys):
    code = run("tokenize", ["--input", str(clips / "speech.wav"), "--summary-json", str(tmp_path / "s.json")])
    assert code == 0
    printed = [int(t) for t in capsys.readouterr().out.split()]
    speech, _ = sf.read(clips / "speech.wav", dtype="float32")
    encoder = StreamingEncoder(demo_student, sample_rate=RATE, chunk_ms=80)
    expected = torch.cat([encoder.push(speech), encoder.flush()]).tolist()
    assert printed == expected
    assert json.loads((tmp_path / "s.json").read_text())["tokens"] == len(expected)


def test_mix_lets_a_stereo_input_through(clips, demo_student, tmp_path, capsys):
    speech, _ = sf.read(clips / "speech.wav", dtype="float32")
    noise = np.random.default_rng(0).standard_normal(len(speech)).astype(np.float32) * 0.1
    sf.write(tmp_path / "stereo.wav", np.stack([speech, noise], axis=1), RATE, subtype="FLOAT")
    assert run("tokenize", ["--input", str(tmp_path / "stereo.wav")]) == 1
    assert "--mix mean" in capsys.readouterr().err  # refused, with the advice that now exists
    assert run("tokenize", ["--input", str(tmp_path / "stereo.wav"), "--mix", "left"]) == 0
    encoder = StreamingEncoder(demo_student, sample_rate=RATE, chunk_ms=80)
    expected = torch.cat([encoder.push(speech), encoder.flush()]).tolist()
    assert [int(t) for t in capsys.readouterr().out.split()] == expected  # the left channel alone
    # live_vc takes it for the input and the reference alike
    sf.write(tmp_path / "ref_stereo.wav", np.stack([sf.read(clips / "ref.wav", dtype="float32")[0]] * 2, axis=1), RATE)
    assert run("vc", ["--ref", str(tmp_path / "ref_stereo.wav"), "--input", str(tmp_path / "stereo.wav"),
                      "--output", str(tmp_path / "out.wav"), "--mix", "mean", "--quiet"]) == 0
    assert sf.info(tmp_path / "out.wav").channels == 1


def test_ctrl_c_ends_a_paced_file_run_early_with_a_summary(tmp_path):
    """Real-time file mode used to ignore Ctrl-C until the whole file had played."""
    sf.write(tmp_path / "long.wav", np.zeros(RATE * 120, np.float32), RATE)
    app = subprocess.Popen([sys.executable, str(REPO / "demos" / "live_tokenize.py"), "--input",
                            str(tmp_path / "long.wav"), "--paced", "--summary-json", str(tmp_path / "s.json")],
                           env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in app.stderr:
        if line.startswith("streaming:"):
            break
    else:
        pytest.fail(f"live_tokenize ended before streaming: {app.wait()}")
    app.send_signal(signal.SIGINT)
    try:
        out, err = app.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        app.kill()
        pytest.fail("Ctrl-C did not stop a paced file run")
    assert app.returncode == 0, err
    assert "summary: mode=tokenize" in err and "Traceback" not in err
    assert json.loads((tmp_path / "s.json").read_text())["audio_seconds"] < 60


def test_a_second_ctrl_c_exits_at_once():
    stop, exits = threading.Event(), []
    interrupts = Interrupts(stop, exit=exits.append)
    interrupts()
    assert stop.is_set() and exits == []  # the first asks the session to finish (and print its summary)
    interrupts()
    assert exits == [130]


@pytest.mark.parametrize("argv, message", [
    ([], "--ref is required"),
    (["--ref", "{clips}/ref.wav", "--input", "{clips}/speech.wav"], "file mode needs both --input and --output"),
    (["--ref", "{clips}/missing.wav", "--input", "{clips}/speech.wav", "--output", "{tmp}/o.wav"],
     "reference clip: audio file not found"),
    (["--ref", "{clips}/short.wav", "--input", "{clips}/speech.wav", "--output", "{tmp}/o.wav"],
     "s long; give at least 1 s"),
    (["--ref", "{clips}/ref.wav", "--input", "{clips}/stereo.wav", "--output", "{tmp}/o.wav"], "--mix mean"),
    (["--ref", "{clips}/ref.wav", "--chunk-ms", "0", "--input", "{clips}/speech.wav", "--output", "{tmp}/o.wav"],
     "--chunk-ms 0: chunk_ms=0 must be positive"),
    (["--ref", "{clips}/ref.wav", "--model", "{tmp}", "--input", "{clips}/speech.wav", "--output", "{tmp}/o.wav"],
     "cannot load the student model"),
])
def test_live_vc_errors_are_one_line_and_exit_code_1(clips, tmp_path, capsys, argv, message):
    sf.write(clips / "short.wav", np.full(RATE // 2, 0.1, np.float32), RATE)
    sf.write(clips / "stereo.wav", np.zeros((RATE, 2), np.float32), RATE)
    argv = [a.format(clips=clips, tmp=tmp_path) for a in argv]
    assert run("vc", argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_live_tokenize_into_a_closed_pipe_stops_quietly(clips):
    """`live_tokenize.py ... | head` : when the reader goes away the program stops with no traceback."""
    proc = subprocess.Popen([sys.executable, str(REPO / "demos" / "live_tokenize.py"), "--input",
                             str(clips / "speech.wav")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # no reader: the first line of tokens meets a broken pipe
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err and b"summary:" in err
