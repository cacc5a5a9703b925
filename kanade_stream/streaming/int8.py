"""int8 weights for the streaming student on CPU, and the fake quantization that trains a student for them.

At 40 ms chunks a step multiplies a handful of frames by every weight of the converter path, so its time
is the time to read ~80 MB of float32 weights, which do not fit a laptop's or server's L3 cache; int8
weights (a quarter of that) do. `quantize_int8(student)` gives a copy whose large Linear layers are
PyTorch dynamic int8 (per-output-channel symmetric int8 weights; each call quantizes its input to 8 bits
with its own range): it runs everywhere a student does (offline, streams, TorchScript).

Quantizing a student that was never trained for it moves its outputs by about 12 % and changes tokens, so
the distillation has an `int8` stage: `fake_quantize(student)` makes those same layers compute with
weights and inputs rounded as int8 would round them (straight-through gradients), and the stage
fine-tunes the student against the teacher through that rounding. The layers chosen are the same in both
(`int8_layer_names`): the large Linear layers, never the FSQ projections (they decide the tokens) nor
the distillation heads.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn

MIN_WEIGHTS = 4096  # smaller layers cost nothing to read and are left in float32
KEEP_FLOAT = ("quantizer.", "content_head", "global_head", "vocoder.head")  # exact tokens, targets, the spectrum
# PyTorch's dynamic int8 Linear on x86 (fbgemm) quantizes its input to 7 bits (reduce_range), which leaves
# headroom in its 16-bit accumulation; the fake quantization rounds the same way
ACTIVATION_LEVELS = 127


def int8_layer_names(student: nn.Module) -> list[str]:
    """The Linear layers that run in int8: at least MIN_WEIGHTS weights, outside KEEP_FLOAT."""
    return [name for name, m in student.named_modules()
            if isinstance(m, nn.Linear) and m.weight.numel() >= MIN_WEIGHTS and not name.startswith(KEEP_FLOAT)]


def check_int8_engine() -> str:
    engines = torch.backends.quantized.supported_engines
    for engine in ("x86", "fbgemm", "qnnpack"):
        if engine in engines:
            return engine
    raise RuntimeError(f"this PyTorch build has no int8 CPU engine (supported: {engines}); run in float32 instead")


def quantize_int8(student: nn.Module) -> nn.Module:
    """A copy of `student` (on CPU, eval) whose int8_layer_names layers are dynamic int8 Linear layers."""
    torch.backends.quantized.engine = check_int8_engine()
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    model = copy.deepcopy(student).cpu().eval()
    spec = {name: per_channel_dynamic_qconfig for name in int8_layer_names(model)}
    with warnings.catch_warnings():  # torch.ao's eager quantization is marked deprecated (torchao replaces
        warnings.simplefilter("ignore", DeprecationWarning)  # it); it is the int8 path TorchScript can run
        return quantize_dynamic(model, spec, dtype=torch.qint8)


def is_int8(student: nn.Module) -> bool:
    return any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in student.modules())


# --- fake quantization (training) ------------------------------------------------------------------------


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()  # rounds forward, passes the gradient straight through


def fake_quantize_weight(weight: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric int8, as per_channel_dynamic_qconfig quantizes the weight."""
    scale = weight.detach().abs().amax(dim=1, keepdim=True).clamp_min(1e-8) / 127.5
    return _round_ste(weight / scale).clamp(-128, 127) * scale


def fake_quantize_input(x: torch.Tensor) -> torch.Tensor:
    """Affine rounding to ACTIVATION_LEVELS + 1 levels over [min(x, 0), max(x, 0)], one range per frame
    (a streaming step quantizes a few frames at a time)."""
    lo = x.detach().amin(dim=-1, keepdim=True).clamp(max=0)
    hi = x.detach().amax(dim=-1, keepdim=True).clamp(min=0)
    scale = ((hi - lo) / ACTIVATION_LEVELS).clamp_min(1e-8)
    zero = torch.round(-lo / scale)
    return (_round_ste(x / scale + zero).clamp(0, ACTIVATION_LEVELS) - zero) * scale


class FakeInt8Linear(nn.Linear):
    """An nn.Linear computing as its int8 form would (same parameters and state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(fake_quantize_input(x), fake_quantize_weight(self.weight), self.bias)


def fake_quantize(student: nn.Module, enabled: bool = True) -> list[str]:
    """Switch the int8 layers of `student` to (or back from) their fake-quantized form, in place. The class
    swap keeps parameters, state-dict names and optimizers untouched. Returns the layer names."""
    names = int8_layer_names(student)
    for name in names:
        layer = student.get_submodule(name)
        layer.__class__ = FakeInt8Linear if enabled else nn.Linear
    return names
