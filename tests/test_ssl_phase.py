"""--phase ssl: masked phone prediction lowers its loss, resumes, and exports a WavLM folder that the
teacher and SSLFeatureExtractor load as they load WavLM Base+."""

import json

import math

import numpy as np
import pytest
import torch

from kanade_stream import KanadeTeacher
from kanade_stream.config import tiny_config
from kanade_stream.ssl import SSLFeatureExtractor
from kanade_stream.voices.builder import CorpusRecipe, VoiceSpec, build_voice_corpus
from kanade_stream.voices.perturb import Perturbation
from kanade_stream.voices.phones import PHONES
from training.runtime import Runtime
from training.settings import SettingsError, load_settings
from training.ssl_phase import (
    SSLTask,
    loss_curve,
    make_ssl_task,
    mask_spans,
    num_frames,
    num_frames_to_samples,
    train_ssl,
)

ESPEAK = dict(name="x", language="en-us", variant="m3", pitch=50, pitch_range=50, rate=175)


@pytest.fixture(scope="module")
def voice_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("ssl-corpus")
    specs = [VoiceSpec(name="es-a", synth="espeak", base="en-us+m3", espeak=ESPEAK),
             VoiceSpec(name="es-b", synth="espeak", base="en+f2", espeak={**ESPEAK, "variant": "f2", "language": "en"},
                       perturbation=Perturbation(1.1, 2.0)),
             VoiceSpec(name="es-c", synth="espeak", base="en-us+m1", espeak={**ESPEAK, "variant": "m1"},
                       split="heldout")]
    build_voice_corpus(out, CorpusRecipe(utterances_per_voice=4), specs=specs)
    return out


def tiny_ssl_settings(out, corpus, steps=4):
    s = load_settings("tiny")
    s.out = str(out)
    ssl = s.ssl
    ssl.corpus, ssl.corpus_dir = "prebuilt", str(corpus)
    ssl.steps, ssl.log_every, ssl.val_every, ssl.ckpt_every = steps, 1, 1000, 1000
    ssl.batch_size, ssl.chunk_seconds, ssl.val_clips = 4, 1.0, 2
    ssl.optim.lr, ssl.optim.warmup = 3e-3, 0.0
    m = ssl.model
    m.hidden_size, m.num_heads, m.intermediate_size, m.conv_dim, m.pos_conv_kernel, m.pos_conv_groups = \
        32, 2, 64, 16, 8, 2
    return s


def test_mask_spans():
    mask = mask_spans(3, 50, 0.08, 10, torch.Generator().manual_seed(0))
    assert mask.shape == (3, 50) and mask.any(dim=1).all() and not mask.all()
    assert num_frames(16000) == 49


def test_ssl_loss_goes_down_on_a_batch(voice_corpus, tmp_path):
    torch.set_num_threads(2)
    task, stream, _ = make_ssl_task(tiny_ssl_settings(tmp_path, voice_corpus), Runtime())
    batch, _ = next(stream)
    assert batch.labels.shape == (4, num_frames(batch.wave.shape[1]))
    assert ((batch.labels >= 0) & (batch.labels < len(PHONES))).float().mean() > 0.9
    losses = [task.train_step(batch, i)["loss"] for i in range(10)]
    assert max(losses[-3:]) < 0.93 * losses[0], losses  # from chance (ln 40 = 3.7 per CE) towards the prior


def test_ssl_phase_exports_a_wavlm_the_teacher_loads(voice_corpus, tmp_path):
    settings = tiny_ssl_settings(tmp_path / "run", voice_corpus, steps=4)
    first = train_ssl(settings, Runtime(), stop_after=2, progress=False)
    assert not first.completed and first.step == 2
    result = train_ssl(settings, Runtime(), resume="auto", progress=False)
    assert result.completed and result.step == 4 and {"acc_masked", "ce_masked"} <= set(result.val)
    assert [s for s, _ in loss_curve(tmp_path / "run" / "ssl")] == [1, 2, 3, 4]
    folder = result.export
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert json.loads((folder / "phones.json").read_text()) == list(PHONES)
    ssl = SSLFeatureExtractor.from_pretrained(folder)
    assert ssl.feature_dim == 32 and ssl.num_layers == 9 and ssl.sample_rate == 16000
    # a tiny release on top of it, loaded the way a WavLM Base+ release is
    config = tiny_config(ssl_dim=32)
    release = KanadeTeacher(config, ssl).save_pretrained(tmp_path / "release")
    teacher = KanadeTeacher.from_pretrained(release, ssl_model=folder)
    features = teacher.encode(torch.randn(24000) * 0.1, sample_rate=24000)
    assert features.content_token_indices.numel() > 0
    # finished: --resume skips it
    assert train_ssl(settings, Runtime(), resume="auto", progress=False) is None


