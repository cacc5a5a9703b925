"""Teacher training (training/): data, phase 1, GAN phase 2, vocoder, checkpoints, resume, torchrun.

Tiny models, 1 s chunks and a 12-clip embedded corpus keep the whole file to about a minute on 2 cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from kanade_stream.checkpoint import CheckpointError
from kanade_stream.corpus import build_corpus
from kanade_stream.teacher import KanadeTeacher
from kanade_stream.vocoder import load_vocoder, vocode
from training import run as run_mod
from training.checkpoint import ResumeError, read_checkpoint
from training.data import (ChunkDataset, DataError, build_manifest, collate, filter_clips, load_data, read_chunk,
                           split_train_val)
from training.logs import mel_panel, write_png
from training.models import resolve_ssl_model
from training.pipeline import train_teacher
from training.runtime import Runtime
from training.settings import Phase1Losses, Phase2Losses, SettingsError, check_settings, load_settings
from training.trainer import lr_factor

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A small embedded corpus: 4 eSpeak voices x 3 sentences (~2.4 s each), one voice held out."""
    out = tmp_path_factory.mktemp("corpus")
    build_corpus(out, n_speakers=4, utterances_per_speaker=3, held_out_speakers=1)
    return out


def tiny_settings(out: Path, data: Path, steps: int = 6, **phase_overrides):
    settings = load_settings("tiny")
    settings.out = str(out)
    settings.data.path = str(data)
    settings.data.chunk_seconds = 1.0
    settings.data.batch_size = 4
    settings.data.num_workers = 0
    settings.data.val_clips = 3
    for name in ("phase1", "phase2", "vocoder"):
        ps = settings.phase(name)
        ps.steps, ps.val_every, ps.ckpt_every, ps.log_every = steps, 1000, 1000, 2
        ps.chunk_seconds = None
        for key, value in phase_overrides.items():
            setattr(ps, key, value)
    return settings


def fit(settings, phases=("phase1",), **kwargs):
    return train_teacher(settings, list(phases), Runtime(), progress=False, **kwargs)


# --------------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------------


def test_manifest_of_a_libritts_like_folder(tmp_path):
    root = tmp_path / "LibriTTS"
    rng = np.random.default_rng(0)
    for split, speaker, chapter in (("train-clean-100", "19", "198"), ("train-clean-100", "26", "495"),
                                    ("dev-clean", "84", "121")):
        folder = root / split / speaker / chapter
        folder.mkdir(parents=True)
        stem = f"{speaker}_{chapter}_000001_000000"
        sf.write(folder / f"{stem}.wav", rng.normal(0, 0.1, 16000).astype(np.float32), 16000)
        (folder / f"{stem}.normalized.txt").write_text("Hello there.")
        (folder / f"{stem}.original.txt").write_text("Hello there!")
    (root / "train-clean-100" / "19" / "198" / "broken.wav").write_bytes(b"RIFF not audio at all")
    manifest = build_manifest(root, write_to=tmp_path / "manifest.jsonl")
    assert manifest.skipped == {"unreadable": 1}
    by_speaker = {r["speaker"]: r for r in manifest.records}
    assert set(by_speaker) == {"19", "26", "84"}
    assert by_speaker["84"]["split"] == "heldout" and by_speaker["19"]["split"] == "train"
    assert by_speaker["19"]["text"] == "Hello there." and by_speaker["19"]["sample_rate"] == 16000
    assert by_speaker["19"]["duration"] == pytest.approx(1.0)
    again = load_data(tmp_path / "manifest.jsonl")
    assert [r["path"] for r in again.records] == [r["path"] for r in manifest.records]
    train, val, how = split_train_val(again)
    assert {r["speaker"] for r in val} == {"84"} and "heldout" in how
    # 16 kHz audio comes out as 24 kHz chunks, padded at the end when the clip is shorter
    wave = read_chunk(by_speaker["19"], 36000, 24000, None)
    assert wave.shape == (36000,) and wave[24100:].abs().max() == 0 and wave[:20000].abs().max() > 0


