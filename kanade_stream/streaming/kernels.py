"""The ops a compiled step's graphs call, in the `kanade_stream` namespace, and their C++ kernels.

- `kanade_stream::linear_int8` (defined in int8.py): torch.ao's dynamic int8 Linear on plain tensors;
  C++ kernel int8_kernel.cpp.
- `kanade_stream::attention` (here): attention for a streaming step's few queries over its KV cache;
  C++ kernel attention_kernel.cpp.

Each op has a Python kernel computing the same numbers, which serves every device and any CPU where the
C++ could not be built. `load_kernels()` builds the C++ once (torch's cpp_extension, about a minute; cached
in ~/.cache/torch_extensions) and its CPU kernels take over. Compiled steps trace a copy of their core in
which these ops replace the layers they stand for (`int8.exportable_int8`; `with_kernel_attention` for a
core on CPU); eager and TorchScript paths keep the plain layers.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..modules.attention import Attention

LIBRARY = torch.library.Library("kanade_stream", "DEF")
_BUILT: dict[str, str] = {}  # "kind": "C++" or "Python (why)"


def load_kernels() -> str:
    """Build (first time) and load the C++ kernels of this namespace's ops. Returns "C++", or
    "Python (...)" with the reason they could not be built (the Python kernels then run, slower)."""
    if not _BUILT:
        try:
            from torch.utils.cpp_extension import load

            here = Path(__file__).parent
            load("kanade_stream_kernels", [str(here / "int8_kernel.cpp"), str(here / "attention_kernel.cpp")],
                 extra_cflags=["-O3"], is_python_module=False, verbose=False)
            _BUILT["kind"] = "C++"
        except Exception as err:  # no compiler or headers
            _BUILT["kind"] = f"Python ({type(err).__name__}: {str(err).strip()[:120]})"
            warnings.warn(f"the C++ kernels could not be built ({err}); the Python ones run instead",
                          RuntimeWarning)
    return _BUILT["kind"]


# --- kanade_stream::attention ----------------------------------------------------------------------------

LIBRARY.define("attention(Tensor q, Tensor k, Tensor v, Tensor? mask, float scale) -> Tensor")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
              scale: float) -> torch.Tensor:
    """(B, H, Tq, D) queries over (B, H, Tk, D) keys and values, `mask` (Tq, Tk) True = attend ->
    (B, Tq, H * D): scaled_dot_product_attention with the heads put back side by side."""
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out.transpose(1, 2).flatten(2)


LIBRARY.impl("attention", attention, "CompositeExplicitAutograd")


@torch.library.register_fake("kanade_stream::attention", lib=LIBRARY)
def _attention_shape(q, k, v, mask, scale):
    return q.new_empty(q.shape[0], q.shape[2], q.shape[1] * q.shape[3])


class _KernelAttend:
    """Mixed into an Attention class: `attend` through kanade_stream::attention (same numbers)."""

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.wo(torch.ops.kanade_stream.attention(q, k, v, mask, self.scale))


_KERNEL_CLASSES: dict[type, type] = {}


def with_kernel_attention(module: nn.Module) -> nn.Module:
    """A copy of `module` sharing its weights (no tensor is copied) whose Attention layers (of any Attention
    class, e.g. int8.py's stacked q/k/v) attend through kanade_stream::attention."""
    shared = {id(t): t for t in (*module.parameters(), *module.buffers())}
    module = copy.deepcopy(module, shared)
    for block in module.modules():
        if isinstance(block, Attention) and not isinstance(block, _KernelAttend):
            cls = type(block)
            if cls not in _KERNEL_CLASSES:
                _KERNEL_CLASSES[cls] = type(f"Kernel{cls.__name__}", (_KernelAttend, cls), {})
            block.__class__ = _KERNEL_CLASSES[cls]
    return module