def test_ssl_phase_reads_a_subset_of_a_voice_corpus_and_refuses_unaligned_audio(voice_corpus, tmp_path):
    from training.run import apply_overrides, parse_args

    lines = (voice_corpus / "manifest.jsonl").read_text().splitlines()
    subset = voice_corpus / "subset.jsonl"  # beside the manifest: its paths stay relative to the corpus
    subset.write_text("\n".join(line for line in lines if '"es-b"' not in line) + "\n")
    settings = tiny_ssl_settings(tmp_path, voice_corpus)
    settings = apply_overrides(settings, parse_args(["--phase", "ssl", "--data", str(subset)]), ["ssl"])
    assert settings.ssl.manifest == str(subset)
    task, stream, val = make_ssl_task(settings, Runtime())
    assert stream.clips.speakers == {"es-a": 0}  # es-b left out; es-c is held out
    assert {e["speaker"] for e in stream.clips.entries} == {"es-a"} and len(val) == 1
    assert next(stream)[0].wave.abs().amax() > 0.01  # the clips load from the corpus folder
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"path": "a.wav", "speaker": "a", "split": "train", "duration": 1.0}) + "\n")
    settings.ssl.manifest = str(plain)
    with pytest.raises(ValueError, match="no phone alignment.*voices.builder"):
        make_ssl_task(settings, Runtime())
    settings.ssl.manifest = str(tmp_path / "missing.jsonl")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_ssl_task(settings, Runtime())


def test_voice_weights_set_how_often_each_voice_is_heard(voice_corpus, tmp_path):
    """--voice-weight 'es-a=2' --voice-weight 'es-b=0.5': every epoch holds es-a's clips twice each and half
    of es-b's (another half the next epoch); the batches resume where they were; typos are refused."""
    import collections

    from training.run import apply_overrides, main, parse_args

    settings = tiny_ssl_settings(tmp_path, voice_corpus)
    settings.ssl.batch_size = 2
    args = parse_args(["--phase", "ssl", "--voice-weight", "es-a=2", "--voice-weight", "es-b=0.5"])
    settings = apply_overrides(settings, args, ["ssl"])
    _, stream, _ = make_ssl_task(settings, Runtime())
    voice = [e["speaker"] for e in stream.clips.entries]
    halves = []
    for epoch in (0, 1):
        order = stream.epoch_order(epoch)
        picked = collections.Counter(int(i) for i in order)
        assert collections.Counter(voice[i] for i in order) == {"es-a": 8, "es-b": 2}  # 4 clips each
        assert all(picked[i] == 2 for i in range(8) if voice[i] == "es-a")
        halves.append({i for i in picked if voice[i] == "es-b"})
    assert stream.batches_per_epoch == 5 and np.array_equal(stream.epoch_order(0), stream.epoch_order(0))
    assert halves[0] != halves[1]  # drawn again each epoch, so no clip of es-b is left out for good
    expected = [next(stream)[0] for _ in range(7)]  # crosses into epoch 1
    _, resumed, _ = make_ssl_task(settings, Runtime())
    resumed.load_state_dict({"epoch": 0, "batch_in_epoch": 4})
    for k in (4, 5, 6):
        assert torch.equal(next(resumed)[0].wave, expected[k].wave)

    settings.ssl.voice_weights = {"es-z*": 2.0}
    with pytest.raises(ValueError, match="no training voice matches 'es-z\\*'.*es-a, es-b"):
        make_ssl_task(settings, Runtime())
    assert main(["--phase", "ssl", "--voice-weight", "es-a"]) == 2
    assert main(["--phase", "1", "--voice-weight", "es-a=2"]) == 2
    settings.ssl.voice_weights = {"es-a": -1}
    from training.settings import check_settings

    with pytest.raises(SettingsError, match="a voice pattern and a weight in \\[0, 100\\].*'es-a': -1"):
        check_settings(settings)


