"""The streaming contract every causal block of the student follows.

A streaming module computes one function in two forms:

- `forward(x, ...)`: offline, over a whole sequence (training, evaluation);
- `step(x, state, condition=None) -> (y, state)`: the same function fed piece by piece, where `x` is
  whatever new input arrived (any length, 0 included, unless the module says otherwise) and `y` is
  exactly the output that became final.

The two agree for any way of cutting the input (tests/test_streaming_blocks.py checks every block).

State is one flat `Dict[str, Tensor]` for a whole pipeline, keyed by qualified names:
`<module path>.<entry>`, e.g. `ssl_lower.layers.0.keys` or `vocoder.istft.tail`. `name_states(root)`
gives every streaming module below `root` its path (its `state_prefix`), so any state tensor can be
found by name, printed and checked, and composites need no bookkeeping of offsets: they pass the one
dict to their children. `init_state(batch)` returns a module's own entries and those of its children.

`step` updates the dict it is given (new tensors under the same names; the attention KV rings are
written in place, so no window is copied each step) and returns it. Streams validate every input before
calling `step`, so a refused push leaves the state untouched. State sizes are fixed at `init_state`:
a stream of any length uses the same memory.

Conditioning (the global embedding of the voice) is the `condition` argument, never a state entry.

No `from __future__ import annotations` here: TorchScript reads the annotations.
"""

from typing import Dict, List, Optional, Tuple

from torch import Tensor, nn

StreamState = Dict[str, Tensor]


class StreamingModule(nn.Module):
    """Base of every streaming block. Stateless blocks inherit `init_state` (no entries) and a `step`
    that is their `forward`. Subclasses keep their entries under `self.state_prefix + name`."""

    state_prefix: str

    def __init__(self):
        super().__init__()
        self.state_prefix = ""

    def init_state(self, batch: int = 1) -> Dict[str, Tensor]:
        return {}

    def step(self, x: Tensor, state: Dict[str, Tensor],
             condition: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
        return self.forward(x), state


def name_states(root: nn.Module, prefix: str = "") -> None:
    """Give every streaming module in `root` (itself included) its state prefix: its module path below
    `root`, after `prefix`. Call once when a model or pipeline is built."""
    for path, module in root.named_modules():
        if isinstance(module, StreamingModule):
            full = ".".join(part for part in (prefix, path) if part)
            module.state_prefix = full + "." if full else ""


def state_numel(state: Dict[str, Tensor]) -> int:
    return sum(int(t.numel()) for t in state.values())


def describe_state(state: Dict[str, Tensor]) -> List[str]:
    """One line per entry: name, shape, dtype (for printing and debugging a stream)."""
    return [f"{name}: {tuple(t.shape)} {str(t.dtype).replace('torch.', '')}" for name, t in sorted(state.items())]


def copy_state(state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """A deep copy: `step` writes the KV rings in place, so keep a copy to branch or roll back a stream."""
    return {name: t.clone() for name, t in state.items()}


