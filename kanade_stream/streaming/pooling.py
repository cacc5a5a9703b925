"""The student's global (speaker) branch: a causal ConvNeXt backbone and attentive statistics pooling
accumulated online, so the embedding of a voice refines as audio arrives.

No `from __future__ import annotations` here: TorchScript reads the annotations.
"""

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from ..modules.convnets import AttentiveStatsPooling
from ..modules.streaming import StreamingModule, name_states
from .convs import CausalConvNeXtBackbone


class StreamingStatsPooling(StreamingModule, AttentiveStatsPooling):
    """The teacher's attentive statistics pooling (same parameters) over a growing stream.

    The softmax over time is accumulated online per channel (`AttentiveStatsPooling.accumulate`: running
    max, and sums of weights, weighted x and weighted x^2 rescaled when the max grows, in float64), so the
    state is 4 vectors of `channels`
    whatever the length. State: `max`, `sum_w`, `sum_wx`, `sum_wx2`, and `embedding` (B, output_channels),
    the embedding of everything seen so far (defined once at least one frame has been seen).
    """

    def __init__(self, channels: int, output_channels: int, attention_channels: int = 128):
        AttentiveStatsPooling.__init__(self, channels, output_channels, attention_channels)
        self.state_prefix = ""
        self.channels, self.output_channels = channels, output_channels

    def init_state(self, batch: int = 1) -> Dict[str, Tensor]:
        p = self.state_prefix
        # the norm's weight, not proj's: proj may be an int8 layer, which has no weight tensor
        zeros = torch.zeros(batch, self.channels, dtype=torch.float64, device=self.norm.weight.device)
        return {p + "max": zeros - 1e300, p + "sum_w": zeros, p + "sum_wx": zeros.clone(), p + "sum_wx2": zeros.clone(),
                p + "embedding": self.norm.weight.new_zeros(batch, self.output_channels)}

    def step(self, x: Tensor, state: Dict[str, Tensor],
             condition: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
        """x: (B, C, n) new frames -> (embedding so far (B, output_channels), state)."""
        p = self.state_prefix
        if x.shape[-1] == 0:
            return state[p + "embedding"], state
        running_max, sum_w, sum_wx, sum_wx2 = self.accumulate(x, state[p + "max"], state[p + "sum_w"],
                                                              state[p + "sum_wx"], state[p + "sum_wx2"])
        embedding = self.pooled(sum_w, sum_wx, sum_wx2)
        state[p + "max"], state[p + "sum_w"], state[p + "sum_wx"] = running_max, sum_w, sum_wx
        state[p + "sum_wx2"], state[p + "embedding"] = sum_wx2, embedding
        return embedding, state


class CausalGlobalEncoder(StreamingModule):
    """Global branch of the student: causal ConvNeXt backbone + streaming attentive stats, (B, T, C) features ->
    (B, output_channels). Parameter names follow the teacher's GlobalEncoder (backbone.embed, backbone.convnext.N,
    pooling). The running embedding is the state entry `pooling.embedding`."""

    def __init__(self, input_channels: int, output_channels: int, num_layers: int, dim: int, intermediate_dim: int,
                 kernel_size: int = 7):
        super().__init__()
        self.output_channels = output_channels
        self.backbone = CausalConvNeXtBackbone(input_channels, dim, intermediate_dim, num_layers, kernel_size)
        self.pooling = StreamingStatsPooling(dim, output_channels)
        name_states(self)  # children's entries under their paths; a parent model renames them

    def init_state(self, batch: int = 1) -> Dict[str, Tensor]:
        state = self.backbone.init_state(batch)
        state.update(self.pooling.init_state(batch))
        return state

    def forward(self, features: Tensor) -> Tensor:
        return self.pooling(self.backbone(features.transpose(1, 2)))

    def step(self, features: Tensor, state: Dict[str, Tensor],
             condition: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
        hidden, state = self.backbone.step(features.transpose(1, 2), state)
        return self.pooling.step(hidden, state)
