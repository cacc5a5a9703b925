"""The streaming student and its real-time API (see api.py for the behaviour of pushes)."""

from .api import StreamingConverter, StreamingDecoder, StreamingEncoder
from .export import compile_step, export_student, export_torchscript
from .student import KanadeStudent, StudentConfig, StudentLoadError, load_student

__all__ = [
    "KanadeStudent",
    "StreamingConverter",
    "StreamingDecoder",
    "StreamingEncoder",
    "StudentConfig",
    "StudentLoadError",
    "compile_step",
    "export_student",
    "export_torchscript",
    "load_student",
]
