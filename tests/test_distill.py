"""Distillation: every stage learns, tokens move towards the teacher's, students save and resume exactly."""

import json

import pytest
import torch

import dataclasses

from distill.models import student_config
from distill.pipeline import distill_student as run
from distill.settings import ALL_STAGES, STAGES, DistillSettings
from kanade_stream.corpus import build_corpus
from kanade_stream.streaming import load_student
from training.checkpoint import ResumeError
from training.runtime import Runtime
from training.settings import DataSettings, OptimSettings

from .conftest import REFERENCE


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("corpus"), n_speakers=4, utterances_per_speaker=3, held_out_speakers=2)


def settings_for(corpus, out, steps=6, **stage_overrides) -> DistillSettings:
    base = DistillSettings(
        out=str(out), teacher=str(REFERENCE), student={"preset": "tiny"}, eval_clips=2,
        data=DataSettings(path=str(corpus.out_dir), chunk_seconds=0.96, batch_size=2, num_workers=0, val_clips=2,
                          val_batch_size=2, heldout_speakers=2),
    )
    for name in ALL_STAGES:  # each stage's own settings class, with its default losses
        setattr(base, name, dataclasses.replace(
            base.phase(name), steps=steps, optim=OptimSettings(lr=3e-3, warmup=0.0), log_every=1, val_every=steps,
            ckpt_every=steps, keep_checkpoints=5))
    for name, value in stage_overrides.items():
        setattr(base, name, value)
    return base


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_lowers_its_loss(corpus, tmp_path, stage):
    settings = settings_for(corpus, tmp_path, steps=8)
    outcome = run(settings, [stage], Runtime(), progress=False)
    result = outcome["results"][stage]
    assert result.completed
    assert result.val["loss"] < result.first_val["loss"]


def test_content_stage_moves_tokens_towards_the_teacher(corpus, tmp_path):
    settings = settings_for(corpus, tmp_path, steps=60)
    result = run(settings, ["content"], Runtime(), progress=False)["results"]["content"]
    # at initialisation the student's FSQ values agree with the teacher's by chance (~1/8 to 1/5 per level);
    # whole-token agreement needs all five levels and longer training (see the default run's report)
    before, after = result.first_val["level_agreement"], result.val["level_agreement"]
    assert after > before + 0.08
    assert result.val["latent_mse"] < 0.5 * result.first_val["latent_mse"]


def test_saved_student_gives_identical_tokens(corpus, tmp_path):
    from kanade_stream import KanadeTeacher
    from kanade_stream.streaming import KanadeStudent

    teacher = KanadeTeacher.from_pretrained(REFERENCE)
    student = KanadeStudent(student_config(settings_for(corpus, tmp_path), teacher))
    student.save(tmp_path / "student")
    loaded = load_student(tmp_path / "student")
    wave = torch.randn(16000) * 0.1
    assert torch.equal(student.encode(wave).content_token_indices, loaded.encode(wave).content_token_indices)


def test_resume_continues_exactly(corpus, tmp_path):
    def settings(folder):  # the step's random draws too: which tokens the decoder hears, each chunk's microphone
        s = settings_for(corpus, tmp_path / folder, steps=4)
        s.equaliser_db, s.decoder.losses.student_token_prob = 12.0, 0.5
        return s

    straight = run(settings("a"), ["decoder"], Runtime(), progress=False)
    run(settings("b"), ["decoder"], Runtime(), progress=False, stop_after=2)
    resumed = run(settings("b"), ["decoder"], Runtime(), resume=True, progress=False)
    a = straight["results"]["decoder"].models["student"].state_dict()
    b = resumed["results"]["decoder"].models["student"].state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # starting over in a folder that holds checkpoints needs --overwrite; nothing is deleted without it
    with pytest.raises(ResumeError, match=r"decoder already holds a training run \(checkpoints .*--overwrite"):
        run(settings_for(corpus, tmp_path / "b", steps=4), ["decoder"], Runtime(), progress=False)
    assert (tmp_path / "b" / "decoder" / "checkpoints" / "last.pt").is_file()


