"""Probes of an SSL model trained by `training/run.py --phase ssl`, against the log-mel and a random-weight
WavLM of the same architecture as the embedded one (seeded; what the embedded teacher read before its
WavLM was pretrained).

    python benchmarks/ssl_probes.py --ssl-model runs/ssl-full/ssl/export --corpus ~/.cache/kanade_stream/ssl-corpus-full

1. Phone probe: a linear classifier on frames of training voices (the corpus's train split) predicts the
   frame phone of unseen voices (its heldout split: festival ked and two eSpeak voices with their
   perturbations, none of which the SSL model was trained on), and of the held-out CMU ARCTIC voices
   (flite's own segment times as labels, the probe sentences of 3.). Frame accuracy; higher = more content.
2. Speaker probe: an MLP on single frames tells 8 training voices apart (utterances split 4 train / 2 test).
   Frame accuracy (chance 1/8); lower = less speaker information.
3. Cross-voice agreement on the held-out CMU ARCTIC voices (flite rms, awb, slt), which no training ever
   sees: K-means (K=64) tokens of the frames; the same sentence in two voices is DTW-aligned and the share
   of aligned frames with the same token measured, against two different sentences in one voice (the
   agreement expected by chance alignment). Higher "same sentence" over "different" = speaker-independent
   content. The sentences are written here for the probe (not Harvard sentences). With --teacher, the
   same for a Kanade teacher's own content tokens (aligned on its latent before quantisation), and the
   share of its tokens that stay when only the pitch of a clip moves, quiet white noise is added, it is
   heard in a small room or through a telephone band.
4. With --teacher, where its content branch loses phones: an MLP phone probe (fitted on training voices) on
   each stage of the path, from the SSL features it reads to its tokens, on unseen voices and ARCTIC.

Writes a JSON (--out) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kanade_stream.corpus import load_manifest
from kanade_stream.ssl import SSLFeatureExtractor, conv_frames
from kanade_stream.voices.builder import read_phones
from kanade_stream.evaluation.heldout import synthesize_with_phones
from kanade_stream.voices.phones import PHONES, UNKNOWN, frame_labels

RATE, HOP, WIN = 16000, 320, 400
ARCTIC_VOICES = ("rms", "awb", "slt")  # held out: evaluation only
PROBE_SENTENCES = (
    "A quiet river runs past the old mill every morning.",
    "She packed three sandwiches and a bottle of water for the trip.",
    "The window rattled when the heavy truck drove by.",
    "My brother fixed the broken chair with glue and string.",
    "Nobody expected the concert to finish so early.",
    "Fresh bread smells wonderful on a cold winter day.",
)


class Features:
    """name -> function(wave (samples,) float32 16 kHz) -> (frames, dim)"""

    def __init__(self, ssl_model: str | None, layers: list[int], random_layers: list[int]):
        self.fns = {}
        import torchaudio

        mel = torchaudio.transforms.MelSpectrogram(RATE, n_fft=512, win_length=WIN, hop_length=HOP, n_mels=80,
                                                   center=False)
        self.fns["mel"] = lambda w: torch.log(mel(w) + 1e-5).T
        if ssl_model:
            ext = SSLFeatureExtractor.from_pretrained(ssl_model, num_layers=max(layers))
            self._add("ssl", ext, layers)
        embedded = ROOT / "kanade_stream" / "assets" / "teacher-tiny" / "wavlm"
        if embedded.is_dir():
            from transformers import WavLMConfig, WavLMModel

            torch.manual_seed(0)
            random_model = WavLMModel(WavLMConfig.from_pretrained(str(embedded)))
            self._add("random-wavlm", SSLFeatureExtractor(random_model, max(random_layers)), random_layers)

    def _add(self, name, ext, layers):
        cache = {}

        def run(w, layer):
            key = (id(w), w.shape[0])
            if key not in cache:
                cache.clear()
                cache[key] = ext(w[None])
            return cache[key][layer - 1][0]

        for layer in layers:
            self.fns[f"{name}-L{layer}"] = (lambda w, layer=layer: run(w, layer))

    @torch.no_grad()
    def __call__(self, wave: np.ndarray) -> dict[str, torch.Tensor]:
        w = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
        n = conv_frames(len(wave))
        return {k: f(w)[:n].float() for k, f in self.fns.items()}


def spread(entries, voices, per_voice):
    out = []
    for v in voices:
        out += [e for e in entries if e["speaker"] == v][:per_voice]
    return out


def corpus_frames(feats: Features, root: Path, entries) -> tuple[dict[str, list], list, list]:
    X, Y, S = {k: [] for k in feats.fns}, [], []
    for e in entries:
        wave, rate = sf.read(root / e["path"], dtype="float32")
        f = feats(wave)
        n = min(v.shape[0] for v in f.values())
        labels = frame_labels(read_phones(root / e["phones"], e.get("phone_set")), n)
        for k, v in f.items():
            X[k].append(v[:n])
        Y.append(torch.from_numpy(labels))
        S.append(torch.full((n,), hash(e["speaker"]) % 10**9))
    return X, Y, S


def fit_probe(x, y, tests, classes, hidden=0, steps=300, seed=0) -> list[float]:
    """The frame accuracy on each (x, y) of `tests` of a probe fitted on (x, y) (UNKNOWN labels left out):
    linear, or an MLP with `hidden` units."""
    torch.manual_seed(seed)
    keep = y != UNKNOWN
    x, y = x[keep], y[keep]
    mean, std = x.mean(0), x.std(0) + 1e-5
    x = (x - mean) / std
    model = torch.nn.Linear(x.shape[1], classes) if not hidden else torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], hidden), torch.nn.GELU(), torch.nn.Linear(hidden, classes))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    accuracies = []
    with torch.no_grad():
        for xt, yt in tests:
            known = yt != UNKNOWN
            accuracies.append(float((model((xt[known] - mean) / std).argmax(-1) == yt[known]).float().mean()))
    return accuracies


def kmeans(x, k=64, iters=25, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = x[torch.randperm(len(x), generator=g)[:k]].clone()
    for _ in range(iters):
        assign = torch.cdist(x, centres).argmin(1)
        for j in range(k):
            members = x[assign == j]
            if len(members):
                centres[j] = members.mean(0)
    return centres


def dtw_path(a: torch.Tensor, b: torch.Tensor) -> list[tuple[int, int]]:
    d = (1 - F.normalize(a, dim=1) @ F.normalize(b, dim=1).T).numpy().astype(np.float64)
    n, m = d.shape
    cost = np.full((n + 1, m + 1), np.inf)
    cost[0, 0] = 0
    for i in range(1, n + 1):
        prev, row, di = cost[i - 1], cost[i], d[i - 1]
        diag = np.minimum(prev[1:], prev[:-1])
        for j in range(1, m + 1):
            row[j] = di[j - 1] + min(diag[j - 1], row[j - 1])
    i, j, path = n, m, []
    while i > 0 and j > 0:
        path.append((i - 1, j - 1))
        step = np.argmin([cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]])
        i, j = (i - 1, j - 1) if step == 0 else ((i - 1, j) if step == 1 else (i, j - 1))
    return path[::-1]


def cross_voice_agreement(features: dict, tokens: dict) -> dict[str, float]:
    """Share of DTW-aligned frames (aligned on `features`) with the same token: the same probe sentence in two
    ARCTIC voices, against two different sentences in one voice. Tokens (frames,) or (frames, digits): with
    digits, the share of equal digits."""
    same, diff = [], []
    for i in range(len(PROBE_SENTENCES)):
        for a in range(len(ARCTIC_VOICES)):
            pairs = [((ARCTIC_VOICES[a], i), (ARCTIC_VOICES[b], i)) for b in range(a + 1, len(ARCTIC_VOICES))]
            other = ((ARCTIC_VOICES[a], i), (ARCTIC_VOICES[a], (i + 1) % len(PROBE_SENTENCES)))
            for (ka, kb), rates in [*((pair, same) for pair in pairs), (other, diff)]:
                path = dtw_path(features[ka], features[kb])
                p, q = (torch.tensor(side) for side in zip(*path))
                rates.append(float((tokens[ka][p] == tokens[kb][q]).float().mean()))
    return {"same_sentence_two_voices": float(np.mean(same)), "two_sentences_one_voice": float(np.mean(diff))}


# What `teacher_token_agreement` does to a clip; the last two are kinds of change that phase 1's invariance
# loss (pitch, speed, white noise) never trains on.
CHANGES = {"pitch_shift": "only the pitch moves (+3 semitones)", "noise": "white noise is added (25 dB SNR)",
           "room": "it is heard in a small room (reverberation time 0.3 s)",
           "telephone": "it is band-limited to 300-3400 Hz (a telephone line)"}


def in_a_room(wave: torch.Tensor, rt60: float = 0.3) -> torch.Tensor:
    """`wave` (16 kHz) through a synthetic room: the direct sound, then exponentially decaying noise that
    falls 60 dB in `rt60` seconds (the same room for every clip), scaled back to the clip's RMS."""
    import torchaudio.functional as AF

    t = torch.arange(int(rt60 * RATE)) / RATE
    tail = torch.randn(len(t), generator=torch.Generator().manual_seed(1)) * torch.exp(-6.91 * t / rt60) * 0.1
    tail[0] = 1.0
    wet = AF.fftconvolve(wave, tail)[..., :wave.shape[-1]]
    return wet * wave.square().mean().sqrt() / wet.square().mean().sqrt().clamp_min(1e-8)


