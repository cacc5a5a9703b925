"""Quality measurement with independent judges, on held-out voices and texts.

- words.py    speech recognition (pocketsphinx) and word error rate
- voices.py   speaker similarity (Resemblyzer)
- heldout.py  the held-out set: Harvard sentences spoken by flite's CMU ARCTIC voices rms, awb, slt
- compare.py  two quality runs of the same clips, paired: a difference with its bootstrap interval

The judges are optional dependencies (`pip install "kanade-stream[eval]"`), imported only when a measurement
runs: importing this package (or kanade_stream) does not need them. `benchmarks/quality.py` puts it together.
"""

from .heldout import (
    HELDOUT_VOICES, TRAINING_VOICES, VOICE_GENDERS, FliteError, HeldoutItem, build_heldout_set, harvard_sentences,
)
from .judges import JudgeMissingError, judge_versions
from .voices import NoSpeechWarning, cosine_similarity, mean_embedding, speaker_embedding, speaker_similarity
from .words import normalize_text, transcribe, word_error_rate, word_errors

__all__ = [
    "HELDOUT_VOICES",
    "TRAINING_VOICES",
    "VOICE_GENDERS",
    "FliteError",
    "HeldoutItem",
    "JudgeMissingError",
    "NoSpeechWarning",
    "build_heldout_set",
    "cosine_similarity",
    "harvard_sentences",
    "judge_versions",
    "mean_embedding",
    "normalize_text",
    "speaker_embedding",
    "speaker_similarity",
    "transcribe",
    "word_error_rate",
    "word_errors",
]
