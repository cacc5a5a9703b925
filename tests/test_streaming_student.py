"""The student model: configuration, sizes, offline forms, the teacher's codebook, saving and loading."""

import json

import pytest
import torch

from kanade_stream.modules.fsq import FiniteScalarQuantizer
from kanade_stream.streaming import KanadeStudent, StudentConfig, StudentLoadError, load_student
from kanade_stream.streaming.testing import assert_close

from .conftest import one_thread


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread(), torch.inference_mode():
        yield


def test_rates_and_presets():
    config = StudentConfig()
    assert config.ssl_hop == 320 and config.token_hop == 640 and config.token_rate == 25
    assert config.token_samples == 960 and config.latent_rate == 100 and config.mel_rate == 93.75
    for preset in (StudentConfig.tiny(), StudentConfig.default(), StudentConfig.large()):
        preset.validate()
    with pytest.raises(ValueError, match="heads"):
        StudentConfig(ssl_dim=30, ssl_heads=4).validate()
    with pytest.raises(ValueError, match="n_fft"):
        StudentConfig(n_fft=300).validate()


def test_default_size():
    # sized for real time on a 2-core CPU (benchmarks/streaming_table.py)
    assert 15e6 < KanadeStudent(StudentConfig()).num_parameters() < 25e6


def test_feature_dims_are_configurable(student):
    config = StudentConfig.tiny()
    config.content_feature_dim, config.global_feature_dim = 20, 24
    model = KanadeStudent(config).eval()
    content, global_features = model.ssl_features(torch.randn(2, 16000))
    assert content.shape == (2, 50, 20) and global_features.shape == (2, 50, 24)
    latent = model.content_latent(content)
    assert latent.shape == (2, 25, config.content_dim)
    assert model.global_from_features(global_features).shape == (2, config.global_dim)


def test_offline_shapes(student):
    wave = torch.randn(16000) * 0.1
    features = student.encode(wave, 16000)
    assert features.content_token_indices.shape == (25,)  # 1 s at 25 Hz
    assert features.content_token_indices.dtype == torch.long
    assert features.content_embedding.shape == (25, student.config.token_dim)
    assert features.global_embedding.shape == (student.config.global_dim,)
    audio = student.decode(features.global_embedding, features.content_token_indices)
    assert audio.shape == (25 * 960,)
    mel = student.decode_mel(features.content_embedding[None], features.global_embedding[None])
    assert mel.shape[:2] == (1, 100)
    assert student.convert(wave, wave, sample_rate=16000).shape == (24000,)


def test_same_codebook_as_teacher(student):
    teacher_fsq = FiniteScalarQuantizer(16, 16, [8, 8, 8, 5, 5])
    assert student.quantizer.codebook_size == teacher_fsq.codebook_size == 12800
    indices = torch.arange(12800)
    assert torch.equal(student.quantizer.indices_to_codes(indices), teacher_fsq.indices_to_codes(indices))
    assert torch.equal(student.quantizer.codes_to_indices(student.quantizer.indices_to_codes(indices)), indices)


def test_save_and_load(student, tmp_path):
    student.save(tmp_path / "s")
    loaded = load_student(tmp_path / "s")
    assert loaded.config == student.config
    wave = torch.randn(8000) * 0.1
    assert torch.equal(loaded.encode(wave, 16000).content_token_indices, student.encode(wave, 16000).content_token_indices)
    assert_close(loaded.convert(wave, wave, sample_rate=16000), student.convert(wave, wave, sample_rate=16000))
    assert KanadeStudent.from_pretrained(tmp_path / "s").config == student.config
    # float16 storage (the shipped students'): half the bytes, loaded back as float32 equal to the rounded weights
    student.save(tmp_path / "half", dtype=torch.float16)
    half = load_student(tmp_path / "half")
    size = lambda name: (tmp_path / name / "model.safetensors").stat().st_size  # noqa: E731
    assert size("half") < 0.55 * size("s")
    for name, value in half.state_dict().items():
        assert value.dtype == student.state_dict()[name].dtype
        assert torch.equal(value, student.state_dict()[name].half().to(value.dtype)), name


def test_load_errors(student, tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_student(tmp_path)
    folder = student.save(tmp_path / "s")
    data = json.loads((folder / "config.json").read_text())
    data["config"]["colour"] = "blue"
    (folder / "config.json").write_text(json.dumps(data))
    with pytest.raises(StudentLoadError, match="colour"):
        load_student(folder)
    # weights of another size: every mismatch is listed
    other = KanadeStudent(StudentConfig.tiny())
    other.config.ssl_dim = 32
    wide = KanadeStudent(other.config)
    wide.save(tmp_path / "wide")
    data["config"].pop("colour")
    (tmp_path / "wide" / "config.json").write_text(json.dumps(data))
    with pytest.raises(StudentLoadError, match=r"shape mismatch \(\d+\): .*frontend.proj.weight"):
        load_student(tmp_path / "wide")
    # missing and unexpected parameters are listed too
    from safetensors.torch import load_file, save_file
    weights = load_file(str(tmp_path / "s" / "model.safetensors"))
    weights["extra.weight"] = weights.pop("content_head.weight")
    save_file(weights, str(tmp_path / "s" / "model.safetensors"))
    (tmp_path / "s" / "config.json").write_text(json.dumps(data))
    with pytest.raises(StudentLoadError, match=r"missing \(1\): content_head.weight[\s\S]*unexpected \(1\): extra.weight"):
        load_student(tmp_path / "s")


def test_encoder_is_causal(student):
    # changing the future never changes tokens already final
    wave = torch.randn(16000) * 0.1
    tokens = student.encode(wave[:8000], 16000).content_token_indices
    changed = wave.clone()
    changed[8000:] = torch.randn(8000)
    assert torch.equal(student.encode(changed, 16000).content_token_indices[: tokens.numel() - 1], tokens[:-1])


def test_default_input_rate_is_the_teachers(student):
    # encode / convert without a rate read 24 kHz, as the teacher (and the official API) do
    wave24 = torch.randn(24000) * 0.1
    assert student.sample_rate == 24000
    assert torch.equal(student.encode(wave24).content_token_indices,
                       student.encode(wave24, 24000).content_token_indices)
    assert torch.equal(student.convert(wave24, wave24), student.convert(wave24, wave24, sample_rate=24000))
