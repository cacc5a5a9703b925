"""The streaming API and the whole-pipeline steps: push-by-push equals offline for any cutting, bad input
is refused without touching the stream, state stays bounded, latency is what is claimed."""

import numpy as np
import pytest
import torch

from kanade_stream.audio import AudioError
from kanade_stream.streaming import StreamingConverter, StreamingDecoder, StreamingEncoder
from kanade_stream.modules.streaming import StreamingModule, copy_state, describe_state, state_numel
from kanade_stream.streaming.pipeline import ConverterCore, DecoderCore, EncoderCore
from kanade_stream.streaming.testing import assert_close, cuttings

from .conftest import one_thread


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread(), torch.inference_mode():
        yield


@pytest.fixture(scope="module")
def wave48():
    g = torch.Generator().manual_seed(1)
    t = torch.arange(14000) / 48000
    return (0.3 * torch.sin(2 * torch.pi * 220 * t) + 0.05 * torch.randn(14000, generator=g)).float()


def _core_stream(core, x, sizes, flush_padding=None, condition=None):
    state = core.init_state(1)
    outs = []
    pieces = [x[start:start + s] for start, s in zip(np.cumsum([0] + sizes[:-1]).tolist(), sizes)]
    if flush_padding is not None:
        pieces.append(torch.zeros(flush_padding))
    for piece in pieces:
        out, state = core.step(piece[None], state, condition)
        outs.append(out)
    return torch.cat(outs, 1)[0], state


def _cuts(n, seed=0):
    cuts = cuttings(n, seed, singles=False)
    cuts.append([1] * 700 + [n - 700])  # single samples through the resampler and the conv tails
    return cuts


@pytest.mark.parametrize("rate", [16000, 48000, 44100])
def test_encoder_core_any_cutting(student, wave48, rate):
    wave = wave48[:12000]
    core = EncoderCore(student, rate)
    tokens, embedding, global_embedding = core.offline(wave)
    assert tokens.numel() == core.target_tokens(wave.numel()) > 0
    for sizes in _cuts(wave.numel()):
        streamed, state = _core_stream(core, wave, sizes, core.flush_padding(wave.numel()))
        assert torch.equal(streamed[: tokens.numel()], tokens)
        assert_close(state[core.global_key][0], global_embedding)


def test_converter_and_decoder_core_any_cutting(student, wave48):
    g = torch.randn(1, student.config.global_dim)
    core = ConverterCore(student, 48000)
    expected = core.offline(wave48, g)
    assert expected.numel() == core.target_outputs(wave48.numel())
    for sizes in _cuts(wave48.numel(), seed=3):
        streamed, _ = _core_stream(core, wave48, sizes, core.flush_padding(wave48.numel()), condition=g)
        assert_close(streamed[: expected.numel()], expected)
    decoder = DecoderCore(student)
    tokens = torch.randint(0, 12800, (1, 23))
    expected = decoder(student.quantizer.decode(tokens), g)
    assert expected.shape[-1] == decoder.num_samples(23)
    for sizes in cuttings(23, seed=4):
        state, outs, start = decoder.init_state(1), [], 0
        for size in sizes:
            audio, state = decoder.step(tokens[:, start:start + size], state, g)
            start += size
            outs.append(audio)
        assert_close(torch.cat(outs, 1), expected)


def _leaves(core):
    """Streaming modules with no streaming children: the ones that own state entries."""
    modules = [m for m in core.modules() if isinstance(m, StreamingModule)]
    return [m for m in modules if not any(isinstance(c, StreamingModule) for c in m.modules() if c is not m)]


