"""Microphone -> engine -> speakers straight through PulseAudio (or PipeWire's PulseAudio server).

PortAudio reaches PulseAudio through ALSA's pulse plugin: two layers of buffering whose sizes the
program cannot ask for, and callbacks that arrive in bursts. This backend talks to the sound server
with libpulse-simple (ctypes, no extra Python package) and asks for its buffers explicitly:

- record: `fragsize` = one block, with PA_STREAM_ADJUST_LATENCY (pa_simple's flags), so the source
  hands over each block as soon as it is captured;
- playback: `tlength` = the requested output buffering, also the whole latency up to the speaker
  (the server sizes the sink's own buffer out of it), and `prebuf` 0: a late write is a gap of
  silence, never a pause of the stream that would add to the latency from then on.

The streams run at the rates the caller names (the model's own rates: the server resamples for the
hardware), so the engine needs no resampler of its own. One thread reads blocks, one writes them; both
only copy between libpulse and the engine's ring buffers. `pa_simple_get_latency` on each stream, read
by the monitor loop, gives the device part of the latency.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import shutil
import subprocess
import threading
import time
from typing import Callable

import numpy as np

from .backends import DeviceError, DeviceTiming, StatusCallback
from .devices import CallbackWatch
from .engine import AudioEngine
from .priority import raise_priority

PA_STREAM_PLAYBACK, PA_STREAM_RECORD = 1, 2
PA_SAMPLE_FLOAT32LE = 5
DEFAULT_NAMES = ("", "default", "pulse")  # what the ALSA/PortAudio side calls the sound server's default


class _SampleSpec(ctypes.Structure):
    _fields_ = [("format", ctypes.c_int), ("rate", ctypes.c_uint32), ("channels", ctypes.c_uint8)]


class _BufferAttr(ctypes.Structure):
    _fields_ = [("maxlength", ctypes.c_uint32), ("tlength", ctypes.c_uint32), ("prebuf", ctypes.c_uint32),
                ("minreq", ctypes.c_uint32), ("fragsize", ctypes.c_uint32)]


_LIBS: dict = {}


def _libs():
    """(libpulse-simple, libpulse), loaded once; a DeviceError when PulseAudio's client library is missing."""
    if not _LIBS:
        names = {}
        for key, name in (("simple", "pulse-simple"), ("pulse", "pulse")):
            path = ctypes.util.find_library(name) or f"lib{name}.so.0"
            try:
                names[key] = ctypes.CDLL(path)
            except OSError as err:
                raise DeviceError(f"PulseAudio's client library ({path}) is not installed: apt-get install "
                                  "libpulse0 (or use --backend portaudio)") from err
        simple, pulse = names["simple"], names["pulse"]
        simple.pa_simple_new.restype = ctypes.c_void_p
        simple.pa_simple_new.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                                         ctypes.c_char_p, ctypes.POINTER(_SampleSpec), ctypes.c_void_p,
                                         ctypes.POINTER(_BufferAttr), ctypes.POINTER(ctypes.c_int)]
        for fn in ("pa_simple_read", "pa_simple_write"):
            getattr(simple, fn).restype = ctypes.c_int
            getattr(simple, fn).argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                            ctypes.POINTER(ctypes.c_int)]
        simple.pa_simple_get_latency.restype = ctypes.c_uint64
        simple.pa_simple_get_latency.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
        simple.pa_simple_free.restype = None
        simple.pa_simple_free.argtypes = [ctypes.c_void_p]
        pulse.pa_strerror.restype = ctypes.c_char_p
        pulse.pa_strerror.argtypes = [ctypes.c_int]
        _LIBS.update(names)
    return _LIBS["simple"], _LIBS["pulse"]


def _strerror(code: int) -> str:
    return _libs()[1].pa_strerror(code).decode(errors="replace")


def server_available() -> bool:
    """A PulseAudio (or PipeWire-pulse) server answers: libpulse present and a test stream opens."""
    try:
        _libs()
    except DeviceError:
        return False
    if shutil.which("pactl") is not None:
        return subprocess.run(["pactl", "info"], capture_output=True, timeout=10).returncode == 0
    try:  # no pactl: open (and close) a short record stream
        stream = _Stream(None, PA_STREAM_RECORD, None, 16000, 160, "probe")
    except DeviceError:
        return False
    stream.free()
    return True


def _device_name(spec) -> bytes | None:
    spec = None if spec is None else str(spec)
    return None if spec is None or spec.lower() in DEFAULT_NAMES else spec.encode()