def test_corpus_manifest_split_and_chunks(corpus):
    manifest = load_data(corpus)
    train, val, how = split_train_val(manifest)
    assert len(train) == 9 and len(val) == 3 and "heldout" in how
    dataset = ChunkDataset(train, 24000, seed=1)
    a, b = dataset[(0, 2)], dataset[(0, 2)]
    assert torch.equal(a[0], b[0]) and a[1] == 0 and a[0].shape == (24000,)
    assert not torch.equal(dataset[(1, 2)][0], a[0])  # another epoch, another chunk


def test_phase1_chunks_carry_phone_labels_on_the_sound(tmp_path):
    """A tone from 1 s to 2 s of a 16 kHz clip labelled 'aa': in 2 s chunks at 24 kHz, taken anywhere in the
    clip and played 0.85x to 1.15x as fast, the SSL frames labelled 'aa' are the frames where the tone sounds."""
    from kanade_stream.voices.phones import PHONE_INDEX
    from training.data import read_labelled_chunk, ssl_frames

    t = np.arange(56000) / 16000
    sf.write(tmp_path / "clip.wav", np.where((t >= 1) & (t < 2), 0.5 * np.sin(2 * np.pi * 300 * t), 0.0), 16000)
    (tmp_path / "clip.phones").write_text("0.0\t1.0\tsil\n1.0\t2.0\taa\n2.0\t3.5\tsil\n")
    (tmp_path / "manifest.jsonl").write_text(json.dumps({"path": "clip.wav", "phones": "clip.phones",
                                                         "speaker": "a", "duration": 3.5, "sample_rate": 16000}))
    record = load_data(tmp_path).records[0]
    frames = ssl_frames(48000, 24000)
    for offset, speed in ((0.0, 1.0), (0.5, 1.0), (0.3, 0.85), (0.8, 1.15)):
        wave, labels = read_labelled_chunk(record, 48000, 24000, offset, speed)
        assert labels.shape == (frames,) == (99,)
        # SSL frame i hears [320 i, 320 i + 400) of the chunk at 16 kHz: [480 i, 480 i + 600) at 24 kHz
        sounding = torch.stack([wave[480 * i + 200:480 * i + 400].abs().max() > 0.25 for i in range(frames)])
        labelled = labels == PHONE_INDEX["aa"]
        assert labelled.any() and (sounding == labelled).float().mean() > 0.95, (offset, speed)
    assert torch.equal(read_chunk(record, 48000, 24000, 0.5), read_labelled_chunk(record, 48000, 24000, 0.5)[0])
    # past the clip's end the chunk is padding: its frames are UNKNOWN, which the loss ignores
    _, tail = read_labelled_chunk(record, 96000, 24000, 0.0)
    assert (tail[-20:] == -100).all() and (tail[:150] != -100).all()
    dataset = ChunkDataset([record] * 4, 48000, seed=1, phone_labels=True)
    batch, failures = collate([dataset[(0, i)] for i in range(4)])
    assert batch.wave.shape == (4, 48000) and batch.labels.shape == (4, 99) and failures == 0


def test_phone_loss_needs_a_corpus_with_phone_alignments(corpus, capsys):
    records = load_data(corpus).records  # the embedded eSpeak corpus: audio and text, no alignments
    with pytest.raises(DataError, match="no phone alignment.*kanade_stream.voices.builder"):
        ChunkDataset(records, 24000, phone_labels=True)
    args = run_mod.parse_args(["--config", "embedded", "--phase", "1", "--phone-loss", "3"])
    assert run_mod.apply_overrides(load_settings("embedded"), args, ["phase1"]).phase1.losses.phone_weight == 3
    assert load_settings("embedded").phase1.losses.phone_weight == 0.0  # off unless asked for
    assert run_mod.main(["--config", "embedded", "--phase", "1", "--phone-loss", "-1"]) == 2
    assert "phase1.losses.phone_weight must be >= 0" in capsys.readouterr().err


