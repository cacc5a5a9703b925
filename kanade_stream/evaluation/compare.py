"""Two quality runs of the same held-out clips, compared clip by clip: is B better than A, or is it the judges' noise?

Items are benchmarks/quality.py's (quality.json), paired by row, voice, sentence text and target voice. Each
figure comes with a 95 % interval for B - A from a paired bootstrap over clips: the clips are resampled with
replacement and both sides are scored on the same resample, so what the two share (a sentence the recogniser
always misses) cancels. An interval that holds 0 means these clips cannot tell the two apart.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# wer: corpus word error rate (lower is better); the others: mean speaker similarity (higher is better);
# tgt_minus_src: per conversion, similarity to the target minus to the source
METRICS = ("wer", "sim_source", "sim_target", "tgt_minus_src")


def load_items(paths: list[Path]) -> dict[tuple, dict]:
    """The items of quality.json files (or of the folders holding them), keyed by (row, voice, text, target)."""
    items: dict[tuple, dict] = {}
    for path in map(Path, paths):
        file = path / "quality.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"{path}: no quality.json (pass a benchmarks/quality.py --out folder)")
        for item in json.loads(file.read_text())["items"]:
            key = (item["row"], item["voice"], item["text"], item.get("target"))
            if key in items:
                raise ValueError(f"{file}: clip {key} is already in another file of the same side: pass each run once")
            items[key] = item
    return items


def paired_rows(a: dict[tuple, dict], b: dict[tuple, dict]) -> dict[str, list[tuple[dict, dict]]]:
    """Row -> the (A item, B item) pairs of the clips both sides judged."""
    rows: dict[str, list[tuple[dict, dict]]] = {}
    for key in sorted(set(a) & set(b), key=str):
        rows.setdefault(key[0], []).append((a[key], b[key]))
    return rows


def _per_clip(pairs: list[tuple[dict, dict]], metric: str, side: int) -> tuple[np.ndarray, np.ndarray]:
    """(numerator, weight) per clip: errors and words for WER, the value and 1 (0 where missing) otherwise."""
    num, weight = np.zeros(len(pairs)), np.zeros(len(pairs))
    for i, pair in enumerate(pairs):
        item = pair[side]
        if metric == "wer":
            num[i], weight[i] = item["errors"], item["words"]
            continue
        if metric == "tgt_minus_src":
            s, t = item.get("sim_source"), item.get("sim_target")
            value = None if s is None or t is None else t - s
        else:
            value = item.get(metric)
        if value is not None:
            num[i], weight[i] = value, 1.0
    return num, weight


def compare(pairs: list[tuple[dict, dict]], metric: str, rounds: int = 4000, seed: int = 0) -> dict | None:
    """A, B, B - A and the 95 % paired-bootstrap interval of B - A; None where a side has no value."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    (num_a, w_a), (num_b, w_b) = _per_clip(pairs, metric, 0), _per_clip(pairs, metric, 1)
    if not w_a.sum() or not w_b.sum():
        return None
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(pairs), np.full(len(pairs), 1 / len(pairs)), size=rounds)  # (rounds, clips)
    with np.errstate(invalid="ignore", divide="ignore"):
        deltas = counts @ num_b / (counts @ w_b) - counts @ num_a / (counts @ w_a)
    low, high = np.nanpercentile(deltas, [2.5, 97.5])
    a, b = num_a.sum() / w_a.sum(), num_b.sum() / w_b.sum()
    return {"clips": len(pairs), "a": float(a), "b": float(b), "delta": float(b - a), "low": float(low),
            "high": float(high)}
