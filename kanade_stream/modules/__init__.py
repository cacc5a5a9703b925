"""Neural building blocks shared by the teacher and the streaming student."""

from .convnets import ConvNeXtBlock, GlobalEncoder, PostNet
from .fsq import FiniteScalarQuantizer
from .transformer import AdaLNZero, Transformer

__all__ = ["AdaLNZero", "ConvNeXtBlock", "FiniteScalarQuantizer", "GlobalEncoder", "PostNet", "Transformer"]
