"""The SSL voice corpus: synthesizer alignments line up with the audio, builds are deterministic and cached,
and held-out (CMU ARCTIC) voices are refused."""

import hashlib
import json

import numpy as np
import pytest
import soundfile as sf

from kanade_stream import corpus
from kanade_stream.voices import builder
from kanade_stream.voices.builder import (
    CorpusRecipe,
    HeldOutVoiceError,
    VoiceSpec,
    build_voice_corpus,
    check_not_held_out,
    read_phones,
)
from kanade_stream.voices.festival import (
    FESTIVAL_VOICES,
    festival_available,
    installed_voices,
)
from kanade_stream.voices.perturb import Perturbation, apply
from kanade_stream.voices.phones import (
    PHONE_INDEX,
    PHONE_SETS,
    PHONES,
    SILENCE,
    frame_labels,
    to_common,
)
from kanade_stream.voices.text import DOCS_SENTENCES_FILE, corpus_sentences

needs_festival = pytest.mark.skipif(not festival_available() or "kal_diphone" not in installed_voices(),
                                    reason="festival + festvox-kallpc16k not installed")
ESPEAK = dict(name="x", language="en-us", variant="m3", pitch=50, pitch_range=50, rate=175)


def frame_energy_db(audio, n):
    e = np.array([np.sqrt(np.mean(audio[i * 320:i * 320 + 400] ** 2) + 1e-12) for i in range(n)])
    return 20 * np.log10(e)


