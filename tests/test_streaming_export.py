"""Compiled and TorchScript forms of the streaming steps compute the same as eager, for any cutting; the
TorchScript file runs in a process that never imports kanade_stream."""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from kanade_stream.streaming import StreamingConverter, StreamingEncoder
from kanade_stream.streaming.api import CoreRunner
from kanade_stream.streaming.compiled import CompiledStep
from kanade_stream.streaming.export import export_student, load_metadata, script_core
from kanade_stream.streaming.pipeline import ConverterCore, DecoderCore, EncoderCore
from kanade_stream.streaming.testing import assert_close, cuttings

from .conftest import one_thread


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


def _stream(step, state, pieces, condition=None):
    outs = []
    for piece in pieces:
        out, state = step(piece[None], state, condition)
        outs.append(out)
    return torch.cat(outs, 1)[0]


@torch.inference_mode()
def test_torchscript_converter_any_cutting(student):
    core = ConverterCore(student, 48000)
    scripted = script_core(core)
    g = torch.randn(1, student.config.global_dim)
    wave = torch.randn(9000) * 0.1
    expected = core(wave[None], g)[0]
    for sizes in cuttings(9000, singles=False) + [[1] * 400 + [8600]]:
        pieces = [wave[s:s + n] for s, n in zip(np.cumsum([0] + sizes[:-1]).tolist(), sizes)]
        assert_close(_stream(scripted.step, scripted.init_state(1), pieces, g), expected)


@torch.inference_mode()
def test_torchscript_api_backend(student):
    wave = torch.randn(12000) * 0.1
    reference = torch.randn(student.config.global_dim)
    outs = {}
    for backend in ("eager", "torchscript"):
        conv = StreamingConverter(student, reference=reference, sample_rate=48000, chunk_ms=40, backend=backend)
        outs[backend] = np.concatenate([conv.push(wave[:5000]), conv.push(wave[5000:]), conv.flush()])
        enc = StreamingEncoder(student, sample_rate=48000, backend=backend)
        outs[backend + "_tokens"] = torch.cat([enc.push(wave), enc.flush()])
    assert_close(torch.from_numpy(outs["torchscript"]), torch.from_numpy(outs["eager"]))
    assert torch.equal(outs["torchscript_tokens"], outs["eager_tokens"])


_STANDALONE = r"""
import sys, torch
assert "kanade_stream" not in sys.modules
import json
data = torch.load(sys.argv[2])
for kind in ("converter", "encoder", "decoder"):
    meta = {"kanade_stream.json": ""}
    m = torch.jit.load(f"{sys.argv[1]}/{kind}.pt", _extra_files=meta)
    state = m.init_state(1)
    condition = None if kind == "encoder" else data["g"]
    x = data["tokens"] if kind == "decoder" else data["wave"]
    outs = []
    for piece in x.split(data["split"], dim=-1):
        out, state = m.step(piece, state, condition)
        outs.append(out)
    data[kind + "_out"] = torch.cat(outs, 1)
    if kind == "encoder":
        data["global_out"] = state[json.loads(meta["kanade_stream.json"])["global_embedding_state"]]
torch.save(data, sys.argv[2])
assert "kanade_stream" not in sys.modules
"""


