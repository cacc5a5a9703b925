"""What the compiled step's attention kernel buys: the same converter step compiled twice, its attention
through this package's kernel (`kanade_stream::attention`, as compiled steps run it) and through torch's
own scaled_dot_product_attention (flash attention on CPU), timed in alternating rounds in one process
(this host's speed drifts within minutes: compare the rounds, not runs of separate processes).

    .venv/bin/python benchmarks/attention_kernel.py                  # default-size student, int8, 40 ms
    .venv/bin/python benchmarks/attention_kernel.py --precision float32 --rounds 4

Prints the largest difference between the two streams' audio (float32: float rounding; int8: each int8
call rounds its input on its own range, so tiny differences upstream can move a few outputs), then each
round's median and p99 ms per push. The torch-attention graphs are cached apart (in `aot-torch-attention`
under the package cache) since their cache key does not tell the two forms apart.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from step_breakdown import step_arguments, step_student  # benchmarks/ is on sys.path when a script here runs
from streaming_table import INPUT_RATE

import kanade_stream.streaming.compiled as compiled
from kanade_stream.cache import cache_root
from kanade_stream.streaming.pipeline import ConverterCore


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    step_arguments(parser)
    parser.add_argument("--rounds", type=int, default=8, help="alternating rounds")
    parser.add_argument("--pushes", type=int, default=150, help="timed pushes a round")
    args = parser.parse_args(argv)
    student = step_student(args)
    push = args.chunk_ms * INPUT_RATE // 1000
    steps = {"kernel": compiled.CompiledStep(ConverterCore(student, INPUT_RATE), push, "aot",
                                             cache_dir=cache_root() / "aot", log=print)}
    with_kernel = compiled.with_kernel_attention
    compiled.with_kernel_attention = lambda module: module  # trace the core's own attention
    try:
        steps["torch"] = compiled.CompiledStep(ConverterCore(student, INPUT_RATE), push, "aot",
                                               cache_dir=cache_root() / "aot-torch-attention", log=print)
    finally:
        compiled.with_kernel_attention = with_kernel

    condition = torch.randn(1, student.config.global_dim)
    noise = torch.Generator().manual_seed(0)
    inputs = [torch.randn(1, push, generator=noise) * 0.1 for _ in range(40)]
    states = {name: step.init_state(1) for name, step in steps.items()}
    with torch.inference_mode():
        audio = {}
        for name, step in steps.items():  # warm-up, and the two streams side by side
            pieces = []
            for x in inputs:
                y, states[name] = step.step(x, states[name], condition)
                pieces.append(y)
            audio[name] = torch.cat(pieces, 1)
        difference = (audio["kernel"] - audio["torch"]).abs().max().item()
        print(f"# {args.model or 'default-size student (random weights)'}, {args.precision}, {args.chunk_ms} ms pushes, "
              f"1 thread, {steps['kernel'].label}; largest audio difference between the two: {difference:.2e} "
              f"(peak {audio['torch'].abs().max().item():.2f})")
        medians: dict[str, list[float]] = {name: [] for name in steps}
        for round_ in range(args.rounds):
            for name, step in steps.items():
                times = []
                for i in range(args.pushes):
                    x = inputs[i % len(inputs)]
                    start = time.perf_counter()
                    _, states[name] = step.step(x, states[name], condition)
                    times.append(time.perf_counter() - start)
                times.sort()
                medians[name].append(statistics.median(times))
                print(f"round {round_}  {name:<7} attention  median {statistics.median(times) * 1e3:5.2f} ms  "
                      f"p99 {times[int(0.99 * len(times))] * 1e3:5.2f} ms", flush=True)
        for name, values in medians.items():
            if values:
                print(f"{name:<7} attention: mean of the round medians {statistics.mean(values) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
