"""Is model B better than model A, or is it the judges' noise? Two runs of benchmarks/quality.py, paired clip by clip.

    .venv/bin/python benchmarks/compare_quality.py --a runs/q-old-0 runs/q-old-8 --b runs/q-new-0 runs/q-new-8

Each argument is a quality.py --out folder (or its quality.json); several on one side are pooled (e.g. the
`--first 0` and `--first 8` runs). Only clips both sides judged count. For every row and metric both sides
have: A, B, B - A and its 95 % interval from a paired bootstrap over clips (kanade_stream.evaluation.compare).
WER: lower is better; similarity to the same voice (resynthesis) and to the target, and target - source:
higher is better; a conversion's similarity to its source: lower.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kanade_stream.evaluation.compare import METRICS, compare, load_items, paired_rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--a", nargs="+", type=Path, required=True, help="quality.py output folders of model A")
    p.add_argument("--b", nargs="+", type=Path, required=True, help="quality.py output folders of model B")
    p.add_argument("--rounds", type=int, default=4000, help="bootstrap resamples (default 4000)")
    args = p.parse_args(argv)
    try:
        rows = paired_rows(load_items(args.a), load_items(args.b))
    except (OSError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not rows:
        print("error: the two sides share no clip: run both with the same --voices, --sentences and --first",
              file=sys.stderr)
        return 2
    print("| row | metric | clips | A | B | B - A | 95 % interval |")
    print("|---|---|---:|---:|---:|---:|---|")
    for row, pairs in rows.items():
        for metric in METRICS:
            r = compare(pairs, metric, args.rounds)
            if r is not None:
                print(f"| {row} | {metric} | {r['clips']} | {r['a']:.3f} | {r['b']:.3f} | {r['delta']:+.3f} | "
                      f"[{r['low']:+.3f}, {r['high']:+.3f}] |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
