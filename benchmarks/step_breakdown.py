"""Where one compiled converter step spends its time: the front graph (input resampler, SSL encoder,
tokens, prenet), the interpolation's taps between the graphs, the back graph (interpolation, mel decoder,
PostNet, vocoder, ISTFT), and the rest (the step's own bookkeeping), each timed around its call on one
thread.

    .venv/bin/python benchmarks/step_breakdown.py                      # default-size student, int8, 40 ms
    .venv/bin/python benchmarks/step_breakdown.py --precision float32 --chunk-ms 80
    .venv/bin/python benchmarks/step_breakdown.py --kernels            # + a per-kernel profile inside the graphs

`--kernels` compiles the graphs again with Inductor's kernel profiling (`cpp.enable_kernel_profile`, in a
cache folder of its own, about 2 minutes the first time) and prints torch.profiler's table: generated
kernels by name, and the calls they make (`kanade_stream::linear_int8`, `aoti_torch_cpu_addmm_out` for
the float matrix products, flash attention). The profiler adds a few microseconds a call: read that
table for shares, the timers for times.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from streaming_table import INPUT_RATE  # benchmarks/ is on sys.path when a script here runs

from kanade_stream.cache import cache_root
from kanade_stream.streaming import KanadeStudent, StudentConfig
from kanade_stream.streaming.compiled import CompiledStep
from kanade_stream.streaming.int8 import quantize_int8
from kanade_stream.streaming.pipeline import ConverterCore


def timed(function, times: list[float]):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        times.append(time.perf_counter() - start)
        return result
    return wrapper


def step_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose the step timed (shared with attention_kernel.py)."""
    parser.add_argument("--model", default=None, help="a student folder (default: the default-size student, "
                        "random weights)")
    parser.add_argument("--precision", choices=("int8", "float32"), default="int8")
    parser.add_argument("--chunk-ms", type=int, default=40)


def step_student(args: argparse.Namespace) -> torch.nn.Module:
    """The student those options name, on one thread, in the precision asked."""
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    torch.manual_seed(0)
    student = (KanadeStudent.from_pretrained(args.model) if args.model
               else KanadeStudent(StudentConfig.default())).eval()
    return quantize_int8(student) if args.precision == "int8" else student


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    step_arguments(parser)
    parser.add_argument("--pushes", type=int, default=200, help="timed pushes (after 20 untimed)")
    parser.add_argument("--kernels", action="store_true", help="also profile the kernels inside the graphs")
    args = parser.parse_args(argv)
    student = step_student(args)
    if args.kernels:
        import torch._inductor.config as inductor_config

        inductor_config.cpp.enable_kernel_profile = True
    cache_dir = cache_root() / ("aot-kernel-profile" if args.kernels else "aot")
    push = args.chunk_ms * INPUT_RATE // 1000
    core = ConverterCore(student, INPUT_RATE)
    step = CompiledStep(core, push, "aot", cache_dir=cache_dir, log=print)

    parts: dict[str, list[float]] = {"front graph": [], "taps": [], "back graph": []}
    for name, graph in [("front graph", step.front), *(("back graph", back) for back in step.backs.values())]:
        if graph.flat_run is not None:  # what a step calls: the package's runner on flat lists, or its wrapper
            graph.flat_run = timed(graph.flat_run, parts[name])
        else:
            graph.run = timed(graph.run, parts[name])
    step.interpolation_taps = timed(step.interpolation_taps, parts["taps"])

    state, condition = step.init_state(1), torch.randn(1, student.config.global_dim)
    noise = torch.Generator().manual_seed(0)
    totals: list[float] = []
    with torch.inference_mode():
        for i in range(20 + args.pushes):
            if i == 20:
                totals.clear()
                for times in parts.values():
                    times.clear()
            x = torch.randn(1, push, generator=noise) * 0.1
            start = time.perf_counter()
            _, state = step.step(x, state, condition)
            totals.append(time.perf_counter() - start)
        if step.counts["eager"] > 2:  # the first pushes of a stream run eagerly; later ones must not
            raise SystemExit(f"{step.counts['eager']} pushes ran eagerly: the breakdown would not be of the graphs")

        print(f"# {args.model or 'default-size student (random weights)'}, {args.precision}, {args.chunk_ms} ms "
              f"pushes, 1 thread, {step.label}; mean ms per push over {args.pushes} pushes, medians in brackets")
        accounted = 0.0
        for name, times in parts.items():
            per_push = sum(times) / len(totals)
            accounted += per_push
            print(f"{name:<14} {per_push * 1e3:7.2f}   ({statistics.median(times) * 1e3:.2f} a call, "
                  f"{len(times)} calls)")
        total = statistics.mean(totals)
        print(f"{'rest':<14} {(total - accounted) * 1e3:7.2f}")
        print(f"{'step':<14} {total * 1e3:7.2f}   (median {statistics.median(totals) * 1e3:.2f})")

        if args.kernels:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as profiler:
                for _ in range(50):
                    _, state = step.step(torch.randn(1, push, generator=noise) * 0.1, state, condition)
            print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=30,
                                                max_name_column_width=70))


if __name__ == "__main__":
    main()