def test_ssl_settings_are_checked():
    s = load_settings("ssl_full")
    assert s.ssl.model.num_layers >= max(tiny_config().local_ssl_layers + tiny_config().global_ssl_layers)
    s.ssl.corpus, s.ssl.corpus_dir = "prebuilt", None
    from training.settings import check_settings

    with pytest.raises(SettingsError, match="corpus_dir"):
        check_settings(s)


def test_task_head_predicts_every_phone():
    from training.settings import SSLSettings

    task = SSLTask(Runtime(), SSLSettings())
    assert task.head.out_features == len(PHONES)


def test_export_of_a_checkpoint(voice_corpus, tmp_path):
    from training.ssl_phase import export_checkpoint

    settings = tiny_ssl_settings(tmp_path / "run", voice_corpus, steps=4)
    train_ssl(settings, Runtime(), stop_after=1, progress=False)
    folder = export_checkpoint(tmp_path / "run" / "ssl" / "checkpoints" / "last.pt", settings.ssl, tmp_path / "x")
    assert SSLFeatureExtractor.from_pretrained(folder).feature_dim == 32


def test_confusion_loss_is_lowest_when_the_adversary_cannot_tell_the_voices_apart():
    labels, speakers = torch.zeros(2, 3, dtype=torch.long), torch.tensor([0, 1])
    uniform = torch.zeros(2, 3, 4)
    assert torch.isclose(SSLTask.confusion_loss(uniform, labels, speakers), torch.tensor(math.log(4)))
    sure = torch.tensor([5.0, 0, 0, 0]).expand(2, 3, 4).clone().requires_grad_(True)
    loss = SSLTask.confusion_loss(sure, labels, speakers)
    assert loss > math.log(4) + 1
    loss.backward()  # descending it lowers the confident logit and raises the others
    assert (sure.grad[..., 0] > 0).all() and (sure.grad[..., 1:] < 0).all()
    # frames of held-out voices (-1) and unknown phones do not count
    assert SSLTask.confusion_loss(sure, labels, torch.tensor([-1, -1])) == 0


def test_speaker_adversary_pushes_the_model_away_from_the_voice(voice_corpus, tmp_path):
    """With the adversary on, the confusion loss sends a gradient into the model and none into the model's
    optimizer for the adversary; held-out voices are left out of the speaker losses, the phone loss still
    falls, and checkpoints export without the adversary."""
    from training.ssl_phase import export_checkpoint

    torch.manual_seed(0)
    settings = tiny_ssl_settings(tmp_path / "run", voice_corpus, steps=4)
    settings.ssl.losses.speaker_adversarial_weight = 0.5
    settings.ssl.losses.adversary_layers = (2, 9)
    task, stream, val = make_ssl_task(settings, Runtime())
    batch, _ = next(stream)
    assert sorted(set(batch.speakers.tolist())) == [0, 1] and set(val[0].speakers.tolist()) == {-1}
    _, labels, hidden = task.forward(batch, None, hidden=True)
    speaker_logits, _ = task.adversary_logits(hidden, labels.shape[1])
    confusion = task.confusion_loss(speaker_logits, labels, batch.speakers)
    model_weight = task.model.encoder.layers[0].feed_forward.output_dense.weight
    (grad,) = torch.autograd.grad(confusion, [model_weight])
    assert confusion >= math.log(2) - 1e-5 and grad.abs().sum() > 0
    _, val_labels, hidden = task.forward(val[0], None, hidden=True)
    val_logits, _ = task.adversary_logits(hidden, val_labels.shape[1])
    assert task.speaker_loss(val_logits, val_labels, val[0].speakers)[0] == 0  # held-out voice: no target
    assert task.confusion_loss(val_logits, val_labels, val[0].speakers) == 0
    task.net.train()
    metrics = [task.train_step(batch, i) for i in range(10)]
    assert all(math.isfinite(m["ce_speaker"]) for m in metrics)
    assert metrics[-1]["ce_masked"] < metrics[0]["ce_masked"]
    train_ssl(settings, Runtime(), stop_after=1, progress=False)
    folder = export_checkpoint(tmp_path / "run" / "ssl" / "checkpoints" / "last.pt", settings.ssl, tmp_path / "x")
    assert SSLFeatureExtractor.from_pretrained(folder).feature_dim == 32
    settings.ssl.losses.adversary_layers = (10,)
    with pytest.raises(ValueError, match="adversary_layers in 1..9"):
        make_ssl_task(settings, Runtime())