@torch.inference_mode()
def test_torchscript_file_runs_without_the_package(student, tmp_path):
    for kind in ("converter", "encoder", "decoder"):
        export_student(student, tmp_path / f"{kind}.pt", kind=kind, sample_rate=48000)
    assert load_metadata(tmp_path / "converter.pt")["input_rate"] == 48000
    g = torch.randn(1, student.config.global_dim)
    wave = torch.randn(1, 7680) * 0.1
    tokens = torch.randint(0, 12800, (1, 11))
    torch.save({"g": g, "wave": wave, "tokens": tokens, "split": 7}, tmp_path / "data.pt")
    # run from an empty folder with only torch: the package is not importable there
    result = subprocess.run([sys.executable, "-c", _STANDALONE, str(tmp_path), str(tmp_path / "data.pt")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    data = torch.load(tmp_path / "data.pt")
    assert_close(data["converter_out"], ConverterCore(student, 48000)(wave, g))
    tokens_expected, _, global_expected = EncoderCore(student, 48000)(wave)
    assert torch.equal(data["encoder_out"], tokens_expected)
    assert_close(data["global_out"], global_expected)
    assert_close(data["decoder_out"], DecoderCore(student)(student.quantizer.decode(tokens), g))


def _compile_available() -> bool:
    try:
        import torch._dynamo  # noqa: F401
    except Exception:
        return False
    return sys.version_info < (3, 14) or hasattr(torch, "compile")


needs_compile = pytest.mark.skipif(not _compile_available(), reason="torch.compile is not available here")


def _push_all(runner, wave, chunk, condition=None):
    """Push `wave` in pieces of `chunk` samples (a shorter last piece runs eagerly); concatenated outputs."""
    state, outs = runner.init_state(1), []
    with torch.inference_mode():
        for start in range(0, wave.numel(), chunk):
            out, state = runner.step(wave[start:start + chunk][None], state, condition)
            outs.append(out)
    return torch.cat(outs, 1)[0]


@needs_compile
@pytest.mark.parametrize("kind", ["encoder", "converter", "converter-int8"])
def test_compiled_step_is_one_graph_per_part(student, kind, monkeypatch):
    # Light: dynamo must capture each part whole (fullgraph: a graph break is an error) with backend "eager"
    # (no code generation, seconds); the stream then equals the eager core, the first pushes included
    rate, chunk = 48000, 1920  # 40 ms
    if kind.endswith("int8"):
        from kanade_stream.streaming import int8

        monkeypatch.setattr(int8, "MIN_WEIGHTS", 64)  # the tiny student's layers too, its convs included
        student = int8.quantize_int8(student)
        assert isinstance(student.downsample, int8.Int8CausalConv1d)
    core = EncoderCore(student, rate) if kind == "encoder" else ConverterCore(student, rate)
    condition = None if kind == "encoder" else torch.randn(1, student.config.global_dim)
    wave = torch.randn(chunk * 12 + 700) * 0.1  # 12 whole pushes and a short one (runs eagerly)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to eager would hide a failure here
        runner = CoreRunner(core, "compile", push_size=chunk, compile_options={"backend": "eager"})
    expected = _push_all(CoreRunner(core, "eager"), wave, chunk, condition)
    got = _push_all(runner, wave, chunk, condition)
    assert runner.compiled.counts == {"compiled": 12, "eager": 1}
    if kind.startswith("converter"):
        assert sorted(runner.compiled.backs) == [3, 4]  # 40 ms = 3.75 mel frames: two back graphs
        assert_close(got, expected)
    else:
        assert torch.equal(got, expected)


@needs_compile
def test_compiled_step_refuses_partial_tokens(student):
    with pytest.raises(ValueError, match="whole number of tokens"):
        CompiledStep(EncoderCore(student, 48000), 1000, compiler="inductor", compile_options={"backend": "eager"})
    with pytest.raises(ValueError, match="push size"):
        CoreRunner(EncoderCore(student, 48000), "aot")


def test_compile_falls_back_to_eager_with_a_warning(student):
    core = EncoderCore(student, 16000)
    with pytest.warns(RuntimeWarning, match="eagerly"):
        runner = CoreRunner(core, "compile", push_size=640, compile_options={"backend": "no-such-backend"})
    assert runner.label.startswith("eager (") and runner.compiled is None
    with torch.inference_mode():
        tokens, _ = runner.step(torch.randn(1, 1280), runner.init_state(1))
    assert tokens.shape == (1, 2)


@pytest.mark.slow
@needs_compile
def test_aot_packages_match_eager_and_are_cached(student, tmp_path, monkeypatch):
    # The real thing: torch.export + AOTInductor (C++ code generation, about a minute on 2 cores for the
    # tiny student's three graphs), then a second build that only loads the cached packages
    monkeypatch.setenv("KANADE_STREAM_CACHE", str(tmp_path))
    rate, chunk = 48000, 1920
    core = ConverterCore(student, rate)
    condition = torch.randn(1, student.config.global_dim)
    try:
        runner = CoreRunner(core, "aot", push_size=chunk)
    except Exception as err:  # pragma: no cover
        raise AssertionError(f"building the aot runner raised instead of falling back: {err}") from err
    if runner.compiled is None:
        pytest.skip(f"AOTInductor unavailable here: {runner.label}")
    wave = torch.randn(chunk * 24) * 0.1  # several cycles of the interpolation's taps (cached by phase)
    expected = _push_all(CoreRunner(core, "eager"), wave, chunk, condition)
    assert_close(_push_all(runner, wave, chunk, condition), expected, rel=1e-4)
    assert runner.compiled.counts == {"compiled": 24, "eager": 0}
    # the packages are called on flat lists (the check against torch's wrapper at load passed) ...
    compiled = runner.compiled
    assert all(part.flat_run is not None for part in [compiled.front, *compiled.backs.values()])
    # ... and that check refuses a flat order with two counters swapped
    m, back = next(iter(compiled.backs.items()))
    interpolator = core.decoder.mel_interpolator
    seen = compiled.steady_phases()[m] * compiled.latent_per_push
    extras = (compiled.modulation(condition), compiled.interpolation_taps(seen, interpolator.num_outputs(seen)))
    first, second = (1 + back.reads.index("mel_interpolator." + name) for name in ("seen", "emitted"))

    class SwappedCounters:
        def __init__(self, loader):
            self.loader = loader

        def boxed_run(self, flat):
            flat[first], flat[second] = flat[second], flat[first]
            return self.loader.boxed_run(flat)

    loader = back.run.loader
    back.flat_run = None
    with torch.inference_mode():
        back.use_flat_calls(SwappedCounters(loader), torch.zeros(1, interpolator.channels, compiled.latent_per_push),
                            core.init_state(1), extras)
        assert back.flat_run is None
        back.use_flat_calls(loader, torch.zeros(1, interpolator.channels, compiled.latent_per_push),
                            core.init_state(1), extras)
        assert back.flat_run is not None
    cache = runner.compiled.cache_dir
    packages = sorted(cache.glob("ConverterCore-*.pt2"))
    assert len(packages) >= 3 and not list(cache.glob("*partial*"))
    again = CompiledStep(core, chunk, compiler="aot", cache_dir=cache)  # loads, compiles nothing
    assert sorted(cache.glob("ConverterCore-*.pt2")) == packages
    assert again.build_seconds < runner.compiled.build_seconds / 3


def test_compiled_step_cache_keeps_the_most_recently_used(tmp_path):
    from kanade_stream.streaming.compiled import prune_cache

    for i in range(5):
        path = tmp_path / f"p{i}.pt2"
        path.write_bytes(b"x")
        os.utime(path, (1000 + i, 1000 + i))
    stale, fresh = tmp_path / "a.partial-1.pt2", tmp_path / "b.partial-2.pt2"
    for path in (stale, fresh):
        path.write_bytes(b"x")
    os.utime(stale, (1000, 1000))
    prune_cache(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.partial-2.pt2", "p3.pt2", "p4.pt2"]


@needs_compile
def test_compiled_decoder_step_token_by_token(student):
    core = DecoderCore(student)
    condition = torch.randn(1, student.config.global_dim)
    tokens = torch.randint(0, student.quantizer.codebook_size, (1, 20))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to eager would hide a graph break here
        runner = CoreRunner(core, "compile", push_size=1, compile_options={"backend": "eager"})
    outs = {}
    with torch.inference_mode():
        for name, r in (("eager", CoreRunner(core, "eager")), ("compiled", runner)):
            state, pieces = r.init_state(1), []
            for t in range(tokens.shape[1]):
                audio, state = r.step(tokens[:, t:t + 1], state, condition)
                pieces.append(audio)
            outs[name] = torch.cat(pieces, 1)
    assert_close(outs["compiled"], outs["eager"])
    assert runner.compiled.counts["compiled"] >= 18  # the steady pushes; the first may run eagerly
