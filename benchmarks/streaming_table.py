"""Per-chunk compute time and real-time factor of the default streaming student (random weights) on this
CPU, eager vs torch.compile vs TorchScript vs torch.export + AOTInductor ("aot"), for the encoder alone and the full converter, against a naive
baseline measured in the same run: the full-size bidirectional teacher (reference 25 Hz config + a
full-size WavLM Base+, random weights) re-run on a 2 s sliding window every 80 ms.

    .venv/bin/python benchmarks/streaming_table.py                 # all threads (2 on the target machine)
    .venv/bin/python benchmarks/streaming_table.py --threads 1 --modes eager torchscript
    .venv/bin/python benchmarks/streaming_table.py --threads 1 --modes torchscript torchscript-int8 --chunk-ms 40
    .venv/bin/python benchmarks/streaming_table.py --threads 1 --modes eager torchscript aot --chunk-ms 40 80

"aot" compiles one package per push size the first time (about a minute a graph here, cached in
~/.cache/kanade_stream/aot); its set-up line then gives the compile time, later runs the load time. The
"ran" column says what ran: a compile that failed falls back to eager, and says so.

A mode ending in -int8 runs the same student with int8 weights in its large Linear layers
(kanade_stream.streaming.int8.quantize_int8). Its quality is not measured here (random weights): see the
distillation's int8 report for a student fine-tuned for int8.

RTF = mean compute time per chunk / chunk duration (< 1 keeps up; the goal is <= 0.25 at 80 ms).
Algorithmic latency = chunk + waits (token completion, interpolation, ISTFT, 48 kHz input resampler).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import torch

from kanade_stream.streaming import KanadeStudent, StreamingConverter, StreamingEncoder, StudentConfig
from kanade_stream.streaming.api import CoreRunner
from kanade_stream.streaming.int8 import quantize_int8
from kanade_stream.streaming.pipeline import ConverterCore, EncoderCore

REFERENCE_CONFIG = Path(__file__).resolve().parents[1] / "tests" / "data" / "official_release" / "kanade_25hz_config.yaml"
INPUT_RATE = 48000


def make_runner(student, pipeline: str, mode: str, chunk_samples: int):
    """(runner, fresh state, condition): the condition is a target voice for the converter, None for the encoder.
    An "aot" runner is compiled for pushes of `chunk_samples` (the others take any push)."""
    if mode.endswith("-int8"):
        student, mode = quantize_int8(student), mode[:-len("-int8")]
    core = EncoderCore(student, INPUT_RATE, with_global=True) if pipeline == "encoder" else ConverterCore(student, INPUT_RATE)
    runner = CoreRunner(core, mode, push_size=chunk_samples)
    condition = None if pipeline == "encoder" else torch.randn(1, student.config.global_dim)
    return runner, runner.init_state(1), condition


def time_chunks(runner, state, condition, chunk_samples: int, chunks: int, warmup: int = 5) -> list[float]:
    """Seconds per step over `chunks` pushes of fresh noise (after `warmup` untimed pushes)."""
    times = []
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for i in range(warmup + chunks):
            x = torch.randn(1, chunk_samples, generator=gen) * 0.1
            start = time.perf_counter()
            _, state = runner.step(x, state, condition)
            elapsed = time.perf_counter() - start
            if i >= warmup:
                times.append(elapsed)
    return times


def summarise(times: list[float], chunk_s: float) -> dict:
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return {"median_ms": 1000 * statistics.median(ordered), "p99_ms": 1000 * p99,
            "rtf": statistics.fmean(ordered) / chunk_s}


def build_teacher():
    """The full-size teacher with random weights: reference 25 Hz config + WavLM Base+ shapes."""
    from teacher_throughput import full_size_teacher  # benchmarks/ is on the path when run as a script

    torch.manual_seed(0)
    return full_size_teacher(REFERENCE_CONFIG)


def time_teacher(teacher, runs: int, convert: bool) -> list[float]:
    """One 'chunk' of the naive baseline: the teacher on the last 2 s (24 kHz) every 80 ms."""
    window = torch.randn(2 * teacher.sample_rate) * 0.1
    times = []
    with torch.inference_mode():
        for i in range(runs + 1):
            start = time.perf_counter()
            features = teacher.encode(window)
            if convert:  # tokens + global of the window -> mel of the window (the vocoder not even counted)
                teacher.decode(features.global_embedding, features.content_token_indices, target_audio_length=window.numel())
            if i:
                times.append(time.perf_counter() - start)
    return times


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--chunks", type=int, default=100, help="timed pushes per measurement")
    parser.add_argument("--chunk-ms", type=int, nargs="+", default=[40, 80, 160])
    parser.add_argument("--modes", nargs="+", default=["eager", "compile", "torchscript"])
    parser.add_argument("--pipelines", nargs="+", default=["encoder", "converter"])
    parser.add_argument("--baseline-runs", type=int, default=5)
    parser.add_argument("--model", default=None, help="a student folder to time instead of the default-size "
                        "student with random weights (e.g. kanade_stream/assets/student-tiny)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    torch.manual_seed(0)
    if args.model:
        student, which = KanadeStudent.from_pretrained(args.model).eval(), args.model
    else:
        student, which = KanadeStudent(StudentConfig.default()).eval(), "default student (random weights)"
    print(f"# {which}: {student.num_parameters() / 1e6:.1f} M parameters; torch {torch.__version__}, "
          f"{args.threads} thread(s); input {INPUT_RATE} Hz -> 24 kHz")
    header = f"{'pipeline':<10} {'mode':<17} {'chunk':>6} {'median ms':>10} {'p99 ms':>8} {'RTF':>6} {'latency ms':>11}"
    print(header)
    print("-" * len(header))
    for pipeline in args.pipelines:
        for mode in args.modes:
            runner, setups = None, []
            for chunk_ms in args.chunk_ms:
                chunk_samples = chunk_ms * INPUT_RATE // 1000
                if runner is None or runner.compiled is not None:  # compile once per mode (aot: per push size)
                    start = time.perf_counter()
                    runner, state, condition = make_runner(student, pipeline, mode, chunk_samples)
                    time_chunks(runner, state, condition, chunk_samples, 2, warmup=1)
                    setups.append(time.perf_counter() - start)
                state = runner.init_state(1)
                stats = summarise(time_chunks(runner, state, condition, chunk_samples, args.chunks), chunk_ms / 1000)
                ran = runner.label
                if runner.compiled is not None:
                    ran += f", {runner.compiled.counts['compiled']} compiled / {runner.compiled.counts['eager']} eager pushes"
                api = (StreamingEncoder(student, sample_rate=INPUT_RATE, chunk_ms=chunk_ms) if pipeline == "encoder"
                       else StreamingConverter(student, global_embedding=torch.zeros(student.config.global_dim),
                                               sample_rate=INPUT_RATE, chunk_ms=chunk_ms))
                print(f"{pipeline:<10} {mode:<17} {chunk_ms:>6} {stats['median_ms']:>10.2f} {stats['p99_ms']:>8.2f} "
                      f"{stats['rtf']:>6.3f} {api.latency_ms:>11.1f}   ran: {ran}", flush=True)
            print(f"#   ({mode} set-up incl. compilation / scripting / loading the cached package: "
                  + ", ".join(f"{t:.1f} s" for t in setups) + ")")
    if args.baseline_runs:
        teacher = build_teacher()
        params = sum(p.numel() for p in teacher.parameters()) / 1e6
        for pipeline in args.pipelines:
            stats = summarise(time_teacher(teacher, args.baseline_runs, convert=pipeline == "converter"), 0.08)
            print(f"{pipeline:<10} {'naive':<17} {80:>6} {stats['median_ms']:>10.2f} {stats['p99_ms']:>8.2f} "
                  f"{stats['rtf']:>6.3f} {'80 *':>11}")
        print(f"#   naive = full-size teacher ({params:.0f} M parameters incl. WavLM Base+ layers 1-9) on a 2 s window "
              "every 80 ms (converter row: encode + mel decode, vocoder not counted); * its 80 ms has no right "
              "context at the window edge, and with RTF > 1 it falls further behind every chunk")


if __name__ == "__main__":
    main()
