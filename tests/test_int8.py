"""int8 weights: the fake quantization used for training computes what the int8 layers compute, the int8
student streams and scripts, and the distillation's int8 stage trains a student for it."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from kanade_stream.streaming import KanadeStudent, StreamingConverter, StudentConfig, load_student
from kanade_stream.streaming import int8
from kanade_stream.streaming.api import CoreRunner
from kanade_stream.streaming.convs import CausalConv1d, StepSizedConv1d
from kanade_stream.streaming.pipeline import ConverterCore
from kanade_stream.streaming.testing import randomize


@pytest.fixture()
def small_layers(monkeypatch):
    """The tiny test student's layers are all below the size worth quantizing: quantize them anyway."""
    monkeypatch.setattr(int8, "MIN_WEIGHTS", 64)


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    return randomize(KanadeStudent(StudentConfig.tiny())).eval()


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_fake_quantization_computes_what_the_int8_layer_computes():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(384, 1152))
    real = int8.quantize_int8(net)
    assert int8.is_int8(real) and not int8.is_int8(net)
    with torch.no_grad():
        for rows in (1, 3):
            x = torch.randn(rows, 384) * 2
            exact = net(x)
            # the int8 layer takes one input range per call, the fake rounding one per frame: the same for a
            # single frame, and for several what a stream pushing a frame or two per step gets
            rounded = torch.cat([real(row[None]) for row in x])
            fake = int8.FakeInt8Linear.forward(net[0], x)
            assert relative(rounded, exact) > 3e-3  # int8 really moves the output ...
            assert relative(fake, rounded) < 0.05 * relative(rounded, exact)  # ... and the fake rounding follows


def test_fake_quantization_passes_gradients_straight_through():
    layer = nn.Linear(8, 4)
    x = torch.randn(5, 8, requires_grad=True)
    int8.fake_quantize(nn.Sequential(layer))  # below MIN_WEIGHTS: left alone
    assert type(layer) is nn.Linear
    int8.FakeInt8Linear.forward(layer, x).sum().backward()
    assert torch.allclose(x.grad, layer.weight.sum(0).expand_as(x), atol=0.05)
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_int8_layers_leave_the_tokens_and_heads_in_float(student, small_layers):
    names = int8.int8_layer_names(student)
    assert names and not [n for n in names if n.startswith(int8.KEEP_FLOAT)]
    assert any(n.startswith("vocoder.") for n in names) and any(n.startswith("ssl_upper.") for n in names)
    q = int8.quantize_int8(student)
    assert isinstance(q.quantizer.proj_in, nn.Linear) and int8.is_int8(q)
    state = copy.deepcopy(student.state_dict())
    # dense convolutions too (a Linear layer over their windows), never the depthwise ones
    convs = [n for n in names if not isinstance(student.get_submodule(n), nn.Linear)]
    assert "downsample" in convs and "mel_postnet.convolutions.0.0" in convs and "vocoder.backbone.embed" in convs
    assert not [n for n in names if "dwconv" in n]
    assert isinstance(q.downsample, int8.Int8CausalConv1d) and isinstance(q.get_submodule(convs[-1]).taps, nn.Module)
    int8.fake_quantize(student)
    fakes = (int8.FakeInt8Linear, int8.FakeInt8CausalConv1d, int8.FakeInt8StepSizedConv1d)
    assert all(isinstance(student.get_submodule(n), fakes) for n in names)
    int8.fake_quantize(student, enabled=False)
    assert all(type(student.get_submodule(n)) in (nn.Linear, CausalConv1d, StepSizedConv1d) for n in names)
    assert all(torch.equal(state[k], v) for k, v in student.state_dict().items())  # nothing moved


def test_int8_conv_is_the_int8_linear_over_its_windows():
    # Int8CausalConv1d computes exactly torch.ao's int8 Linear over the unfolded windows, streams as it
    # computes offline (within int8's per-call rounding), and the fake rounding follows it
    torch.manual_seed(0)
    conv = randomize(CausalConv1d(24, 32, 4, stride=2)).eval()
    q = int8.Int8CausalConv1d(conv)
    x = torch.randn(1, 24, 40)
    with torch.inference_mode():
        padded = torch.nn.functional.pad(x, (2, 0))
        windows = padded.unfold(2, 4, 2).permute(0, 2, 1, 3).reshape(1, 20, 96)
        assert torch.equal(q(x), q.taps(windows).transpose(1, 2))
        exact = conv(x)
        assert 3e-3 < relative(q(x), exact) < 0.05
        state, pieces = q.init_state(1), []
        for cut in ((0, 7), (7, 8), (8, 21), (21, 40)):
            y, state = q.step(x[..., cut[0]:cut[1]], state)
            pieces.append(y)
        assert relative(torch.cat(pieces, -1), exact) < 0.05 and torch.cat(pieces, -1).shape == exact.shape
        fake = int8.FakeInt8CausalConv1d.forward(conv, x)  # rounds as int8 does: moves the output as much
        assert 1e-3 < relative(fake, exact) < 0.05
    step_sized = int8.Int8StepSizedConv1d(randomize(StepSizedConv1d(16, 8, 5)).eval())
    assert step_sized(torch.randn(1, 16, 4)).shape == (1, 8, 0) and step_sized(torch.randn(1, 16, 9)).shape == (1, 8, 5)