def test_loader_workers_make_the_same_batches_and_resume(voice_corpus, tmp_path):
    settings = tiny_ssl_settings(tmp_path, voice_corpus)
    settings.ssl.batch_size = 2  # 8 training clips: 4 batches an epoch, so the walk crosses an epoch
    _, plain, _ = make_ssl_task(settings, Runtime())
    settings.ssl.num_workers = 2
    _, workers, _ = make_ssl_task(settings, Runtime())
    expected = [next(plain)[0] for _ in range(6)]
    for k, (batch, _) in zip(range(3), workers):
        assert torch.equal(batch.wave, expected[k].wave) and torch.equal(batch.labels, expected[k].labels)
    state = workers.state_dict()
    assert state == {"epoch": 0, "batch_in_epoch": 3}
    _, resumed, _ = make_ssl_task(settings, Runtime())
    resumed.load_state_dict(state)
    for k in range(3, 6):
        batch, _ = next(resumed)
        assert torch.equal(batch.wave, expected[k].wave) and torch.equal(batch.speakers, expected[k].speakers)


def test_speed_perturbed_chunks_keep_their_labels_on_the_sound(tmp_path):
    """A tone from 1 s to 2 s labelled 'aa': played 0.85x to 1.15x as fast, the frames labelled 'aa' are
    the frames where the tone sounds."""
    import numpy as np
    import soundfile as sf

    from kanade_stream.voices.phones import PHONE_INDEX
    from training.ssl_phase import LabelledClips, LabelledStream

    t = np.arange(48000) / 16000
    wave = np.where((t >= 1) & (t < 2), 0.5 * np.sin(2 * np.pi * 300 * t), 0.0).astype(np.float32)
    sf.write(tmp_path / "clip.wav", wave, 16000)
    (tmp_path / "clip.phones").write_text("0.0\t1.0\tsil\n1.0\t2.0\taa\n2.0\t3.0\tsil\n")
    entry = {"path": "clip.wav", "phones": "clip.phones", "speaker": "a", "split": "train"}
    clips = LabelledClips(tmp_path, [entry], chunk_samples=num_frames_to_samples(150))  # 3 s played
    for speed in (0.85, 1.0, 1.15):
        audio, labels = clips.load(0, None, speed)
        frames = audio[: 150 * 320].reshape(150, 320)
        sounding = np.abs(frames).max(axis=1) > 0.25
        labelled = labels[:150] == PHONE_INDEX["aa"]
        assert 0.8 / speed * 50 < labelled.sum() < 1.2 / speed * 50  # the tone lasts 1 / speed s
        assert (sounding == labelled).mean() > 0.95, speed
    # drawn per clip from the batch's seed: the same batch twice, and not every clip at one speed
    stream = LabelledStream(LabelledClips(tmp_path, [entry] * 4, num_frames_to_samples(100)), 4, seed=0,
                            speed_perturbation=0.15)
    a, b = stream.make_batch((0, 0)), stream.make_batch((0, 0))
    assert torch.equal(a.wave, b.wave) and torch.equal(a.labels, b.labels)
    counts = (a.labels == PHONE_INDEX["aa"]).sum(dim=1)
    assert counts.max() - counts.min() >= 3