def test_speed_perturbation_plays_chunks_faster_or_slower(tmp_path):
    """A 440 Hz tone read at speed f comes out at 440 f Hz; the speed is drawn per chunk, repeatably."""
    rate = 16000
    t = np.arange(rate * 3) / rate
    sf.write(tmp_path / "tone.wav", (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate)
    record = {"path": str(tmp_path / "tone.wav"), "sample_rate": rate, "speaker": "a", "duration": 3.0}

    def pitch(wave):
        spectrum = np.abs(np.fft.rfft(wave.numpy() * np.hanning(len(wave))))
        return np.argmax(spectrum) * 24000 / len(wave)

    assert pitch(read_chunk(record, 48000, 24000, None)) == pytest.approx(440, abs=1)
    assert pitch(read_chunk(record, 48000, 24000, None, speed=1.1)) == pytest.approx(484, abs=1)
    assert pitch(read_chunk(record, 48000, 24000, None, speed=0.9)) == pytest.approx(396, abs=1)
    dataset = ChunkDataset([record] * 8, 48000, seed=3, speed_perturbation=0.1)
    pitches = [pitch(dataset[(0, i)][0]) for i in range(8)]
    assert all(396 - 1 <= f <= 484 + 1 for f in pitches) and max(pitches) - min(pitches) > 10
    assert torch.equal(dataset[(0, 5)][0], dataset[(0, 5)][0])
    # no perturbation: the chunks are exactly what they were before the option existed
    plain = ChunkDataset([record] * 8, 48000, seed=3)
    offset = float(np.random.default_rng([3, 0, 5]).random())
    assert torch.equal(plain[(0, 5)][0], read_chunk(record, 48000, 24000, offset))
    with pytest.raises(DataError, match="speed_perturbation must be in"):
        ChunkDataset([record], 48000, speed_perturbation=0.7)


def test_empty_unreadable_and_short_data_are_clear(tmp_path, corpus):
    with pytest.raises(DataError, match="no audio files"):
        build_manifest(tmp_path)
    (tmp_path / "bad.wav").write_bytes(b"\0" * 100)
    with pytest.raises(DataError, match="could be read"):
        build_manifest(tmp_path)
    records = split_train_val(load_data(corpus))[0]
    kept, counts = filter_clips(records, chunk_seconds=10.0, short_clips="skip")
    assert kept == [] and counts == {"shorter_than_chunk_skipped": 9}
    kept, counts = filter_clips(records, chunk_seconds=10.0, short_clips="pad", min_seconds=0.5)
    assert len(kept) == 9 and counts == {"padded": 9}
    # a clip that became unreadable after the manifest was made is replaced and counted, not fatal
    broken = dict(records[0], path=str(tmp_path / "bad.wav"))
    dataset = ChunkDataset([broken] + records[1:], 24000)
    wave, failures = collate([dataset[(0, 0)], dataset[(0, 1)]])
    assert wave.shape == (2, 24000) and failures == 1


def test_cli_errors_are_messages_not_tracebacks(tmp_path, corpus, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_mod.main(["--data", str(empty), "--out", str(tmp_path / "o1"), "--no-progress"]) == 2
    assert "no audio files" in capsys.readouterr().err
    # short clips with the skip policy: nothing left to train on
    config = tmp_path / "skip.yaml"
    config.write_text("data: {short_clips: skip, batch_size: 2, num_workers: 0}\nssl_model: embedded\n"
                      "phase1: {steps: 1}\n")
    assert run_mod.main(["--config", str(config), "--data", str(corpus), "--out", str(tmp_path / "o3"),
                         "--chunk-seconds", "30", "--phase", "1", "--no-progress"]) == 2
    assert "no training clip is long enough" in capsys.readouterr().err
    assert run_mod.main(["--config", str(tmp_path / "nope.yaml")]) == 2
    assert "no training config" in capsys.readouterr().err


def test_speed_perturbation_flag_reaches_both_data_and_ssl_settings(capsys):
    args = run_mod.parse_args(["--config", "embedded", "--phase", "1", "--speed-perturbation", "0.15"])
    settings = run_mod.apply_overrides(load_settings("embedded"), args, ["phase1"])
    assert settings.data.speed_perturbation == 0.15 and settings.ssl.speed_perturbation == 0.15
    args = run_mod.parse_args(["--config", "embedded", "--phase", "1"])  # not given: the recipe's value stays
    assert run_mod.apply_overrides(load_settings("embedded"), args, ["phase1"]).data.speed_perturbation == 0.0
    assert run_mod.main(["--config", "embedded", "--phase", "1", "--speed-perturbation", "0.7"]) == 2
    assert "speed_perturbation must be in [0, 0.5)" in capsys.readouterr().err


def test_content_perturbation_flag_reaches_phase1_and_is_range_checked(capsys):
    args = run_mod.parse_args(["--config", "embedded", "--phase", "1", "--content-perturbation", "0.15"])
    assert run_mod.apply_overrides(load_settings("embedded"), args, ["phase1"]).phase1.content_perturbation == 0.15
    assert load_settings("embedded").phase1.content_perturbation == 0.0  # off unless asked for, as the paper
    assert run_mod.main(["--config", "embedded", "--phase", "1", "--content-perturbation", "0.5"]) == 2
    assert "phase1.content_perturbation must be in [0, 0.5)" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------
# phase 1
# --------------------------------------------------------------------------------------------------------


def test_lr_schedule_matches_the_recipe():
    settings = load_settings("kanade_25hz")
    optim = settings.phase1.optim
    assert (optim.lr, optim.betas, optim.weight_decay, optim.warmup, optim.grad_clip) == (2e-4, (0.9, 0.99), 1e-4,
                                                                                        0.1, 1.0)
    assert lr_factor(0, 1000, optim) == pytest.approx(0.1)
    assert lr_factor(100, 1000, optim) == pytest.approx(1.0)
    assert lr_factor(550, 1000, optim) == pytest.approx(0.55)
    assert lr_factor(1000, 1000, optim) == pytest.approx(0.1)
    assert settings.phase1.losses == Phase1Losses(ssl_weight=30.0, mel_weight=30.0)
    assert settings.phase2.losses == Phase2Losses(mel_weight=30.0, adv_weight=1.0, fm_weight=10.0)
    assert load_settings("kanade_12hz").model["init_args"]["config"]["downsample_factor"] == 4


def tiny_phase1_model(corpus, runtime: Runtime | None = None, **options):
    """A tiny phase-1 model on the embedded SSL model (`options` go to Phase1Model) and a 2 s chunk of the corpus."""
    from kanade_stream.config import tiny_config
    from training.models import build_teacher
    from training.phase1 import Phase1Model

    teacher = build_teacher(tiny_config(ssl_dim=256), resolve_ssl_model("embedded"), with_feature_decoder=True)
    record = next(r for r in load_data(corpus).records if r["duration"] > 2.0)
    return Phase1Model(teacher, runtime or Runtime(), **options), read_chunk(record, 48000, 24000, None)[None]


def test_content_perturbation_changes_the_content_branch_alone_and_keeps_frames_aligned(corpus):
    from training.phase1 import Phase1Model

    model, wave = tiny_phase1_model(corpus, content_perturbation=0.3)
    teacher = model.teacher
    clean, global_in, mel = model.targets(wave)
    torch.manual_seed(0)
    perturbed = model.perturbed_content(wave, clean.shape[1])
    assert perturbed.shape == clean.shape and not torch.allclose(perturbed, clean, atol=1e-2)
    # stretched back in time: each perturbed frame is closer to the clean frame at the same time than to one
    # 60 ms away, so the unperturbed mel target still lines up with the tokens
    cosine = torch.nn.functional.cosine_similarity
    aligned, shifted = cosine(perturbed[0, 3:-3], clean[0, 3:-3], dim=-1), cosine(perturbed[0, 6:], clean[0, :-6], dim=-1)
    assert aligned.mean() > shifted.mean() + 0.1, (aligned.mean(), shifted.mean())
    # validation (eval mode) hears the chunk as it is: the same output as without perturbation
    teacher.eval()
    with torch.no_grad():
        plain = Phase1Model(teacher, Runtime())(wave)
        evaluated = model(wave)
    assert torch.equal(plain["mel"], evaluated["mel"]) and torch.equal(plain["indices"], evaluated["indices"])
    teacher.train()
    torch.manual_seed(0)
    with torch.no_grad():
        trained = model(wave)
    assert not torch.equal(trained["indices"], plain["indices"])  # training: the content branch heard it perturbed
    assert torch.equal(model.targets(wave)[2], mel)  # the mel target is the chunk's own


def test_invariance_view_is_the_chunk_itself_when_nothing_moves_and_lines_up_when_it_does(corpus):
    from training.settings import InvarianceView

    model, wave = tiny_phase1_model(corpus, invariance=InvarianceView(speed_spread=0.0, semitones=0.0, snr_db=()))
    torch.manual_seed(0)
    with torch.no_grad():
        out = model(wave)
    assert float(out["invariance"]) < 1e-8 and float(out["tokens_kept"]) == 1.0
    clean = model.targets(wave)[0]
    view = model.view_content(wave, clean.shape[1], speed=1.15, semitones=2.0, snr_db=torch.tensor([30.0]))
    assert view.shape == clean.shape and not torch.allclose(view, clean, atol=1e-2)
    cosine = torch.nn.functional.cosine_similarity
    aligned, shifted = cosine(view[0, 3:-3], clean[0, 3:-3], dim=-1), cosine(view[0, 6:], clean[0, :-6], dim=-1)
    assert aligned.mean() > shifted.mean() + 0.1, (aligned.mean(), shifted.mean())


def test_invariance_view_can_be_heard_through_another_microphone(corpus):
    from training.settings import InvarianceView

    model, wave = tiny_phase1_model(corpus, invariance=InvarianceView(speed_spread=0.0, semitones=0.0, snr_db=(),
                                                                      equaliser_db=12.0))
    model.teacher.eval()
    with torch.no_grad():
        first, again = model(wave, view_seed=1), model(wave, view_seed=1)
        other = model(wave, view_seed=2)
    assert float(first["invariance"]) > 0 and torch.equal(first["invariance"], again["invariance"])
    assert not torch.equal(first["invariance"], other["invariance"])  # another draw, another microphone
    args = run_mod.parse_args(["--config", "embedded", "--phase", "1", "--invariance", "20", "--equaliser", "12"])
    assert run_mod.apply_overrides(load_settings("embedded"), args, ["phase1"]).phase1.invariance.equaliser_db == 12
    settings = load_settings("embedded")
    settings.phase1.invariance.equaliser_db = -1
    with pytest.raises(SettingsError, match="equaliser_db in"):
        check_settings(settings)


def test_invariance_view_microphone_can_tilt(corpus):
    from training.settings import InvarianceView

    view = dict(speed_spread=0.0, semitones=0.0, snr_db=(), equaliser_db=6.0)
    plain, wave = tiny_phase1_model(corpus, invariance=InvarianceView(**view))
    tilted, _ = tiny_phase1_model(corpus, invariance=InvarianceView(**view, tilt_db=9.0))
    frames = plain.targets(wave)[0].shape[1]
    generator = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    with torch.no_grad():
        a, b = plain.invariance_view(wave, frames, generator()), tilted.invariance_view(wave, frames, generator())
        again = tilted.invariance_view(wave, frames, generator())
    assert torch.equal(b, again) and not torch.allclose(a, b, atol=1e-3)  # seeded; the tilt moves the view
    args = run_mod.parse_args(["--config", "embedded", "--phase", "1", "--equaliser", "12", "--tilt", "9"])
    settings = run_mod.apply_overrides(load_settings("embedded"), args, ["phase1"])
    assert settings.phase1.invariance.tilt_db == 9 and settings.ssl.tilt_db == 9
    settings.phase1.invariance.equaliser_db = 0
    with pytest.raises(SettingsError, match="tilt_db in"):
        check_settings(settings)


def test_invariance_view_is_made_in_fp32_under_bf16_autocast(corpus):
    # bf16 autocast (--precision bf16: GPUs, and CPUs with AVX512-BF16) must not reach the view's filters:
    # torchaudio's IIR filter refused the bf16 signal its own conv gave it there
    from training.settings import InvarianceView

    runtime = Runtime(precision="bf16")
    model, wave = tiny_phase1_model(corpus, runtime, invariance=InvarianceView(equaliser_db=12.0))
    model.teacher.eval()
    with torch.no_grad():
        reference = model(wave, view_seed=3)
        with runtime.autocast():
            out = model(wave, view_seed=3)
    assert torch.isfinite(out["invariance"]) and float(out["invariance"]) > 0
    assert float(out["invariance"]) == pytest.approx(float(reference["invariance"]), rel=0.3)


def test_invariance_noise_lands_at_the_asked_snr():
    from training.phase1 import heard_as_another_voice

    wave = torch.sin(torch.arange(24000) / 24000 * 2 * torch.pi * 220)[None].repeat(2, 1) * torch.tensor([[0.5], [0.05]])
    noisy = heard_as_another_voice(wave, 24000, snr_db=torch.tensor([10.0, 30.0]), generator=torch.Generator().manual_seed(1))
    snr = 10 * torch.log10(wave.pow(2).mean(-1) / (noisy - wave).pow(2).mean(-1))
    assert torch.allclose(snr, torch.tensor([10.0, 30.0]), atol=0.3), snr
    assert heard_as_another_voice(wave, 24000, speed=1.2).shape[-1] == pytest.approx(20000, abs=20)


def test_invariance_loss_falls_and_validation_measures_it_on_the_same_views(corpus):
    from training.settings import InvarianceView

    model, wave = tiny_phase1_model(corpus, invariance=InvarianceView())
    model.teacher.eval()
    with torch.no_grad():
        first, again = model(wave, view_seed=3), model(wave, view_seed=3)
        assert "invariance" not in model(wave)  # evaluation without a seed: no view
    assert torch.equal(first["invariance"], again["invariance"]) and 0 <= float(first["tokens_kept"]) < 1
    model.teacher.train()
    params = [p for n, p in model.teacher.named_parameters() if not n.startswith("ssl")]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    losses = []
    for _ in range(12):
        torch.manual_seed(5)  # the same view each step, so the loss is comparable
        loss = model(wave)["invariance"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


def test_invariance_flag_reaches_phase1_and_is_range_checked(capsys):
    args = run_mod.parse_args(["--config", "embedded", "--phase", "1", "--invariance", "2"])
    assert run_mod.apply_overrides(load_settings("embedded"), args, ["phase1"]).phase1.losses.invariance_weight == 2
    assert load_settings("embedded").phase1.losses.invariance_weight == 0.0  # off unless asked for
    assert run_mod.main(["--config", "embedded", "--phase", "1", "--invariance", "-1"]) == 2
    assert "phase1.losses.invariance_weight must be >= 0" in capsys.readouterr().err


@pytest.mark.slow
def test_phase1_learns_and_exports_the_same_tokens(tmp_path, corpus):
    settings = tiny_settings(tmp_path / "run", corpus, steps=30)
    settings.phase1.optim.lr = 2e-3
    result = fit(settings)["phase1"]
    assert result.completed and result.step == 30
    first, last = result.first_val["mel_l1"], result.val["mel_l1"]
    assert last < 0.9 * first, (first, last)  # held-out voice, 30 steps of batch 4 x 1 s
    assert 0 < result.val["codebook_usage"] <= 1 and result.val["perplexity"] > 1
    # logs, plots, checkpoint, export
    folder = tmp_path / "run" / "phase1"
    assert (folder / "logs" / "train.csv").read_text().count("\n") == 16
    assert len(list((folder / "plots").glob("step_0000030_clip*.png"))) == 3
    export = tmp_path / "run" / "export"
    ssl_model = (export / "ssl_model.txt").read_text().strip()
    assert ssl_model == resolve_ssl_model("embedded")
    loaded = KanadeTeacher.from_pretrained(export, ssl_model=ssl_model)
    trained = result.models["teacher"].eval()
    wave = read_chunk(load_data(corpus).split("heldout")[0], 48000, 24000, None)
    ours, theirs = trained.encode(wave), loaded.encode(wave)
    assert torch.equal(ours.content_token_indices, theirs.content_token_indices)
    assert torch.allclose(ours.global_embedding, theirs.global_embedding)
    assert torch.allclose(trained.decode(ours.global_embedding, ours.content_token_indices),
                          loaded.decode(theirs.global_embedding, theirs.content_token_indices))
    # the self-contained copy of the embedded WavLM loads too
    KanadeTeacher.from_pretrained(export, ssl_model=export / "wavlm")

    # phase 2 (GAN, encoder frozen) and the vocoder continue from there
    settings.phase2.optim.lr = 1e-3
    results = fit(settings, phases=("phase2", "vocoder"))
    phase2, vocoder = results["phase2"], results["vocoder"]
    assert phase2.completed and vocoder.completed
    before = KanadeTeacher.from_pretrained(folder / "export", ssl_model=ssl_model).state_dict()
    after = phase2.models["teacher"].state_dict()
    assert all(torch.equal(before[k], after[k].cpu()) for k in before if k.startswith(("local_", "global_encoder")))
    assert not torch.equal(before["mel_postnet.convolutions.0.0.weight"], after["mel_postnet.convolutions.0.0.weight"])
    assert vocoder.val["mel_l1"] < vocoder.first_val["mel_l1"]
    vocos = load_vocoder(export / "vocoder")
    audio = vocode(vocos, loaded.decode(theirs.global_embedding, theirs.content_token_indices))
    assert audio.shape == (48128,) and torch.isfinite(audio).all()
    # fine-tuning a released Vocos (here: the one just trained) works the same way
    tuned = fit(tiny_settings(tmp_path / "tune", corpus, steps=2), phases=("vocoder",), init=str(export / "vocoder"))
    assert tuned["vocoder"].first_val["mel_l1"] == pytest.approx(vocoder.val["mel_l1"], rel=1e-4)
    # everything finished: --resume has nothing left to do
    assert fit(settings, phases=("phase1", "phase2", "vocoder"), resume="auto") == {}


# --------------------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------------------


def test_stop_and_resume_gives_the_same_weights(tmp_path, corpus):
    straight = fit(tiny_settings(tmp_path / "a", corpus, steps=6))["phase1"]
    settings = tiny_settings(tmp_path / "b", corpus, steps=6)
    first = fit(settings, stop_after=3)["phase1"]
    assert not first.completed and first.step == 3
    state = read_checkpoint(tmp_path / "b" / "phase1" / "checkpoints" / "last.pt")
    assert state["step"] == 3 and state["data"] == {"epoch": 1, "batch_in_epoch": 1}  # 9 clips / 4 = 2 batches
    resumed = fit(settings, resume="auto")["phase1"]
    assert resumed.completed and resumed.step == 6
    a, b = straight.models["teacher"].state_dict(), resumed.models["teacher"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # without --resume an existing run is not overwritten by accident: the message names what is there
    with pytest.raises(ResumeError, match=r"holds a training run \(checkpoints .*step_0000006.pt.*--resume.*--overwrite"):
        fit(settings)
    assert read_checkpoint(tmp_path / "b" / "phase1" / "checkpoints" / "last.pt")["step"] == 6
    with pytest.raises(ResumeError, match="pass one of them"):
        fit(settings, resume="auto", overwrite=True)


def files_under(folder: Path) -> set[Path]:
    return {p.relative_to(folder) for p in folder.rglob("*") if p.is_file()}


def test_resume_without_last_pt_continues_from_the_newest_step_checkpoint(tmp_path, corpus, capsys):
    straight = fit(tiny_settings(tmp_path / "a", corpus, steps=6))["phase1"]
    settings = tiny_settings(tmp_path / "b", corpus, steps=6, ckpt_every=2, keep_checkpoints=5)
    fit(settings, stop_after=4)
    checkpoints = tmp_path / "b" / "phase1" / "checkpoints"
    (checkpoints / "last.pt").unlink()
    before = files_under(tmp_path / "b")
    capsys.readouterr()
    resumed = fit(settings, resume="auto")["phase1"]
    assert "last.pt is missing; resuming from" in capsys.readouterr().err
    assert resumed.completed and resumed.step == 6
    a, b = straight.models["teacher"].state_dict(), resumed.models["teacher"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # continued from step 4, exactly
    assert before <= files_under(tmp_path / "b")  # nothing was deleted
    steps = [line.split(",")[0] for line in (tmp_path / "b" / "phase1" / "logs" / "train.csv").read_text().splitlines()]
    assert steps == ["step", "2", "4", "6"]  # the first run's log rows are kept, none repeated


def test_corrupt_and_mismatched_checkpoints_are_refused(tmp_path, corpus, capsys):
    settings = tiny_settings(tmp_path / "c", corpus, steps=4)
    fit(settings, stop_after=2)
    last = tmp_path / "c" / "phase1" / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    key = "local_encoder.input_proj.weight" if "local_encoder.input_proj.weight" in state["models"]["teacher"] else \
        next(k for k in state["models"]["teacher"] if k.startswith("mel_prenet") and k.endswith("weight"))
    state["models"]["teacher"][key] = torch.zeros(3, 3)
    torch.save(state, tmp_path / "mismatched.pt")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        fit(settings, resume=str(tmp_path / "mismatched.pt"))
    args = ["--data", str(corpus), "--out", str(tmp_path / "c"), "--phase", "1", "--steps", "4", "--batch-size", "4",
            "--chunk-seconds", "1", "--num-workers", "0", "--no-progress"]
    # a corrupt last.pt (here a new file, not the hard link of step_0000002.pt): resume from step_0000002.pt
    last.unlink()
    last.write_bytes(b"not a checkpoint")
    capsys.readouterr()
    assert run_mod.main(args + ["--resume", "--stop-after", "3"]) == 0
    err = capsys.readouterr().err
    assert "cannot read training checkpoint" in err and "resuming from" in err and "step_0000002.pt" in err
    assert read_checkpoint(last)["step"] == 3
    # every checkpoint truncated, as by a broken disk: refused with what was found, nothing deleted
    for path in last.parent.glob("*.pt"):
        path.write_bytes(path.read_bytes()[:1000])
    before = files_under(tmp_path / "c")
    assert run_mod.main(args + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "no readable checkpoint" in err and "step_0000003.pt" in err
    assert "--overwrite" in err
    # starting over without --overwrite is refused too
    assert run_mod.main(args) == 2
    assert "already holds a training run (checkpoints step_0000002.pt, step_0000003.pt, last.pt)" in \
        capsys.readouterr().err
    assert files_under(tmp_path / "c") == before
    with pytest.raises(CheckpointError, match="not a kanade-stream training checkpoint"):
        torch.save({"hello": 1}, tmp_path / "foreign.pt")
        read_checkpoint(tmp_path / "foreign.pt")


def test_png_writer(tmp_path):
    mel = torch.linspace(-10, 2, 100 * 30).reshape(100, 30)
    image = mel_panel([mel, mel])
    assert image.shape == (2 * 100 * 2 + 2, 60, 3) and image.dtype == np.uint8
    data = write_png(tmp_path / "mel.png", image).read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82")


# --------------------------------------------------------------------------------------------------------
# torchrun
# --------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_process_gloo_run(tmp_path, corpus):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "training" / "run.py"), "--phase", "1", "--data", str(corpus), "--out", str(out),
           "--steps", "3", "--batch-size", "4", "--chunk-seconds", "1", "--num-workers", "0", "--device", "cpu",
           "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:  # a hung job: end torchrun and both ranks, not just the launcher
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert "2 process(es)" in stderr
    done = json.loads((out / "phase1" / "done.json").read_text())
    assert done["step"] == 3 and "mel_l1" in done["val"]
    state = read_checkpoint(out / "phase1" / "checkpoints" / "last.pt")
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert (out / "export" / "model.safetensors").is_file()


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_that_resumes(tmp_path, corpus):

    out = tmp_path / "int"
    args = ["--phase", "1", "--data", str(corpus), "--out", str(out), "--steps", "2000", "--batch-size", "4",
            "--chunk-seconds", "1", "--num-workers", "1", "--log-every", "1", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(REPO / "training" / "run.py"), *args], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        log_file = out / "phase1" / "logs" / "train.csv"
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if log_file.is_file() and log_file.read_text().count("\n") >= 3:
                break
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)  # like Ctrl-C in a terminal: the loader worker gets it too
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 1, stderr[-3000:]
    assert "interrupted at step" in stdout + stderr and "--resume" in stdout + stderr
    state = read_checkpoint(out / "phase1" / "checkpoints" / "last.pt")
    assert 2 <= state["step"] < 2000
    settings = tiny_settings(out, corpus, steps=2000)
    resumed = fit(settings, resume="auto", stop_after=state["step"] + 2)["phase1"]
    assert resumed.step == state["step"] + 2
