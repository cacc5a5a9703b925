"""Compiled and TorchScript forms of the streaming steps compute the same as eager, for any cutting; the
TorchScript file runs in a process that never imports kanade_stream."""

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from kanade_stream.streaming import StreamingConverter, StreamingEncoder
from kanade_stream.streaming.export import compile_step, export_student, load_metadata, script_core
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


@pytest.mark.skipif(not _compile_available(), reason="torch.compile is not available on this platform")
def test_torch_compile_step(student):
    # Light: dynamo captures the whole encoder step with backend "eager" (no code generation, seconds)
    core = EncoderCore(student, 16000)
    wave = torch.randn(6400) * 0.1
    expected, _, _ = core(wave[None])
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to eager would hide a failure here
        step = compile_step(core, backend="eager")
        pieces = [wave[s:s + n] for s, n in zip(np.cumsum([0, 1280, 700, 2000]).tolist(), [1280, 700, 2000, 2420])]
        assert torch.equal(_stream(step, core.init_state(1), pieces), expected[0])


@pytest.mark.slow
@pytest.mark.skipif(not _compile_available(), reason="torch.compile is not available on this platform")
def test_torch_compile_inductor_block():
    # the real inductor backend (C++ code generation, ~30 s) on one small block: compiled numbers match
    from kanade_stream.streaming.convs import CausalConvNeXtBlock

    torch.manual_seed(0)
    block = CausalConvNeXtBlock(8, 16, layer_scale=0.5).eval()
    x = torch.randn(1, 8, 12)
    with torch.no_grad():
        try:
            step = torch.compile(block.step, dynamic=False)
            state = block.init_state(1)
            y1, state = step(x[..., :6], state)
            y2, state = step(x[..., 6:], state)
        except Exception as err:  # no C++ compiler here: the eager fallback is what users get
            pytest.skip(f"inductor unavailable: {type(err).__name__}")
        assert_close(torch.cat([y1, y2], -1), block(x))


def test_compile_falls_back_to_eager_with_a_warning(student):
    core = EncoderCore(student, 16000)
    with torch.inference_mode(), pytest.warns(RuntimeWarning, match="eagerly"):
        step = compile_step(core, backend="no-such-backend")
        tokens, _ = step(torch.randn(1, 1280), core.init_state(1))
    assert tokens.shape == (1, 2)
