"""The command line on the embedded demo model: files and folders in, tokens and audio out."""

import subprocess
import sys

import numpy as np
import soundfile as sf
import torch

from kanade_stream import KanadeTeacher
from kanade_stream.cli import main
from kanade_stream.pretrained import default_teacher

from .conftest import REFERENCE

MODEL = ["--model", str(REFERENCE), "--vocoder", "griffin-lim"]


def test_tokenize_folder_matches_the_api(tmp_path, reference_teacher, reference_audio):
    folder = tmp_path / "in" / "speaker1"
    folder.mkdir(parents=True)
    for name in ("input.wav", "reference.wav"):
        (folder / name).write_bytes((REFERENCE / name).read_bytes())
    assert main(["tokenize", str(tmp_path / "in"), "--out", str(tmp_path / "tok"), *MODEL]) == 0
    tokens = np.load(tmp_path / "tok" / "speaker1" / "input.npy")
    speaker = np.load(tmp_path / "tok" / "speaker1" / "input.global.npy")
    features = reference_teacher.encode(reference_audio[0])
    assert np.array_equal(tokens, features.content_token_indices.numpy())
    assert np.allclose(speaker, features.global_embedding.numpy(), atol=1e-5)
    assert (tmp_path / "tok" / "speaker1" / "reference.npy").is_file()

    out = tmp_path / "decoded.wav"
    assert main(["decode", str(tmp_path / "tok" / "speaker1" / "input.npy"), "--out", str(out), *MODEL]) == 0
    audio, rate = sf.read(out)
    expected_frames = reference_teacher.decode(features.global_embedding,
                                               content_token_indices=features.content_token_indices).shape[-1]
    assert rate == 24000 and abs(len(audio) - (expected_frames - 1) * 256) <= 256


def test_resynthesize_and_convert_write_audio_of_the_source_length(tmp_path, reference_audio):
    source_len = reference_audio[0].numel()
    out = tmp_path / "resynth.wav"
    assert main(["resynthesize", str(REFERENCE / "input.wav"), "--out", str(out), *MODEL]) == 0
    audio, _ = sf.read(out)
    assert abs(len(audio) - source_len) <= 256 and np.isfinite(audio).all()
    out = tmp_path / "vc.wav"
    assert main(["convert", str(REFERENCE / "input.wav"), "--ref", str(REFERENCE / "reference.wav"),
                 "--out", str(out), *MODEL]) == 0
    audio, _ = sf.read(out)
    assert abs(len(audio) - source_len) <= 256 and np.abs(audio).max() > 0


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["tokenize", str(tmp_path / "missing.wav"), "--out", str(tmp_path), *MODEL]) == 1
    assert "no such file or folder" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["tokenize", str(empty), "--out", str(tmp_path), *MODEL]) == 1
    assert "no audio files" in capsys.readouterr().err
    stereo = tmp_path / "stereo.wav"
    sf.write(stereo, np.zeros((24000, 2), dtype=np.float32), 24000)
    assert main(["tokenize", str(stereo), "--out", str(tmp_path / "t"), *MODEL]) == 1
    assert "--mix mean" in capsys.readouterr().err
    assert main(["tokenize", str(stereo), "--mix", "mean", "--out", str(tmp_path / "t"), *MODEL]) == 0


def test_demo_runs_on_the_embedded_model(tmp_path):
    """The README's main command, in a fresh process, with nothing but the package."""
    result = subprocess.run([sys.executable, "-m", "kanade_stream", "demo", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "tokens:" in result.stdout
    for name in ("source.wav", "reference.wav", "resynthesized.wav", "converted.wav"):
        audio, rate = sf.read(tmp_path / name)
        assert rate == 24000 and len(audio) > 24000 and np.isfinite(audio).all()
    tokens = np.load(tmp_path / "source.tokens.npy")
    teacher = KanadeTeacher.from_pretrained(default_teacher())
    source, _ = sf.read(tmp_path / "source.wav", dtype="float32")
    # the source is saved as float: tokens re-computed from the file are the ones the demo wrote
    assert np.array_equal(tokens, teacher.encode(torch.from_numpy(source)).content_token_indices.numpy())