@pytest.mark.parametrize("kind", ["encoder", "decoder", "converter"])
def test_every_state_tensor_is_found_by_name(student, kind):
    core = {"encoder": lambda: EncoderCore(student, 48000), "decoder": lambda: DecoderCore(student),
            "converter": lambda: ConverterCore(student, 48000)}[kind]()
    state = core.init_state(1)
    owned = {}
    for leaf in _leaves(core):
        for name, tensor in leaf.init_state(1).items():
            assert name.startswith(leaf.state_prefix) and name not in owned, name  # under its path, never shared
            assert state[name].shape == tensor.shape and state[name].dtype == tensor.dtype
            owned[name] = leaf
    assert sorted(owned) == sorted(state)  # every entry belongs to exactly one module: nothing positional
    expected = {"encoder": ["resampler.tail", "frontend.layers.0.conv.tail", "ssl_lower.layers.0.keys",
                            "ssl_upper.position", "content_encoder.slot_positions", "downsample.tail",
                            "global_encoder.pooling.embedding"],
                "decoder": ["mel_prenet.layers.0.values", "mel_interpolator.seen", "mel_decoder.layers.0.keys",
                            "mel_postnet.tails.1", "vocoder.backbone.embed.tail", "vocoder.istft.tail"],
                "converter": ["resampler.tail", "ssl_lower.layers.0.keys", "mel_decoder.position", "vocoder.istft.frames"]}
    assert set(expected[kind]) <= set(state)
    assert (kind == "encoder") == ("global_encoder.pooling.embedding" in state)
    lines = describe_state(state)
    assert len(lines) == len(state)
    name = expected[kind][0]
    assert f"{name}: {tuple(state[name].shape)} float32" in lines


@pytest.mark.parametrize("chunk_ms", [40, 80, 160, 25])
def test_streaming_encoder_equals_offline(student, wave48, chunk_ms):
    enc = StreamingEncoder(student, sample_rate=48000, chunk_ms=chunk_ms)
    expected = student.encode(wave48, 48000)
    rng = np.random.default_rng(chunk_ms)
    data = wave48.numpy()
    tokens, start = [], 0
    while start < data.size:
        size = int(rng.integers(0, 3000))
        tokens.append(enc.push(data[start:start + size]))
        start += size
    tokens.append(enc.flush())
    assert torch.equal(torch.cat(tokens), expected.content_token_indices)
    assert_close(enc.global_embedding, expected.global_embedding)
    assert enc.frame_rate == 25.0


def test_encoder_global_embedding_refines_and_starts_undefined(student, wave48):
    enc = StreamingEncoder(student, sample_rate=48000, chunk_ms=40)
    assert enc.global_embedding is None
    enc.push(wave48[:1920].numpy())
    first = enc.global_embedding
    enc.push(wave48[1920:9600].numpy())
    assert first is not None and not torch.allclose(first, enc.global_embedding)


@pytest.mark.parametrize("chunk_ms", [40, 80, 160])
def test_streaming_converter_equals_offline(student, wave48, chunk_ms):
    reference = wave48[2000:10000]
    conv = StreamingConverter(student, reference=reference, sample_rate=48000, chunk_ms=chunk_ms)
    expected = student.convert(wave48, reference, 48000).numpy()
    rng = np.random.default_rng(chunk_ms)
    out, start = [], 0
    while start < wave48.numel():
        size = int(rng.integers(1, 4000))
        out.append(conv.push(wave48[start:start + size]))
        start += size
    out.append(conv.flush())
    audio = np.concatenate(out)
    assert audio.dtype == np.float32 and conv.output_rate == 24000
    assert audio.size == int(np.ceil((wave48.numel() + conv.core.encoder.resampler.width) / 2))
    assert_close(torch.from_numpy(audio), torch.from_numpy(expected))


def test_streaming_decoder_equals_offline(student):
    g = torch.randn(student.config.global_dim)
    tokens = torch.randint(0, 12800, (17,))
    expected = student.decode(g, tokens)
    assert expected.numel() == 17 * 960
    dec = StreamingDecoder(student, global_embedding=g)
    out = [dec.push(tokens[:1]), dec.push(tokens[1:1]), dec.push(tokens[1:6].numpy()), dec.push(tokens[6:].tolist()),
           dec.flush()]
    assert_close(torch.from_numpy(np.concatenate(out)), expected)
    assert 0 < dec.latency_ms < 20
    with pytest.raises(RuntimeError, match="reset"):
        dec.push(tokens)
    dec.reset()
    assert dec.push(tokens).size > 0


