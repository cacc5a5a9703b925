"""Bad audio and bad checkpoints are refused with messages that say what is wrong and how to fix it."""

import re

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file, save_file

from kanade_stream import AudioError, CheckpointError, KanadeConfig, KanadeTeacher, load_audio
from kanade_stream.checkpoint import check_state_dict
from kanade_stream.config import ConfigError

from .conftest import OFFICIAL_CONFIGS, REFERENCE


@pytest.mark.parametrize(
    "audio, message",
    [
        (torch.zeros(0), "empty"),
        (torch.tensor([0.1, float("nan")] * 5000), "NaN or infinite"),
        (torch.tensor([0.1, float("inf")] * 5000), "NaN or infinite"),
        (np.zeros((2, 24000), dtype=np.float32), "2 channels.*mix"),
        (np.zeros(24000, dtype=np.int16), "dtype.*32768"),
        (torch.zeros(2, 3, 4), "must be 1-D"),
        ([0.0] * 100, "numpy array or torch tensor"),
        (torch.zeros(200), "too short"),
    ],
)
def test_encode_refuses_bad_audio(reference_teacher, audio, message):
    with pytest.raises(AudioError, match=message):
        reference_teacher.encode(audio)


def test_unsupported_sample_rates(reference_teacher):
    with pytest.raises(AudioError, match="unsupported sample rate 4000"):
        reference_teacher.encode(torch.zeros(8000), sample_rate=4000)
    with pytest.raises(AudioError, match="integer number of Hz"):
        reference_teacher.encode(torch.zeros(8000), sample_rate=22050.5)


def test_load_audio_mixes_down_only_when_asked(tmp_path):
    stereo = np.stack([np.full(4800, 0.5), np.full(4800, -0.25)], axis=1).astype(np.float32)
    sf.write(tmp_path / "stereo.wav", stereo, 48000)
    with pytest.raises(AudioError, match="2 channels"):
        load_audio(tmp_path / "stereo.wav")
    left, rate = load_audio(tmp_path / "stereo.wav", mix="left")
    assert rate == 48000 and np.allclose(left.numpy(), 0.5)
    mean, rate = load_audio(tmp_path / "stereo.wav", sample_rate=24000, mix="mean")
    assert rate == 24000 and mean.numel() == 2400
    assert abs(float(mean[200:-200].mean()) - 0.125) < 1e-3


def test_load_audio_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_audio(tmp_path / "missing.wav")
    (tmp_path / "junk.wav").write_bytes(b"not audio at all")
    with pytest.raises(AudioError, match="cannot read"):
        load_audio(tmp_path / "junk.wav")
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 24000)  # a valid WAV with no samples
    with pytest.raises(AudioError, match=r"empty.wav is empty \(0 samples\)"):
        load_audio(tmp_path / "empty.wav")


def _release_copy(tmp_path, mutate):
    folder = tmp_path / "release"
    folder.mkdir()
    (folder / "config.yaml").write_text((REFERENCE / "config.yaml").read_text())
    weights = load_file(REFERENCE / "model.safetensors")
    mutate(weights)
    save_file(weights, folder / "model.safetensors")
    return folder


def test_checkpoint_with_missing_unexpected_and_misshaped_parameters_is_refused(tmp_path):
    def mutate(weights):
        del weights["local_encoder.norm.weight"]
        weights["something.extra"] = torch.zeros(3)
        weights["conv_downsample.bias"] = torch.zeros(65)

    folder = _release_copy(tmp_path, mutate)
    with pytest.raises(CheckpointError) as err:
        KanadeTeacher.from_pretrained(folder, ssl_model=REFERENCE / "wavlm")
    message = str(err.value)
    assert str(folder / "model.safetensors") in message
    assert "missing (1): local_encoder.norm.weight" in message
    assert "unexpected (1): something.extra" in message
    assert "shape mismatch (1): conv_downsample.bias: checkpoint (65,) vs model (64,)" in message


def test_state_dict_check_strict_and_lenient():
    expected = {f"layer{i}.weight": torch.zeros(2, 2) for i in range(30)}
    loaded = {**{k: v for k, v in expected.items() if k != "layer0.weight"}, "extra": torch.zeros(1)}
    check_state_dict(expected, expected, where="same")  # a perfect fit passes
    with pytest.raises(CheckpointError, match=r"^run/ckpt.pt does not match[\s\S]*missing \(1\): layer0.weight"
                                              r"[\s\S]*unexpected \(1\): extra[\s\S]*use the right config$"):
        check_state_dict(expected, loaded, where="run/ckpt.pt", hint="use the right config")
    check_state_dict(expected, loaded, where="lenient", strict=False)  # missing/unexpected allowed
    wrong = {k: torch.zeros(3, 3) for k in expected}
    with pytest.raises(CheckpointError, match=r"shape mismatch \(30\): .* \.\.\. \(10 more\)"):
        check_state_dict(expected, wrong, where="lenient", strict=False)  # shapes are always checked


