"""Sound cards through PyAudio (PortAudio): finding devices, and the microphone -> engine -> speakers
backend whose callbacks only copy samples."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Callable

import numpy as np

from .backends import DeviceError, DeviceTiming, StatusCallback
from .engine import AudioEngine
from .priority import raise_priority


def _pyaudio():
    try:
        import pyaudio
    except ImportError as err:  # pragma: no cover - depends on the system
        raise DeviceError("PyAudio is not installed: apt-get install portaudio19-dev && pip install pyaudio") from err
    return pyaudio


@contextlib.contextmanager
def _quiet_native_stderr():
    """PortAudio probes every host API (ALSA plugins, JACK) and their C libraries print pages of
    harmless complaints straight to file descriptor 2; real failures still arrive as exceptions."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _open_portaudio():
    pyaudio = _pyaudio()
    with _quiet_native_stderr():
        return pyaudio.PyAudio()


def list_devices() -> list[dict]:
    """Every PortAudio device: index, name, channels, default rate, host API."""
    pa = _open_portaudio()
    try:
        devices = []
        for i in range(pa.get_device_count()):
            info = pa.get_device_info_by_index(i)
            devices.append(dict(index=i, name=info["name"], inputs=int(info["maxInputChannels"]),
                                outputs=int(info["maxOutputChannels"]), rate=int(info["defaultSampleRate"]),
                                host_api=pa.get_host_api_info_by_index(info["hostApi"])["name"]))
        return devices
    finally:
        pa.terminate()


def format_devices(devices: list[dict]) -> str:
    if not devices:
        return "no audio devices found: is a sound server (PulseAudio, PipeWire) or ALSA device available?"
    lines = [f"{'index':>5}  {'in':>3} {'out':>3} {'rate':>6}  name"]
    lines += [f"{d['index']:>5}  {d['inputs']:>3} {d['outputs']:>3} {d['rate']:>6}  {d['name']} ({d['host_api']})"
              for d in devices]
    return "\n".join(lines)


def find_device(spec: str | int | None, kind: str) -> dict:
    """A device by index, by (case-insensitive) name substring, or the default one of `kind`."""
    channels_key = "inputs" if kind == "input" else "outputs"
    devices = [d for d in list_devices() if d[channels_key] > 0]
    if not devices:
        raise DeviceError(f"no audio {kind} device found (is a sound server running? `--list-devices` shows all)")
    if spec is None:
        pa = _open_portaudio()
        try:
            info = pa.get_default_input_device_info() if kind == "input" else pa.get_default_output_device_info()
        except OSError as err:
            raise DeviceError(f"no default audio {kind} device: {err}; pick one with --{kind}-device") from err
        finally:
            pa.terminate()
        return next(d for d in devices if d["index"] == info["index"])
    if str(spec).isdigit():
        match = [d for d in devices if d["index"] == int(spec)]
    else:
        match = [d for d in devices if str(spec).lower() in d["name"].lower()]
    if not match:
        raise DeviceError(f"no {kind} device matches {spec!r}; available {kind} devices:\n{format_devices(devices)}")
    return match[0]


class CallbackWatch:
    """Notices a side of the stream whose callbacks stopped coming.

    Each side is checked on its own: an input that stalls while the output keeps pulling would
    otherwise look alive, and play silence counted as underruns for as long as the program runs."""

    def __init__(self, sides: tuple[str, ...], timeout: float):
        self.counts = dict.fromkeys(sides, 0)  # each advanced by its own audio thread only
        self.timeout = timeout
        self._last: dict[str, tuple[int, float]] = {}  # side: (count, when it last changed); from the first check

    def tick(self, side: str) -> None:
        self.counts[side] += 1

    def check(self, now: float) -> None:
        """Raise a DeviceError naming the side(s) that delivered nothing for longer than the timeout."""
        stalled = {}
        for side, count in self.counts.items():
            seen, since = self._last.setdefault(side, (count, now))
            if count != seen:
                self._last[side] = (count, now)
            elif now - since > self.timeout:
                stalled[side] = now - since
        if not stalled:
            return
        seconds = min(stalled.values())
        if len(stalled) > 1:
            raise DeviceError(f"the audio device delivered no samples for {seconds:.1f} s; "
                              "was it unplugged or taken by another program?")
        running = " while the output kept running" if len(self.counts) > 1 else ""
        if "input" in stalled:
            raise DeviceError(f"the audio input delivered no samples for {seconds:.1f} s{running}; was the "
                              "microphone unplugged, or its source suspended or taken by another program?")
        raise DeviceError(f"the audio output took no samples for {seconds:.1f} s while the input kept running; "
                          "was the output device unplugged or suspended?")


def _close(pa, streams, timeout: float = 1.0) -> None:
    """Close the streams and PortAudio without waiting for them to drain.

    Closing an active stream aborts it (pending buffers are dropped, not played out): stopping one
    whose device stalled waits for buffers that never come. It runs off the main thread, so if a
    driver hangs anyway the program still exits, and a second Ctrl-C still reaches its handler."""

    def close() -> None:
        for s in streams:
            try:
                s.close()
            except OSError:
                pass  # the device may already be gone
        pa.terminate()

    closer = threading.Thread(target=close, name="kanade-stream-close", daemon=True)
    closer.start()
    closer.join(timeout)


