"""The live programs behind demos/live_vc.py and demos/live_tokenize.py.

Both run the streaming student through `run_session`, on real devices (PyAudio) or on files
(`--input in.wav --output out.wav`), print a one-line live status, and a summary at exit. Every way
this can go wrong ends with one clear message and a non-zero exit code, never a traceback: missing or
vanished devices, unreadable/silent/short reference clips, a missing model.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from ..audio import MIX_CHOICES, AudioError, load_audio
from .backends import AudioBackend, DeviceError, FileBackend
from .devices import PyAudioBackend, format_devices, list_devices
from .engine import AudioEngine
from .session import SessionOptions, Summary, run_session

MIN_REFERENCE_SECONDS = 1.0
SILENCE_RMS = 1e-4


class LiveError(RuntimeError):
    pass


def load_reference(path: str | Path, sample_rate: int, mix: str | None = "mean") -> np.ndarray:
    """The target-voice clip, checked: readable, long enough, not silent."""
    try:
        wave, _ = load_audio(path, sample_rate=sample_rate, mix=mix)
    except (FileNotFoundError, AudioError) as err:
        raise LiveError(f"reference clip: {err}") from err
    seconds = wave.numel() / sample_rate
    if seconds < MIN_REFERENCE_SECONDS:
        raise LiveError(f"reference clip {path} is {seconds:.2f} s long; give at least {MIN_REFERENCE_SECONDS:g} s "
                        "of the target voice (3-10 s works best)")
    rms = float(wave.pow(2).mean().sqrt())
    if rms < SILENCE_RMS:
        raise LiveError(f"reference clip {path} is silent (RMS {rms:.1e}); record the target voice speaking")
    return wave.numpy()


def build_parser(mode: str) -> argparse.ArgumentParser:
    what = "live voice conversion, microphone to speakers" if mode == "vc" else "live tokenization of the microphone"
    parser = argparse.ArgumentParser(description=f"kanade-stream: {what}. Ctrl-C stops and prints a summary.")
    if mode == "vc":
        parser.add_argument("--ref", help="a clip of the target voice (wav/flac, 1 s or more)")
    parser.add_argument("--model", default=None, help="student folder (default: the embedded demo student)")
    parser.add_argument("--chunk-ms", type=int, default=80, help="model chunk: 40, 80 or 160 ms (default 80)")
    parser.add_argument("--list-devices", action="store_true", help="list audio devices and exit")
    parser.add_argument("--input-device", default=None, help="input device index or name (default: system default)")
    if mode == "vc":
        parser.add_argument("--output-device", default=None, help="output device index or name")
    parser.add_argument("--block-ms", type=float, default=10.0, help="device buffer in ms (default 10)")
    parser.add_argument("--input", default=None, help="file mode: read this audio file instead of the microphone")
    if mode == "vc":
        parser.add_argument("--output", default=None, help="file mode: write the converted audio here")
    parser.add_argument("--paced", action="store_true", help="file mode: feed the file in real time")
    files = "an --input file or --ref clip" if mode == "vc" else "an --input file"
    parser.add_argument("--mix", choices=MIX_CHOICES, default=None,
                        help=f"how to mix {files} with several channels down to mono (a stereo --input needs it"
                        + ("; --ref defaults to mean)" if mode == "vc" else ")"))
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds (device mode)")
    parser.add_argument("--summary-json", default=None, help="also write the exit summary as JSON to this file")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for the model (default 1: on a busy laptop more threads mostly wait)")
    parser.add_argument("--quiet", action="store_true", help="no live status line")
    return parser


def _load_student(path: str | None):
    from ..pretrained import default_student
    from ..streaming import load_student

    folder = Path(path) if path else default_student()
    try:
        return load_student(folder)
    except (FileNotFoundError, OSError, ValueError, RuntimeError) as err:
        raise LiveError(f"cannot load the student model from {folder}: {err}") from err


def _status_printer(quiet: bool):
    last = [0.0]

    def show(engine: AudioEngine) -> None:
        now = time.monotonic()
        if quiet or now - last[0] < 0.25:
            return
        last[0] = now
        end = "\r" if sys.stderr.isatty() else "\n"
        print(engine.status_line(), end=end, file=sys.stderr, flush=True)

    return show


def main(mode: str) -> None:
    """The programs' entry point: `run`, then exit at once. Everything is written and closed by then;
    the interpreter's own teardown (torch's, mostly) takes a second or more on a busy machine, which
    would otherwise stand between a Ctrl-C and the prompt."""
    code = run(mode)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run(mode: str, argv: list[str] | None = None) -> int:
    args = build_parser(mode).parse_args(argv)
    try:
        if args.list_devices:
            print(format_devices(list_devices()))
            return 0
        if mode == "vc" and not args.ref:
            raise LiveError("--ref is required: a clip of the voice to convert to")
        if mode == "vc" and (args.input is None) != (args.output is None):
            raise LiveError("file mode needs both --input and --output")
        summary = _run(mode, args)
    except (LiveError, DeviceError, AudioError, FileNotFoundError) as err:
        print(f"\nerror: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before streaming started (loading, opening devices)
        print("\ninterrupted", file=sys.stderr)
        return 130
    _print_summary(summary)
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary, indent=2))
    return 0


def _backend(mode: str, args) -> AudioBackend:
    if args.input is not None:
        return FileBackend(args.input, getattr(args, "output", None), block_ms=args.block_ms, paced=args.paced,
                           mix=args.mix)
    return PyAudioBackend(args.input_device, getattr(args, "output_device", None), block_ms=args.block_ms,
                          need_output=mode == "vc")


def _processor(mode: str, args, rate: int):
    from ..streaming import StreamingConverter, StreamingEncoder

    student = _load_student(args.model)
    reference = load_reference(args.ref, sample_rate=rate, mix=args.mix or "mean") if mode == "vc" else None
    try:
        if mode == "vc":
            return StreamingConverter(student, reference=reference, sample_rate=rate, chunk_ms=args.chunk_ms)
        return StreamingEncoder(student, sample_rate=rate, chunk_ms=args.chunk_ms)
    except AudioError:
        raise
    except ValueError as err:  # a chunk the input rate cannot cut into whole samples
        raise LiveError(f"--chunk-ms {args.chunk_ms}: {err}") from err


def _run(mode: str, args) -> dict:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, args.threads))
    try:
        return _run_session(mode, args)
    finally:
        torch.set_num_threads(threads)  # run() may be called in-process (tests, scripts)


def _run_session(mode: str, args) -> dict:
    backend = _backend(mode, args)
    processor = _processor(mode, args, backend.input_rate)

    def print_tokens(tokens) -> None:
        if not args.quiet:
            print(" ".join(str(int(t)) for t in tokens), flush=True)

    def started() -> None:
        output = f" -> {backend.output_name}" if backend.output_name else ""
        print(f"streaming: {backend.input_name}{output}, {args.chunk_ms} ms chunks (Ctrl-C stops)",
              file=sys.stderr, flush=True)

    stop = threading.Event()
    options = SessionOptions(
        duration=args.duration if args.input is None else None,
        stop=stop,
        on_status=_status_printer(args.quiet or mode == "tokenize"),
        on_start=started,
        on_result=print_tokens if mode == "tokenize" else None,
    )
    previous = signal.signal(signal.SIGINT, Interrupts(stop))
    try:
        summary = run_session(processor, backend, options)
    finally:
        signal.signal(signal.SIGINT, previous)
        if not args.quiet:
            print(file=sys.stderr)
    return _summary_dict(mode, summary)


class Interrupts:
    """Ctrl-C while streaming: the first asks the session to stop (it ends within a device poll and still
    prints its summary); the second exits at once, whatever is still running."""

    def __init__(self, stop: threading.Event, exit=os._exit):
        self.stop, self.exit, self.count = stop, exit, 0

    def __call__(self, signum=None, frame=None) -> None:
        self.count += 1
        if self.count == 1:
            self.stop.set()
            return
        print("\ninterrupted twice: exiting now", file=sys.stderr, flush=True)
        self.exit(130)


def _summary_dict(mode: str, summary: Summary) -> dict:
    values = summary.to_dict()
    results = values.pop("results", None)
    if mode == "tokenize":
        values["tokens"] = results
    return dict(mode=mode, **values)


def _print_summary(summary: dict) -> None:
    print("summary: " + ", ".join(f"{k}={v}" for k, v in summary.items()), file=sys.stderr)
