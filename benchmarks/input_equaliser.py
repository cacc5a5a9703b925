"""Diagnostic (kept in history, not in the package): does matching each clip's long-term spectrum to the voice
corpus's mean, before the SSL model, help it hear the held-out ARCTIC voices?

    python benchmarks/input_equaliser.py phone-head --ssl-model kanade_stream/assets/teacher-tiny/wavlm
    python benchmarks/input_equaliser.py quality --sentences 8 --first 0 --rows source teacher-resynth teacher-vc \
        --no-audio --out runs/q-equalised-0        # benchmarks/quality.py, the SSL model's input equalised

The equaliser: the clip's long-term power spectrum (512-point STFT, frames above -30 dB of the loudest), its
difference to the corpus's mean (every ninth training voice, 3 clips each) held within +-15 dB and smoothed over
9 bins, its level at 600-2,500 Hz kept; applied as a zero-phase gain per bin.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kanade_stream.voices.builder import read_phones  # noqa: E402
from kanade_stream.voices.phones import PHONES, UNKNOWN, frame_labels  # noqa: E402

CORPUS = Path.home() / ".cache/kanade_stream/ssl-corpus-full"
N_FFT, HOP = 512, 160
WINDOW = torch.hann_window(N_FFT)


def stft(wave: np.ndarray) -> torch.Tensor:
    return torch.stft(torch.from_numpy(np.ascontiguousarray(wave)).float(), N_FFT, HOP, window=WINDOW,
                      return_complex=True)


def long_term_db(wave: np.ndarray) -> torch.Tensor:
    power = stft(wave).abs() ** 2
    energy = power.sum(0)
    db = 10 * torch.log10(power[:, energy > energy.max() * 1e-3].mean(1) + 1e-10)
    return db - db.max()


def clips(split: str, voice: str, count: int) -> list[tuple[np.ndarray, list]]:
    entries = json.loads((CORPUS / split / voice / "voice.json").read_text())["entries"][-count:]
    return [(sf.read(CORPUS / e["path"], dtype="float32")[0], read_phones(CORPUS / e["phones"], e.get("phone_set")))
            for e in entries]


def corpus_target() -> torch.Tensor:
    voices = sorted(p.name for p in (CORPUS / "train").iterdir())[::9]
    return torch.stack([long_term_db(w) for v in voices for w, _ in clips("train", v, 3)]).mean(0)


class Equaliser:
    def __init__(self, limit_db: float = 15.0):
        self.target, self.limit = corpus_target(), limit_db

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        gain = (self.target - long_term_db(wave)).clamp(-self.limit, self.limit)
        gain = gain - gain[20:80].mean()  # bins 20-80: 625-2,500 Hz keep their level
        gain = torch.nn.functional.avg_pool1d(torch.nn.functional.pad(gain[None, None], (4, 4), mode="replicate"),
                                              9, 1)[0, 0]
        spec = stft(wave) * (10 ** (gain / 20))[:, None]
        return torch.istft(spec, N_FFT, HOP, window=WINDOW, length=len(wave)).numpy()


def phone_head(args) -> None:
    from safetensors.torch import load_file
    from transformers import WavLMModel

    from ssl_probes import arctic_waves

    sets = {v: clips("train", v, 6) for v in ["pi-joe-0", "ko-kumo-0", "fe-kal-0", "es00-f2", "fe-lp-0"]}
    sets.update({v: clips("heldout", v, 6) for v in ["fe-ked-0", "fe-ked-5", "es38-alicia", "es39-david"]})
    waves, segments = arctic_waves(Path(tempfile.mkdtemp()))
    sets["ARCTIC"] = [(waves[k], segments[k]) for k in waves]
    model = WavLMModel.from_pretrained(args.ssl_model).eval()
    head = torch.nn.Linear(model.config.hidden_size, len(PHONES))
    head.load_state_dict(load_file(str(Path(args.ssl_model) / "phone_head.safetensors")))
    for name, heard in (("as is", lambda w: w), ("equalised", Equaliser())):
        out = {}
        with torch.no_grad():
            for voice, items in sets.items():
                right = total = 0
                for wave, segs in items:
                    x = torch.from_numpy(np.ascontiguousarray(heard(wave))).float()[None]
                    guess = head(model(x * (0.9 / x.abs().max())).last_hidden_state[0]).argmax(-1)
                    labels = torch.from_numpy(frame_labels(segs, guess.shape[0]))
                    known = labels != UNKNOWN
                    right, total = right + int((guess == labels)[known].sum()), total + int(known.sum())
                out[voice] = round(right / total, 3)
        print(name, out, flush=True)


def quality(argv: list[str]) -> None:
    import quality as benchmark

    from kanade_stream import ssl

    equalise = Equaliser()
    forward, forward_batch = ssl.SSLFeatureExtractor.forward, ssl.SSLFeatureExtractor.forward_batch

    def heard(wave: torch.Tensor) -> torch.Tensor:
        wave = wave if wave.dim() > 1 else wave[None]
        return torch.stack([torch.from_numpy(equalise(w.cpu().numpy())).float() for w in wave]).to(wave.device)

    ssl.SSLFeatureExtractor.forward = lambda self, wave: forward(self, heard(wave))
    ssl.SSLFeatureExtractor.forward_batch = lambda self, waves: forward_batch(self, [heard(w)[0] for w in waves])
    benchmark.main(argv)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "quality":
        quality(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["phone-head"])
    p.add_argument("--ssl-model", default="kanade_stream/assets/teacher-tiny/wavlm")
    phone_head(p.parse_args())


if __name__ == "__main__":
    main()