def test_full_run_writes_student_and_report(corpus, tmp_path):
    settings = settings_for(corpus, tmp_path, steps=2)
    outcome = run(settings, list(STAGES), Runtime(), progress=False)
    report = outcome["report"]
    assert (tmp_path / "export" / "model.safetensors").is_file()
    assert (tmp_path / "eval" / "report.md").is_file() and (tmp_path / "eval" / "report.json").is_file()
    assert report["streaming_equals_offline"] is True
    assert 0 <= report["token_agreement"] <= 1 and len(report["level_agreement"]) == 5
    assert "vc_content_token_agreement" in report


def test_init_continues_a_student_through_selected_stages(corpus, tmp_path):
    """--init: the first selected stage starts from a given student (its sizes, not the recipe's), a stage
    not run keeps the weights it had, and the next selected stage starts from the one before it."""
    first = run(settings_for(corpus, tmp_path / "first", steps=2), list(STAGES), Runtime(), progress=False)
    assert first["completed"]
    start = load_student(tmp_path / "first" / "export")
    settings = settings_for(corpus, tmp_path / "more", steps=3)
    settings.student = {"preset": "tiny", "ssl_dim": 32}  # ignored: the student comes from --init
    outcome = run(settings, ["ssl", "joint"], Runtime(), progress=False, init=tmp_path / "first" / "export")
    assert outcome["completed"] and set(outcome["results"]) == {"ssl", "joint"}
    final = load_student(tmp_path / "more" / "export")
    assert final.config == start.config
    for name, value in start.vocoder.state_dict().items():  # trained by `first`, in neither stage here
        assert torch.equal(final.vocoder.state_dict()[name], value), name
    # joint went on from ssl's result: its first validation reads the same features ssl's last one did
    ssl, joint = outcome["results"]["ssl"], outcome["results"]["joint"]
    assert joint.first_val["feature_mse"] == pytest.approx(ssl.val["feature_mse"], rel=1e-5)
    assert ssl.first_val["feature_mse"] != pytest.approx(ssl.val["feature_mse"], rel=1e-5)
    assert (tmp_path / "more" / "eval" / "report.json").is_file()


def test_added_layers_deepen_an_init_student_from_where_it_was(corpus, tmp_path):
    """--add-ssl-layers / --add-content-layers: the new layers start as the identity (the deeper student's
    first validation is the shallower one's), then learn; the saved student is deeper and streams as it
    computes offline."""
    from distill.models import DistillError, deepen

    assert run(settings_for(corpus, tmp_path / "first", steps=2), list(STAGES), Runtime(), progress=False)["completed"]
    start = load_student(tmp_path / "first" / "export")
    deeper = deepen(start, {"ssl": 2, "content": 1})
    wave = torch.randn(1, 16000)
    assert all(torch.equal(a, b) for a, b in zip(start.ssl_features(wave), deeper.ssl_features(wave)))
    features = start.ssl_features(wave)[0]
    assert torch.equal(start.content_latent(features), deeper.content_latent(features))
    assert deeper.config.content_layers == start.config.content_layers + 1
    same = run(settings_for(corpus, tmp_path / "same", steps=3), ["ssl"], Runtime(), progress=False,
               init=tmp_path / "first" / "export")["results"]["ssl"]
    grown = run(settings_for(corpus, tmp_path / "grown", steps=3), ["ssl", "joint"], Runtime(), progress=False,
                init=tmp_path / "first" / "export", add_layers={"ssl": 2})["results"]["ssl"]
    assert grown.first_val["feature_mse"] == pytest.approx(same.first_val["feature_mse"], rel=1e-6)
    assert grown.val["feature_mse"] < grown.first_val["feature_mse"]
    final = load_student(tmp_path / "grown" / "export")
    assert final.config.ssl_layers == start.config.ssl_layers + 2
    assert final.ssl_upper.layers[-1].attention.wo.weight.abs().sum() > 0  # the new layers trained
    report = json.loads((tmp_path / "grown" / "eval" / "report.json").read_text())
    assert report["streaming_equals_offline"]
    with pytest.raises(DistillError, match="deepen the student given by --init"):
        run(settings_for(corpus, tmp_path / "none", steps=1), ["ssl"], Runtime(), progress=False,
            add_layers={"ssl": 2})
    with pytest.raises(DistillError, match="layers can only be added"):
        run(settings_for(corpus, tmp_path / "none", steps=1), ["ssl"], Runtime(), progress=False,
            init=tmp_path / "first" / "export", add_layers={"content": -1})


