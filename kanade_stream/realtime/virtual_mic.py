"""A virtual microphone on PulseAudio / PipeWire: a source other programs pick as their microphone,
carrying whatever is played into its feed sink (the converted voice).

    feed sink (module-null-sink, hidden behind the source) --monitor--> module-remap-source "Kanade voice"

Both modules carry the property `kanade_stream.owner=<host>:<pid>:<process start time>`. They go away:
- when the program ends normally, on Ctrl-C, on SIGTERM and after an exception (`remove`);
- when it is killed outright (SIGKILL, a crash of the interpreter): a watchdog (a tiny shell started in
  its own session) waits on a pipe that only the program holds, and unloads them when the pipe closes;
- as a backstop, on the next start: modules whose owner process is gone are unloaded (`clean_stale`).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess

from .backends import DeviceError

OWNER_KEY = "kanade_stream.owner"
DEFAULT_DESCRIPTION = "Kanade voice"


def _pactl(*args: str, check: bool = True) -> str:
    if shutil.which("pactl") is None:
        raise DeviceError("--virtual-mic needs PulseAudio or PipeWire's pulse server and its pactl command "
                          "(apt-get install pulseaudio-utils); pactl was not found")
    try:
        done = subprocess.run(["pactl", *args], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired as err:
        raise DeviceError("the PulseAudio server does not answer (pactl timed out)") from err
    if check and done.returncode != 0:
        message = " ".join((done.stderr or done.stdout).split("\n")[0].split())  # one line
        if "Connection refused" in message or "Connection failure" in message or "No such file" in message:
            raise DeviceError(f"no PulseAudio / PipeWire server is running ({message}); a virtual microphone "
                              "needs one")
        raise DeviceError(f"pactl {' '.join(args[:2])} failed: {message}")
    return done.stdout


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, /proc/PID/stat field 22): a pid and its start
    time name one process, even after the pid is reused. None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[19]


def _alive(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine's program (a remote server): not ours to judge
    if not os.path.isdir("/proc"):  # no /proc: the pid alone
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return _start_time(int(pid)) == started


def owned_modules() -> list[tuple[int, str, str, str]]:
    """(module index, module name, owner, arguments) of every module a kanade-stream program loaded."""
    found = []
    for line in _pactl("list", "short", "modules").splitlines():
        fields = line.split("\t")
        if len(fields) >= 3 and OWNER_KEY in fields[2]:
            owner = re.search(re.escape(OWNER_KEY) + r"=([^\s'\"]+)", fields[2])
            if owner:
                found.append((int(fields[0]), fields[1], owner.group(1), fields[2]))
    return found


def clean_stale() -> list[int]:
    """Unload the virtual-microphone modules whose owner process is gone; returns their indexes."""
    stale = [index for index, _, owner, _ in owned_modules() if not _alive(owner)]
    for index in sorted(stale, reverse=True):  # the source before the sink it reads
        _pactl("unload-module", str(index), check=False)
    return stale


def source_name(description: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", description).strip("_") or "kanade_voice"


class VirtualMic:
    """`with VirtualMic("Kanade voice") as mic:` play into `mic.sink`; programs record from `mic.source`."""

    def __init__(self, description: str = DEFAULT_DESCRIPTION):
        if not description or any(c in description for c in "'\"\\\n"):
            raise DeviceError(f"--virtual-mic name {description!r}: give a plain name (no quotes or backslashes)")
        self.description = description
        self.source = source_name(description)
        self.sink = f"kanade_stream_feed_{os.getpid()}"
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid()) or 0}"
        self.modules: list[int] = []
        self.removed_stale: list[int] = []
        self._watchdog: subprocess.Popen | None = None

    def create(self) -> "VirtualMic":
        self.removed_stale = clean_stale()
        for _, name, owner, args in owned_modules():
            if name == "module-remap-source" and f"source_name={self.source} " in args + " ":
                raise DeviceError(f"the virtual microphone {self.description!r} is already provided by another "
                                  f"running kanade-stream program ({owner}); pick another --virtual-mic name")
        sources = [line.split("\t")[1] for line in _pactl("list", "short", "sources").splitlines() if "\t" in line]
        if self.source in sources:
            raise DeviceError(f"a source named {self.source!r} already exists; pick another --virtual-mic name")
        props = f"{OWNER_KEY}={self.owner}"
        try:
            self.modules.append(int(_pactl(
                "load-module", "module-null-sink", f"sink_name={self.sink}", "channels=1", "channel_map=mono",
                f"sink_properties=\"device.description='{self.description} (feed)' {props}\"").strip()))
            self.modules.append(int(_pactl(
                "load-module", "module-remap-source", f"master={self.sink}.monitor", f"source_name={self.source}",
                "channels=1", "channel_map=mono",
                f"source_properties=\"device.description='{self.description}' {props}\"").strip()))
        except (DeviceError, ValueError):
            self.remove()
            raise
        self._start_watchdog()
        return self

    def _start_watchdog(self) -> None:
        """A shell that unloads the modules when this process dies without removing them (its stdin is a
        pipe only this process writes to: any death closes it)."""
        unload = "; ".join(f"pactl unload-module {i} >/dev/null 2>&1" for i in reversed(self.modules))
        script = f'read -r line; if [ "$line" != done ]; then {unload}; fi'
        self._watchdog = subprocess.Popen(["sh", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)

    def remove(self) -> None:
        for index in reversed(self.modules):
            _pactl("unload-module", str(index), check=False)
        self.modules = []
        if self._watchdog is not None:
            try:
                self._watchdog.stdin.write(b"done\n")
                self._watchdog.stdin.close()
            except OSError:
                pass
            try:
                self._watchdog.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            self._watchdog = None

    def __enter__(self) -> "VirtualMic":
        return self.create()

    def __exit__(self, *exc) -> None:
        self.remove()

