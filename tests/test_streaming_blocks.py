"""Every streaming block: the offline form equals the streamed form under many cuttings of the input."""

import pytest
import torch

from kanade_stream.modules.attention import span_mask
from kanade_stream.modules.streaming import state_numel
from kanade_stream.modules.transformer import Transformer
from kanade_stream.streaming.convs import CausalConv1d, CausalConvNeXtBlock, CausalPostNet
from kanade_stream.streaming.pooling import CausalGlobalEncoder, StreamingStatsPooling
from kanade_stream.streaming.rates import FrameInterpolator, StreamingResampler, TokenUpsampler
from kanade_stream.streaming.vocoder import CausalVocoder, StreamingISTFT
from kanade_stream.streaming.testing import assert_close, cuttings, run_stream

from .conftest import one_thread

torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread_no_grad():
    with one_thread(), torch.no_grad():
        yield


@pytest.mark.parametrize("kernel,stride", [(7, 1), (10, 5), (2, 2), (4, 4), (1, 1)])
def test_causal_conv(kernel, stride):
    conv = CausalConv1d(3, 4, kernel, stride).eval()
    x = torch.randn(2, 3, 41)
    expected = conv(x)
    assert expected.shape[-1] == 41 // stride
    for sizes in cuttings(41):
        assert_close(run_stream(conv, x, sizes), expected)


def test_causal_conv_is_causal():
    conv = CausalConv1d(1, 2, 5, 2).eval()
    x = torch.randn(1, 1, 20)
    y = conv(x)
    x2 = x.clone()
    x2[..., 10:] = 7.0  # change the future: outputs that end before sample 10 are unchanged
    assert torch.equal(conv(x2)[..., :5], y[..., :5])


def test_convnext_block():
    block = CausalConvNeXtBlock(8, 16, layer_scale=0.5).eval()
    x = torch.randn(1, 8, 30)
    expected = block(x)
    for sizes in cuttings(30):
        assert_close(run_stream(block, x, sizes), expected)


def test_attention_spans():
    pos = torch.arange(8)
    mask = span_mask(pos, pos, past=2, future=0, chunk=2)  # the student's chunk-causal span
    assert mask[0].tolist() == [True, True] + [False] * 6  # frame 0 sees its own chunk (0, 1)
    assert mask[3].tolist() == [True, True, True, True] + [False] * 4
    assert mask[5].tolist() == [False, False, True, True, True, True, False, False]
    window = span_mask(pos, pos, past=2, future=2)  # the teacher's symmetric window of 5
    assert window[4].tolist() == [False, False, True, True, True, True, True, False]
    assert torch.equal(window, (pos[:, None] - pos[None, :]).abs() <= 2)
    empty = span_mask(pos[:1] + 3, torch.tensor([-1, 2, 3]), past=4, future=0)
    assert empty.tolist() == [[False, True, True]]  # empty ring slots (negative positions) are never seen


@pytest.mark.parametrize("conditioned", [False, True])
def test_transformer_causal(conditioned):
    model = Transformer(16, 2, 2, causal_past=5, step_frames=4, input_dim=6, output_dim=7, exact_rope=True,
                        condition_dim=4 if conditioned else None).eval()
    for p in model.parameters():  # AdaLN-Zero starts at zero: make the condition matter
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 23, 6)
    cond = torch.randn(2, 1, 4) if conditioned else None
    expected = model(x, cond)
    for sizes in cuttings(23):
        assert_close(run_stream(model, x, sizes, dim=1, out_dim=1, condition=cond), expected)
    # the past window is bounded: with 2 layers of past 5, frame 10 reaches frames 10 .. 20 only
    x2 = x.clone()
    x2[:, 10] += 5.0
    assert torch.allclose(model(x2, cond)[:, 21:], expected[:, 21:], atol=1e-6)
    assert not torch.allclose(model(x2, cond)[:, 10:15], expected[:, 10:15])


@pytest.mark.parametrize("step_frames", [1, 3, 8])
def test_transformer_chunked_whole_chunks(step_frames):
    model = Transformer(16, 2, 4, causal_past=4, chunk=3, step_frames=step_frames, exact_rope=True).eval()
    x = torch.randn(1, 24, 16)
    expected = model(x)
    for sizes in ([3] * 8, [6, 3, 9, 6], [24], [0, 3, 0, 21]):
        assert_close(run_stream(model, x, sizes, dim=1, out_dim=1), expected)
    with pytest.raises(ValueError, match="whole chunks of 3"):
        model.step(x[:, :2], model.init_state(1))


