"""Corpus tokenization on this machine: throughput with 1 and 2 processes (torchrun), and peak memory for
long files (1 minute, 10 minutes, 1 hour) with windowed encoding.

    .venv/bin/python benchmarks/tokenize_corpus.py                       # embedded teacher, all measurements
    .venv/bin/python benchmarks/tokenize_corpus.py --skip-memory --files 48
    .venv/bin/python benchmarks/tokenize_corpus.py --model path/to/kanade-25hz --ssl-model path/to/wavlm

Speech is eSpeak NG from the embedded corpus (the same voices the demo uses); long files loop one minute
of it. Every figure is measured here, in child processes running the real command line; peak memory is
the child's maximum resident set size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf


def make_corpus(folder: Path, files: int, seconds: float) -> float:
    """`files` clips of about `seconds` each, in several voices; returns the total audio seconds."""
    from kanade_stream.corpus import make_voices, synthesize

    voices = make_voices(8, seed=3)
    sentence = "A quiet voice reads the numbers on the board, one line after another, slowly and clearly."
    total = 0.0
    for i in range(files):
        audio = synthesize(sentence, voices[i % len(voices)], 24000)
        repeat = max(1, int(round(seconds * 24000 / len(audio))))
        audio = np.tile(audio, repeat)
        sf.write(folder / f"clip{i:03d}.wav", audio, 24000)
        total += len(audio) / 24000
    return total


def make_long_file(path: Path, minutes: float) -> None:
    """Loop one minute of speech, written block by block (the writer holds one minute, not the file)."""
    from kanade_stream.corpus import make_voices, synthesize

    voices = make_voices(4, seed=5)
    minute = np.concatenate([synthesize(f"This is sentence number {i} of a very long recording.", voices[i % 4], 24000)
                             for i in range(12)])
    minute = np.tile(minute, int(np.ceil(60 * 24000 / len(minute))))[: 60 * 24000]
    with sf.SoundFile(path, "w", 24000, 1, subtype="PCM_16") as f:
        for _ in range(int(round(minutes))):
            f.write(minute)


def run(command: list[str], env: dict | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{result.stderr[-2000:]}")
    return time.perf_counter() - start, result.stdout


def child_peak_memory(argv: list[str]) -> None:
    """Run the command line in this process and print its peak RSS (used through --child)."""
    from kanade_stream.cli import main

    code = main(argv)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"code": code, "peak_mb": peak_mb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=32, help="clips in the throughput corpus")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each clip")
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60], help="long-file lengths")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--window-seconds", type=float, default=None, help="windowed encoding (default: the CLI's)")
    parser.add_argument("--context-seconds", type=float, default=None)
    parser.add_argument("--model", default=None, help="teacher (default: the embedded demo teacher)")
    parser.add_argument("--ssl-model", default=None)
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        return child_peak_memory(args.child)

    model = (["--model", args.model] if args.model else []) + (["--ssl-model", args.ssl_model] if args.ssl_model else [])
    windows = ((["--window-seconds", str(args.window_seconds)] if args.window_seconds else [])
               + (["--context-seconds", str(args.context_seconds)] if args.context_seconds is not None else []))
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // 2)))
    print(f"# {platform.node()}: {os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}; "
          f"model: {args.model or 'embedded demo teacher'}")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        if not args.skip_throughput:
            corpus = scratch / "corpus"
            corpus.mkdir()
            audio_seconds = make_corpus(corpus, args.files, args.seconds)
            print(f"throughput: {args.files} files, {audio_seconds / 60:.1f} min of audio")
            rows = []
            for processes in (1, 2):
                out = scratch / f"tokens{processes}"
                if processes == 1:
                    command = [sys.executable, "-m", "kanade_stream", "tokenize", str(corpus), "--out", str(out)]
                    child_env = dict(os.environ, OMP_NUM_THREADS=str(os.cpu_count() or 2))
                else:
                    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                               str(processes), "-m", "kanade_stream", "tokenize", str(corpus), "--out", str(out)]
                    child_env = env  # the cores are shared between the processes
                seconds, _ = run(command + model, child_env)
                rows.append((processes, seconds))
                print(f"  {processes} process(es): {seconds:6.1f} s wall (start-up included), "
                      f"{args.files / seconds:5.2f} files/s, {audio_seconds / seconds:6.1f} audio-hours per hour")
            print(f"  speed-up 2 vs 1: {rows[0][1] / rows[1][1]:.2f}x")
        if not args.skip_memory:
            print(f"peak memory (windows: {args.window_seconds or 'default 30'} s, context "
                  f"{args.context_seconds if args.context_seconds is not None else 'default 5'} s):")
            for minutes in args.minutes:
                path = scratch / f"long{minutes:g}min.wav"
                make_long_file(path, minutes)
                seconds, stdout = run([sys.executable, __file__, "--child", "tokenize", str(path), "--out",
                                       str(scratch / "long"), "--overwrite", *model, *windows])
                peak = json.loads(stdout.strip().splitlines()[-1])["peak_mb"]
                print(f"  {minutes:g} min: peak {peak:7.0f} MB, {seconds:6.1f} s wall "
                      f"({minutes * 60 / seconds:.1f}x real time)")
                path.unlink()


if __name__ == "__main__":
    main()