def test_tokens_decode_with_student_and_match_embeddings(student, wave48):
    features = student.encode(wave48, 48000)
    assert_close(student.quantizer.decode(features.content_token_indices), features.content_embedding)
    g = features.global_embedding
    assert_close(student.decode(g, features.content_token_indices),
                 student.decode(g, content_embedding=features.content_embedding))


def _state_copy(stream):
    return copy_state(stream.state)


def _assert_same_state(a, b):
    assert sorted(a) == sorted(b) and all(torch.equal(a[name], b[name]) for name in a)


@pytest.mark.parametrize("bad,match", [
    (np.zeros(100, dtype=np.int16), "dtype"),
    (torch.zeros(100, dtype=torch.int32), "dtype"),
    (np.zeros((2, 100), dtype=np.float32), "1-D"),
    (np.array([0.1, np.nan, 0.2], dtype=np.float32), "NaN"),
    (torch.tensor([0.0, float("inf")]), "NaN or infinite"),
    ([0.1, 0.2], "numpy array or torch tensor"),
    (np.zeros(10, dtype=np.complex64), "dtype"),
])
def test_bad_pushes_are_refused_and_the_stream_survives(student, wave48, bad, match):
    enc = StreamingEncoder(student, sample_rate=48000, chunk_ms=40)
    tokens = [enc.push(wave48[:5000])]
    before, pending = _state_copy(enc), enc._pending.clone()
    with pytest.raises(AudioError, match=match):
        enc.push(bad)
    _assert_same_state(before, enc.state)
    assert torch.equal(pending, enc._pending)
    tokens += [enc.push(wave48[5000:]), enc.flush()]
    assert torch.equal(torch.cat(tokens), student.encode(wave48, 48000).content_token_indices)


def test_empty_and_other_float_pushes(student, wave48):
    conv = StreamingConverter(student, reference=torch.randn(student.config.global_dim), sample_rate=48000)
    before = _state_copy(conv)
    out = conv.push(np.zeros(0, dtype=np.float32))
    assert out.size == 0 and out.dtype == np.float32
    _assert_same_state(before, conv.state)
    # float64 and float16 samples are accepted (converted to float32)
    a = conv.push(wave48[:4000].double().numpy())
    conv.reset()
    b = conv.push(wave48[:4000].numpy())
    assert np.array_equal(a, b)
    conv.push(wave48[:10].half())


def test_reference_checks(student, wave48):
    with pytest.raises(AudioError, match="too short"):
        StreamingConverter(student, reference=wave48[:500], sample_rate=48000)
    with pytest.raises(ValueError, match="reference clip or a global_embedding"):
        StreamingConverter(student, sample_rate=48000)
    with pytest.raises(ValueError, match="shape"):
        StreamingConverter(student, global_embedding=torch.zeros(3), sample_rate=48000)
    with pytest.raises(AudioError, match="NaN"):
        StreamingConverter(student, reference=torch.full((5000,), float("nan")), sample_rate=48000)
    # a clip at another rate than the stream
    conv = StreamingConverter(student, reference=wave48[::3].clone(), reference_rate=16000, sample_rate=48000)
    assert_close(conv.global_embedding, student.global_embedding(wave48[::3].clone(), 16000))
    # shortest accepted reference: one 20 ms SSL frame
    core = EncoderCore(student, 48000)
    student.global_embedding(wave48[: core.min_global_samples()], 48000)


def test_bad_tokens_and_chunk_sizes(student):
    dec = StreamingDecoder(student, global_embedding=torch.zeros(student.config.global_dim))
    for bad, match in ((torch.tensor([1.5]), "integer"), (torch.tensor([[1, 2]]), "1-D"),
                       (torch.tensor([12800]), r"\[0, 12800\)"), (torch.tensor([-1]), r"\[0, 12800\)")):
        before = _state_copy(dec)
        with pytest.raises(ValueError, match=match):
            dec.push(bad)
        _assert_same_state(before, dec.state)
    with pytest.raises(ValueError, match="chunk_ms"):
        StreamingEncoder(student, sample_rate=44100, chunk_ms=0.01)
    with pytest.raises(ValueError, match="chunk_ms"):
        StreamingEncoder(student, sample_rate=16000, chunk_ms=0)
    with pytest.raises(AudioError, match="sample rate"):
        StreamingEncoder(student, sample_rate=100)


