"""Tests for the embedded eSpeak NG corpus (kanade_stream.corpus). Tiny corpora only: the suite takes seconds."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("espeakng_loader")

from kanade_stream import corpus  # noqa: E402
from kanade_stream.corpus import SENTENCES, Voice, build_corpus, make_voices, synthesize  # noqa: E402

# sha256 of the 255 sentences joined by newlines, as they were when the list moved out of the code
SENTENCES_SHA256 = "b0df4c7fd82c19d8311f5d6a022377c4e47e439314dc518a5b99f46c0c3cc065"
TEXT = "She sells fresh bread and warm muffins at the market every morning."


def median_f0(audio: np.ndarray, sample_rate: int) -> float:
    """Crude pitch estimate: median autocorrelation peak (60-400 Hz) over loud, clearly periodic frames."""
    frame, hop = int(0.04 * sample_rate), int(0.02 * sample_rate)
    low, high = int(sample_rate / 400), int(sample_rate / 60)
    estimates = []
    for start in range(0, len(audio) - frame, hop):
        x = audio[start : start + frame].astype(np.float64)
        x -= x.mean()
        if np.sqrt(np.mean(x**2)) < 0.02:
            continue
        ac = np.correlate(x, x, "full")[frame - 1 :]
        ac /= ac[0]
        lag = low + int(np.argmax(ac[low:high]))
        if ac[lag] > 0.5:
            estimates.append(sample_rate / lag)
    assert len(estimates) >= 10, "too few voiced frames to estimate pitch"
    return float(np.median(estimates))


def test_synthesize_gives_real_deterministic_audio():
    voice = Voice("t0", language="en-us", variant="m3", pitch=50, pitch_range=50, rate=175)
    a = synthesize(TEXT, voice, sample_rate=16000)
    assert a.dtype == np.float32 and a.ndim == 1
    # a ~10-word sentence lasts a few seconds; the length also proves the 16 kHz rate was applied
    assert 1.5 * 16000 < len(a) < 8 * 16000
    assert np.isfinite(a).all()
    assert np.abs(a).max() <= 1.0
    assert np.sqrt(np.mean(a**2)) > 0.02  # not silent
    # another utterance in between must not leak eSpeak state into the repeat
    synthesize("Something else entirely, spoken by someone else.", Voice("t1", variant="f2", pitch=70))
    b = synthesize(TEXT, voice, sample_rate=16000)
    assert np.array_equal(a, b)


def test_sample_rate_scales_length():
    voice = Voice("t0", variant="m1")
    a16 = synthesize("Bats flew out of the cave at dusk.", voice, sample_rate=16000)
    a24 = synthesize("Bats flew out of the cave at dusk.", voice, sample_rate=24000)
    assert abs(len(a24) / len(a16) - 1.5) < 0.01


def test_voice_settings_change_the_audio():
    sr = 16000
    low = median_f0(synthesize(TEXT, Voice("a", variant="m3", pitch=25), sr), sr)
    high = median_f0(synthesize(TEXT, Voice("b", variant="m3", pitch=80), sr), sr)
    female = median_f0(synthesize(TEXT, Voice("c", variant="f3", pitch=50), sr), sr)
    male = median_f0(synthesize(TEXT, Voice("d", variant="m3", pitch=50), sr), sr)
    assert high > 1.3 * low, (low, high)  # the pitch setting is applied (measured ~1.65x)
    assert female > 1.5 * male, (male, female)  # the variant is applied (measured ~2x)
    slow = synthesize(TEXT, Voice("e", variant="m3", rate=120), sr)
    fast = synthesize(TEXT, Voice("f", variant="m3", rate=240), sr)
    assert len(slow) > 1.5 * len(fast)  # the speaking rate is applied


def test_make_voices_distinct_and_deterministic():
    voices = make_voices(20, seed=3)
    assert voices == make_voices(20, seed=3)
    assert voices != make_voices(20, seed=4)
    assert len({v.name for v in voices}) == 20
    assert len({v.variant for v in voices}) == 20  # one pass over the variants before any is reused
    assert set(corpus.available_variants()) >= {v.variant for v in make_voices(60)}
    many = make_voices(60)
    assert len({(v.variant, v.pitch) for v in many}) == 60
    with pytest.raises(ValueError):
        make_voices(10_000)


def test_voice_validation():
    with pytest.raises(ValueError, match="pitch"):
        Voice("x", pitch=120)
    with pytest.raises(ValueError, match="rate"):
        Voice("x", rate=10)
    with pytest.raises(ValueError, match="variant"):
        synthesize("hello", Voice("x", variant="no_such_variant"))


def test_no_audio_is_a_clear_error():
    with pytest.raises(RuntimeError, match="no audio"):
        synthesize("", Voice("x"))


def test_missing_espeak_is_a_clear_error(monkeypatch):
    import sys

    import espeakng_loader

    monkeypatch.setattr(corpus, "_engine_instance", None)  # force a fresh load; restored afterwards
    monkeypatch.setattr(espeakng_loader, "get_library_path", lambda: "/nonexistent/libespeak-ng.so")
    with pytest.raises(RuntimeError, match="pip install espeakng-loader"):
        synthesize("hello", Voice("x"))
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # as if the package were not installed
    with pytest.raises(RuntimeError, match="pip install espeakng-loader"):
        synthesize("hello", Voice("x"))


def test_sentences():
    assert len(SENTENCES) >= 200
    assert len(set(SENTENCES)) == len(SENTENCES)
    assert all(5 <= len(s.split()) <= 15 for s in SENTENCES)
    # the list (read from the package's text file) is exactly the one cached corpora were built from
    assert hashlib.sha256("\n".join(SENTENCES).encode()).hexdigest() == SENTENCES_SHA256


def test_sentence_file_format(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("# a comment\n\n  One sentence here.  \n# another\nTwo.\n", encoding="utf-8")
    assert corpus.read_sentences(path) == ["One sentence here.", "Two."]


def test_build_corpus(tmp_path):
    out = tmp_path / "c"
    info = build_corpus(out, n_speakers=3, utterances_per_speaker=2, held_out_speakers=1, sample_rate=16000, seed=1)
    assert not info.reused
    assert info.num_utterances == 6
    assert info.speakers == {"train": ["spk00", "spk01"], "heldout": ["spk02"]}
    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(entries) == 6
    for e in entries:
        assert set(e) == {"path", "speaker", "split", "text", "duration", "sample_rate"}
        assert e["path"] == f"{e['split']}/{e['speaker']}/{e['speaker']}_{e['path'][-8:-4]}.wav"
        audio, sr = sf.read(out / e["path"], dtype="float32")
        assert sr == e["sample_rate"] == 16000
        assert abs(len(audio) / sr - e["duration"]) < 1e-3
        assert np.abs(audio).max() > 0.1
        assert (out / e["path"]).with_suffix(".txt").read_text().strip() == e["text"]
        assert e["text"] in SENTENCES
    train = {e["speaker"] for e in entries if e["split"] == "train"}
    heldout = {e["speaker"] for e in entries if e["split"] == "heldout"}
    assert heldout == {"spk02"} and not train & heldout
    assert info.total_duration == pytest.approx(sum(e["duration"] for e in entries), abs=1e-3)
    assert json.loads((out / "corpus.json").read_text())["complete"] is True

    # same arguments: reused without touching the files
    wav = out / entries[0]["path"]
    mtime = wav.stat().st_mtime_ns
    again = build_corpus(out, n_speakers=3, utterances_per_speaker=2, held_out_speakers=1, sample_rate=16000, seed=1)
    assert again.reused and again.num_utterances == 6
    assert wav.stat().st_mtime_ns == mtime

    # a fresh build with the same seed is byte-identical
    other = tmp_path / "d"
    build_corpus(other, n_speakers=3, utterances_per_speaker=2, held_out_speakers=1, sample_rate=16000, seed=1)
    assert (other / "manifest.jsonl").read_bytes() == (out / "manifest.jsonl").read_bytes()
    for e in entries:
        assert (other / e["path"]).read_bytes() == (out / e["path"]).read_bytes()

    # different parameters rebuild in place, leaving no stale speakers behind
    changed = build_corpus(out, n_speakers=2, utterances_per_speaker=1, held_out_speakers=0, sample_rate=16000, seed=1)
    assert not changed.reused and changed.num_utterances == 2
    assert not (out / "heldout" / "spk02").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_speakers=3, held_out_speakers=3), "held_out_speakers"),
        (dict(n_speakers=2, held_out_speakers=5), "held_out_speakers"),
        (dict(n_speakers=0), "n_speakers"),
        (dict(n_speakers=3, utterances_per_speaker=0), "utterances_per_speaker"),
        (dict(held_out_speakers=-1), "held_out_speakers"),
        (dict(sample_rate=100), "sample rate 100"),
    ],
)
def test_build_corpus_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_corpus(tmp_path / "bad", **kwargs)
    assert not (tmp_path / "bad").exists()  # nothing written before the arguments are checked


def test_build_corpus_refuses_foreign_folder(tmp_path):
    (tmp_path / "train" / "mine").mkdir(parents=True)
    with pytest.raises(ValueError, match="not made by build_corpus"):
        build_corpus(tmp_path, n_speakers=2, utterances_per_speaker=1, held_out_speakers=1)
    assert (tmp_path / "train" / "mine").exists()


def test_default_corpus_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("KANADE_STREAM_CACHE", str(tmp_path))
    assert corpus.default_corpus_dir() == tmp_path / "corpus"
    monkeypatch.delenv("KANADE_STREAM_CACHE")
    assert corpus.default_corpus_dir().parts[-3:] == (".cache", "kanade_stream", "corpus")


def test_cli(tmp_path, capsys):
    rc = corpus.main(["--out", str(tmp_path), "--speakers", "2", "--per-speaker", "1", "--held-out", "1"])
    assert rc == 0
    line = capsys.readouterr().out.strip()
    assert "2 utterances" in line and str(tmp_path) in line
    assert corpus.main(["--out", str(tmp_path), "--speakers", "1", "--held-out", "1"]) == 2
