"""The quality judges (kanade_stream.evaluation) on known cases: word error rate and its normalisation, speech
recognition of a held-out flite voice, speaker similarity, silence, and the held-out set builder.

Needs flite (apt-get install flite) for the held-out clips and the optional judges (pip install
"kanade-stream[eval]": pocketsphinx, resemblyzer); the tests that need a missing one are skipped, saying which."""

import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kanade_stream import load_audio
from kanade_stream.evaluation import (
    HELDOUT_VOICES, FliteError, JudgeMissingError, NoSpeechWarning, build_heldout_set, harvard_sentences,
    normalize_text, speaker_embedding, speaker_similarity, transcribe, word_error_rate, word_errors,
)
from kanade_stream.evaluation.judges import require

from .conftest import one_thread

needs_flite = pytest.mark.skipif(shutil.which("flite") is None,
                                 reason="flite is not installed (apt-get install flite): no held-out clips")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The speaker encoder is a small LSTM: on a shared 2-core machine two OpenMP threads only wait for each other."""
    with one_thread():
        yield


def needs(module: str):
    return pytest.importorskip(module, reason=f'{module} is not installed (pip install "kanade-stream[eval]")')


# --- word error rate -----------------------------------------------------------------------------------

def test_normalisation_lowers_case_and_strips_punctuation():
    assert normalize_text("The birch-canoe, SLID!  On 'the' smooth planks.") == \
        ["the", "birch", "canoe", "slid", "on", "the", "smooth", "planks"]
    assert normalize_text("It's the man's fall") == ["it's", "the", "man's", "fall"]
    assert normalize_text("read(2) the verse") == ["read", "the", "verse"]  # pocketsphinx's pronunciation variants
    assert normalize_text(" ... ") == []


def test_identical_texts_have_no_errors():
    assert word_error_rate("The birch canoe slid on the smooth planks.", "the birch canoe slid on the smooth planks") == 0
    assert word_errors("It's easy to tell.", "IT'S EASY, TO TELL") == (0, 4)


@pytest.mark.parametrize("hypothesis, errors", [
    ("the cat sit on the mat", 1),  # substitution
    ("the cat on the mat", 1),  # deletion
    ("the cat sat on the red mat", 1),  # insertion
    ("a cat sat on mat", 2),  # substitution + deletion
    ("the the cat sat on the mat mat", 2),  # two insertions
    ("", 6),  # all deleted
])
def test_known_edits(hypothesis, errors):
    assert word_errors("The cat sat on the mat.", hypothesis) == (errors, 6)
    assert word_error_rate("The cat sat on the mat.", hypothesis) == pytest.approx(errors / 6)


def test_insertions_can_exceed_one_and_an_empty_reference_is_refused():
    assert word_error_rate("yes", "no no no") == 3.0
    with pytest.raises(ValueError, match="no words"):
        word_error_rate(" . ", "anything")


# --- the held-out set ----------------------------------------------------------------------------------

def test_harvard_sentences_are_packaged():
    sentences = harvard_sentences()
    assert len(sentences) == 100
    assert sentences[0] == "The birch canoe slid on the smooth planks."
    assert len(set(sentences)) == 100


@pytest.mark.parametrize("voice, message", [("kal", "training voice"), ("kal16", "training voice"),
                                            ("bob", "unknown held-out voice")])
def test_builder_refuses_training_and_unknown_voices(tmp_path, voice, message):
    with pytest.raises(ValueError, match=message):
        build_heldout_set(tmp_path, sentences=1, voices=("rms", voice))
    assert not any(tmp_path.iterdir())


def test_builder_names_the_install_command_when_flite_is_missing(tmp_path):
    with pytest.raises(FliteError, match="apt-get install flite"):
        build_heldout_set(tmp_path, sentences=1, voices=("rms",), flite="kanade-stream-no-such-flite")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Harvard sentences 7 and 8 ("The box was thrown beside the parked truck.", ...) by rms and slt."""
    if shutil.which("flite") is None:
        pytest.skip("flite is not installed (apt-get install flite): no held-out clips")
    items = build_heldout_set(tmp_path_factory.mktemp("heldout"), sentences=2, voices=("rms", "slt"), first=6)
    return {(item.voice, i % 2): (item, *load_audio(item.path)) for i, item in enumerate(items)}


@needs_flite
def test_builder_synthesises_once_in_order(clips):
    items = [clips[key][0] for key in [("rms", 0), ("rms", 1), ("slt", 0), ("slt", 1)]]
    assert [(item.voice, item.text) for item in items] == [
        ("rms", harvard_sentences()[6]), ("rms", harvard_sentences()[7]),
        ("slt", harvard_sentences()[6]), ("slt", harvard_sentences()[7])]
    assert all(clips[key][2] == 16000 and clips[key][1].numel() > 16000 for key in clips)
    stamps = [item.path.stat().st_mtime_ns for item in items]
    again = build_heldout_set(items[0].path.parent, sentences=2, voices=("rms", "slt"), first=6)
    assert again == items
    assert [item.path.stat().st_mtime_ns for item in again] == stamps  # reused, not rewritten
    assert set(HELDOUT_VOICES) == {"rms", "awb", "slt"}