def test_ssl_phase_continues_from_an_export(voice_corpus, tmp_path):
    from transformers import WavLMModel

    from training.ssl_phase import load_ssl_init

    first = train_ssl(tiny_ssl_settings(tmp_path / "a", voice_corpus, steps=2), Runtime(), progress=False)
    settings = tiny_ssl_settings(tmp_path / "b", voice_corpus, steps=1)
    task, _, _ = make_ssl_task(settings, Runtime())
    load_ssl_init(task, first.export)
    saved, ours = WavLMModel.from_pretrained(str(first.export)).state_dict(), task.model.state_dict()
    assert saved.keys() == ours.keys() and all(torch.equal(v, ours[k]) for k, v in saved.items())
    settings.ssl.model.num_layers += 1
    other, _, _ = make_ssl_task(settings, Runtime())
    with pytest.raises(ValueError, match="num_hidden_layers"):
        load_ssl_init(other, first.export)


def test_the_adversary_learns_with_its_own_optimizer(voice_corpus, tmp_path):
    """The adversary's parameters are outside the model's optimizer, and its own steps on detached
    features teach it the voice (sharing the model's optimizer, a 110-voice adversary never left chance)."""
    settings = tiny_ssl_settings(tmp_path, voice_corpus, steps=1000)  # a schedule that does not decay here
    settings.ssl.losses.speaker_adversarial_weight = 0.5
    task, stream, _ = make_ssl_task(settings, Runtime())
    assert set(task.optimizers) == {"ssl", "adversary"}
    model_params = {id(p) for g in task.optimizers["ssl"].param_groups for p in g["params"]}
    assert model_params == {id(p) for p in [*task.model.parameters(), *task.head.parameters()]}
    batch, _ = next(stream)
    task.net.eval()
    with torch.no_grad():
        _, labels, hidden = task.forward(batch, None, hidden=True)
        _, features = task.adversary_logits(hidden, labels.shape[1])
    before = [p.detach().clone() for p in task.model.parameters()]
    ces = [task.adversary_step(features, labels, batch.speakers) for _ in range(60)]
    assert ces[-1] < 0.6 * ces[0], ces[::10]  # from chance (ln 2) towards naming the voice
    assert all(torch.equal(a, b) for a, b in zip(before, task.model.parameters()))  # the model is untouched


def test_second_view_lines_up_with_the_first(tmp_path):
    """A tone from 1 s to 2 s labelled 'aa', heard at 0.85x and again as another voice (1.2x, pitch +3
    semitones): where the first view's labelled frames map into the second view, the second view sounds."""
    import numpy as np
    import soundfile as sf

    from kanade_stream.voices.phones import PHONE_INDEX
    from training.ssl_phase import LabelledClips, aligned_positions

    t = np.arange(48000) / 16000
    wave = np.where((t >= 1) & (t < 2), 0.5 * np.sin(2 * np.pi * 300 * t), 0.0).astype(np.float32)
    sf.write(tmp_path / "clip.wav", wave, 16000)
    (tmp_path / "clip.phones").write_text("0.0\t1.0\tsil\n1.0\t2.0\taa\n2.0\t3.0\tsil\n")
    entry = {"path": "clip.wav", "phones": "clip.phones", "speaker": "a", "split": "train"}
    clips = LabelledClips(tmp_path, [entry], chunk_samples=num_frames_to_samples(150))
    for speed, view_speed in ((0.85, 1.2), (1.2, 0.85)):
        audio, labels, view, ratio = clips.load_views(0, None, speed, (view_speed, 3.0))
        assert view.shape == audio.shape and ratio == pytest.approx(speed / view_speed, abs=0.01)
        sounding = np.abs(view[: 150 * 320].reshape(150, 320)).max(axis=1) > 0.2
        position, inside = aligned_positions(torch.tensor([ratio]), 150, 150)
        index = position[0].round().long().clamp(0, 149).numpy()
        labelled = labels[:150] == PHONE_INDEX["aa"]
        inside = inside[0].numpy()
        assert labelled[inside].sum() > 30
        assert (sounding[index][inside] == labelled[inside]).mean() > 0.95, (speed, view_speed)
        # the pitch moved: the tone's strongest frequency is 300 Hz x view_speed x 2^(3/12)
        first = int(np.flatnonzero(sounding)[0]) * 320
        spectrum = np.abs(np.fft.rfft(view[first + 1600:first + 9600]))
        assert np.fft.rfftfreq(8000, 1 / 16000)[spectrum.argmax()] == pytest.approx(
            300 * view_speed * 2 ** 0.25, rel=0.04)