def test_init_refuses_a_student_of_another_teacher(corpus, tmp_path):
    from distill.models import DistillError
    from kanade_stream.streaming import KanadeStudent, StudentConfig

    folder = tmp_path / "other"
    KanadeStudent(StudentConfig.tiny()).save(folder)  # its feature sizes are not the reference teacher's
    with pytest.raises(DistillError, match=r"--init .* was not distilled from a teacher like this one: "
                                           r"content_feature_dim"):
        run(settings_for(corpus, tmp_path / "run", steps=1), ["ssl"], Runtime(), progress=False, init=folder)
    with pytest.raises(DistillError, match="--init: .* is not a student folder"):
        run(settings_for(corpus, tmp_path / "run2", steps=1), ["ssl"], Runtime(), progress=False,
            init=tmp_path / "missing")


def tiny_official_12hz_teacher(folder):
    """The tiny official-format model at 12.5 Hz (4 SSL frames a token, 8 mel-rate steps a token), random
    weights: no tiny official 12.5 Hz model exists, and the recipe test needs one."""
    from kanade_stream.config import KanadeConfig
    from kanade_stream.ssl import SSLFeatureExtractor
    from kanade_stream.teacher import KanadeTeacher

    text = (REFERENCE / "config.yaml").read_text()
    text = text.replace("downsample_factor: 2", "downsample_factor: 4").replace("mel_upsample_factor: 4",
                                                                                 "mel_upsample_factor: 8")
    (folder / "config.yaml").parent.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(text)
    config = KanadeConfig.from_yaml(folder / "config.yaml")
    torch.manual_seed(0)
    teacher = KanadeTeacher(config, SSLFeatureExtractor.from_pretrained(REFERENCE / "wavlm", config.ssl_output_layer))
    teacher.save_pretrained(folder)
    (folder / "ssl_model.txt").write_text(str(REFERENCE / "wavlm"))
    return folder


@pytest.mark.parametrize("recipe", ["kanade_25hz", "kanade_12hz"])
def test_real_scale_recipes_run_every_stage(recipe, corpus, tmp_path):
    """The official-teacher recipes, as written (losses, optimisers, stage order, student overrides), for two
    steps of every stage on the tiny official-format model; only sizes, data and the unreachable official
    Vocos are swapped for tiny local ones."""
    from distill.settings import load_settings
    from training.data import DataError

    settings = load_settings(recipe)
    assert settings.data.require_path and settings.teacher.startswith("frothywater/kanade-")
    with pytest.raises(DataError, match="has no data: give --data"):
        run(settings, ["ssl"], Runtime(), progress=False)  # no silent fall-back on the embedded corpus
    teacher = REFERENCE if recipe == "kanade_25hz" else tiny_official_12hz_teacher(tmp_path / "teacher")
    settings.out, settings.teacher, settings.teacher_vocoder = str(tmp_path / "run"), str(teacher), None
    settings.eval_clips = 2
    settings.student = {**settings.student, "preset": "tiny"}
    settings.data = dataclasses.replace(settings.data, path=str(corpus.out_dir), chunk_seconds=0.96, batch_size=2,
                                        num_workers=0, val_clips=2, val_batch_size=2)
    for name in STAGES:
        setattr(settings, name, dataclasses.replace(settings.phase(name), steps=2, batch_size=None, chunk_seconds=None,
                                                    log_every=1, val_every=2, ckpt_every=2))
    outcome = run(settings, list(STAGES), Runtime(), progress=False)
    assert outcome["completed"] and outcome["report"]["streaming_equals_offline"] is True
    student = load_student(tmp_path / "run" / "export")
    rate = 25.0 if recipe == "kanade_25hz" else 12.5
    assert student.config.token_rate == rate
    features = student.encode(torch.randn(48000) * 0.1, sample_rate=24000)
    assert abs(len(features.content_token_indices) - 2 * rate) <= 1  # 2 s of audio


