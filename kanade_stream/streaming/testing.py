"""Helpers for checking streaming against offline forms: cuttings of a sequence and push-by-push runners
(used by the tests; handy for anyone adding a streaming block)."""

import random

import torch


def cuttings(length: int, seed: int = 0, singles: bool = True) -> list[list[int]]:
    """Ways to cut `length` items into pushes: one push, single items, odd sizes, random sizes with empties."""
    rng = random.Random(seed)
    cuts = [[length]]
    if singles:
        cuts.append([1] * length)
    odd, left, k = [], length, 0
    while left > 0:
        size = min((3, 5, 7, 11, 13)[k % 5], left)
        odd.append(size)
        left, k = left - size, k + 1
    cuts.append(odd)
    for _ in range(2):
        sizes, left = [], length
        while left > 0:
            size = min(rng.choice([0, 1, 2, rng.randint(1, max(1, length // 3))]), left)
            sizes.append(size)
            left -= size
        cuts.append(sizes)
    return cuts


def run_stream(module, x: torch.Tensor, sizes: list[int], dim: int = -1, out_dim: int = -1, **kwargs) -> torch.Tensor:
    """Feed x to module.step in pieces of `sizes` along `dim`; concatenate the outputs along `out_dim`."""
    state = module.init_state(x.shape[0])
    outputs, start = [], 0
    for size in sizes:
        piece = x.narrow(dim, start, size)
        start += size
        y, state = module.step(piece, state, **kwargs)
        outputs.append(y)
    return torch.cat(outputs, dim=out_dim)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(float(expected.abs().max()), 1e-12) if expected.numel() else 1.0
    err = float((actual - expected).abs().max()) if expected.numel() else 0.0
    assert err <= rel * scale, f"max error {err:.3g} > {rel:g} x max magnitude {scale:.3g}"


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Random weights that exercise every path: zero-initialised AdaLN-Zero projections and tiny ConvNeXt
    layer scales would otherwise hide the conditioning and the blocks."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "condition_proj" in name or name.endswith("gamma"):
                p.copy_(torch.randn(p.shape, generator=generator) * std)
    return model
