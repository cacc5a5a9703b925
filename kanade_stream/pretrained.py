"""Models shipped inside the package, so that every command runs with no download."""

from __future__ import annotations

from pathlib import Path

from .vocoder import GRIFFIN_LIM

ASSETS = Path(__file__).parent / "assets"
EMBEDDED_TEACHER = ASSETS / "teacher-tiny"
EMBEDDED_VOCODER = ASSETS / "vocoder-tiny"


def default_teacher() -> Path:
    """The embedded demo teacher: official Kanade format, small, with its own small WavLM."""
    return EMBEDDED_TEACHER


def default_vocoder() -> str:
    """The embedded tiny Vocos when the package ships one, else the weight-free Griffin-Lim."""
    return str(EMBEDDED_VOCODER) if (EMBEDDED_VOCODER / "config.yaml").is_file() else GRIFFIN_LIM


EMBEDDED_STUDENT = ASSETS / "student-tiny"


def default_student() -> Path:
    """The embedded demo student (distilled on synthetic voices by `python distill/run.py`)."""
    if not (EMBEDDED_STUDENT / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"no embedded student at {EMBEDDED_STUDENT}; run `python distill/run.py` and pass --model runs/student"
        )
    return EMBEDDED_STUDENT
