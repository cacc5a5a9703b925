"""The live programs (demos/live_vc.py, demos/live_tokenize.py) in file mode, on the embedded student:
what they write equals the offline streaming result, and their errors are one line and exit code 1."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from kanade_stream.corpus import make_voices, synthesize
from kanade_stream.pretrained import default_student
from kanade_stream.realtime.live import run
from kanade_stream.streaming import StreamingConverter, StreamingEncoder, load_student

RATE = 16000


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
                      "--summary-json", str(tmp_path / "summary.json"), "--quiet"])
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


def test_live_tokenize_file_mode_prints_the_offline_tokens(clips, demo_student, tmp_path, capsys):
    code = run("tokenize", ["--input", str(clips / "speech.wav"), "--summary-json", str(tmp_path / "s.json")])
    assert code == 0
    printed = [int(t) for t in capsys.readouterr().out.split()]
    speech, _ = sf.read(clips / "speech.wav", dtype="float32")
    encoder = StreamingEncoder(demo_student, sample_rate=RATE, chunk_ms=80)
    expected = torch.cat([encoder.push(speech), encoder.flush()]).tolist()
    assert printed == expected
    assert json.loads((tmp_path / "s.json").read_text())["tokens"] == len(expected)


@pytest.mark.parametrize("argv, message", [
    ([], "--ref is required"),
    (["--ref", "{clips}/ref.wav", "--input", "{clips}/speech.wav"], "file mode needs both --input and --output"),
    (["--ref", "{clips}/missing.wav", "--input", "{clips}/speech.wav", "--output", "{tmp}/o.wav"],
     "reference clip: audio file not found"),
    (["--ref", "{clips}/short.wav", "--input", "{clips}/speech.wav", "--output", "{tmp}/o.wav"],
     "s long; give at least 1 s"),
    (["--ref", "{clips}/ref.wav", "--input", "{clips}/stereo.wav", "--output", "{tmp}/o.wav"], "--mix mean"),
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