def test_state_does_not_grow(student):
    # 160 ms chunks: after N and 2N pushes every state tensor has the same shape (only counters move)
    conv = StreamingConverter(student, reference=torch.randn(student.config.global_dim), sample_rate=48000,
                              chunk_ms=160)
    chunk = torch.randn(7680) * 0.1
    for _ in range(60):
        conv.push(chunk)
    shapes = {name: tuple(t.shape) for name, t in conv.state.items()}
    for _ in range(60):
        conv.push(chunk)
    assert {name: tuple(t.shape) for name, t in conv.state.items()} == shapes
    # and with ragged pushes the size stays within a fixed bound
    enc = StreamingEncoder(student, sample_rate=44100, chunk_ms=20)
    sizes = []
    for n in np.random.default_rng(0).integers(0, 3000, 200):
        enc.push(torch.randn(int(n)) * 0.1)
        sizes.append(state_numel(enc.state))
    assert max(sizes[100:]) <= max(sizes[:100])


def test_latency(student):
    conv = StreamingConverter(student, reference=torch.randn(student.config.global_dim), sample_rate=48000,
                              chunk_ms=80)
    # 80 ms chunk + token alignment (0) + interpolation and ISTFT waits (<= 13.4 ms) + resampler (0.4 ms)
    assert 80 < conv.latency_ms < 100
    assert StreamingEncoder(student, sample_rate=16000, chunk_ms=80).latency_ms == pytest.approx(80)
    assert StreamingEncoder(student, sample_rate=16000, chunk_ms=60).latency_ms == pytest.approx(80)
    # the claim matches what the stream really emits: after each push, output covers input - lag
    core = conv.core
    emitted = 0
    for k in range(1, 30):
        emitted += conv.push(torch.zeros(3840)).size
        assert emitted == core.num_outputs(3840 * k)
        assert core.lag_seconds(3840 * k) * 1000 <= conv.latency_ms - 80 + 1e-9


def test_ten_minutes_of_audio_keep_the_state_size_and_stay_finite(student):
    """A literal 10-minute stream (in 10 s pushes): state size fixed from the first push on, outputs finite,
    positions counted exactly."""
    conv = StreamingConverter(student, reference=torch.randn(student.config.global_dim), sample_rate=16000,
                              chunk_ms=80)
    rng = torch.Generator().manual_seed(0)
    sizes, produced = set(), 0
    for _ in range(60):
        out = conv.push(torch.randn(160000, generator=rng) * 0.1)
        assert np.isfinite(out).all()
        produced += len(out)
        sizes.add(tuple((name, tuple(t.shape)) for name, t in sorted(conv.state.items())))
    assert len(sizes) == 1
    # 600 s in: everything but the pipeline's fixed lag has come out
    assert abs(produced / conv.output_rate - 600.0) < 0.2


def test_concurrent_pushes_are_refused(student, wave48):
    """A stream keeps one ordered state: a push from a second thread while one runs raises, and the first
    push completes normally."""
    import threading

    conv = StreamingConverter(student, reference=torch.randn(student.config.global_dim), sample_rate=48000,
                              chunk_ms=40)
    inside, release = threading.Event(), threading.Event()
    step = conv.runner.step

    def slow_step(*args):
        inside.set()
        release.wait(30)
        return step(*args)

    conv.runner.step = slow_step
    results = []
    worker = threading.Thread(target=lambda: results.append(conv.push(wave48[:1920].numpy())))
    worker.start()
    assert inside.wait(30)
    with pytest.raises(RuntimeError, match="another thread"):
        conv.push(wave48[1920:3840].numpy())
    release.set()
    worker.join(30)
    conv.runner.step = step
    assert len(results) == 1 and results[0].size > 0
    conv.push(wave48[1920:3840].numpy())  # and the stream goes on