class _Stream:
    """One pa_simple stream of mono float32 at `rate`; `buffer` frames of buffering (fragsize / tlength)."""

    def __init__(self, device, direction: int, server: str | None, rate: int, buffer: int, name: str):
        simple, _ = _libs()
        self.rate = rate
        spec = _SampleSpec(PA_SAMPLE_FLOAT32LE, rate, 1)
        nbytes = 4 * buffer
        unset = 0xFFFFFFFF
        if direction == PA_STREAM_RECORD:
            attr = _BufferAttr(unset, unset, unset, unset, nbytes)
        else:
            # prebuf 0: the server never pauses the stream to refill it. A late write plays silence in its
            # place and the late samples are dropped, so the stream stays on its timeline (with prebuf,
            # each underrun paused it until the buffer refilled, and every pause added to the latency).
            attr = _BufferAttr(unset, nbytes, 0, unset, unset)
        error = ctypes.c_int(0)
        self.handle = simple.pa_simple_new(server.encode() if server else None, b"kanade-stream", direction,
                                           _device_name(device), name.encode(), ctypes.byref(spec), None,
                                           ctypes.byref(attr), ctypes.byref(error))
        if not self.handle:
            side = "input (source)" if direction == PA_STREAM_RECORD else "output (sink)"
            raise DeviceError(f"cannot open the PulseAudio {side} {device or 'default'!r}: {_strerror(error.value)}"
                              "; `pactl list short sources` / `sinks` lists them (--list-devices)")
        self._simple = simple
        self._error = ctypes.c_int(0)

    def read(self, out: np.ndarray) -> None:
        if self._simple.pa_simple_read(self.handle, out.ctypes.data, out.nbytes, ctypes.byref(self._error)) < 0:
            raise DeviceError(f"the audio input failed: {_strerror(self._error.value)} (did the sound server stop?)")

    def write(self, data: np.ndarray) -> None:
        if self._simple.pa_simple_write(self.handle, data.ctypes.data, data.nbytes, ctypes.byref(self._error)) < 0:
            raise DeviceError(f"the audio output failed: {_strerror(self._error.value)} (did the sound server stop?)")

    def latency(self) -> float:
        """Seconds: record, how long the oldest sample not yet read has waited; playback, until the last
        sample written is heard. Negative when the server does not answer."""
        if not self.handle:
            return -1.0
        error = ctypes.c_int(0)
        usec = self._simple.pa_simple_get_latency(self.handle, ctypes.byref(error))
        return -1.0 if usec == 0xFFFFFFFFFFFFFFFF else usec / 1e6

    def free(self) -> None:
        if self.handle:
            self._simple.pa_simple_free(self.handle)
            self.handle = None


def list_pulse_devices() -> list[dict]:
    """Sources and sinks of the PulseAudio server (through pactl): kind, name, description."""
    if shutil.which("pactl") is None:
        raise DeviceError("pactl is not installed (apt-get install pulseaudio-utils)")
    devices = []
    for kind in ("source", "sink"):
        listing = subprocess.run(["pactl", "list", "short", f"{kind}s"], capture_output=True, text=True, timeout=10)
        if listing.returncode != 0:
            raise DeviceError(f"the PulseAudio server does not answer: {listing.stderr.strip()}")
        for line in listing.stdout.splitlines():
            fields = line.split("\t")
            if len(fields) >= 2:
                devices.append(dict(kind=kind, index=int(fields[0]), name=fields[1],
                                    spec=fields[3] if len(fields) > 3 else ""))
    return devices


def format_pulse_devices(devices: list[dict]) -> str:
    if not devices:
        return "the PulseAudio server has no sources or sinks"
    lines = [f"{'kind':<6} {'index':>5}  name (spec)"]
    lines += [f"{d['kind']:<6} {d['index']:>5}  {d['name']} ({d['spec']})" for d in devices]
    return "\n".join(lines)