@needs_flite
def test_flite_phone_times_lie_on_the_held_out_audio(tmp_path):
    """The ARCTIC voices' evaluation labels: flite's own segment times cover the clip, every phone has a place
    in the shared inventory, and the frames labelled silence are the quiet ones."""
    import numpy as np
    import soundfile as sf

    from kanade_stream.evaluation.heldout import find_flite, flite_segments, synthesize_with_phones
    from kanade_stream.voices.phones import PHONE_INDEX, SILENCE, frame_labels

    path, segments = synthesize_with_phones(find_flite(), "slt", harvard_sentences()[6], tmp_path / "slt.wav")
    audio, rate = sf.read(path, dtype="float32")
    assert segments[0][0] == 0.0 and abs(segments[-1][1] - len(audio) / rate) < 0.03
    assert all(a[1] == b[0] for a, b in zip(segments, segments[1:])) and None not in [p for *_, p in segments]
    assert [p for *_, p in segments][1:4] == ["dh", "ah", "b"]  # "The box"
    labels = frame_labels(segments, (len(audio) - 400) // 320 + 1)
    loudness = np.array([np.sqrt(np.mean(audio[320 * i:320 * i + 400] ** 2)) for i in range(len(labels))])
    silent = labels == PHONE_INDEX[SILENCE]
    assert silent.sum() >= 10 and np.median(loudness[silent]) < 0.1 * np.median(loudness[~silent])
    with pytest.raises(FliteError, match="phone and its end time"):
        flite_segments("pau:0.1 dh:oops")


# --- speech recognition -------------------------------------------------------------------------------

@needs_flite
def test_a_held_out_voice_is_understood(clips):
    needs("pocketsphinx")
    item, wave, rate = clips[("rms", 0)]
    text = transcribe(wave, rate)
    assert word_error_rate(item.text, text) < 0.6, text
    # deterministic and independent of what was transcribed before, and of the input rate
    other = clips[("slt", 1)]
    transcribe(other[1], other[2])
    assert transcribe(wave, rate) == text
    from kanade_stream import resample

    assert word_error_rate(item.text, transcribe(resample(wave, rate, 24000), 24000)) < 0.6


def test_silence_has_no_words():
    needs("pocketsphinx")
    assert transcribe(np.zeros(16000, dtype=np.float32), 16000) == ""


def test_a_missing_judge_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pocketsphinx", None)  # makes `import pocketsphinx` fail
    with pytest.raises(JudgeMissingError, match=r"pip install \"kanade-stream\[eval\]\""):
        require("pocketsphinx", "pocketsphinx", "speech recognition")


def test_importing_the_package_needs_no_judge():
    code = ("import sys, kanade_stream, kanade_stream.evaluation; "
            "loaded = [m for m in ('pocketsphinx', 'resemblyzer') if m in sys.modules]; "
            "assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True)


# --- speaker similarity -------------------------------------------------------------------------------

@needs_flite
def test_similarity_is_one_with_itself_and_higher_for_the_same_voice(clips):
    needs("resemblyzer")
    (_, rms_a, rate), (_, rms_b, _), (_, slt_a, _) = clips[("rms", 0)], clips[("rms", 1)], clips[("slt", 0)]
    assert speaker_similarity(rms_a, rate, rms_a, rate) == pytest.approx(1.0, abs=1e-5)
    same_voice = speaker_similarity(rms_a, rate, rms_b, rate)  # other sentence, same speaker
    other_voice = speaker_similarity(rms_a, rate, slt_a, rate)  # same sentence, other speaker
    assert same_voice > other_voice + 0.1, (same_voice, other_voice)
    # silence against speech: no speaker in it, so NaN and a warning, not a made-up number
    with pytest.warns(NoSpeechWarning, match="second clip has no speech"):
        assert math.isnan(speaker_similarity(rms_a, rate, np.zeros(32000, dtype=np.float32), 16000))


def test_silence_has_no_speaker():
    assert speaker_embedding(np.zeros(48000, dtype=np.float32), 24000) is None
    with pytest.warns(NoSpeechWarning, match="first and second clips have no speech"):
        assert math.isnan(speaker_similarity(np.zeros(16000), 16000, np.zeros(8000, dtype=np.float32), 8000))


def test_unrounded_resynthesis_is_the_tokens_path_without_the_rounding(reference_teacher, reference_audio):
    """The diagnostic row decodes the same latent as the tokens do, only before rounding: the same length, close
    to the tokens' mel (the rounding moves each code by under half a step), far from another clip's."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import quality

    teacher = reference_teacher
    source, other = reference_audio
    with torch.inference_mode():
        unrounded = quality.unrounded_resynthesis(teacher, source, 24000)
        f, g = teacher.encode(source), teacher.encode(other)
        rounded = teacher.decode(f.global_embedding, content_token_indices=f.content_token_indices,
                                 target_audio_length=source.numel())
        elsewhere = teacher.decode(g.global_embedding, content_token_indices=g.content_token_indices,
                                   target_audio_length=source.numel())
    assert unrounded.shape == rounded.shape
    frames = min(rounded.shape[1], elsewhere.shape[1])
    near, far = (unrounded - rounded).abs().mean(), (unrounded[:, :frames] - elsewhere[:, :frames]).abs().mean()
    assert 0 < near < 0.3 * far, (near, far)
