"""The PyAudio backend's safety nets, without a sound card: a side of the stream that stops calling back
is reported by name, and streams are closed (aborted), never stopped (drained)."""

import threading

import pytest

from kanade_stream.realtime.backends import DeviceError
from kanade_stream.realtime.devices import CallbackWatch, _close


def run_watch(watch, ticks_per_second: dict, seconds: float, step: float = 0.1):
    """Drive the watch on a made-up clock: each side ticks at its own rate, checked every `step`."""
    t = 0.0
    while t <= seconds:
        for side, rate in ticks_per_second.items():
            for _ in range(int(rate * step)):
                watch.tick(side)
        watch.check(t)
        t = round(t + step, 6)


def test_both_sides_running_is_no_stall():
    run_watch(CallbackWatch(("input", "output"), timeout=2.0), {"input": 100, "output": 100}, seconds=30)


def test_an_input_that_stops_while_the_output_runs_is_a_stall():
    watch = CallbackWatch(("input", "output"), timeout=2.0)
    run_watch(watch, {"input": 100, "output": 100}, seconds=5)
    with pytest.raises(DeviceError, match=r"the audio input delivered no samples for 2\.\d s while the output kept"):
        run_watch(watch, {"output": 100}, seconds=10)


def test_an_output_that_stops_is_named():
    watch = CallbackWatch(("input", "output"), timeout=2.0)
    with pytest.raises(DeviceError, match="the audio output took no samples"):
        run_watch(watch, {"input": 100}, seconds=10)


def test_both_sides_stopping_is_the_device():
    watch = CallbackWatch(("input", "output"), timeout=2.0)
    with pytest.raises(DeviceError, match="the audio device delivered no samples"):
        run_watch(watch, {}, seconds=10)


def test_an_input_only_stream_that_stops():
    watch = CallbackWatch(("input",), timeout=2.0)
    run_watch(watch, {"input": 100}, seconds=3)
    with pytest.raises(DeviceError, match=r"the audio input delivered no samples for 2\.\d s; was the microphone"):
        run_watch(watch, {}, seconds=10)


class FakeStream:
    def __init__(self, hang: threading.Event | None = None):
        self.closed, self.hang = False, hang

    def stop_stream(self):
        raise AssertionError("stopping drains the buffers: a stalled device never finishes")

    def close(self):
        if self.hang is not None:
            self.hang.wait()
        self.closed = True


class FakePortAudio:
    terminated = False

    def terminate(self):
        self.terminated = True


def test_streams_are_closed_not_drained():
    streams, pa = [FakeStream(), FakeStream()], FakePortAudio()
    _close(pa, streams)
    assert all(s.closed for s in streams) and pa.terminated


def test_a_driver_that_hangs_in_close_does_not_hold_the_program():
    hang = threading.Event()
    stream = FakeStream(hang)
    _close(FakePortAudio(), [stream], timeout=0.05)  # returns although close() has not
    assert not stream.closed
    hang.set()


def test_raising_priority_never_fails_and_says_what_it_got():
    from kanade_stream.realtime.priority import raise_priority

    got = []
    thread = threading.Thread(target=lambda: got.extend([raise_priority("audio"), raise_priority("worker", False)]))
    thread.start()
    thread.join()
    assert got[0] == "SCHED_FIFO 12" or got[0].startswith("nice") or got[0] == "normal"
    assert got[1] == "normal"  # disabled: left alone