def test_training_chunks_can_be_heard_through_other_microphones(corpus, tmp_path):
    from distill import run as run_mod
    from distill.settings import check_settings
    from distill.tasks import heard_through_microphones
    from training.settings import SettingsError

    t = torch.arange(24000) / 24000
    batch = torch.stack([0.3 * torch.sin(2 * torch.pi * 150 * t) + 0.1 * torch.sin(2 * torch.pi * 5000 * t)] * 3)
    heard = heard_through_microphones(batch, 24000, 12.0, torch.Generator().manual_seed(0))
    again = heard_through_microphones(batch, 24000, 12.0, torch.Generator().manual_seed(0))
    assert torch.equal(heard, again) and not torch.allclose(heard[0], heard[1], atol=1e-3)  # seeded, one per chunk
    rms = lambda x: x.pow(2).mean(-1).sqrt()  # noqa: E731
    assert torch.allclose(rms(heard), rms(batch), rtol=0.02) and heard.abs().max() <= 1.0
    assert heard_through_microphones(batch, 24000, 0.0, None) is batch
    settings = settings_for(corpus, tmp_path, steps=6)
    args = run_mod.parse_args(["--equaliser", "12"])
    settings = run_mod.apply_overrides(settings, args, ["ssl"])
    assert settings.equaliser_db == 12
    result = run(settings, ["ssl"], Runtime(), progress=False)["results"]["ssl"]
    assert result.completed and result.val["loss"] < result.first_val["loss"]
    settings.equaliser_db = 30
    with pytest.raises(SettingsError, match="equaliser_db must be in"):
        check_settings(settings)


def test_distillation_microphones_can_tilt():
    from distill import run as run_mod
    from distill.settings import DistillSettings, check_settings
    from distill.tasks import heard_through_microphones
    from training.settings import SettingsError

    t = torch.arange(6000) / 24000
    batch = torch.stack([0.3 * torch.sin(2 * torch.pi * 150 * t) + 0.1 * torch.sin(2 * torch.pi * 5000 * t)] * 48)

    def bass_over_treble_db(heard):  # the tone at 150 Hz against the one at 5 kHz, per chunk
        spectrum = torch.fft.rfft(heard).abs()
        return 20 * torch.log10(spectrum[:, 150 * 6000 // 24000] / spectrum[:, 5000 * 6000 // 24000])

    plain = heard_through_microphones(batch, 24000, 6.0, torch.Generator().manual_seed(0))
    tilted = heard_through_microphones(batch, 24000, 6.0, torch.Generator().manual_seed(0), tilt_db=9.0)
    again = heard_through_microphones(batch, 24000, 6.0, torch.Generator().manual_seed(0), tilt_db=9.0)
    assert torch.equal(tilted, again)
    # one draw moves both ends in opposite directions: the bass-treble balance spreads much wider
    assert bass_over_treble_db(tilted).std() > 1.5 * bass_over_treble_db(plain).std()
    assert bass_over_treble_db(tilted).abs().max() > 14  # beyond what +-6 dB shelves alone reach often
    settings = run_mod.apply_overrides(DistillSettings(), run_mod.parse_args(["--equaliser", "12", "--tilt", "9"]),
                                       ["ssl"])
    assert (settings.equaliser_db, settings.tilt_db) == (12, 9)
    with pytest.raises(SettingsError, match="needs equaliser_db"):
        check_settings(run_mod.apply_overrides(DistillSettings(), run_mod.parse_args(["--tilt", "9"]), ["ssl"]))
    settings.tilt_db = 13
    with pytest.raises(SettingsError, match=r"tilt_db must be in \[0, 12\]"):
        check_settings(settings)


def test_precision_flag_reaches_the_settings_and_a_bf16_stage_learns(corpus, tmp_path):
    from distill import run as run_mod

    settings = settings_for(corpus, tmp_path, steps=6)
    settings = run_mod.apply_overrides(settings, run_mod.parse_args(["--precision", "bf16"]), ["ssl"])
    assert settings.precision == "bf16"
    result = run(settings, ["ssl"], Runtime(precision="bf16"), progress=False)["results"]["ssl"]
    assert result.completed and result.val["loss"] < result.first_val["loss"]
