import contextlib
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"
REFERENCE = DATA / "kanade_official_tiny_25hz"
OFFICIAL_CONFIGS = DATA / "official_release"  # release configs and parameter lists, copied from the official models


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def reference_teacher():
    from kanade_stream import KanadeTeacher

    return KanadeTeacher.from_pretrained(REFERENCE, ssl_model=REFERENCE / "wavlm")


@pytest.fixture(scope="session")
def reference_audio():
    from kanade_stream import load_audio

    source, _ = load_audio(REFERENCE / "input.wav", 24000)
    reference, _ = load_audio(REFERENCE / "reference.wav", 24000)
    return source, reference


@contextlib.contextmanager
def one_thread():
    """Streaming steps are small: one thread avoids OpenMP contention on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def student():
    """A tiny streaming student with random (non-trivial) weights."""
    from kanade_stream.streaming import KanadeStudent, StudentConfig
    from kanade_stream.streaming.testing import randomize

    torch.manual_seed(0)
    return randomize(KanadeStudent(StudentConfig.tiny())).eval()