def telephone_band(wave: torch.Tensor) -> torch.Tensor:
    import torchaudio.functional as AF

    return AF.lowpass_biquad(AF.highpass_biquad(wave, RATE, 300.0), RATE, 3400.0)


def teacher_token_agreement(teacher_folder: str, waves: dict) -> dict[str, float]:
    """The teacher's own content tokens on the ARCTIC clips, aligned on its pre-quantisation latent: whole
    tokens (one of 12,800 for Kanade's FSQ) and FSQ digits (each level alone). And the same clips changed
    in a way that leaves the words exactly as they were, with the same timing (`CHANGES`): the share of
    tokens and digits that stay."""
    from kanade_stream import KanadeTeacher
    from kanade_stream.audio import resample
    from kanade_stream.voices.perturb import pitch_shift, white_noise

    teacher = KanadeTeacher.from_pretrained(teacher_folder).eval()

    def encode(wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        wave_model = resample(wave, RATE, teacher.sample_rate)[None].to(teacher.device)
        latent = teacher.content_latent(teacher.ssl_features(wave_model)[0])
        return latent[0].float(), teacher.local_quantizer.encode(latent)[1][0]

    noise = torch.Generator().manual_seed(0)
    changes = {"pitch_shift": lambda w: pitch_shift(w, RATE, 3.0),
               "noise": lambda w: white_noise(w, 25.0, noise),
               "room": in_a_room, "telephone": telephone_band}
    latents, tokens = {}, {}
    kept = {name: ([], []) for name in changes}
    codes = teacher.local_quantizer.valid_indices_to_codes  # token -> its FSQ digits (T, levels)
    with torch.inference_mode():
        for key, wave in waves.items():
            latents[key], tokens[key] = encode(torch.from_numpy(wave))
            for name, change in changes.items():
                _, changed = encode(change(torch.from_numpy(wave)))
                n = min(len(changed), len(tokens[key]))
                kept[name][0].append(float((changed[:n] == tokens[key][:n]).float().mean()))
                kept[name][1].append(float((codes(changed[:n]) == codes(tokens[key][:n])).float().mean()))
    digits = {key: codes(t) for key, t in tokens.items()}
    whole, per_digit = cross_voice_agreement(latents, tokens), cross_voice_agreement(latents, digits)
    return {**whole, **{f"{k}_per_digit": v for k, v in per_digit.items()},
            **{f"{name}_kept": float(np.mean(a)) for name, (a, _) in kept.items()},
            **{f"{name}_kept_per_digit": float(np.mean(b)) for name, (_, b) in kept.items()}}


def teacher_content_path_phones(teacher_folder: str, root: Path, train_entries: list, unseen_entries: list,
                                waves: dict, segments: dict) -> dict[str, dict[str, float]]:
    """Where the teacher's content branch loses phones: an MLP probe (fitted on training voices) on each stage
    of the path, read on unseen corpus voices and on the ARCTIC clips. Stages: the normalised SSL features it
    reads, its encoder's latent, the FSQ latent unrounded (as the codes are scaled) and the token embedding
    (rounded). The 25 Hz stages are repeated to the 50 Hz labels."""
    from kanade_stream import KanadeTeacher
    from kanade_stream.audio import resample

    teacher = KanadeTeacher.from_pretrained(teacher_folder).eval()
    quantizer = teacher.local_quantizer
    factor = teacher.config.downsample_factor

    @torch.inference_mode()
    def stages(wave: np.ndarray) -> dict[str, torch.Tensor]:
        wave_model = resample(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)), RATE, teacher.sample_rate)
        content = teacher.ssl_features(wave_model[None].to(teacher.device))[0]
        latent = teacher.content_latent(content)
        unrounded = quantizer.proj_out(quantizer.unrounded(latent) / quantizer.half_width)
        up = lambda x: x[0].float().repeat_interleave(factor, 0)  # noqa: E731
        return {"SSL features read": content[0].float(), "encoder latent": up(latent),
                "FSQ unrounded": up(unrounded), "tokens": up(quantizer.encode(latent)[0])}

    def frames(items) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        x, y = {}, []
        for wave, clip_segments in items:
            f = stages(wave)
            n = min(v.shape[0] for v in f.values())
            for k, v in f.items():
                x.setdefault(k, []).append(v[:n])
            y.append(torch.from_numpy(frame_labels(clip_segments, n)))
        return {k: torch.cat(v) for k, v in x.items()}, torch.cat(y)

    def corpus_items(entries):
        return [(sf.read(root / e["path"], dtype="float32")[0], read_phones(root / e["phones"], e.get("phone_set")))
                for e in entries]

    x_train, y_train = frames(corpus_items(train_entries))
    tests = [frames(corpus_items(unseen_entries))]
    if waves:
        tests.append(frames([(waves[key], segments[key]) for key in waves]))
    out = {}
    for stage in x_train:
        accuracies = fit_probe(x_train[stage], y_train, [(x[stage], y) for x, y in tests], len(PHONES), hidden=256,
                               steps=400)
        out[stage] = {"unseen_voices": accuracies[0], "arctic": accuracies[1] if waves else float("nan")}
    return out