class PyAudioBackend:
    """Microphone -> engine -> speakers, with callbacks that only copy samples."""

    def __init__(self, input_device=None, output_device=None, block_ms: float = 10.0, need_output: bool = True,
                 stall_timeout: float = 2.0):
        self.input_info = find_device(input_device, "input")
        self.output_info = find_device(output_device, "output") if need_output else None
        self.input_rate = self.input_info["rate"]
        self.output_rate = self.output_info["rate"] if self.output_info else None
        self.has_output = self.output_info is not None
        self.input_name = self.input_info["name"]
        self.output_name = self.output_info["name"] if self.output_info else None
        self.block = max(1, round(self.input_rate * block_ms / 1000))
        self.out_block = max(1, round((self.output_rate or self.input_rate) * block_ms / 1000))
        self.stall_timeout = stall_timeout
        self.timing = DeviceTiming()
        self._measured = np.zeros(4)

    def device_latency_ms(self) -> tuple[float, float]:
        """Device input and output latency seen so far (ms): driver buffering plus the callback gap."""
        driver_in, driver_out, gap_in, gap_out = (1000 * self._measured).tolist()
        timing = DeviceTiming(self.timing.reported_latency_ms, (driver_in, driver_out), (gap_in, gap_out),
                              self.timing.reported_split_ms)
        return timing.device_ms(1000 * self.block / self.input_rate)

    def run(self, engine: AudioEngine, stop: threading.Event | None = None, on_status: StatusCallback | None = None,
            on_start: Callable[[], None] | None = None, duration: float | None = None) -> None:
        pyaudio = _pyaudio()
        stop = stop if stop is not None else threading.Event()
        plays = engine.output_rate is not None
        if plays and engine.output_rate != self.output_rate:
            raise ValueError(f"the engine plays at {engine.output_rate} Hz but the output device "
                             f"({self.output_name}) runs at {self.output_rate} Hz")
        out_buffer = np.zeros(self.out_block, dtype=np.float32)
        watch = CallbackWatch(("input", "output") if plays else ("input",), self.stall_timeout)

        # What the driver says, per callback (PortAudio stream times): how long ago the input was captured,
        # how long until the output is heard, and the longest gap between callbacks on each side (samples
        # arriving in bursts wait that long). The worst of each is the device part of the latency.
        # seconds: input latency, output latency, longest input gap, longest output gap
        measured = self._measured = np.zeros(4)
        last = np.zeros(2)

        def on_input(in_data, frame_count, time_info, flags):
            if not watch.counts["input"]:  # the first callback: PortAudio's audio thread, once
                engine.stats.scheduling["audio"] = raise_priority("audio", engine.realtime)
            engine.on_input(np.frombuffer(in_data, dtype=np.float32))
            watch.tick("input")
            now, captured = time_info["current_time"], time_info.get("input_buffer_adc_time", 0.0)
            if captured > 0:
                measured[0] = max(measured[0], now - captured)
            if last[0] > 0:
                measured[2] = max(measured[2], now - last[0])
            last[0] = now
            return None, pyaudio.paContinue

        def on_output(in_data, frame_count, time_info, flags):
            if not watch.counts["output"]:
                raise_priority("audio", engine.realtime)
            engine.on_output(out_buffer[:frame_count])
            watch.tick("output")
            now, heard = time_info["current_time"], time_info.get("output_buffer_dac_time", 0.0)
            if heard > 0:
                measured[1] = max(measured[1], heard - now)
            if last[1] > 0:
                measured[3] = max(measured[3], now - last[1])
            last[1] = now
            # PyAudio insists on an immutable bytes object: the one allocation a callback makes
            return out_buffer[:frame_count].tobytes(), pyaudio.paContinue

        pa = _open_portaudio()
        streams = []
        try:
            try:
                streams.append(pa.open(format=pyaudio.paFloat32, channels=1, rate=self.input_rate, input=True,
                                       input_device_index=self.input_info["index"],
                                       frames_per_buffer=self.block, stream_callback=on_input))
                if plays:
                    streams.append(pa.open(format=pyaudio.paFloat32, channels=1, rate=self.output_rate, output=True,
                                           output_device_index=self.output_info["index"],
                                           frames_per_buffer=self.out_block, stream_callback=on_output))
            except OSError as err:
                raise DeviceError(f"cannot open the audio device(s) ({err}); check --input-device/--output-device "
                                  "and --list-devices") from err
            reported = [1000 * (s.get_input_latency() if i == 0 else s.get_output_latency())
                        for i, s in enumerate(streams)]
            self.timing.reported_latency_ms = sum(reported)
            self.timing.reported_split_ms = (reported[0], reported[1] if len(reported) > 1 else 0.0)
            engine.start()
            for s in streams:
                s.start_stream()
            if on_start is not None:
                on_start()
            self._monitor(engine, streams, watch, stop, on_status, duration)
        finally:
            engine.stop()
            _close(pa, streams)
            driver_in, driver_out, gap_in, gap_out = (1000 * measured).tolist()
            self.timing.driver_latency_ms = (driver_in, driver_out)
            self.timing.callback_gap_ms = (gap_in, gap_out)

    def _monitor(self, engine, streams, watch, stop, on_status, duration):
        start = time.monotonic()
        while not stop.wait(0.1):
            now = time.monotonic()
            if engine.failed is not None:
                raise engine.failed
            if not all(s.is_active() for s in streams):
                raise DeviceError("the audio stream stopped: was the device unplugged, or its sound server stopped?")
            watch.check(now)
            if on_status is not None:
                on_status(engine)
            if duration is not None and now - start >= duration:
                return