def test_interpolate_frames_reads_between_frames():
    from training.ssl_phase import interpolate_frames

    features = torch.arange(10, dtype=torch.float32).reshape(1, 10, 1).repeat(1, 1, 3)
    out = interpolate_frames(features, torch.tensor([[0.0, 2.5, 8.75, 12.0]]))
    assert torch.allclose(out[0, :, 0], torch.tensor([0.0, 2.5, 8.75, 9.0]))


def test_consistency_loss_trains_the_content_layers_to_match_across_voices(voice_corpus, tmp_path):
    """With the consistency loss on, batches carry a second view; the loss is lowest when the second view is
    the first itself, sends a gradient into the model, and falls as the model trains on a batch."""
    torch.manual_seed(0)
    settings = tiny_ssl_settings(tmp_path / "run", voice_corpus, steps=1000)
    settings.ssl.losses.consistency_weight = 1.0
    settings.ssl.losses.consistency_layers = (3, 6)
    task, stream, _ = make_ssl_task(settings, Runtime())
    batch, _ = next(stream)
    assert batch.view.shape == batch.wave.shape and not torch.equal(batch.view, batch.wave)
    assert ((batch.view_ratio > 0.5) & (batch.view_ratio < 2)).all()
    task.net.eval()
    _, labels, hidden = task.forward(batch, None, hidden=True)
    other, _ = task.consistency_loss(hidden, batch, labels)
    from dataclasses import replace

    itself = replace(batch, view=batch.wave, view_ratio=torch.ones(len(batch.wave)))
    same, hits = task.consistency_loss(hidden, itself, labels)
    assert same < other and hits == 1.0
    weight = task.model.encoder.layers[0].feed_forward.output_dense.weight
    (grad,) = torch.autograd.grad(other, [weight])
    assert grad.abs().sum() > 0
    task.net.train()
    metrics = [task.train_step(batch, i) for i in range(12)]
    assert all(math.isfinite(m["ce_view"]) for m in metrics)
    assert sum(m["ce_view"] for m in metrics[-3:]) < sum(m["ce_view"] for m in metrics[:3])
    settings.ssl.losses.consistency_layers = (12,)
    from training.settings import check_settings

    with pytest.raises(SettingsError, match="consistency_layers in 1..9"):
        check_settings(settings)


def test_noise_is_added_at_the_asked_snr(tmp_path):
    """With noise_snr_db the chunks (and their second views, with noise of their own) carry white noise at an
    SNR in the range, the same for the same batch; without it they are as read; a bad range is refused."""
    import numpy as np
    import soundfile as sf

    from training.settings import check_settings
    from training.ssl_phase import LabelledClips, LabelledStream

    t = np.arange(32000) / 16000
    sf.write(tmp_path / "clip.wav", (0.5 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), 16000)
    (tmp_path / "clip.phones").write_text("0.0\t2.0\taa\n")
    entry = {"path": "clip.wav", "phones": "clip.phones", "speaker": "a", "split": "train"}
    clips = LabelledClips(tmp_path, [entry] * 4, num_frames_to_samples(90))

    def snr(batch_wave, clean):
        out = []
        for row in batch_wave.numpy():
            gain = float(row @ clean / (clean @ clean))  # the random gain, undone
            noise = row / gain - clean
            out.append(10 * np.log10(np.mean(clean ** 2) / np.mean(noise ** 2)))
        return np.array(out)

    clean = clips.load(0, None)[0]
    stream = LabelledStream(clips, 4, seed=0, noise_snr_db=(20, 30), view=(0.0, 0.0))
    a, b = stream.make_batch((0, 0)), stream.make_batch((0, 0))
    assert torch.equal(a.wave, b.wave) and torch.equal(a.view, b.view)
    levels = snr(a.wave, clean)
    assert ((levels > 19.5) & (levels < 30.5)).all() and levels.std() > 0.3, levels
    assert not torch.allclose(a.wave / a.wave.norm(dim=1, keepdim=True), a.view / a.view.norm(dim=1, keepdim=True))
    quiet = LabelledStream(clips, 4, seed=0).make_batch((0, 0))
    assert snr(quiet.wave, clean).min() > 100
    settings = load_settings("tiny")
    settings.ssl.noise_snr_db = (30, 20)
    with pytest.raises(SettingsError, match="noise_snr_db"):
        check_settings(settings)


