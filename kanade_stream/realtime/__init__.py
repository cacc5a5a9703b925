"""Real-time audio engine: lock-free ring buffers, a model worker, device and file backends, and
`run_session`, which runs a streaming processor live and returns a summary."""

from .backends import ArrayBackend, AudioBackend, DeviceError, DeviceTiming, FileBackend, NullBackend
from .engine import AudioEngine
from .outputs import AudioOutput, EngineOutput, ResultOutput
from .ring import RingBuffer
from .session import SessionOptions, Summary, run_session

__all__ = [
    "ArrayBackend", "AudioBackend", "AudioEngine", "AudioOutput", "DeviceError", "DeviceTiming", "EngineOutput",
    "FileBackend", "NullBackend", "ResultOutput", "RingBuffer", "SessionOptions", "Summary", "run_session",
]