def test_transformer_kv_ring_is_written_in_place():
    model = Transformer(8, 2, 2, causal_past=4, step_frames=2, exact_rope=True).eval()
    state = model.init_state(1)
    rings = {name: t for name, t in state.items() if name.endswith(("keys", "values"))}
    assert sorted(rings) == ["layers.0.keys", "layers.0.values", "layers.1.keys", "layers.1.values"]
    assert rings["layers.0.keys"].shape == (1, 2, 4 + 2, 4)  # past + step_frames slots, fixed
    for _ in range(5):
        _, state = model.step(torch.randn(1, 3, 8), state)
    for name, ring in rings.items():
        assert state[name] is ring  # the same storage, updated in place: no window copied per step
    assert int(state["position"]) == 15
    assert sorted(state["slot_positions"].tolist()) == list(range(9, 15))  # the newest past + step_frames


def test_transformer_state_is_bounded_and_rope_exact_at_large_positions():
    model = Transformer(8, 1, 2, causal_past=4, exact_rope=True).eval()
    x = torch.randn(1, 12, 8)
    near = run_stream(model, x, [5, 7], dim=1, out_dim=1)
    state = model.init_state(1)
    size = state_numel(state)
    state["position"] = torch.tensor([10**7])  # hours into a stream
    far = []
    for piece in x.split(5, dim=1):
        y, state = model.step(piece, state)
        far.append(y)
        assert state_numel(state) == size
    # absolute positions do not matter (float64 angles; empty slots stay masked)
    assert_close(torch.cat(far, 1), near, rel=1e-5)


def test_teacher_window_is_not_streamable():
    model = Transformer(8, 1, 2, window_size=5)
    with pytest.raises(RuntimeError, match="chunk-causal"):
        model.init_state(1)


def test_token_upsampler_and_interpolator():
    up = TokenUpsampler(5, 4).eval()
    x = torch.randn(1, 5, 9)
    assert_close(run_stream(up, x, [2, 0, 3, 4]), up(x))
    # the matrix-product form computes what the transposed conv it replaces computes (same parameters)
    batch = torch.randn(3, 5, 7)
    assert_close(up(batch), torch.nn.functional.conv_transpose1d(batch, up.weight, up.bias, stride=4))
    interp = FrameInterpolator(5, 100.0, 93.75)
    assert (interp.p, interp.q) == (16, 15)
    z = torch.randn(2, 5, 37)
    expected = interp(z)
    assert expected.shape[-1] == interp.num_outputs(37)
    for sizes in cuttings(37):
        assert torch.equal(run_stream(interp, z, sizes), expected)  # exact: integer phase arithmetic
    # with a known ramp the interpolated positions are the centre-aligned ones
    ramp = torch.arange(37.0)[None, None]
    assert_close(interp(ramp)[0, 0, 1:4], torch.tensor([16 / 15 - 0.5, 32 / 15 - 0.5, 48 / 15 - 0.5]))


def test_interpolator_flush_matches_offline_end():
    interp = FrameInterpolator(3, 100.0, 93.75)
    z = torch.randn(1, 3, 10)
    expected = interp(z, num_outputs=12)
    state = interp.init_state(1)
    a, state = interp.step(z[..., :7], state)
    b, state = interp.step(z[..., 7:], state)
    c, state = interp.flush(state, 12)
    assert torch.equal(torch.cat([a, b, c], -1), expected)
    assert sorted(state) == ["emitted", "last", "seen"] and int(state["emitted"]) == 12


@pytest.mark.parametrize("in_rate, out_rate", [(100.0, 93.75), (100.0, 187.5), (50.0, 93.75), (25.0, 93.75), (93.75, 100.0)])
def test_interpolator_taps_repeat_by_phase(in_rate, out_rate):
    # A compiled step caches the taps under taps_phase: every state with the same phase must give the same taps
    interp = FrameInterpolator(1, in_rate, out_rate)
    for push in (1, 2, 3, 4, 8):
        seen, emitted, by_phase = 0, 0, {}
        for _ in range(200):
            taps = interp.step_taps(seen, emitted, push, torch.device("cpu"))
            phase = interp.taps_phase(seen, emitted)
            if phase is not None:
                assert torch.equal(by_phase.setdefault(phase, taps), taps), (push, seen, emitted)
            seen, emitted = seen + push, emitted + taps.shape[1]
            assert emitted == interp.num_outputs(seen)
        assert 0 < len(by_phase) <= interp.p  # a cycle: the cache stays small