def test_missing_files_corrupt_weights_and_bad_config(tmp_path):
    with pytest.raises(CheckpointError, match="missing config.yaml, model.safetensors"):
        KanadeTeacher.from_pretrained(tmp_path)
    folder = _release_copy(tmp_path, lambda w: None)
    (folder / "model.safetensors").write_bytes(b"\0" * 100)
    with pytest.raises(CheckpointError, match="cannot read .* as safetensors"):
        KanadeTeacher.from_pretrained(folder, ssl_model=REFERENCE / "wavlm")
    (folder / "config.yaml").write_text("model: {init_args: {}}\n")
    with pytest.raises(ConfigError, match="expected model.init_args.config"):
        KanadeTeacher.from_pretrained(folder, ssl_model=REFERENCE / "wavlm")
    with pytest.raises(CheckpointError, match="no Kanade model at"):
        KanadeTeacher.from_pretrained(tmp_path / "nowhere" / "at-all")


def test_unsupported_settings_are_refused():
    config = KanadeConfig.from_yaml(REFERENCE / "config.yaml")
    config.local_encoder = dict(config.local_encoder, qkv_bias=True)
    with pytest.raises(ConfigError, match="qkv_bias=True is not supported"):
        config.validate()


@pytest.mark.parametrize("variant, tokens_per_second", [("25hz", 25.0), ("12hz", 12.5)])
def test_full_size_official_architecture_matches_released_parameter_list(variant, tokens_per_second, reference_teacher):
    """The 25 Hz and 12.5 Hz release configs build exactly the parameter names and shapes of the releases."""
    config = KanadeConfig.from_yaml(OFFICIAL_CONFIGS / f"kanade_{variant}_config.yaml")
    assert config.token_rate == tokens_per_second
    model = KanadeTeacher(config, reference_teacher.ssl)
    ours = {k: list(v.shape) for k, v in model.release_state_dict().items()}
    released = {}
    for line in (OFFICIAL_CONFIGS / f"kanade_{variant}_checkpoint_keys.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, shape = line.split("\t")
            released[name] = [int(x) for x in shape.strip("[]").split(",")]
    assert ours == released
    assert abs(sum(np.prod(s) for s in ours.values()) / 1e6 - (117.72 if variant == "25hz" else 119.95)) < 0.01


_SECTIONS = {  # section -> (an existing key whose value gets a wrong type, that value)
    "config": ("downsample_factor", "two"),
    "ssl_feature_extractor": ("output_layer", "nine"),
    "local_encoder": ("n_heads", "four"),
    "local_quantizer": ("levels", [8, "eight"]),
    "feature_decoder": ("window_size", 6.5),
    "global_encoder": ("num_layers", True),
    "mel_prenet": ("use_rope", "yes"),
    "mel_decoder": ("adanorm_condition_dim", "128"),
    "mel_postnet": ("channels", None),
}


def _release_dict():
    import yaml

    return yaml.safe_load((OFFICIAL_CONFIGS / "kanade_25hz_config.yaml").read_text())


def _section(data, name):
    model = data["model"]["init_args"]
    return model["config"] if name == "config" else model[name]["init_args"]


@pytest.mark.parametrize("name", sorted(_SECTIONS))
def test_config_refuses_misspelt_keys_and_wrong_types_in_every_section(name):
    data = _release_dict()
    KanadeConfig.from_release_dict(data)  # the untouched config loads
    key, bad = _SECTIONS[name]
    misspelt = _release_dict()
    _section(misspelt, name)[key + "s"] = _section(misspelt, name)[key]
    with pytest.raises(ConfigError, match=rf"{name}: unknown setting\(s\) \['{key}s'\]"):
        KanadeConfig.from_release_dict(misspelt)
    _section(data, name)[key] = bad
    with pytest.raises(ConfigError, match=rf"{name}\.{key}: expected .*got {re.escape(repr(bad))}"):
        KanadeConfig.from_release_dict(data)


@pytest.mark.parametrize("offline_by", ["env", "network"])
def test_hub_ids_fail_at_once_without_network(monkeypatch, offline_by):
    import huggingface_hub

    from kanade_stream import hub
    from kanade_stream.ssl import SSLFeatureExtractor
    from kanade_stream.vocoder import load_vocoder

    if offline_by == "env":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: False)

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download: the failure should come before any retrying")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    with pytest.raises(CheckpointError, match="pass its local folder"):
        KanadeTeacher.from_pretrained("someone/not-cached-kanade")
    with pytest.raises(OSError, match="SSL model 'someone/not-cached-wavlm'.*local folder"):
        SSLFeatureExtractor.from_pretrained("someone/not-cached-wavlm")
    with pytest.raises(OSError, match="vocoder 'someone/not-cached-vocos'.*local folder"):
        load_vocoder("someone/not-cached-vocos")
