"""The live programs behind demos/live_vc.py and demos/live_tokenize.py.

Both run the streaming student through `run_session`, on real devices or on files (`--input in.wav
--output out.wav`), print a one-line live status, and a summary at exit. Every way this can go wrong
ends with one clear message and a non-zero exit code, never a traceback: missing or vanished devices,
unreadable/silent/short reference clips, a missing model, no sound server for --virtual-mic.

Devices: straight through the PulseAudio / PipeWire server (`pulse.py`, explicit small buffers, the
model's own rates) when one answers, else PortAudio (`devices.py`); `--backend` picks. Chunks: 40 ms
unless the warm-up shows the machine cannot keep up, then 80 ms (said before streaming starts). The
converter's output goes through a voice-activity gate (`gate.py`; `--no-gate` turns it off) and, with
`--virtual-mic`, into a virtual microphone other programs can record from (`virtual_mic.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np

from ..audio import MIX_CHOICES, AudioError, load_audio
from .backends import AudioBackend, DeviceError, FileBackend
from .devices import PyAudioBackend, format_devices, list_devices
from .engine import AudioEngine
from .session import SessionOptions, Summary, choose_processor, measure_compute, run_session, status_line

MIN_REFERENCE_SECONDS = 1.0
SILENCE_RMS = 1e-4
CHUNK_OPTIONS = [40, 80]  # the default: the shortest chunk whose warm-up compute keeps up


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
    parser.add_argument("--chunk-ms", type=int, default=None,
                        help="model chunk: 40, 80 or 160 ms (default 40, or 80 when the warm-up shows this machine "
                             "cannot compute 40 ms chunks in real time)")
    parser.add_argument("--precision", choices=("auto", "float32", "int8"), default="auto",
                        help="int8: the large layers in int8 (about 2x less compute for a default-size student "
                             "at 40 ms; meant for a student fine-tuned for it by distill/run.py --stage int8); "
                             "default auto: int8 when the student was trained for it, else float32")
    parser.add_argument("--step", choices=("auto", "eager", "torchscript", "aot"), default="auto",
                        help="how the model step runs: aot = compiled ahead of time by torch.export + AOTInductor "
                             "(about a minute a graph the first time, then cached in ~/.cache/kanade_stream/aot; "
                             "needs a C++ compiler); default auto: aot when a C++ compiler is found, else "
                             "TorchScript for int8 weights and eager for float32")
    parser.add_argument("--list-devices", action="store_true", help="list audio devices and exit")
    parser.add_argument("--backend", choices=("auto", "pulse", "portaudio"), default="auto",
                        help="audio devices through the PulseAudio/PipeWire server directly (pulse: smallest "
                             "latency), or PortAudio (ALSA, and JACK/OSS where built in); default auto: pulse when "
                             "a server answers")
    parser.add_argument("--input-device", default=None,
                        help="input device: a PulseAudio source name, or a PortAudio index or name "
                             "(default: the system default)")
    if mode == "vc":
        parser.add_argument("--output-device", default=None, help="output device: a PulseAudio sink name, or a "
                            "PortAudio index or name")
        parser.add_argument("--virtual-mic", nargs="?", const="Kanade voice", default=None, metavar="NAME",
                            help="play the converted voice into a virtual microphone called NAME (default "
                                 "'Kanade voice') that other programs can pick as their microphone, instead of the "
                                 "speakers (PulseAudio/PipeWire); removed on exit")
        parser.add_argument("--no-gate", action="store_true",
                            help="no noise gate: background noise and silence are converted too (default: the "
                                 "output is silent while the input carries no voice)")
    parser.add_argument("--block-ms", type=float, default=None,
                        help="device block in ms: samples move in blocks this long (default 5 with the pulse "
                             "backend, 10 with PortAudio and files)")
    parser.add_argument("--device-buffer-ms", type=float, default=None,
                        help="pulse backend: playback buffering asked of the server (default two blocks)")
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
    parser.add_argument("--no-realtime", action="store_true",
                        help="leave the audio threads and the model worker at normal priority (default: they ask "
                             "for real-time scheduling, where the system grants it, so a busy machine does not "
                             "make them wait)")
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


def runtime_model(args, student) -> tuple[object, str, str]:
    """(the student to run, its precision, the step backend) from --precision and --step."""
    precision = args.precision
    if precision == "auto":
        precision = "int8" if student.config.int8_trained else "float32"
    if precision == "int8":
        from ..streaming.int8 import quantize_int8

        if not student.config.int8_trained:
            print("note: this student was not fine-tuned for int8 (distill/run.py --stage int8): expect its "
                  "output to change", file=sys.stderr, flush=True)
        try:
            student = quantize_int8(student)
        except RuntimeError as err:
            raise LiveError(str(err)) from err
    step = args.step
    if step == "auto":  # the compiled step when it can be built here; else what is fastest without it
        step = "aot" if has_cxx_compiler() else ("torchscript" if precision == "int8" else "eager")
    return student, precision, step


def has_cxx_compiler() -> bool:
    """Whether AOTInductor can find a C++ compiler (it reads $CXX, else tries c++ / g++ / clang++)."""
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["c++", "g++", "clang++"]
    return any(shutil.which(name.split()[0]) for name in candidates)


def step_label(processor) -> str:
    """What actually runs the model step (a compiled step that fell back to eager says so)."""
    inner = getattr(processor, "processor", processor)  # a GatedProcessor wraps the stream
    runner = getattr(inner, "runner", None)
    return runner.label if runner is not None else "eager"


def _status_printer(quiet: bool, backend: AudioBackend | None = None):
    last = [0.0]

    def show(engine: AudioEngine) -> None:
        now = time.monotonic()
        if quiet or now - last[0] < 0.25:
            return
        last[0] = now
        end = "\r" if sys.stderr.isatty() else "\n"
        print(status_line(engine, backend), end=end, file=sys.stderr, flush=True)

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
            _list_devices(args)
            return 0
        if mode == "vc" and not args.ref:
            raise LiveError("--ref is required: a clip of the voice to convert to")
        if mode == "vc" and (args.input is None) != (args.output is None):
            raise LiveError("file mode needs both --input and --output")
        if getattr(args, "virtual_mic", None) is not None:
            if args.input is not None:
                raise LiveError("--virtual-mic is for live audio, not file mode")
            if args.output_device is not None:
                raise LiveError("--virtual-mic plays into the virtual microphone; leave out --output-device")
            if args.backend == "portaudio":
                raise LiveError("--virtual-mic needs the pulse backend (PulseAudio or PipeWire)")
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


def _list_devices(args) -> None:
    from .pulse import format_pulse_devices, list_pulse_devices, server_available

    if args.backend != "portaudio" and server_available():
        print("PulseAudio / PipeWire (the pulse backend, the default while a server answers; device names):")
        print(format_pulse_devices(list_pulse_devices()))
        if args.backend == "pulse":
            return
        print("\nPortAudio (--backend portaudio; indexes or names):")
    print(format_devices(list_devices()))


def _use_pulse(args) -> bool:
    from .pulse import server_available

    if args.backend == "pulse":
        return True
    if args.backend == "portaudio":
        return False
    devices = [args.input_device, getattr(args, "output_device", None)]
    if any(d is not None and str(d).isdigit() for d in devices):  # PortAudio indexes
        return False
    return server_available()


PULSE_BLOCK_MS = 5.0  # measured through a real PulseAudio server: 5 ms blocks and a 10 ms playback buffer
OTHER_BLOCK_MS = 10.0  # ran without underruns at 40 ms chunks; PortAudio's ALSA path gained nothing below 10


def _backend(mode: str, args, student, feed_sink: str | None = None) -> AudioBackend:
    if args.input is not None:
        return FileBackend(args.input, getattr(args, "output", None), block_ms=args.block_ms or OTHER_BLOCK_MS,
                           paced=args.paced, mix=args.mix)
    if feed_sink is not None or _use_pulse(args):
        from .pulse import PulseBackend

        # the model's own rates: the server converts for the hardware, the engine needs no resampler
        return PulseBackend(args.input_device, feed_sink or getattr(args, "output_device", None),
                            input_rate=student.config.ssl_sample_rate, output_rate=student.output_rate,
                            block_ms=args.block_ms or PULSE_BLOCK_MS, buffer_ms=args.device_buffer_ms,
                            need_output=mode == "vc")
    return PyAudioBackend(args.input_device, getattr(args, "output_device", None),
                          block_ms=args.block_ms or OTHER_BLOCK_MS, need_output=mode == "vc")


def _processor(mode: str, args, student, rate: int, warm_up_chunks: int = 25, realtime: bool = True,
               step: str = "eager"):
    """The streaming processor at the chosen chunk (see CHUNK_OPTIONS), gated unless --no-gate, with its
    warm-up compute profile and notes for the user."""
    from ..streaming import StreamingConverter, StreamingEncoder
    from .gate import GatedProcessor, VoiceGate

    reference = load_reference(args.ref, sample_rate=rate, mix=args.mix or "mean") if mode == "vc" else None
    gate = mode == "vc" and not args.no_gate

    def make(chunk_ms: int):
        try:
            if mode == "vc":
                processor = StreamingConverter(student, reference=reference, sample_rate=rate, chunk_ms=chunk_ms,
                                               backend=step)
            else:
                processor = StreamingEncoder(student, sample_rate=rate, chunk_ms=chunk_ms, backend=step)
        except AudioError:
            raise
        except ValueError as err:  # a chunk the input rate cannot cut into whole samples
            raise LiveError(f"--chunk-ms {chunk_ms}: {err}") from err
        return GatedProcessor(processor, VoiceGate(rate)) if gate else processor

    if args.chunk_ms is not None:
        processor = make(args.chunk_ms)
        profile = measure_compute(processor, warm_up_chunks, realtime=realtime)
        notes = [] if profile.keeps_up else [f"{profile.describe()}: this machine may not keep up with "
                                             f"--chunk-ms {args.chunk_ms} (expect late chunks and underruns)"]
        return processor, profile, notes
    return choose_processor(make, CHUNK_OPTIONS, warm_up_chunks, realtime=realtime)


def _run(mode: str, args) -> dict:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, args.threads))
    try:
        return _run_session(mode, args)
    finally:
        torch.set_num_threads(threads)  # run() may be called in-process (tests, scripts)


def _run_session(mode: str, args) -> dict:
    mic = None
    if getattr(args, "virtual_mic", None) is not None:
        from .virtual_mic import VirtualMic

        mic = VirtualMic(args.virtual_mic).create()
    try:
        return _stream(mode, args, mic)
    finally:
        if mic is not None:
            mic.remove()


def _stream(mode: str, args, mic) -> dict:
    student, precision, step = runtime_model(args, _load_student(args.model))
    backend = _backend(mode, args, student, feed_sink=mic.sink if mic is not None else None)
    processor, profile, notes = _processor(mode, args, student, backend.input_rate,
                                           realtime=not args.no_realtime and args.input is None, step=step)
    for note in notes:
        print(f"note: {note}", file=sys.stderr, flush=True)
    chunk_ms = profile.chunk_ms
    step = step_label(processor)

    stop = threading.Event()

    def print_tokens(tokens) -> None:
        if args.quiet or stop.is_set():
            return
        try:
            print(" ".join(str(int(t)) for t in tokens), flush=True)
        except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as command-line tools do
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's last flush does not fail either
            stop.set()

    def started() -> None:
        output = f" -> {backend.output_name}" if backend.output_name else ""
        if mic is not None:
            output = f" -> virtual microphone {mic.description!r} (source {mic.source})"
        gate = getattr(processor, "gate", None)
        gated = f", noise gate {gate.detector.name}" if gate is not None else ""
        print(f"streaming: {backend.input_name}{output}, {chunk_ms:g} ms chunks{gated}, model {precision} "
              f"{step} step (Ctrl-C stops)", file=sys.stderr, flush=True)

    options = SessionOptions(
        duration=args.duration if args.input is None else None,
        stop=stop,
        on_status=_status_printer(args.quiet or mode == "tokenize", backend),
        on_start=started,
        on_result=print_tokens if mode == "tokenize" else None,
        compute=profile,
        realtime=not args.no_realtime,
    )
    interrupts = Interrupts(stop)
    previous = {sig: signal.signal(sig, interrupts) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        summary = run_session(processor, backend, options)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if not args.quiet:
            print(file=sys.stderr)
    values = _summary_dict(mode, summary)
    values["model"] = f"{precision} weights, {step} step"
    if mic is not None:
        values["virtual_mic"] = mic.source
    return values


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
    from .session import latency_breakdown

    if summary.get("latency_parts_ms"):
        line = latency_breakdown(summary["latency_parts_ms"], summary["engine_latency_ms"],
                                 summary.get("device_input_ms"), summary.get("device_output_ms"))
        print(line + (" (device parts as measured by the sound server / driver)" if "device_input_ms" in summary
                      else " (engine; no device)"), file=sys.stderr)
    print("summary: " + ", ".join(f"{k}={v}" for k, v in summary.items()), file=sys.stderr)