def arctic_waves(folder: Path) -> tuple[dict[tuple[str, int], np.ndarray], dict[tuple[str, int], list]]:
    """The probe sentences in the ARCTIC voices (16 kHz, peak 0.9), and each clip's phone segments from flite's
    own segment times (`synthesize_with_phones`)."""
    import torchaudio

    if shutil.which("flite") is None:
        return {}, {}
    waves, segments = {}, {}
    for voice in ARCTIC_VOICES:
        for i, text in enumerate(PROBE_SENTENCES):
            path, segments[(voice, i)] = synthesize_with_phones("flite", voice, text, folder / f"{voice}_{i}.wav")
            wave, rate = sf.read(path, dtype="float32")
            if rate != RATE:
                wave = torchaudio.functional.resample(torch.from_numpy(wave), rate, RATE).numpy()
            waves[(voice, i)] = wave / (np.abs(wave).max() + 1e-9) * 0.9
    return waves, segments


MICROPHONES = {  # name: (bass dB, treble dB, bass Hz, treble Hz) for perturb.equalise
    "as synthesised": (0.0, 0.0, 250.0, 2000.0),
    "bass -9 dB (below ~300 Hz)": (-9.0, 0.0, 300.0, 2000.0),
    "bass +9 dB": (9.0, 0.0, 300.0, 2000.0),
    "treble +9 dB (above ~1 kHz)": (0.0, 9.0, 250.0, 1000.0),
    "treble -9 dB": (0.0, -9.0, 250.0, 1000.0),
}