def test_postnet():
    post = CausalPostNet(6, 8, 5, 3).eval()
    x = torch.randn(1, 6, 19)
    expected = post(x)
    for sizes in cuttings(19):
        assert_close(run_stream(post, x, sizes), expected)
    # its convs take a step's few frames as a matrix product and long inputs through conv1d: the same numbers
    conv = post.convolutions[1][0]
    for frames in (3, 40000):
        y = torch.randn(1, 8, frames + 4)
        assert_close(conv(y), torch.nn.functional.conv1d(y, conv.weight, conv.bias))


def test_stats_pooling_and_global_encoder():
    pool = StreamingStatsPooling(6, 4, 5).eval()
    x = torch.randn(2, 6, 25) * 3
    expected = pool(x)
    for sizes in cuttings(25):
        state = pool.init_state(2)
        start = 0
        for size in sizes:
            y, state = pool.step(x[..., start:start + size], state)
            start += size
        assert_close(y, expected)
    enc = CausalGlobalEncoder(6, 4, 2, 8, 12).eval()
    feats = torch.randn(1, 30, 6)
    expected = enc(feats)
    for sizes in cuttings(30):
        state = enc.init_state(1)
        start = 0
        for size in sizes:
            y, state = enc.step(feats[:, start:start + size], state)
            start += size
        assert_close(y, expected)
        assert_close(state["pooling.embedding"], expected)  # the running embedding is a named state entry
    assert "backbone.embed.tail" in state and "backbone.convnext.0.tail" in state


@pytest.mark.parametrize("n_fft,hop", [(8, 4), (16, 4)])
def test_istft(n_fft, hop):
    istft = StreamingISTFT(n_fft, hop)
    spec = torch.randn(1, 13, n_fft // 2 + 1, dtype=torch.complex64)
    expected = istft(spec)
    assert expected.shape[-1] == istft.num_outputs(13)
    for sizes in cuttings(13):
        assert_close(run_stream(istft, spec, sizes, dim=1), expected)


def test_istft_reconstructs_a_stft():
    # analysis with the same window and centre convention: the steady state is reconstructed exactly
    n_fft, hop = 16, 4
    istft = StreamingISTFT(n_fft, hop)
    wave = torch.randn(1, 200)
    spec = torch.stft(wave, n_fft, hop, window=torch.hann_window(n_fft), center=True, return_complex=True)
    out = istft(spec.transpose(1, 2))
    steady = slice(n_fft, 150)
    assert_close(out[:, steady], wave[:, steady], rel=1e-5)


def test_vocoder():
    voc = CausalVocoder(6, 8, 16, 2, n_fft=16, hop_length=8).eval()
    mel = torch.randn(1, 6, 21)
    expected = voc(mel)
    assert expected.shape[-1] == (21 - 1) * 8
    for sizes in cuttings(21):
        assert_close(run_stream(voc, mel, sizes), expected)


@pytest.mark.parametrize("orig,new", [(48000, 16000), (44100, 16000), (8000, 16000), (24000, 16000), (16000, 16000)])
def test_resampler(orig, new):
    rs = StreamingResampler(orig, new)
    x = torch.randn(1, 2000)
    expected = rs(x)
    assert expected.shape[-1] == rs.num_outputs(2000)
    for sizes in cuttings(2000, singles=orig != 44100):
        assert_close(run_stream(rs, x, sizes), expected)


def test_resampler_quality():
    # a 440 Hz tone at 48 kHz comes out as the same tone at 16 kHz, delayed by `delay_seconds`
    rs = StreamingResampler(48000, 16000)
    t_in = torch.arange(48000) / 48000
    y = rs(torch.sin(2 * torch.pi * 440 * t_in)[None])[0]
    t_out = torch.arange(y.numel()) / 16000 - rs.delay_seconds
    ref = torch.sin(2 * torch.pi * 440 * t_out)
    assert float((y[1000:] - ref[1000:]).abs().max()) < 2e-3
