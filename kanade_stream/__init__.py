"""kanade-stream: the Kanade speech tokenizer, offline and real-time."""

from .audio import AudioError, MelSpectrogram, load_audio, resample, save_audio
from .checkpoint import CheckpointError
from .config import KanadeConfig
from .teacher import KanadeFeatures, KanadeTeacher
from .vocoder import load_vocoder, vocode

__version__ = "0.1.0"

__all__ = [
    "AudioError",
    "CheckpointError",
    "KanadeConfig",
    "KanadeFeatures",
    "KanadeTeacher",
    "MelSpectrogram",
    "load_audio",
    "load_vocoder",
    "resample",
    "save_audio",
    "vocode",
]

# --- the streaming student ---
from .streaming import (  # noqa: E402
    KanadeStudent, StreamingConverter, StreamingDecoder, StreamingEncoder, StudentConfig, StudentLoadError,
    export_student, load_student,
)

__all__ += [
    "KanadeStudent", "StreamingConverter", "StreamingDecoder", "StreamingEncoder", "StudentConfig",
    "StudentLoadError", "export_student", "load_student",
]