def test_int8_student_streams_and_scripts(student, small_layers):
    q = int8.quantize_int8(student)
    torch.manual_seed(1)
    wave = torch.randn(48000 // 2) * 0.1
    reference = torch.randn(8000) * 0.1
    offline = q.convert(wave, reference, 48000)
    conv = StreamingConverter(q, reference=reference, sample_rate=48000, chunk_ms=40)
    out = [conv.push(wave[i:i + 1920]) for i in range(0, wave.numel(), 1920)] + [conv.flush()]
    streamed = torch.from_numpy(np.concatenate(out))
    assert streamed.shape == offline.shape
    # int8 rounds each call's input on its own range, so streaming is close to offline, not bit-equal
    assert relative(streamed, offline) < 0.1
    # TorchScript of the int8 core computes what the eager int8 core computes
    eager, scripted = CoreRunner(ConverterCore(q, 48000), "eager"), CoreRunner(ConverterCore(q, 48000), "torchscript")
    g = q.global_embedding(reference, 48000)[None]
    se, ss = eager.init_state(1), scripted.init_state(1)
    with torch.inference_mode():
        for i in range(0, wave.numel(), 1920):
            ye, se = eager.step(wave[None, i:i + 1920], se, g)
            ys, ss = scripted.step(wave[None, i:i + 1920], ss, g)
            assert torch.allclose(ye, ys, atol=1e-5)


def test_int8_stage_trains_through_the_rounding(tmp_path, small_layers):
    from distill.pipeline import distill_student
    from training.runtime import Runtime

    from .test_distill import settings_for
    from kanade_stream.corpus import build_corpus

    corpus = build_corpus(tmp_path / "corpus", n_speakers=4, utterances_per_speaker=3, held_out_speakers=2)
    settings = settings_for(corpus, tmp_path / "run", steps=8)
    outcome = distill_student(settings, ["int8"], Runtime(), progress=False)
    result = outcome["results"]["int8"]
    assert result.completed and result.val["loss"] < result.first_val["loss"]
    assert {"vocoder_mel_l1", "stft", "mel_l1", "latent_mse"} <= set(result.val)
    exported = load_student(tmp_path / "run" / "int8" / "export")
    assert exported.config.int8_trained
    assert all(type(exported.get_submodule(n)) in (nn.Linear, CausalConv1d, StepSizedConv1d)
               for n in int8.int8_layer_names(exported))
    report = outcome["int8_report"]  # the int8 student evaluated in int8
    assert report is not None and (tmp_path / "run" / "int8" / "eval" / "report.md").is_file()
    assert 0 <= report["token_agreement"] <= 1


def test_exportable_int8_linear_computes_what_the_dynamic_int8_layer_does():
    # the form compiled steps carry (int8.py): same numbers as torch.ao's layer, bit for bit, with both kernels of
    # the op. The C++ kernel computes up to 32 rows (a streaming step's frames) itself, 8 at a time, and hands
    # larger inputs to fbgemm: rows 1..8, 15, 32 and 33, an input width that is no multiple of its 32-lane blocks, inputs of one sign
    # (the zero point at either end), and all zeros.
    from kanade_stream.streaming.int8 import ExportableInt8Linear, exportable_int8, linear_int8
    from kanade_stream.streaming.kernels import load_kernels

    torch.manual_seed(0)
    layer = quantize_dynamic_one(torch.nn.Linear(100, 80))
    exportable = ExportableInt8Linear(layer)
    kernel = load_kernels()
    assert kernel == "C++" or kernel.startswith("Python (")
    inputs = [torch.randn(1, rows, 100) * 3 for rows in (*range(1, 9), 32, 33)] + [torch.randn(3, 5, 100)]
    inputs += [torch.rand(2, 100) + 0.5, -torch.rand(4, 100) - 0.1, torch.zeros(2, 100)]
    # ranges so small that the input scale is raised to its floor (near-silent activations)
    inputs += [torch.randn(2, 100) * 1e-4, torch.rand(2, 100) * 1e-4, -torch.rand(3, 100) * 1e-5]
    with torch.inference_mode():
        for x in inputs:
            expected = layer(x)
            python = linear_int8(x, exportable.weight, exportable.scales, exportable.zero_points, exportable.bias,
                                 exportable.key)
            assert torch.equal(python, expected), tuple(x.shape)
            # through the dispatcher: the C++ kernel where it built
            assert torch.equal(exportable(x), expected), (tuple(x.shape), (exportable(x) - expected).abs().max())
    model = torch.nn.Sequential(layer, torch.nn.ReLU())
    swapped = exportable_int8(model)
    assert isinstance(swapped[0], ExportableInt8Linear) and swapped is not model and model[0] is layer
    # the key is a digest of the weights: same weights, same key (a package from another process finds them)
    assert ExportableInt8Linear(layer).key == exportable.key


def quantize_dynamic_one(linear: torch.nn.Linear) -> torch.nn.Module:
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return quantize_dynamic(torch.nn.Sequential(linear), {"0": per_channel_dynamic_qconfig}, dtype=torch.qint8)[0]


def test_stacked_int8_projections_give_the_same_numbers():
    # exportable_int8 runs q/k/v (and SwiGLU w1/w3) as one int8 layer: exactly the separate layers' outputs
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    from kanade_stream.modules.transformer import Transformer
    from kanade_stream.streaming.int8 import ExportableInt8Linear, exportable_int8

    torch.manual_seed(0)
    model = randomize(Transformer(64, 2, 4, causal_past=8)).eval()
    names = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        quantized = quantize_dynamic(model, {name: per_channel_dynamic_qconfig for name in names}, dtype=torch.qint8)
    exportable = exportable_int8(quantized)
    attention, feed_forward = exportable.layers[0].attention, exportable.layers[0].feed_forward
    assert isinstance(attention.wqkv, ExportableInt8Linear) and not hasattr(attention, "wq")
    assert isinstance(feed_forward.w13, ExportableInt8Linear) and not hasattr(feed_forward, "w1")
    x = torch.randn(1, 12, 64)
    with torch.inference_mode():
        assert torch.equal(exportable(x), quantized(x))
