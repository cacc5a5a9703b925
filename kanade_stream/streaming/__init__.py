"""The streaming student and its real-time API (see api.py for the behaviour of pushes)."""

from .api import StreamingConverter, StreamingDecoder, StreamingEncoder
from .compiled import CompiledStep
from .export import export_student, export_torchscript
from .student import KanadeStudent, StudentConfig, StudentLoadError, load_student

__all__ = [
    "CompiledStep",
    "KanadeStudent",
    "StreamingConverter",
    "StreamingDecoder",
    "StreamingEncoder",
    "StudentConfig",
    "StudentLoadError",
    "export_student",
    "export_torchscript",
    "load_student",
]