def test_phase1_phone_loss_trains_on_the_voices_corpus_and_stays_out_of_the_release(voice_corpus, tmp_path):
    """Phase 1 with the phone loss reads the voices corpus's alignments: the tokens' phone head learns (held-out
    cross-entropy falls), the head is checkpointed for --resume, and the release is the teacher alone."""
    from tests.test_training import fit, tiny_settings
    from training.checkpoint import read_checkpoint

    settings = tiny_settings(tmp_path / "run", voice_corpus / "manifest.jsonl", steps=12)
    settings.phase1.losses.phone_weight = 1.0
    settings.phase1.optim.lr = 3e-3
    result = fit(settings)["phase1"]
    assert result.completed
    assert result.val["phone_ce"] < 0.92 * result.first_val["phone_ce"], (result.first_val, result.val)
    assert 0 <= result.val["phone_accuracy"] <= 1
    state = read_checkpoint(tmp_path / "run" / "phase1" / "checkpoints" / "last.pt")
    assert set(state["models"]) == {"teacher", "phone_head"}
    export = tmp_path / "run" / "export"
    teacher = KanadeTeacher.from_pretrained(export, ssl_model=(export / "ssl_model.txt").read_text().strip())
    assert not any("phone" in name for name in teacher.state_dict())


def test_another_microphone_moves_the_bass_and_treble_it_draws_and_keeps_the_level(tmp_path):
    """perturb.equalise: a bass shelf moves a 100 Hz tone against a 3 kHz one by about its gain, a treble shelf
    the other way, the RMS stays and a boost never clips. With ssl.equaliser_db every chunk and its second view
    are heard through microphones of their own, the same for the same batch; the labels do not move."""
    import numpy as np
    import soundfile as sf

    from kanade_stream.voices.perturb import equalise
    from training.settings import check_settings
    from training.ssl_phase import LabelledClips, LabelledStream

    t = torch.arange(16000) / 16000
    x = 0.45 * torch.sin(2 * math.pi * 100 * t) + 0.45 * torch.sin(2 * math.pi * 3000 * t)

    def tilt(y):  # dB of the 100 Hz tone over the 3 kHz one (each tone's amplitude, Hann-windowed)
        y = torch.as_tensor(y).double() * torch.hann_window(len(y), dtype=torch.float64)
        time = torch.arange(len(y), dtype=torch.float64) / 16000
        at = lambda hz: abs(complex((y * torch.exp(-2j * math.pi * hz * time)).sum()))  # noqa: E731
        return 20 * math.log10(at(100) / at(3000))

    assert abs(tilt(equalise(x, 16000, bass_db=-12.0, bass_hz=300.0)) + 12) < 3  # shelves are not brick walls
    assert abs(tilt(equalise(x, 16000, treble_db=9.0, treble_hz=1000.0)) + 9) < 3
    boosted = equalise(x, 16000, bass_db=12.0, bass_hz=300.0)
    assert boosted.abs().max() <= 1.0 and equalise(x, 16000) is x
    assert abs(float(equalise(x, 16000, bass_db=-6.0).pow(2).mean() / x.pow(2).mean()) - 1) < 1e-3

    sf.write(tmp_path / "clip.wav", x.numpy().astype(np.float32), 16000)
    (tmp_path / "clip.phones").write_text("0.0\t1.0\taa\n")
    entry = {"path": "clip.wav", "phones": "clip.phones", "speaker": "a", "split": "train"}
    clips = LabelledClips(tmp_path, [entry] * 4, num_frames_to_samples(40))
    plain = LabelledStream(clips, 4, seed=0, view=(0.0, 0.0)).make_batch((0, 0))
    stream = LabelledStream(clips, 4, seed=0, view=(0.0, 0.0), equaliser_db=12.0)
    a, b = stream.make_batch((0, 0)), stream.make_batch((0, 0))
    assert torch.equal(a.wave, b.wave) and torch.equal(a.view, b.view) and torch.equal(a.labels, plain.labels)
    tilts, views = [tilt(row) for row in a.wave], [tilt(row) for row in a.view]
    assert max(tilts) - min(tilts) > 3 and max(abs(p - q) for p, q in zip(tilts, views)) > 1  # microphones differ
    assert all(abs(tilt(row)) < 0.5 for row in plain.wave)  # without it: as synthesised
    settings = load_settings("ssl_full")
    settings.ssl.equaliser_db = 30
    with pytest.raises(SettingsError, match="equaliser_db must be in"):
        check_settings(settings)


