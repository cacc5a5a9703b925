"""Tokenizing a corpus: bad files are reported and skipped, finished work is never redone, outputs are
atomic, torchrun ranks give the same files as one process, long files go window by window."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch

from kanade_stream import KanadeTeacher
from kanade_stream.cli import main
from kanade_stream.jobs import CorpusTokenizer, find_audio
from kanade_stream.windowed import AudioFile, encode_windowed

from .conftest import REFERENCE

MODEL = ["--model", str(REFERENCE)]


def _corpus(root, good=("input.wav", "reference.wav")):
    folder = root / "speaker1"
    folder.mkdir(parents=True)
    for name in good:
        (folder / name).write_bytes((REFERENCE / name).read_bytes())
    return root


def _bad_files(root):
    bad = root / "bad"
    bad.mkdir()
    (bad / "unreadable.wav").write_bytes(b"RIFF not really a wave file")
    sf.write(bad / "stereo.wav", np.zeros((24000, 2), dtype=np.float32) + 0.1, 24000)
    sf.write(bad / "short.wav", np.full(100, 0.1, dtype=np.float32), 24000)
    sf.write(bad / "empty.wav", np.zeros(0, dtype=np.float32), 24000)
    return {"unreadable.wav": "cannot read", "stereo.wav": "--mix mean", "short.wav": "too short",
            "empty.wav": "empty"}


def test_bad_files_are_reported_by_path_and_the_good_ones_tokenized(tmp_path, capsys, reference_teacher,
                                                                     reference_audio):
    corpus = _corpus(tmp_path / "in")
    reasons = _bad_files(corpus)
    out = tmp_path / "tok"
    assert main(["tokenize", str(corpus), "--out", str(out), *MODEL]) == 1  # something failed
    captured = capsys.readouterr()
    for name, reason in reasons.items():
        line = next(line for line in captured.err.splitlines() if line.startswith("failed:") and name in line)
        assert str(corpus / "bad" / name) in line and reason in line, line
    assert "tokenized 2 file(s)" in captured.out and "failed 4" in captured.out
    tokens = np.load(out / "speaker1" / "input.npy")
    assert np.array_equal(tokens, reference_teacher.encode(reference_audio[0]).content_token_indices.numpy())
    assert not (out / "bad").exists() or not list((out / "bad").glob("*.npy"))
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [m["tokens"] for m in manifest] == ["speaker1/input.npy", "speaker1/reference.npy"]
    entry = manifest[0]
    assert entry["global"] == "speaker1/input.global.npy" and entry["num_tokens"] == tokens.size
    assert entry["audio"] == str(corpus / "speaker1" / "input.wav")
    assert entry["duration"] == pytest.approx(reference_audio[0].numel() / 24000, abs=1e-4)

    # a second run finds every good file complete and does no work; the bad ones still fail
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.npy")}
    assert main(["tokenize", str(corpus), "--out", str(out), *MODEL]) == 1
    assert "tokenized 0 file(s)" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.npy")} == stamps
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 2  # skipped files stay in the manifest
    # --overwrite redoes them
    assert main(["tokenize", str(corpus / "speaker1"), "--out", str(out / "speaker1"), "--overwrite", *MODEL]) == 0
    assert "tokenized 2 file(s)" in capsys.readouterr().out


def test_resume_does_no_work(tmp_path, reference_teacher):
    corpus = _corpus(tmp_path / "in")
    out = tmp_path / "tok"
    first, _ = CorpusTokenizer(reference_teacher, out, progress=False).run(find_audio([corpus]))
    assert first.done == 2

    class NoEncoding:  # the teacher is not even asked to encode
        sample_rate, min_samples = reference_teacher.sample_rate, reference_teacher.min_samples

        def encode_batch(self, *_):
            raise AssertionError("resumed run encoded a finished file")

        encode = encode_batch

    again, entries = CorpusTokenizer(NoEncoding(), out, progress=False).run(find_audio([corpus]))
    assert (again.done, again.skipped, again.failed) == (0, 2, [])
    assert len(entries) == 2


def test_a_killed_run_leaves_only_complete_outputs(tmp_path):
    corpus = tmp_path / "in"
    corpus.mkdir()
    source, rate = sf.read(REFERENCE / "input.wav", dtype="float32")
    for i in range(16):
        sf.write(corpus / f"{i:02d}.wav", np.roll(source, 997 * i), rate)
    out = tmp_path / "tok"
    command = [sys.executable, "-m", "kanade_stream", "tokenize", str(corpus), "--out", str(out),
               "--batch-size", "1", *MODEL]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(out.rglob("*.npy")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # waiting for the first output, not timing anything
    process.send_signal(signal.SIGKILL)
    process.wait()
    # whatever the moment of the kill: every file under its final name is complete
    for tokens_path in out.glob("[0-9]*.npy"):
        if tokens_path.name.endswith(".global.npy"):
            continue
        assert np.load(tokens_path).ndim == 1
        assert np.load(tokens_path.with_suffix(".global.npy")).ndim == 1  # written before the tokens
    # and the next run completes the rest, ending with the same files as an uninterrupted run
    assert subprocess.run(command, capture_output=True).returncode == 0
    clean = tmp_path / "clean"
    assert main(["tokenize", str(corpus), "--out", str(clean), "--batch-size", "1", *MODEL]) == 0
    for path in clean.glob("*.npy"):
        assert np.array_equal(np.load(path), np.load(out / path.name)), path.name
    assert len(list(out.glob("[0-9]*.npy"))) == 32
    assert not list(out.glob("*.tmp"))  # a killed write's temporary file is cleared when the file is redone


def test_torchrun_two_processes_equal_one(tmp_path):
    corpus = _corpus(tmp_path / "in")
    source, rate = sf.read(REFERENCE / "input.wav", dtype="float32")
    (corpus / "speaker2").mkdir()
    for i in range(3):
        sf.write(corpus / "speaker2" / f"{i}.wav", source[: len(source) // (i + 1)], rate)
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["tokenize", str(corpus), "--out", str(one), *MODEL]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "kanade_stream", "tokenize", str(corpus), "--out", str(two), *MODEL],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("tokenized 5 file(s)") == 1  # one summary, for all ranks
    files_one = sorted(p.relative_to(one) for p in one.rglob("*.npy"))
    assert files_one == sorted(p.relative_to(two) for p in two.rglob("*.npy")) and len(files_one) == 10
    for rel in files_one:
        a, b = np.load(one / rel), np.load(two / rel)
        if rel.name.endswith(".global.npy"):  # batch make-up and thread count move float rounding only
            assert np.allclose(a, b, atol=1e-5), rel
        else:
            assert np.array_equal(a, b), rel
    assert (one / "manifest.jsonl").read_text().replace(str(one), "") == \
        (two / "manifest.jsonl").read_text().replace(str(two), "")
    assert not list(two.glob(".manifest.rank*"))


def test_audio_file_reads_pieces_exactly_as_whole_file_loading(tmp_path):
    from kanade_stream import load_audio

    wave = torch.randn(50000) * 0.1
    sf.write(tmp_path / "a.wav", wave.numpy(), 44100, subtype="FLOAT")
    whole, _ = load_audio(tmp_path / "a.wav", 24000)
    audio = AudioFile(tmp_path / "a.wav", 24000)
    assert audio.num_samples == whole.numel()
    assert torch.equal(audio.load(), whole)
    assert torch.equal(audio.read(12345, 20000), whole[12345:20000])
    assert torch.equal(audio.read(-50, 10)[:50], torch.zeros(50))


def test_windowed_encoding_agrees_with_whole_file_encoding():
    """A 30 s clip in 20 s windows with 5 s of context (two windows) against one whole-file encode, with the
    tiny official-format model (random WavLM: only the windowing can make the tokens differ; a trained
    WavLM's global self-attention moves them more, see the README)."""
    from kanade_stream.corpus import make_voices, synthesize

    teacher = KanadeTeacher.from_pretrained(REFERENCE, ssl_model=REFERENCE / "wavlm")
    text = "The quick brown fox jumps over the lazy dog while the children watch from the garden gate. " * 2
    wave = torch.cat([torch.from_numpy(synthesize(text, voice, 24000)) for voice in make_voices(3, seed=1)])
    assert wave.numel() > 25 * 24000
    whole = teacher.encode(wave)
    windowed = encode_windowed(teacher, wave, window_seconds=20, context_seconds=5)
    assert windowed.windows == 2
    assert windowed.content_token_indices.shape == whole.content_token_indices.shape
    agreement = float((windowed.content_token_indices == whole.content_token_indices).float().mean())
    assert agreement >= 0.95, agreement  # 0.959 measured (0.941 with 0.5 s of context); exact case below
    assert torch.allclose(windowed.global_embedding, whole.global_embedding, atol=1e-2)
    # with context covering the whole clip the windows see exactly what the whole file sees
    covered = encode_windowed(teacher, wave, window_seconds=10, context_seconds=40)
    assert torch.equal(covered.content_token_indices, whole.content_token_indices)


def test_long_files_go_window_by_window_through_the_cli(tmp_path, capsys):
    teacher = KanadeTeacher.from_pretrained(REFERENCE, ssl_model=REFERENCE / "wavlm")
    source, rate = sf.read(REFERENCE / "input.wav", dtype="float32")
    sf.write(tmp_path / "long.wav", np.concatenate([source] * 3), rate)
    out = tmp_path / "tok"
    assert main(["tokenize", str(tmp_path / "long.wav"), "--out", str(out), "--window-seconds", "2",
                 "--context-seconds", "1", *MODEL]) == 0
    tokens = np.load(out / "long.npy")
    expected = encode_windowed(teacher, AudioFile(tmp_path / "long.wav", 24000), 2, 1)
    assert np.array_equal(tokens, expected.content_token_indices.numpy()) and expected.windows > 1
    assert json.loads((out / "manifest.jsonl").read_text())["num_tokens"] == tokens.size
