"""The live programs behind demos/live_vc.py and demos/live_tokenize.py.

Both run the streaming student through the engine, on real devices (PyAudio) or on files
(`--input in.wav --output out.wav`), print a one-line live status, and a summary at exit. Every way
this can go wrong ends with one clear message and a non-zero exit code, never a traceback: missing or
vanished devices, unreadable/silent/short reference clips, a missing model.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from ..audio import AudioError, load_audio
from .backends import DeviceError, FileBackend, PyAudioBackend, format_devices, list_devices
from .engine import AudioEngine

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
    _print_summary(summary)
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary, indent=2))
    return 0


def _run(mode: str, args) -> dict:
    import torch

    from ..streaming import StreamingConverter, StreamingEncoder

    torch.set_num_threads(max(1, args.threads))
    student = _load_student(args.model)
    file_mode = args.input is not None
    if file_mode:
        backend = FileBackend(args.input, getattr(args, "output", None), block_ms=args.block_ms, paced=args.paced)
        input_rate = backend.input_rate
    else:
        backend = PyAudioBackend(args.input_device, getattr(args, "output_device", None), block_ms=args.block_ms,
                                 need_output=mode == "vc")
        input_rate = backend.input_rate

    tokens_seen: list[int] = []
    if mode == "vc":
        reference = load_reference(args.ref, sample_rate=input_rate)
        processor = StreamingConverter(student, reference=reference, sample_rate=input_rate, chunk_ms=args.chunk_ms)
        output_rate = processor.output_rate if file_mode else backend.output_rate
        on_result = None
    else:
        processor = StreamingEncoder(student, sample_rate=input_rate, chunk_ms=args.chunk_ms)
        output_rate = None

        def on_result(tokens) -> None:
            values = [int(t) for t in tokens]
            tokens_seen.extend(values)
            if not args.quiet:
                print(" ".join(str(v) for v in values), flush=True)

    # one chunk of silence first: the first call pays for allocations and kernel selection
    processor.push(np.zeros(round(input_rate * args.chunk_ms / 1000) * 2, dtype=np.float32))
    processor.reset()
    engine = AudioEngine(
        processor, input_rate, output_rate, device_block=backend.block,
        processor_rate=getattr(processor, "output_rate", None),
        chunk_samples=round(input_rate * args.chunk_ms / 1000), on_result=on_result,
    )
    status = _status_printer(args.quiet or mode == "tokenize")
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())  # Ctrl-C: finish cleanly
    started = time.monotonic()
    try:
        if file_mode:
            backend.run(engine, status)
        else:
            output = f" -> {backend.output_info['name']}" if backend.output_info else ""
            started_line = f"streaming: {backend.input_info['name']}{output}, {args.chunk_ms} ms chunks (Ctrl-C stops)"
            backend.run(engine, stop, status, duration=args.duration,
                        on_start=lambda: print(started_line, file=sys.stderr, flush=True))
    finally:
        signal.signal(signal.SIGINT, previous)
        if not args.quiet:
            print(file=sys.stderr)
    summary = dict(
        mode=mode,
        seconds=round(time.monotonic() - started, 3),
        audio_seconds=round(engine.stats.processed_samples / input_rate, 3),
        chunk_ms=args.chunk_ms,
        model_latency_ms=round(processor.latency_ms, 2),
        engine_latency_ms=round(engine.stats.latency_ms, 2),
        compute_p50_ms=round(engine.stats.compute_ms(0.5), 2),
        compute_p99_ms=round(engine.stats.compute_ms(0.99), 2),
        real_time_factor=round(engine.stats.real_time_factor, 3),
        **engine.xruns(),
    )
    if not file_mode:
        driver_in, driver_out, gap_in, gap_out = (1000 * backend.measured_device_latency).tolist()
        summary["device_latency_ms"] = round(backend.device_latency_ms, 2)  # PortAudio's figure at open
        # worst seen in the callbacks: input and output buffering, longest gaps between callbacks
        summary["driver_latency_ms"] = [round(driver_in, 2), round(driver_out, 2)]
        summary["callback_gap_ms"] = [round(gap_in, 2), round(gap_out, 2)]
        # what a listener can expect at most: engine delay + device buffering + the callback gaps (a sample
        # arriving in a burst waits up to one gap for its callback on each side)
        device = max(backend.device_latency_ms, driver_in + driver_out)
        gaps = max(gap_in, args.block_ms) + max(gap_out, args.block_ms)
        summary["latency_bound_ms"] = round(engine.stats.latency_ms + device + gaps, 2)
        summary["input_device"] = backend.input_info["name"]
        if backend.output_info:
            summary["output_device"] = backend.output_info["name"]
    if mode == "tokenize":
        summary["tokens"] = len(tokens_seen)
    return summary


def _print_summary(summary: dict) -> None:
    print("summary: " + ", ".join(f"{k}={v}" for k, v in summary.items()), file=sys.stderr)