def test_a_tilted_microphone_moves_bass_and_treble_apart_together(tmp_path):
    """perturb.random_microphone with tilt_db: one more draw moves the bass up and the treble down by the same
    amount (or the reverse); without it the microphone and the draws it takes are as before. The SSL phase's
    --tilt reaches its chunks (darker and brighter ones than the shelves alone give) and is range-checked."""
    import numpy as np
    import soundfile as sf

    from kanade_stream.voices.perturb import random_microphone
    from training import run as run_mod
    from training.settings import check_settings
    from training.ssl_phase import LabelledClips, LabelledStream

    draws = [0.5, 0.5, 0.0, 1.0]
    assert random_microphone(12.0, draws) == (0.0, 0.0, 100.0, 4000.0)
    assert random_microphone(12.0, draws + [0.9], tilt_db=0.0) == random_microphone(12.0, draws)
    bass, treble, _, _ = random_microphone(12.0, draws + [1.0], tilt_db=9.0)
    assert bass == pytest.approx(9.0) and treble == pytest.approx(-9.0)  # darker at both ends at once
    bass, treble, _, _ = random_microphone(12.0, [1.0, 0.0, 0.5, 0.5, 0.0], tilt_db=9.0)
    assert bass == pytest.approx(12.0 - 9.0) and treble == pytest.approx(-12.0 + 9.0)

    t = torch.arange(16000) / 16000
    x = 0.45 * torch.sin(2 * math.pi * 100 * t) + 0.45 * torch.sin(2 * math.pi * 3000 * t)
    sf.write(tmp_path / "clip.wav", x.numpy().astype(np.float32), 16000)
    (tmp_path / "clip.phones").write_text("0.0\t1.0\taa\n")
    entry = {"path": "clip.wav", "phones": "clip.phones", "speaker": "a", "split": "train"}
    clips = LabelledClips(tmp_path, [entry] * 16, num_frames_to_samples(40))

    def spread_of_tilts(stream):  # dB of the 100 Hz tone over the 3 kHz one, over the first batches' chunks
        values = []
        for index in range(4):
            for row in stream.make_batch((0, index)).wave:
                y = row.double() * torch.hann_window(len(row), dtype=torch.float64)
                time = torch.arange(len(y), dtype=torch.float64) / 16000
                at = lambda hz: abs(complex((y * torch.exp(-2j * math.pi * hz * time)).sum()))  # noqa: E731
                values.append(20 * math.log10(at(100) / at(3000)))
        return float(np.std(values))

    untilted = LabelledStream(clips, 4, seed=0, equaliser_db=3.0)
    tilted = LabelledStream(clips, 4, seed=0, equaliser_db=3.0, tilt_db=9.0)
    assert spread_of_tilts(tilted) > 2 * spread_of_tilts(untilted)

    args = run_mod.parse_args(["--phase", "ssl", "--equaliser", "12", "--tilt", "9"])
    settings = run_mod.apply_overrides(load_settings("ssl_full"), args, ["ssl"])
    assert settings.ssl.tilt_db == 9 and settings.ssl.equaliser_db == 12
    check_settings(settings)
    settings.ssl.tilt_db = 20
    with pytest.raises(SettingsError, match="tilt_db must be in"):
        check_settings(settings)
    settings.ssl.tilt_db, settings.ssl.equaliser_db = 9, 0
    with pytest.raises(SettingsError, match="needs ssl.equaliser_db"):
        check_settings(settings)
