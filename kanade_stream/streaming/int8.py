"""int8 weights for the streaming student on CPU, and the fake quantization that trains a student for them.

At 40 ms chunks a step multiplies a handful of frames by every weight of the converter path, so its time
is the time to read ~80 MB of float32 weights, which do not fit a laptop's or server's L3 cache; int8
weights (a quarter of that) do. `quantize_int8(student)` gives a copy whose large Linear layers are
PyTorch dynamic int8 (per-output-channel symmetric int8 weights; each call quantizes its input to 8 bits
with its own range), and whose dense convolutions are such a layer over their input windows (SSL front
end, token downsampler, PostNet, vocoder input: ~8 MB of float32 a default-size step otherwise): it runs
everywhere a student does (offline, streams, TorchScript). Compiled steps
(compiled.py) cannot carry torch.ao's opaque packed weights, so `exportable_int8` rewrites those layers as
the op `kanade_stream::linear_int8` on plain tensors (same numbers; a C++ kernel, int8_kernel.cpp, once
built), with q/k/v and SwiGLU w1/w3 stacked into one call each.

Quantizing a student that was never trained for it moves its outputs by about 12 % and changes tokens, so
the distillation has an `int8` stage: `fake_quantize(student)` makes those same layers compute with
weights and inputs rounded as int8 would round them (straight-through gradients), and the stage
fine-tunes the student against the teacher through that rounding. The layers chosen are the same in both
(`int8_layer_names`): the large Linear layers and dense convolutions, never the FSQ projections (they
decide the tokens).
"""

from __future__ import annotations

import copy
import hashlib
import warnings
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..modules.attention import Attention
from ..modules.transformer import FeedForward
from .convs import CausalConv1d, StepSizedConv1d, causal_conv, causal_conv_step, conv_windows
from .kernels import LIBRARY

MIN_WEIGHTS = 4096  # smaller layers cost nothing to read and are left in float32
# The FSQ projections decide the tokens: float. The global head is not on a streaming step's path. The content
# head and the vocoder's spectrum head were float until they were measured in int8: 10 % of a default-size
# step (2.8 MB of float weights read a push -> 0.7 MB), no change in quality on held-out voices (README)
KEEP_FLOAT = ("quantizer.", "global_head")
# PyTorch's dynamic int8 Linear on x86 (fbgemm) quantizes its input to 7 bits (reduce_range), which leaves
# headroom in its 16-bit accumulation; the fake quantization rounds the same way
ACTIVATION_LEVELS = 127


def _is_int8_conv(module: nn.Module) -> bool:
    return isinstance(module, StepSizedConv1d) or (isinstance(module, CausalConv1d) and module.groups == 1)


def int8_layer_names(student: nn.Module) -> list[str]:
    """The layers that run in int8: Linear layers and dense convolutions (a conv is a Linear layer over its
    input windows) of at least MIN_WEIGHTS weights, outside KEEP_FLOAT."""
    return [name for name, m in student.named_modules()
            if (isinstance(m, nn.Linear) or _is_int8_conv(m)) and m.weight.numel() >= MIN_WEIGHTS
            and not name.startswith(KEEP_FLOAT)]


def check_int8_engine() -> str:
    engines = torch.backends.quantized.supported_engines
    for engine in ("x86", "fbgemm", "qnnpack"):
        if engine in engines:
            return engine
    raise RuntimeError(f"this PyTorch build has no int8 CPU engine (supported: {engines}); run in float32 instead")


def quantize_int8(student: nn.Module) -> nn.Module:
    """A copy of `student` (on CPU, eval) whose int8_layer_names layers are dynamic int8 Linear layers, the
    convolutions as one over their input windows (Int8CausalConv1d, Int8StepSizedConv1d)."""
    torch.backends.quantized.engine = check_int8_engine()
    model = copy.deepcopy(student).cpu().eval()
    names = int8_layer_names(model)
    spec = [name for name in names if isinstance(model.get_submodule(name), nn.Linear)]
    model = _dynamic_int8(model, spec)
    for name in names:
        conv = model.get_submodule(name)
        if _is_int8_conv(conv):
            _set_submodule(model, name, Int8CausalConv1d(conv) if isinstance(conv, CausalConv1d)
                           else Int8StepSizedConv1d(conv))
    return model


def _dynamic_int8(model: nn.Module, names: list[str]) -> nn.Module:
    """torch.ao's dynamic int8 Linear (per-channel weights) in place of the Linear layers `names`."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():  # torch.ao's eager quantization is marked deprecated (torchao replaces
        warnings.simplefilter("ignore", DeprecationWarning)  # it); it is the int8 path TorchScript can run
        return quantize_dynamic(model, {name: per_channel_dynamic_qconfig for name in names}, dtype=torch.qint8)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _windows_layer(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """The dynamic int8 Linear over a conv's input windows: weights (out, in, kernel) -> (out, in * kernel)."""
    linear = nn.Linear(weight.shape[1] * weight.shape[2], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight.reshape(weight.shape[0], -1))
        if bias is not None:
            linear.bias.copy_(bias)
    return _dynamic_int8(nn.Sequential(linear), ["0"])[0]