def phone_head_under_microphones(ssl_model: str, waves: dict, segments: dict) -> dict[str, float]:
    """Frame accuracy of the SSL model's own phone head (phone_head.safetensors, from --phase ssl) on the
    ARCTIC clips, each heard through the microphones of MICROPHONES (`perturb.equalise`)."""
    from safetensors.torch import load_file
    from transformers import WavLMModel

    from kanade_stream.voices.perturb import equalise

    model = WavLMModel.from_pretrained(ssl_model).eval()
    head = torch.nn.Linear(model.config.hidden_size, len(PHONES))
    head.load_state_dict(load_file(str(Path(ssl_model) / "phone_head.safetensors")))
    out = {}
    for name, microphone in MICROPHONES.items():
        right = total = 0
        with torch.no_grad():
            for key, wave in waves.items():
                heard = equalise(torch.from_numpy(np.ascontiguousarray(wave))[None], RATE, *microphone)
                guess = head(model(heard * (0.9 / heard.abs().max())).last_hidden_state[0]).argmax(-1)
                labels = torch.from_numpy(frame_labels(segments[key], guess.shape[0]))
                known = labels != UNKNOWN
                right += int((guess == labels)[known].sum())
                total += int(known.sum())
        out[name] = right / total
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ssl-model", default=None, help="transformers WavLM folder from --phase ssl")
    p.add_argument("--corpus", required=True, type=Path, help="a voice corpus (kanade_stream.voices.builder)")
    p.add_argument("--layers", default="1,3,6,9")
    p.add_argument("--train-voices", type=int, default=12)
    p.add_argument("--per-voice", type=int, default=6)
    p.add_argument("--teacher", default=None,
                   help="also the cross-voice agreement of this Kanade teacher's content tokens (release folder)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    layers = [int(x) for x in args.layers.split(",")]
    feats = Features(args.ssl_model, layers, [6, 9])
    entries = load_manifest(args.corpus)
    train_voices = list(dict.fromkeys(e["speaker"] for e in entries if e["split"] == "train"))
    held_voices = list(dict.fromkeys(e["speaker"] for e in entries if e["split"] == "heldout"))
    step = max(1, len(train_voices) // args.train_voices)
    probe_voices = train_voices[::step][:args.train_voices]
    results = {"ssl_model": args.ssl_model, "corpus": str(args.corpus), "probe_train_voices": probe_voices,
               "unseen_voices": held_voices, "phone_acc": {}, "speaker_acc": {}, "arctic_agreement": {}}

    with tempfile.TemporaryDirectory() as tmp:
        waves, arctic_phones = arctic_waves(Path(tmp))
    fa = {key: feats(w) for key, w in waves.items()}

    # 1. phones: train voices -> unseen voices, and -> the ARCTIC voices
    Xtr, Ytr, _ = corpus_frames(feats, args.corpus, spread(entries, probe_voices, args.per_voice))
    Xte, Yte, _ = corpus_frames(feats, args.corpus, spread(entries, held_voices, args.per_voice))
    ytr, yte = torch.cat(Ytr), torch.cat(Yte)
    results["phone_acc_arctic"] = {}
    for k in feats.fns:
        tests = [(torch.cat(Xte[k]), yte)]
        if fa:  # labels for the frames each feature has (the SSL model's last frame may be missing)
            tests.append((torch.cat([f[k] for f in fa.values()]),
                          torch.cat([torch.from_numpy(frame_labels(arctic_phones[key], f[k].shape[0]))
                                     for key, f in fa.items()])))
        accuracies = fit_probe(torch.cat(Xtr[k]), ytr, tests, len(PHONES))
        results["phone_acc"][k] = accuracies[0]
        if fa:
            results["phone_acc_arctic"][k] = accuracies[1]
    majority = torch.bincount(ytr[ytr >= 0]).argmax()
    results["phone_majority"] = float((yte == majority).float().mean())
    if fa:
        ya = tests[1][1]
        results["phone_majority_arctic"] = float((ya[ya != UNKNOWN] == majority).float().mean())

    # 2. speakers: 8 training voices, per-utterance split
    spk_voices = probe_voices[:8]
    X, Y, U = {k: [] for k in feats.fns}, [], []
    for v_index, v in enumerate(spk_voices):
        utts = [e for e in entries if e["speaker"] == v][:6]
        Xv, _, _ = corpus_frames(feats, args.corpus, utts)
        for u in range(len(utts)):
            n = Xv["mel"][u].shape[0]
            for k in feats.fns:
                X[k].append(Xv[k][u])
            Y.append(torch.full((n,), v_index))
            U.append(torch.full((n,), u))
    y, u = torch.cat(Y), torch.cat(U)
    for k in feats.fns:
        x = torch.cat(X[k])
        results["speaker_acc"][k] = fit_probe(x[u < 4], y[u < 4], [(x[u >= 4], y[u >= 4])], len(spk_voices),
                                              hidden=256)[0]

    # 3. held-out ARCTIC voices: K-means tokens, same sentence across voices vs different sentences
    if waves:
        for k in feats.fns:
            allx = torch.cat([f[k] for f in fa.values()])
            mean, std = allx.mean(0), allx.std(0) + 1e-5
            z = {key: (f[k] - mean) / std for key, f in fa.items()}
            centres = kmeans(torch.cat(list(z.values())))
            tok = {key: torch.cdist(v, centres).argmin(1) for key, v in z.items()}
            results["arctic_agreement"][k] = cross_voice_agreement(z, tok)
        if args.teacher:
            results["teacher_token_agreement"] = teacher_token_agreement(args.teacher, waves)
        if args.ssl_model and (Path(args.ssl_model) / "phone_head.safetensors").is_file():
            results["phone_head_arctic"] = phone_head_under_microphones(args.ssl_model, waves, arctic_phones)
    if args.teacher:
        results["teacher_content_phones"] = teacher_content_path_phones(
            args.teacher, args.corpus, spread(entries, probe_voices, args.per_voice),
            spread(entries, held_voices, args.per_voice), waves, arctic_phones)
    results["wall_s"] = round(time.time() - start, 1)
    print(f"{'features':<18} {'phone acc (unseen voices)':>26} {'(ARCTIC)':>9} {'speaker acc (8, chance .125)':>29} "
          f"{'ARCTIC same-sent/2 voices':>26} {'diff-sent/1 voice':>18}")
    for k in feats.fns:
        ag = results["arctic_agreement"].get(k, {})
        print(f"{k:<18} {results['phone_acc'][k]:>26.3f} {results['phone_acc_arctic'].get(k, float('nan')):>9.3f} "
              f"{results['speaker_acc'][k]:>29.3f} "
              f"{ag.get('same_sentence_two_voices', float('nan')):>26.3f} "
              f"{ag.get('two_sentences_one_voice', float('nan')):>18.3f}")
    if "teacher_token_agreement" in results:
        ag = results["teacher_token_agreement"]
        for name, suffix in (("teacher tokens", ""), ("  FSQ digits", "_per_digit")):
            print(f"{name:<18} {'':>26} {'':>9} {'':>29} {ag['same_sentence_two_voices' + suffix]:>26.3f} "
                  f"{ag['two_sentences_one_voice' + suffix]:>18.3f}")
        for name, what in CHANGES.items():
            print(f"teacher tokens kept when {what}: {ag[name + '_kept']:.3f} "
                  f"(FSQ digits {ag[name + '_kept_per_digit']:.3f})")
    for stage, accuracy in results.get("teacher_content_phones", {}).items():
        print(f"phones (MLP probe) from the teacher's {stage}: unseen voices {accuracy['unseen_voices']:.3f}, "
              f"ARCTIC {accuracy['arctic']:.3f}")
    for name, accuracy in results.get("phone_head_arctic", {}).items():
        print(f"the SSL model's phone head on ARCTIC, {name}: {accuracy:.3f}")
    print(f"(phone majority class {results['phone_majority']:.3f}, ARCTIC "
          f"{results.get('phone_majority_arctic', float('nan')):.3f}; {results['wall_s']} s)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
