"""pytest-benchmark of the default streaming student (random weights), not collected by the normal test
run (pytest's testpaths is tests/). Run:

    .venv/bin/python -m pytest benchmarks/test_streaming_benchmark.py --benchmark-columns=median,max,mean
    KANADE_BENCH_THREADS=2 .venv/bin/python -m pytest benchmarks/ ...   # threads (default 1)

Each benchmark is one streaming step on a chunk of 48 kHz input; the naive baseline is the full-size
teacher on a 2 s window (what a sliding-window approach recomputes every 80 ms). For the whole table with
p99, real-time factors and torch.compile, use benchmarks/streaming_table.py.
"""

import os

import pytest
import torch
from streaming_table import INPUT_RATE, build_teacher, make_runner  # benchmarks/ is on sys.path under pytest

from kanade_stream.streaming import KanadeStudent, StudentConfig


@pytest.fixture(autouse=True, scope="module")
def _threads():
    # KANADE_BENCH_THREADS (default 1): on a shared 2-core machine, 2 OpenMP threads on small streaming
    # steps can wait on each other for milliseconds; set 2 on a dedicated machine to compare
    threads = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("KANADE_BENCH_THREADS", "1")))
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    return KanadeStudent(StudentConfig.default()).eval()


def _bench_step(benchmark, runner, state, condition, chunk_samples):
    x = torch.randn(1, chunk_samples) * 0.1
    holder = {"state": state}

    def step():
        _, holder["state"] = runner.step(x, holder["state"], condition)

    with torch.inference_mode():
        for _ in range(3):
            step()
        benchmark.pedantic(step, rounds=50, iterations=1)


@pytest.mark.parametrize("chunk_ms", [40, 80, 160])
@pytest.mark.parametrize("pipeline", ["encoder", "converter"])
@pytest.mark.parametrize("mode", ["eager", "torchscript"])
def test_student_step(benchmark, student, pipeline, mode, chunk_ms):
    runner, state, condition = make_runner(student, pipeline, mode, chunk_ms * INPUT_RATE // 1000)
    benchmark.group = f"{pipeline} {chunk_ms} ms"
    benchmark.extra_info["chunk_ms"] = chunk_ms
    _bench_step(benchmark, runner, state, condition, chunk_ms * INPUT_RATE // 1000)


@pytest.mark.parametrize("chunk_ms", [40, 80])
@pytest.mark.parametrize("mode", ["compile", "aot"])
def test_student_converter_compiled(benchmark, student, mode, chunk_ms):
    runner, state, condition = make_runner(student, "converter", mode, chunk_ms * INPUT_RATE // 1000)
    benchmark.group = f"converter {chunk_ms} ms"
    _bench_step(benchmark, runner, state, condition, chunk_ms * INPUT_RATE // 1000)


def test_naive_teacher_window(benchmark):
    teacher = build_teacher()
    window = torch.randn(2 * teacher.sample_rate) * 0.1
    benchmark.group = "converter 80 ms"

    def run():
        features = teacher.encode(window)
        teacher.decode(features.global_embedding, features.content_token_indices, target_audio_length=window.numel())

    with torch.inference_mode():
        benchmark.pedantic(run, rounds=3, iterations=1)