def other_onnx_model(folder):
    """An ONNX model that is no voice (one Identity node): the neural voices must refuse to edit it."""
    onnx = pytest.importorskip("onnx")
    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    graph = onnx.helper.make_graph([node], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    path = folder / "other.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    return path


def check_alignment(audio, segments):
    """Silence labels sit on silent audio, phone labels on sound, and label changes near energy changes."""
    n = (len(audio) - 400) // 320 + 1
    labels = frame_labels([(s, e, p) for s, e, p, *_ in segments], n)
    db = frame_energy_db(audio, n)
    sil = labels == PHONE_INDEX[SILENCE]
    assert sil.any() and (~sil).any()
    # festival's pauses keep some recording noise (down to about -38 dB): silence is relative to the speech
    quiet = max(-45.0, float(np.median(db[~sil])) - 15.0)
    assert np.mean(db[sil] < quiet) > 0.85, "silence labels on sound"
    assert np.mean(db[~sil] > -45) > 0.8, "phone labels on silence"
    # energy rises where the first phone starts and falls where the last one ends
    speech = np.flatnonzero(~sil)
    first, last = speech[0], speech[-1]
    assert db[first:first + 5].mean() - db[max(0, first - 5):first].mean() > 6
    assert db[last - 4:last + 1].mean() - db[last + 1:last + 6].mean() > 6
    assert abs(segments[-1][1] - len(audio) / 16000) < 0.02  # the segments cover the audio


def test_inventory_and_maps():
    assert PHONES[0] == SILENCE and len(PHONES) == 40 and len(set(PHONES)) == 40
    for name, table in PHONE_SETS.items():
        assert set(table.values()) <= set(PHONES), name
    assert to_common("'aU", "espeak") == "aw" and to_common("dZ", "espeak") == "jh"
    assert to_common("axr", "radio") == "er" and to_common("pau", "radio") == SILENCE
    assert to_common("E1", "italian") == "eh" and to_common("l:", "finnish") == "l"
    assert to_common("zz", "russian") == "z" and to_common("nonsense", "radio") is None


def test_frame_labels_take_the_phone_at_the_frame_centre():
    segments = [(0.0, 0.1, "sil"), (0.1, 0.2, "aa"), (0.2, 0.3, None)]
    labels = frame_labels(segments, 20)
    # frame i's centre is at 12.5 ms + 20 ms * i
    assert list(labels[:5]) == [0] * 5
    assert list(labels[5:10]) == [PHONE_INDEX["aa"]] * 5
    assert list(labels[10:15]) == [-100] * 5
    assert list(labels[15:]) == [0] * 5


def test_espeak_phoneme_events_line_up_with_the_audio():
    from kanade_stream.voices.espeak import synthesize_aligned

    voice = corpus.Voice(**ESPEAK)
    audio, segments = synthesize_aligned("The kettle whistled while we searched for clean mugs.", voice)
    assert [s[2] for s in segments].count(None) == 0
    check_alignment(audio, segments)
    again, _ = synthesize_aligned("The kettle whistled while we searched for clean mugs.", voice)
    assert np.array_equal(audio, again)
    # the plain corpus synthesis is unchanged by asking for events
    plain = corpus.synthesize("The kettle whistled while we searched for clean mugs.", voice, 16000)
    n = round(0.25 * 16000)
    assert np.allclose(audio[n:n + len(plain)], plain, atol=1e-6)


@needs_festival
def test_festival_segments_line_up_with_the_audio():
    from kanade_stream.voices.festival import synthesize_batch

    (audio, segments), = synthesize_batch("kal_diphone", ["Numeric objects are immutable once they are made."])
    assert segments[0][2] == SILENCE and all(s[2] is not None for s in segments)
    check_alignment(audio, segments)


def test_speed_perturbation_scales_the_alignment():
    from kanade_stream.voices.espeak import synthesize_aligned

    audio, segments = synthesize_aligned("A suite is a group of statements.", corpus.Voice(**ESPEAK))
    faster, scaled = apply(audio, 16000, Perturbation(1.15, 2.0), segments)
    assert abs(len(faster) / len(audio) - 1 / 1.15) < 0.01
    assert abs(scaled[-1][1] - len(faster) / 16000) < 0.01
    check_alignment(faster, scaled)


@pytest.mark.parametrize("name", ["rms", "awb", "awb_time", "slt", "us-slt-hts", "cmu_us_awb_arctic", "SLT",
                                  "flite-rms", "bdl"])
def test_held_out_voices_are_refused(name):
    with pytest.raises(HeldOutVoiceError, match="held out"):
        check_not_held_out(name)
    with pytest.raises(HeldOutVoiceError):
        VoiceSpec(name="ok", synth="festival", base=name)


def test_held_out_voice_in_a_build_is_refused(tmp_path):
    spec = VoiceSpec(name="fine", synth="espeak", base="en-us+m3", espeak=ESPEAK)
    bad = [spec, VoiceSpec.__new__(VoiceSpec)]
    object.__setattr__(bad[1], "name", "slt")
    object.__setattr__(bad[1], "base", "us-slt-hts")
    with pytest.raises(HeldOutVoiceError):
        build_voice_corpus(tmp_path / "c", CorpusRecipe(utterances_per_voice=2), specs=bad)
    assert not (tmp_path / "c").exists()
    check_not_held_out("kal_diphone")
    check_not_held_out("es03-m8")


def test_training_voices_of_the_recipes_are_not_held_out():
    for recipe in builder.RECIPES.values():
        recipe = CorpusRecipe(**{**recipe.__dict__, "festival_voices": tuple(FESTIVAL_VOICES)})
        specs = builder.voice_plan(recipe)
        assert len({s.name for s in specs}) == len(specs)
    assert len(builder.voice_plan(CorpusRecipe(festival_voices=tuple(FESTIVAL_VOICES)))) >= 100


def test_a_voice_added_at_the_end_leaves_the_existing_voices_unchanged():
    """A corpus built before a festival voice was added keeps every voice byte-identical (and reused):
    perturbations and sentence blocks are drawn in FESTIVAL_VOICES order, so new voices go at its end."""
    sentences = corpus_sentences()
    every = tuple(FESTIVAL_VOICES)
    # the festival voices of the corpus the shipped models were trained on, in its order
    assert every[:10] == ("kal_diphone", "ked_diphone", "lp_diphone", "pc_diphone", "upc_ca_ona_hts", "czech_dita",
                          "czech_machac", "suo_fi_lj_diphone", "hy_fi_mv_diphone", "msu_ru_nsh_clunits")
    for n in range(1, len(every)):
        before = CorpusRecipe(festival_voices=every[:n], kokoro_voices=(), piper_voices=())
        after = CorpusRecipe(festival_voices=every, kokoro_voices=(), piper_voices=())
        old, new = builder.voice_plan(before), builder.voice_plan(after)
        assert new[:len(old)] == old
        old_plan, new_plan = builder.sentence_plan(old, before, sentences), builder.sentence_plan(new, after, sentences)
        assert all(new_plan[s.name] == old_plan[s.name] for s in old)
        assert len(new) > len(old)


def test_sentences_are_many_and_not_harvard():
    sentences = corpus_sentences()
    assert len(sentences) > 5000 and len(set(sentences)) == len(sentences)
    assert DOCS_SENTENCES_FILE.read_text().startswith("# Plain English sentences")
    harvard = ["The birch canoe slid on the smooth planks.", "Glue the sheet to the dark blue background.",
               "It's easy to tell the depth of a well.", "These days a chicken leg is a rare dish."]
    assert not set(harvard) & set(sentences)


def _specs():
    specs = [VoiceSpec(name="es-a", synth="espeak", base="en-us+m3", espeak=ESPEAK),
             VoiceSpec(name="es-b", synth="espeak", base="en+f2", espeak={**ESPEAK, "variant": "f2", "language": "en"},
                       perturbation=Perturbation(0.9, -2.0), split="heldout")]
    if festival_available() and "kal_diphone" in installed_voices():
        specs.append(VoiceSpec(name="fe-kal-1", synth="festival", base="kal_diphone",
                               perturbation=Perturbation(1.1, 1.0)))
    return specs


def _digest(folder):
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_builder_is_deterministic_cached_and_aligned(tmp_path):
    recipe = CorpusRecipe(utterances_per_voice=2, festival_weight=1.0)
    a = build_voice_corpus(tmp_path / "a", recipe, specs=_specs())
    build_voice_corpus(tmp_path / "b", recipe, specs=_specs())
    assert not a.reused and a.num_utterances == 2 * (len(_specs()) - 1) + 1
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    again = build_voice_corpus(tmp_path / "a", recipe, specs=_specs())
    assert again.reused and _digest(tmp_path / "a") == _digest(tmp_path / "b")
    entries = corpus.load_manifest(tmp_path / "a")
    assert {e["split"] for e in entries} == {"train", "heldout"}
    for e in entries:
        audio, rate = sf.read(tmp_path / "a" / e["path"], dtype="float32")
        assert rate == 16000 and abs(len(audio) / rate - e["duration"]) < 1e-3
        segments = read_phones(tmp_path / "a" / e["phones"], e["phone_set"])
        check_alignment(audio, [(s, t, p, "") for s, t, p in segments])
    meta = json.loads((tmp_path / "a" / "corpus.json").read_text())
    assert meta["complete"] and meta["params"]["phones"] == list(PHONES)
    # an interrupted build redoes only the missing voice
    (tmp_path / "a" / "train" / "es-a" / "voice.json").unlink()
    (tmp_path / "a" / "corpus.json").write_text(json.dumps({"complete": False}))
    rebuilt = build_voice_corpus(tmp_path / "a", recipe, specs=_specs())
    assert not rebuilt.reused and _digest(tmp_path / "a") == _digest(tmp_path / "b")
