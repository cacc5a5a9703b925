"""The teacher against the outputs the official Kanade code computes for a tiny official-format model."""

import numpy as np
import pytest
import torch

from kanade_stream import KanadeTeacher
from kanade_stream.modules.fsq import FiniteScalarQuantizer

from .conftest import REFERENCE


def relative_error(ours: torch.Tensor, official: torch.Tensor) -> float:
    return float((ours - official).abs().max() / official.abs().max())


@pytest.fixture(scope="module")
def expected():
    return torch.load(REFERENCE / "expected.pt")


def test_encode_matches_official(reference_teacher, reference_audio, expected):
    source, _ = reference_audio
    features = reference_teacher.encode(source)
    tokens = features.content_token_indices
    assert tokens.shape == expected["tokens"].shape
    assert (tokens == expected["tokens"]).float().mean() >= 0.99
    assert relative_error(features.global_embedding, expected["global"]) < 1e-3
    assert relative_error(features.content_embedding, expected["content_embedding"]) < 1e-3


def test_decode_and_voice_conversion_match_official(reference_teacher, reference_audio, expected):
    source, reference = reference_audio
    mel = reference_teacher.decode(global_embedding=expected["global"], content_token_indices=expected["tokens"])
    assert mel.shape == expected["mel"].shape
    assert relative_error(mel, expected["mel"]) < 1e-3

    assert relative_error(reference_teacher.encode(reference).global_embedding, expected["ref_global"]) < 1e-3
    vc_mel = reference_teacher.voice_conversion(source, reference)
    assert vc_mel.shape == expected["vc_mel"].shape
    assert relative_error(vc_mel, expected["vc_mel"]) < 1e-3


def test_batched_encode_equals_one_by_one(reference_teacher, reference_audio):
    source, reference = reference_audio
    clips = [source, reference, source[:13_001], reference[5_000:20_000]]
    batched = reference_teacher.encode_batch(clips)
    for clip, got in zip(clips, batched):
        alone = reference_teacher.encode(clip)
        assert torch.equal(got.content_token_indices, alone.content_token_indices)
        assert relative_error(got.content_embedding, alone.content_embedding) < 1e-4
        assert relative_error(got.global_embedding, alone.global_embedding) < 1e-4


def test_encode_resamples_other_rates(reference_teacher, reference_audio):
    import torchaudio

    source, _ = reference_audio
    at_16k = torchaudio.functional.resample(source, 24000, 16000)
    direct = reference_teacher.encode(torchaudio.functional.resample(at_16k, 16000, 24000))
    via_argument = reference_teacher.encode(at_16k, sample_rate=16000)
    assert torch.equal(via_argument.content_token_indices, direct.content_token_indices)
    assert torch.allclose(via_argument.global_embedding, direct.global_embedding)


def test_fsq_indices_and_codes_round_trip():
    fsq = FiniteScalarQuantizer(8, 8, [8, 8, 8, 5, 5])
    assert fsq.codebook_size == 12800
    every = torch.arange(fsq.codebook_size)
    codes = fsq.indices_to_codes(every)
    assert codes.min() >= -1 and codes.max() <= 1
    assert torch.equal(fsq.codes_to_indices(codes), every)
    latents = torch.randn(1000, 5) * 3
    codes = fsq.quantize(latents)
    assert torch.equal(fsq.indices_to_codes(fsq.codes_to_indices(codes)), codes)
    with pytest.raises(ValueError, match="token indices must be in"):
        fsq.decode(torch.tensor([12800]))


def test_decode_rejects_bad_tokens_and_embeddings(reference_teacher, expected):
    with pytest.raises(ValueError, match="token indices"):
        reference_teacher.decode(expected["global"], content_token_indices=torch.tensor([1, 2, -3]))
    with pytest.raises(ValueError, match="1-D integer"):
        reference_teacher.decode(expected["global"], content_token_indices=torch.tensor([1.5, 2.0]))
    with pytest.raises(ValueError, match="global_embedding must have shape"):
        reference_teacher.decode(torch.zeros(7), content_token_indices=expected["tokens"])


def test_mel_equals_vocos_features():
    from vocos.feature_extractors import MelSpectrogramFeatures

    from kanade_stream import MelSpectrogram

    audio = torch.randn(2, 24000) * 0.3
    ours = MelSpectrogram()(audio)
    theirs = MelSpectrogramFeatures()(audio)
    assert ours.shape == theirs.shape == (2, 100, 24000 // 256 + 1)
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)


def test_save_and_reload_gives_same_tokens(reference_teacher, reference_audio, tmp_path):
    source, _ = reference_audio
    reference_teacher.save_pretrained(tmp_path / "export")
    reloaded = KanadeTeacher.from_pretrained(tmp_path / "export", ssl_model=REFERENCE / "wavlm")
    assert torch.equal(reloaded.encode(source).content_token_indices,
                       reference_teacher.encode(source).content_token_indices)
    assert np.isclose(float(reloaded.encode(source).global_embedding.sum()),
                      float(reference_teacher.encode(source).global_embedding.sum()), atol=1e-5)
