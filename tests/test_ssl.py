"""WavLM features through transformers: layer numbering, truncation, batching."""

import pytest
import torch

from kanade_stream.ssl import SSLFeatureExtractor

from .conftest import REFERENCE


@pytest.fixture(scope="module")
def full_depth():
    return SSLFeatureExtractor.from_pretrained(REFERENCE / "wavlm", num_layers=9)


def test_layer_i_is_transformers_hidden_state_i(full_depth):
    from transformers import WavLMModel

    wave = torch.randn(1, 16000) * 0.1
    ours = full_depth(wave)
    model = WavLMModel.from_pretrained(REFERENCE / "wavlm").eval()
    with torch.no_grad():
        theirs = model(wave, output_hidden_states=True).hidden_states
    assert len(ours) == 9
    for i in range(1, 10):
        assert torch.allclose(ours[i - 1], theirs[i], atol=1e-5), f"layer {i}"


def test_truncated_model_keeps_and_runs_only_the_needed_layers(full_depth):
    shallow = SSLFeatureExtractor.from_pretrained(REFERENCE / "wavlm", num_layers=2)
    assert len(shallow.model.encoder.layers) == 2
    wave = torch.randn(1, 8000) * 0.1
    for a, b in zip(shallow(wave), full_depth(wave)[:2]):
        assert torch.allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="has 9 transformer layers; cannot compute 12"):
        SSLFeatureExtractor.from_pretrained(REFERENCE / "wavlm", num_layers=12)


def test_frame_arithmetic(full_depth):
    assert full_depth.hop_size == 320
    for frames in (1, 2, 7, 50):
        assert full_depth.num_frames(full_depth.min_input_length(frames)) == frames
        assert full_depth.num_frames(full_depth.min_input_length(frames) - 1) == frames - 1


def test_batch_equals_single(full_depth):
    waves = [torch.randn(n) * 0.1 for n in (16000, 9001, 4000)]
    layers, mask = full_depth.forward_batch(waves)
    for i, wave in enumerate(waves):
        single = full_depth(wave[None])
        n = single[0].shape[1]
        assert int(mask[i].sum()) == n
        for got, want in zip(layers, single):
            assert torch.allclose(got[i, :n], want[0], atol=1e-5)


def test_not_a_wavlm_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        SSLFeatureExtractor.from_pretrained(tmp_path)