class Int8CausalConv1d(CausalConv1d):
    """A CausalConv1d whose weights are int8: its input windows (conv_windows) through a dynamic int8 Linear
    `taps`. Same state (`tail`) and outputs as the float conv, up to int8 rounding."""

    def __init__(self, conv: CausalConv1d):
        nn.Module.__init__(self)
        self.state_prefix = conv.state_prefix
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.groups = conv.kernel_size, conv.stride, conv.groups
        self.taps = _windows_layer(conv.weight.detach(), None if conv.bias is None else conv.bias.detach())
        self.register_buffer("anchor", torch.zeros(0), persistent=False)  # dtype and device of the state

    def init_state(self, batch: int = 1) -> Dict[str, torch.Tensor]:
        return {self.state_prefix + "tail": self.anchor.new_zeros(batch, self.in_channels,
                                                                  self.kernel_size - self.stride)}

    def _convolve(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] < self.kernel_size:
            return x.new_zeros(x.shape[0], self.out_channels, 0)
        return self.taps(conv_windows(x, self.kernel_size, self.stride)).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._convolve(F.pad(x, (self.kernel_size - self.stride, 0)))

    def step(self, x: torch.Tensor, state: Dict[str, torch.Tensor],
             condition: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        key = self.state_prefix + "tail"
        x = torch.cat([state[key], x], dim=-1)
        y = self._convolve(x)
        state[key] = x[..., y.shape[-1] * self.stride:]
        return y, state


class Int8StepSizedConv1d(nn.Module):
    """A StepSizedConv1d (unpadded, stride 1) whose weights are int8, as Int8CausalConv1d computes."""

    def __init__(self, conv: StepSizedConv1d):
        super().__init__()
        self.kernel_size, self.out_channels = conv.weight.shape[-1], conv.weight.shape[0]
        self.taps = _windows_layer(conv.weight.detach(), None if conv.bias is None else conv.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] < self.kernel_size:
            return x.new_zeros(x.shape[0], self.out_channels, 0)
        return self.taps(conv_windows(x, self.kernel_size, 1)).transpose(1, 2)


def is_int8(student: nn.Module) -> bool:
    return any(type(m).__module__.startswith("torch.ao.nn.quantized") or isinstance(m, ExportableInt8Linear)
               for m in student.modules())


# --- the same int8 Linear in a form torch.export can trace (compiled steps, compiled.py) -------------------

_PACKED: dict[int, object] = {}  # fbgemm's packed weights, by a digest of the weights they pack


def linear_int8(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor,
                bias: torch.Tensor, key: int) -> torch.Tensor:
    """What torch.ao's dynamic int8 Linear computes, from plain tensors: int8 `weight` (out, in) with
    per-output-channel `scales` / `zero_points`, float `bias`. fbgemm packs the weights once per `key` (a
    digest of them, so a package compiled in another process finds the same key for the same weights)."""
    packed = _PACKED.get(key)
    if packed is None:
        torch.backends.quantized.engine = check_int8_engine()
        qweight = torch._make_per_channel_quantized_tensor(weight, scales, zero_points, 0)
        packed = _PACKED[key] = torch.ops.quantized.linear_prepack(qweight, bias)
    return torch.ops.quantized.linear_dynamic(x, packed, reduce_range=True)


# The op's Python kernel serves every backend; int8_kernel.cpp, once built (kernels.load_kernels), takes over on
# CPU, where a compiled graph would otherwise pay ~45 us of Python per int8 layer per step.
LIBRARY.define("linear_int8(Tensor x, Tensor weight, Tensor scales, Tensor zero_points, Tensor bias, int key) "
               "-> Tensor")
LIBRARY.impl("linear_int8", linear_int8, "CompositeExplicitAutograd")


@torch.library.register_fake("kanade_stream::linear_int8", lib=LIBRARY)
def _linear_int8_shape(x, weight, scales, zero_points, bias, key):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


class ExportableInt8Linear(nn.Module):
    """A torch.ao dynamic int8 Linear as buffers + the `kanade_stream::linear_int8` op: the same numbers, and
    torch.export carries it into an AOTInductor package (torch.ao's packed weights are opaque to it)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        qweight, bias = layer._packed_params._weight_bias()
        if qweight.qscheme() not in (torch.per_channel_affine, torch.per_channel_symmetric):
            raise ValueError(f"expected per-channel int8 weights, got {qweight.qscheme()}")
        self.register_buffer("weight", qweight.int_repr())
        self.register_buffer("scales", qweight.q_per_channel_scales().double())
        self.register_buffer("zero_points", qweight.q_per_channel_zero_points().long())
        self.register_buffer("bias", bias.detach().clone() if bias is not None else torch.zeros(qweight.shape[0]))
        self.key = _digest_key(self.weight, self.scales, self.zero_points, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.kanade_stream.linear_int8(x, self.weight, self.scales, self.zero_points, self.bias, self.key)

    @classmethod
    def stacked(cls, layers: list["ExportableInt8Linear"]) -> "ExportableInt8Linear":
        """One layer computing `layers` side by side on one input, outputs concatenated. Exactly their outputs:
        the input is quantized once either way, and each output row keeps its weights' scale."""
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        for name in ("weight", "scales", "zero_points", "bias"):
            fused.register_buffer(name, torch.cat([getattr(layer, name) for layer in layers]))
        fused.key = _digest_key(fused.weight, fused.scales, fused.zero_points, fused.bias)
        return fused


def _digest_key(*tensors: torch.Tensor) -> int:
    digest = hashlib.blake2b(digest_size=8)
    for tensor in tensors:
        digest.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    return int.from_bytes(digest.digest(), "little") >> 1  # a non-negative int64


class _StackedQKVAttention(Attention):
    """Attention whose q, k, v projections run as one int8 layer `wqkv` (one int8 call instead of three)."""

    def linear_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.wqkv(x).chunk(3, dim=-1)
        return q, k, v


class _StackedFeedForward(FeedForward):
    """SwiGLU whose w1 and w3 run as one int8 layer `w13`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


def _stack_int8_projections(module: nn.Module) -> None:
    """In place: where a block's q/k/v (or SwiGLU w1/w3) are all ExportableInt8Linear, run them as one."""
    for block in module.modules():
        if isinstance(block, Attention) and all(isinstance(getattr(block, n), ExportableInt8Linear)
                                                for n in ("wq", "wk", "wv")):
            block.wqkv = ExportableInt8Linear.stacked([block.wq, block.wk, block.wv])
            del block.wq, block.wk, block.wv
            block.__class__ = _StackedQKVAttention
        elif isinstance(block, FeedForward) and all(isinstance(getattr(block, n), ExportableInt8Linear)
                                                    for n in ("w1", "w3")):
            block.w13 = ExportableInt8Linear.stacked([block.w1, block.w3])
            del block.w1, block.w3
            block.__class__ = _StackedFeedForward


def exportable_int8(module: nn.Module) -> nn.Module:
    """A copy of `module` whose torch.ao dynamic int8 Linear layers are ExportableInt8Linear, the q/k/v and
    SwiGLU w1/w3 projections stacked into one layer each (the module itself when it has no int8 layer)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    names = [name for name, m in module.named_modules() if isinstance(m, DynamicInt8Linear)]
    if not names:
        return module
    module = copy.deepcopy(module)
    for name in names:
        _set_submodule(module, name, ExportableInt8Linear(module.get_submodule(name)))
    _stack_int8_projections(module)
    return module


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


def fake_quantize_conv_weight(weight: torch.Tensor) -> torch.Tensor:
    """A conv weight (out, in, kernel) rounded as its int8 windows layer rounds it (per output channel)."""
    return fake_quantize_weight(weight.reshape(weight.shape[0], -1)).reshape(weight.shape)


def fake_quantize_frames(x: torch.Tensor) -> torch.Tensor:
    """fake_quantize_input over the channels of each frame of (B, C, T)."""
    return fake_quantize_input(x.transpose(1, 2)).transpose(1, 2)


class FakeInt8Linear(nn.Linear):
    """An nn.Linear computing as its int8 form would (same parameters and state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(fake_quantize_input(x), fake_quantize_weight(self.weight), self.bias)


class FakeInt8CausalConv1d(CausalConv1d):
    """A CausalConv1d computing as Int8CausalConv1d would (same parameters and state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return causal_conv(fake_quantize_frames(x), fake_quantize_conv_weight(self.weight), self.bias,
                           self.stride, self.groups)

    def step(self, x: torch.Tensor, state: Dict[str, torch.Tensor],
             condition: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        key = self.state_prefix + "tail"
        y, state[key] = causal_conv_step(fake_quantize_frames(x), state[key], fake_quantize_conv_weight(self.weight),
                                         self.bias, self.stride, self.groups)
        return y, state


class FakeInt8StepSizedConv1d(StepSizedConv1d):
    """A StepSizedConv1d computing as Int8StepSizedConv1d would (same parameters and state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(fake_quantize_frames(x), fake_quantize_conv_weight(self.weight), self.bias)


_FAKE = {nn.Linear: FakeInt8Linear, CausalConv1d: FakeInt8CausalConv1d, StepSizedConv1d: FakeInt8StepSizedConv1d}


def fake_quantize(student: nn.Module, enabled: bool = True) -> list[str]:
    """Switch the int8 layers of `student` to (or back from) their fake-quantized form, in place. The class
    swap keeps parameters, state-dict names and optimizers untouched. Returns the layer names."""
    names = int8_layer_names(student)
    for name in names:
        layer = student.get_submodule(name)
        real = next(plain for plain, fake in _FAKE.items() if isinstance(layer, plain))
        layer.__class__ = _FAKE[real] if enabled else real
    return names