class PulseBackend:
    """Microphone -> engine -> speakers through the PulseAudio server with explicit buffer sizes.

    `input_device` / `output_device`: a source / sink name (None, "default" or "pulse": the server's
    default, which PULSE_SOURCE / PULSE_SINK set). `input_rate` / `output_rate`: the stream rates (the
    server converts to the hardware's). `block_ms`: frames per read and write. `buffer_ms`: playback
    buffering (tlength) asked of the server; the record side asks for one block."""

    def __init__(self, input_device=None, output_device=None, input_rate: int = 48000, output_rate: int = 48000,
                 block_ms: float = 10.0, buffer_ms: float | None = None, need_output: bool = True,
                 stall_timeout: float = 2.0, server: str | None = None):
        _libs()
        self.input_device, self.output_device, self.server = input_device, output_device, server
        self.input_rate = int(input_rate)
        self.output_rate = int(output_rate) if need_output else None
        self.has_output = need_output
        self.block = max(1, round(self.input_rate * block_ms / 1000))
        self.out_block = max(1, round((self.output_rate or self.input_rate) * block_ms / 1000))
        self.buffer_ms = 2 * block_ms if buffer_ms is None else float(buffer_ms)
        self.stall_timeout = stall_timeout
        self.input_name = f"PulseAudio {'default source' if _device_name(input_device) is None else input_device}"
        self.output_name = (f"PulseAudio {'default sink' if _device_name(output_device) is None else output_device}"
                            if need_output else None)
        self.timing = DeviceTiming()
        self.latency_samples: dict[str, list[float]] = {"input": [], "output": []}

    def run(self, engine: AudioEngine, stop: threading.Event | None = None, on_status: StatusCallback | None = None,
            on_start: Callable[[], None] | None = None, duration: float | None = None) -> None:
        stop = stop if stop is not None else threading.Event()
        plays = engine.output_rate is not None
        if plays and engine.output_rate != self.output_rate:
            raise ValueError(f"the engine plays at {engine.output_rate} Hz but the output stream runs at "
                             f"{self.output_rate} Hz")
        watch = CallbackWatch(("input", "output") if plays else ("input",), self.stall_timeout)
        errors: list[BaseException] = []
        streams: dict[str, _Stream] = {}
        opened = {side: threading.Event() for side in watch.counts}
        go, done = threading.Event(), threading.Event()
        out_buffer = max(self.out_block, round((self.output_rate or 1) * self.buffer_ms / 1000))

        # Each side opens its stream on its own thread, after raising that thread's priority: libpulse's
        # thread for the stream (it answers the server's requests for data) inherits the scheduling of
        # the thread that creates it. At normal priority on a busy machine it answered late, the server
        # ran out of samples and paused the stream, and every pause added to the latency.
        def side_loop(side: str) -> None:
            got = raise_priority("audio", engine.realtime)
            if side == "input":
                engine.stats.scheduling["audio"] = got
            try:
                if side == "input":
                    stream = _Stream(self.input_device, PA_STREAM_RECORD, self.server, self.input_rate,
                                     self.block, "kanade-stream input")
                else:
                    stream = _Stream(self.output_device, PA_STREAM_PLAYBACK, self.server, self.output_rate,
                                     out_buffer, "kanade-stream output")
            except BaseException as err:  # noqa: BLE001 - raised on the caller's thread
                errors.append(err)
                opened[side].set()
                return
            streams[side] = stream
            opened[side].set()
            go.wait()
            block = np.zeros(self.block if side == "input" else self.out_block, dtype=np.float32)
            try:
                while not done.is_set():
                    if side == "input":
                        stream.read(block)
                        engine.on_input(block)
                    else:
                        engine.on_output(block)
                        stream.write(block)  # blocks while the server's buffer is full: the pace
                    watch.tick(side)
            except BaseException as err:  # noqa: BLE001 - reported by the monitor loop
                if not done.is_set():
                    errors.append(err)
            finally:
                done.wait()  # the monitor loop reads the stream's latency until then
                stream.free()

        threads = {side: threading.Thread(target=side_loop, args=(side,), name=f"kanade-stream-pulse-{side}",
                                          daemon=True) for side in watch.counts}
        for t in threads.values():
            t.start()
        for event in opened.values():
            event.wait()
        if errors:
            done.set()
            go.set()
            raise errors[0]
        engine.start()
        go.set()
        try:
            if on_start is not None:
                on_start()
            self._monitor(engine, streams, watch, errors, stop, on_status, duration)
        finally:
            done.set()
            engine.stop()
            # a thread still blocked inside libpulse (a stalled source) keeps its stream: freeing it under
            # the thread would crash; the process ends soon after and the server drops the connection
            for t in threads.values():
                t.join(timeout=1.0)
            self._timing(engine)

    def _monitor(self, engine, streams, watch, errors, stop, on_status, duration) -> None:
        start = time.monotonic()
        while not stop.wait(0.1):
            now = time.monotonic()
            if engine.failed is not None:
                raise engine.failed
            if errors:
                raise errors[0]
            watch.check(now)
            for side, s in streams.items():
                seconds = s.latency()
                if seconds >= 0:
                    self.latency_samples[side].append(seconds)
            if on_status is not None:
                on_status(engine)
            if duration is not None and now - start >= duration:
                return

    def device_latency_ms(self) -> tuple[float, float]:
        """Device input and output latency seen so far (ms): the server's figures (worst after the first
        second), plus the block a sample waits for its read, and the block written at a time."""
        in_ms, out_ms = self._worst()
        return in_ms + 1000 * self.block / self.input_rate, out_ms + 1000 * self.out_block / (
            self.output_rate or self.input_rate)

    def _worst(self) -> tuple[float, float]:
        figures = []
        for side in ("input", "output"):
            values = self.latency_samples[side]
            values = values[10:] if len(values) > 10 else values  # the first second settles
            figures.append(1000 * max(values) if values else 0.0)
        return figures[0], figures[1]

    def _timing(self, engine: AudioEngine) -> None:
        in_ms, out_ms = self._worst()
        block_ms = 1000 * self.block / self.input_rate
        out_block_ms = 1000 * self.out_block / (self.output_rate or self.input_rate)
        self.timing.driver_latency_ms = (in_ms, out_ms)
        self.timing.reported_split_ms = (block_ms, self.buffer_ms if self.has_output else 0.0)
        self.timing.reported_latency_ms = sum(self.timing.reported_split_ms)
        self.timing.callback_gap_ms = (block_ms, out_block_ms)
