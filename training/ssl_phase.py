"""SSL pretraining: a small `transformers.WavLMModel` learns content from the voice corpus's phone labels.

HuBERT-style masked prediction, with the synthesizers' own frame phone labels as the targets instead of
k-means clusters: spans of the CNN features are replaced by WavLM's learned mask embedding, and a linear
head on the last transformer layer predicts the phone of every frame,

    loss = masked_weight * CE(masked frames) + unmasked_weight * CE(unmasked frames)

(frames whose phone no map knows, and padding, are ignored). The many voices saying the same phones make
the features speaker-independent; the masking makes the model use context, as HuBERT does. Optionally
(`speaker_adversarial_weight` > 0) a frame-level speaker classifier (the adversary) reads the content
layers: it learns to name the training voice with its own optimizer on detached features, and the model
learns to make its answer uniform over the voices (a confusion loss: the cross-entropy of its output
against the uniform distribution, bounded below by ln(voices)), so the layers Kanade's content branch reads
lose the voice (the global branch reads lower layers). Gradient reversal, tried first, let the model win
by making the adversary confidently wrong, which still names the voice.

Optionally (`consistency_weight` > 0, `--consistency`) each chunk is heard a second time as another voice
(another speed, then another pitch) and, on the content layers, every frame must pick its aligned frame of
that view out of the view's other frames (InfoNCE, as ContentVec does): what a change of voice changes
leaves those layers. The negatives come from the same clip: other clips are other voices, which the voice
alone tells apart.

    python training/run.py --phase ssl                         # tiny model on the tiny corpus, CPU, minutes
    python training/run.py --phase ssl --config ssl_full --resume   # the full recipe (runs/ssl-full)

Output `<out>/ssl/`: the trainer's folder (checkpoints, logs, done.json) and `export/`, a Hugging Face
folder (config.json + model.safetensors + preprocessor_config.json) that `SSLFeatureExtractor.from_pretrained`
and `KanadeTeacher.from_pretrained(..., ssl_model=folder)` load as they load WavLM Base+, with the phone
head beside it (phone_head.safetensors, phones.json; not read by those loaders).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
import math
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from torch import nn

from kanade_stream.voices.builder import build_voice_corpus
from kanade_stream.audio import resample
from kanade_stream.ssl import WAVLM_CONV, conv_frames
from kanade_stream.voices.perturb import equalise, microphone_draws, pitch_shift, random_microphone
from kanade_stream.voices.phones import FRAME_RATE, LABEL_OFFSET, PHONES, UNKNOWN

from .data import EpochCursor, LabelledBatch, clip_phones, perturbed_rate, phone_labels_at, require_phones
from .runtime import Runtime
from .settings import SSLModelSettings, SSLSettings
from .trainer import Task

log = logging.getLogger("training")
SAMPLE_RATE = 16000
CONV_KERNEL, CONV_STRIDE = zip(*WAVLM_CONV)  # WavLM's front end: 320 samples a frame at 16 kHz
HOP = 320
CONSISTENCY_GAP = 4  # frames: the consistency loss's negatives are at least this far from the positive


def wavlm_config(m: SSLModelSettings):
    from transformers import WavLMConfig

    return WavLMConfig(
        hidden_size=m.hidden_size, num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads,
        intermediate_size=m.intermediate_size, conv_dim=(m.conv_dim,) * 7, conv_kernel=CONV_KERNEL,
        conv_stride=CONV_STRIDE, conv_bias=False, feat_extract_norm="group", do_stable_layer_norm=False,
        num_conv_pos_embeddings=m.pos_conv_kernel, num_conv_pos_embedding_groups=m.pos_conv_groups,
        hidden_dropout=m.dropout, attention_dropout=m.dropout, activation_dropout=0.0, feat_proj_dropout=m.dropout,
        layerdrop=0.0, apply_spec_augment=True, mask_time_prob=0.05, mask_time_length=10,
        architectures=["WavLMModel"])


def num_frames(samples: int) -> int:
    """SSL frames of `samples` at 16 kHz."""
    return conv_frames(samples)


# --------------------------------------------------------------------------------------------------------
# data: chunks of audio with their frame labels
# --------------------------------------------------------------------------------------------------------


class LabelledClips:
    def __init__(self, root: Path, entries: list[dict], chunk_samples: int, speakers: dict[str, int] | None = None):
        self.root, self.entries, self.chunk = root, entries, chunk_samples
        self.speakers = speakers or {}  # training voice -> index (the adversary's classes)

    def speaker(self, index: int) -> int:
        return self.speakers.get(self.entries[index]["speaker"], -1)

    def __len__(self):
        return len(self.entries)

    def load(self, index: int, rng: np.random.Generator | None, speed: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """A chunk (random offset on the 320-sample grid when rng is given, else the start) and its labels;
        `speed` plays it that much faster (read as if recorded at speed x 16 kHz, to the nearest 80 Hz), the
        labels stretched to match."""
        audio, labels, _, _ = self.load_views(index, rng, speed)
        return audio, labels

    def load_views(self, index: int, rng: np.random.Generator | None, speed: float = 1.0,
                   view: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, float]:
        """As `load`, and with `view` = (speed, semitones) the same stretch of the file heard as another voice:
        played at that speed (formants and tempo) with its pitch then moved by `semitones` (the duration
        kept). Returns (audio, labels, view audio or None, the first speed over the view's, both as played)."""
        entry = self.entries[index]
        path = self.root / entry["path"]
        total = sf.info(path).frames
        speed = perturbed_rate(SAMPLE_RATE, speed) / SAMPLE_RATE  # the speed it plays at exactly
        start = 0
        need = self._samples_needed(speed)
        if rng is not None and total > need:
            start = int(rng.integers(0, (total - need) // HOP + 1)) * HOP
        audio = self._read(path, start, speed)
        n = num_frames(self.chunk)
        segments = clip_phones(str(self.root / entry["phones"]), entry.get("phone_set"))
        valid = num_frames(len(audio)) if len(audio) >= 400 else 0
        labels = phone_labels_at(segments, start / SAMPLE_RATE, speed, n, valid)
        second, ratio = None, 1.0
        if view is not None:
            view_speed = perturbed_rate(SAMPLE_RATE, view[0]) / SAMPLE_RATE
            second = self._padded(self._read(path, start, view_speed))
            if view[1]:
                second = pitch_shift(torch.from_numpy(second), SAMPLE_RATE, view[1]).numpy()
            ratio = speed / view_speed
        return self._padded(audio), labels, second, ratio

    def _samples_needed(self, speed: float) -> int:
        return math.ceil(self.chunk * speed) + (0 if speed == 1.0 else 64)  # + the resampling filter's edge

    def _read(self, path: Path, start: int, speed: float) -> np.ndarray:
        """Up to a chunk of audio from `start`, played at `speed` (an exact multiple of 80 Hz / 16 kHz)."""
        audio, _ = sf.read(path, start=start, frames=self._samples_needed(speed), dtype="float32", always_2d=False)
        if speed != 1.0:
            audio = resample(torch.from_numpy(audio), int(round(speed * SAMPLE_RATE)), SAMPLE_RATE).numpy()
        return audio[:self.chunk]

    def _padded(self, audio: np.ndarray) -> np.ndarray:
        return np.pad(audio, (0, self.chunk - len(audio))) if len(audio) < self.chunk else audio


def voice_weights(voices: list[str], patterns: dict[str, float]) -> dict[str, float]:
    """Each voice's sampling weight: that of the last of `patterns` (shell-style, 'pi-joe-*') that names it, 1
    when none does. A pattern that names no voice is refused (a typo would otherwise weigh nothing)."""
    weights = dict.fromkeys(voices, 1.0)
    for pattern, weight in patterns.items():
        named = fnmatch.filter(voices, pattern)
        if not named:
            raise ValueError(f"voice weight {pattern}={weight}: no training voice matches {pattern!r} "
                             f"(voices: {', '.join(sorted(voices)[:12])}{', ...' if len(voices) > 12 else ''})")
        weights.update(dict.fromkeys(named, float(weight)))
        log.info("ssl voice weight %s: %g (%d voices)", pattern, weight, len(named))
    if not any(weights.values()):
        raise ValueError("the voice weights leave no training clip (every voice weighs 0)")
    return weights


class LabelledStream(EpochCursor):
    """Endless seeded batches over epochs; state (epoch, batch in epoch) for exact resumption. Batch k of an
    epoch depends only on (seed, epoch, k), so `num_workers` loader processes can make batches ahead (a GPU
    step is faster than reading 64 clips in one process) and the batches are the same with or without them.
    With `weights` (voice -> weight) an epoch holds each clip of a voice of weight w int(w) times, and a share
    w - int(w) of its clips once more (another share each epoch): 2 hears a voice twice as often, 0.5 half as."""

    def __init__(self, clips: LabelledClips, batch_size: int, seed: int, gain: tuple[float, float] = (0.3, 1.0),
                 num_workers: int = 0, speed_perturbation: float = 0.0, view: tuple[float, float] | None = None,
                 noise_snr_db: tuple[float, ...] = (), equaliser_db: float = 0.0, tilt_db: float = 0.0,
                 weights: dict[str, float] | None = None):
        """`view` = (speed spread, semitones): each clip is also heard as another voice, played at a speed in
        1 +- spread with its pitch then moved by up to +- semitones (LabelledClips.load_views).
        `noise_snr_db` = (low, high): white noise added to every chunk (and view) at an SNR in that range.
        `equaliser_db`: every chunk (and view, on its own) heard through another microphone, its bass and its
        treble each moved by up to +- that many dB (`perturb.equalise`, corner frequencies drawn too), and the
        whole spectrum tilted within +- `tilt_db` (`perturb.random_microphone`)."""
        self.clips, self.batch_size, self.seed, self.gain = clips, batch_size, seed, gain
        self.speed_perturbation, self.view, self.noise_snr_db = speed_perturbation, view, tuple(noise_snr_db)
        self.equaliser_db, self.tilt_db = equaliser_db, tilt_db
        self.weighted = None  # [(a voice's clip indices, whole copies an epoch, clips drawn once more)]
        epoch_clips = len(clips)
        if weights is not None:
            by_voice: dict[str, list[int]] = {}
            for i, entry in enumerate(clips.entries):
                by_voice.setdefault(entry["speaker"], []).append(i)
            self.weighted = []
            for voice, indices in sorted(by_voice.items()):
                weight = weights.get(voice, 1.0)
                self.weighted.append((np.array(indices), int(weight), round((weight - int(weight)) * len(indices))))
            epoch_clips = sum(copies * len(ix) + share for ix, copies, share in self.weighted)
        if epoch_clips < batch_size:
            raise ValueError(f"{epoch_clips} training clips an epoch, fewer than the batch size {batch_size}")
        self.batches_per_epoch = epoch_clips // batch_size
        self.num_workers = num_workers
        super().__init__()

    def make_batch(self, position: tuple[int, int]) -> LabelledBatch:
        """Batch `index` of epoch `epoch` (position = (epoch, index))."""
        epoch, index = position
        order = self.epoch_order(epoch)
        rng = np.random.default_rng([self.seed, epoch, index, 1])
        picks = order[index * self.batch_size:(index + 1) * self.batch_size]
        waves, labels, views, ratios = [], [], [], []
        for i in picks:
            speed = 1.0
            if self.speed_perturbation:
                speed = float(rng.uniform(1 - self.speed_perturbation, 1 + self.speed_perturbation))
            view = None
            if self.view is not None:
                spread, semitones = self.view
                view = (float(rng.uniform(1 - spread, 1 + spread)), float(rng.uniform(-semitones, semitones)))
            audio, lab, second, ratio = self.clips.load_views(int(i), rng, speed, view)
            waves.append(self.noisy(self.equalised(audio, rng), rng) * rng.uniform(*self.gain))
            labels.append(lab)
            if second is not None:
                views.append(self.noisy(self.equalised(second, rng), rng) * rng.uniform(*self.gain))
                ratios.append(ratio)
        speakers = torch.tensor([self.clips.speaker(int(i)) for i in picks], dtype=torch.long)
        batch = LabelledBatch(torch.from_numpy(np.stack(waves)).float(), torch.from_numpy(np.stack(labels)),
                              speakers)
        if views:
            batch.view = torch.from_numpy(np.stack(views)).float()
            batch.view_ratio = torch.tensor(ratios, dtype=torch.float32)
        return batch

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The clip indices of `epoch`, shuffled (seeded by (seed, epoch); weighted as the class says)."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.weighted is None:
            return rng.permutation(len(self.clips))
        parts = []
        for indices, copies, share in self.weighted:
            parts += [indices] * copies
            if share:
                parts.append(rng.choice(indices, share, replace=False))
        return rng.permutation(np.concatenate(parts))

    def equalised(self, audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """`audio` through a microphone drawn from `equaliser_db` (as it is when that is 0): bass shelf at
        100-400 Hz and treble shelf at 1-4 kHz, each gain uniform in +- equaliser_db, then tilted (tilt_db)."""
        if not self.equaliser_db:
            return audio
        draws = rng.random(microphone_draws(self.tilt_db))
        with torch.no_grad():
            out = equalise(torch.from_numpy(audio), SAMPLE_RATE,
                           *random_microphone(self.equaliser_db, draws, self.tilt_db))
        return out.numpy().astype(np.float32)

    def noisy(self, audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """`audio` with white noise at an SNR drawn from `noise_snr_db` (as it is when that is empty)."""
        if not self.noise_snr_db:
            return audio
        rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))
        snr = rng.uniform(*self.noise_snr_db)
        return (audio + rng.standard_normal(len(audio)) * rms * 10 ** (-snr / 20)).astype(np.float32)

    def _positions(self):
        epoch, index = self.epoch, self.batch_in_epoch
        while True:
            yield epoch, index
            index += 1
            if index >= self.batches_per_epoch:
                epoch, index = epoch + 1, 0

    def __next__(self) -> tuple[LabelledBatch, int]:
        if self.num_workers == 0:
            batch = self.make_batch((self.epoch, self.batch_in_epoch))
        else:
            if self._iterator is None:
                from torch.utils.data import DataLoader

                from .data import ignore_sigint

                loader = DataLoader(_BatchMaker(self), batch_size=None, sampler=self._positions(),
                                    num_workers=self.num_workers, prefetch_factor=4, worker_init_fn=ignore_sigint)
                self._iterator = iter(loader)
            batch = next(self._iterator)
        self.advance()  # the loader's positions run on over epochs (_positions): it carries on
        return batch, 0


class _BatchMaker(torch.utils.data.Dataset):
    """The loader's view of a LabelledStream: key (epoch, index) -> that batch."""

    def __init__(self, stream: LabelledStream):
        self.stream = stream

    def __getitem__(self, position):
        return self.stream.make_batch(position)


def fixed_batches(clips: LabelledClips, count: int, batch_size: int) -> list[LabelledBatch]:
    """The first `count` clips from their start, in batches (validation)."""
    n = min(count, len(clips))
    items = [clips.load(i, None) for i in range(n)]
    speakers = torch.tensor([clips.speaker(i) for i in range(n)], dtype=torch.long)
    out = []
    for k in range(0, len(items), batch_size):
        part = items[k:k + batch_size]
        out.append(LabelledBatch(torch.from_numpy(np.stack([a for a, _ in part])),
                                 torch.from_numpy(np.stack([b for _, b in part])), speakers[k:k + batch_size]))
    return out


def spread(entries: list[dict], count: int) -> list[dict]:
    """`count` entries spread over the speakers (round robin), in a fixed order."""
    by_speaker: dict[str, list[dict]] = {}
    for e in entries:
        by_speaker.setdefault(e["speaker"], []).append(e)
    out, k = [], 0
    while len(out) < min(count, len(entries)):
        for items in by_speaker.values():
            if k < len(items) and len(out) < count:
                out.append(items[k])
        k += 1
    return out


# --------------------------------------------------------------------------------------------------------
# the task
# --------------------------------------------------------------------------------------------------------


def mask_spans(batch: int, frames: int, prob: float, length: int, generator: torch.Generator) -> torch.Tensor:
    """HuBERT/wav2vec 2.0 masking: each frame starts a span of `length` frames with probability `prob`
    (overlaps merge), at least one span per row."""
    starts = torch.rand(batch, frames, generator=generator) < prob
    starts[:, 0] |= ~starts.any(dim=1)
    mask = torch.zeros(batch, frames + length, dtype=torch.bool)
    for offset in range(length):
        mask[:, offset:offset + frames] |= starts
    return mask[:, :frames]


def aligned_positions(ratio: torch.Tensor, frames: int, view_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where (fractional frame index) each of `frames` frames of the first view lies in the second, for
    views that start at the same place in the file and play at speeds whose ratio (first / second) is
    `ratio` (B,): frame i is centred at (12.5 ms + i / 50 s) x speed into the file. And which of them fall
    inside the second view's `view_frames` frames."""
    centre = LABEL_OFFSET * FRAME_RATE  # frame 0's centre, in frames
    i = torch.arange(frames, device=ratio.device, dtype=torch.float32)
    position = ratio[:, None].float() * (i[None, :] + centre) - centre
    return position, (position >= 0) & (position <= view_frames - 1)


def interpolate_frames(features: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """features (B, T, D) read at fractional frame positions (B, N), linearly; positions are clamped
    to [0, T - 1]."""
    position = position.clamp(0, features.shape[1] - 1)
    low = position.floor().long()
    high = (low + 1).clamp(max=features.shape[1] - 1)
    w = (position - low)[..., None].to(features.dtype)
    pick = lambda index: features.gather(1, index[..., None].expand(-1, -1, features.shape[2]))  # noqa: E731
    return pick(low) * (1 - w) + pick(high) * w


class SpeakerAdversary(nn.Module):
    """Names the training voice of every frame from the mean of some hidden states."""

    def __init__(self, dim: int, num_speakers: int, layers: list[int]):
        super().__init__()
        self.layers = list(layers)
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, num_speakers))

    def features(self, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return torch.stack([hidden_states[i] for i in self.layers]).mean(0)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).float()


class SSLTask(Task):
    phase = "ssl"

    def __init__(self, runtime: Runtime, settings: SSLSettings, seed: int = 0, num_speakers: int = 0):
        super().__init__(runtime, settings)
        from transformers import WavLMModel

        self.config = wavlm_config(settings.model)
        self.model = WavLMModel(self.config)
        self.head = nn.Linear(self.config.hidden_size, len(PHONES))
        parts = {"wavlm": self.model, "head": self.head}
        self.adversary = None
        if settings.losses.speaker_adversarial_weight > 0:
            layers = settings.losses.adversary_layers
            if num_speakers < 2 or not layers or not all(1 <= i <= settings.model.num_layers for i in layers):
                raise ValueError(f"the speaker adversary needs >= 2 training voices (got {num_speakers}) and "
                                 f"adversary_layers in 1..{settings.model.num_layers} (got {layers})")
            self.adversary = parts["adversary"] = SpeakerAdversary(self.config.hidden_size, num_speakers, layers)
        self.net = nn.ModuleDict(parts).to(runtime.device)
        self.models = {"ssl": self.net}
        self.add_optimizer("ssl", [*self.model.parameters(), *self.head.parameters()])
        if self.adversary is not None:
            optim = dataclasses.replace(settings.optim, lr=settings.losses.adversary_lr, warmup=0.0)
            self.add_optimizer("adversary", self.adversary.parameters(), optim)
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, batch: LabelledBatch, mask: torch.Tensor | None, hidden: bool = False):
        """Phone logits and labels (B, frames), and with `hidden` every layer's hidden states."""
        out = self.model(batch.wave, mask_time_indices=mask, output_hidden_states=hidden)
        logits = self.head(out.last_hidden_state).float()
        frames = min(logits.shape[1], batch.labels.shape[1])
        return logits[:, :frames], batch.labels[:, :frames], out.hidden_states

    def adversary_logits(self, hidden_states, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The adversary's speaker logits and its input features (B, frames, dim)."""
        features = self.adversary.features(hidden_states)[:, :frames]
        return self.adversary.classify(features), features

    def consistency_loss(self, hidden_states, batch: LabelledBatch, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
        """InfoNCE between the content layers of the first view and those of the second, aligned frame by
        frame (mean over the layers), and how often each frame picks its own aligned frame."""
        losses = self.settings.losses
        with torch.no_grad():
            targets = self.model(batch.view, output_hidden_states=True).hidden_states
        frames = labels.shape[1]
        position, valid = aligned_positions(batch.view_ratio, frames, targets[0].shape[1])
        valid &= labels != UNKNOWN
        if valid.sum() < 2:
            return labels.new_zeros((), dtype=torch.float32), 0.0
        rows = valid.nonzero(as_tuple=True)
        clip, frame = rows
        # The negatives are the other frames of the same clip, from CONSISTENCY_GAP frames away (neighbours
        # share the phone). Frames of other clips are other voices, which the voice itself tells apart: with
        # them as negatives the content layers learnt the voice (speaker probe 0.90 -> 1.00).
        near = (frame[:, None] - frame[None, :]).abs() < CONSISTENCY_GAP
        exclude = (clip[:, None] != clip[None, :]) | near & ~torch.eye(len(clip), dtype=torch.bool, device=clip.device)
        total, hits = 0.0, 0.0
        for layer in losses.consistency_layers:
            a = F.normalize(hidden_states[layer][:, :frames][rows].float(), dim=-1)
            b = F.normalize(interpolate_frames(targets[layer].float(), position)[rows], dim=-1)
            scores = (a @ b.T / losses.consistency_temperature).masked_fill(exclude, float("-inf"))
            own = torch.arange(len(a), device=a.device)
            total = total + F.cross_entropy(scores, own)
            hits += float((scores.argmax(-1) == own).float().mean())
        n = len(losses.consistency_layers)
        return total / n, hits / n

    def adversary_step(self, features: torch.Tensor, labels: torch.Tensor, speakers: torch.Tensor) -> float:
        """One step of the adversary alone on detached features; its speaker cross-entropy before the step."""
        with self.runtime.autocast():
            speaker_logits = self.adversary.classify(features.detach())
        ce, _ = self.speaker_loss(speaker_logits, labels, speakers)
        self.optimize("adversary", ce)
        return ce.item()

    @staticmethod
    def confusion_loss(speaker_logits, labels, speakers) -> torch.Tensor:
        """Cross-entropy of the adversary's output against the uniform distribution over the voices, on real
        frames of training voices: ln(voices) exactly when the adversary cannot tell them apart."""
        valid = (labels != UNKNOWN) & (speakers[:, None] >= 0)
        if not valid.any():
            return speaker_logits.sum() * 0
        return -F.log_softmax(speaker_logits[valid], dim=-1).mean(-1).mean()

    def speaker_loss(self, speaker_logits, labels, speakers) -> tuple[torch.Tensor, float]:
        """Frame-level speaker cross-entropy over real frames of training voices, and its accuracy."""
        targets = speakers[:, None].expand_as(labels).masked_fill(labels == UNKNOWN, -1)
        valid = targets >= 0
        if not valid.any():
            return speaker_logits.sum() * 0, 0.0
        ce = F.cross_entropy(speaker_logits.reshape(-1, speaker_logits.shape[-1]), targets.reshape(-1),
                             ignore_index=-1)
        acc = float((speaker_logits.argmax(-1) == targets)[valid].float().mean())
        return ce, acc

    def losses(self, logits, labels, mask):
        s = self.settings
        masked_labels = labels.masked_fill(~mask, UNKNOWN)
        unmasked_labels = labels.masked_fill(mask, UNKNOWN)
        flat = logits.reshape(-1, logits.shape[-1])
        ce_m = F.cross_entropy(flat, masked_labels.reshape(-1), ignore_index=UNKNOWN) \
            if (masked_labels != UNKNOWN).any() else flat.sum() * 0
        ce_u = F.cross_entropy(flat, unmasked_labels.reshape(-1), ignore_index=UNKNOWN) \
            if (unmasked_labels != UNKNOWN).any() else flat.sum() * 0
        return ce_m, ce_u, s.losses.masked_weight * ce_m + s.losses.unmasked_weight * ce_u

    def train_step(self, batch: LabelledBatch, step: int) -> dict[str, float]:
        s = self.settings
        frames = num_frames(batch.wave.shape[1])
        mask = mask_spans(batch.wave.shape[0], frames, s.mask_prob, s.mask_length, self.generator).to(self.device)
        extra = {}
        consistency = s.losses.consistency_weight > 0 and batch.view is not None
        with self.runtime.autocast():
            logits, labels, hidden = self.forward(batch, mask, hidden=self.adversary is not None or consistency)
            if self.adversary is not None:
                speaker_logits, features = self.adversary_logits(hidden, labels.shape[1])
            if consistency:
                ce_view, acc_view = self.consistency_loss(hidden, batch, labels)
        mask = mask[:, :labels.shape[1]]
        ce_m, ce_u, loss = self.losses(logits, labels, mask)
        if consistency:
            loss = loss + s.losses.consistency_weight * ce_view
            extra.update(ce_view=ce_view.item(), acc_view=acc_view)
        if self.adversary is not None:
            # the model is pushed towards an adversary that cannot tell the voices apart (the gradient this
            # puts on the adversary's own weights is dropped: it learns below, on the detached features)
            losses = s.losses
            ramp = min(1.0, step / max(1.0, losses.adversary_warmup * s.steps))
            confusion = self.confusion_loss(speaker_logits, labels, batch.speakers)
            loss = loss + losses.speaker_adversarial_weight * ramp * confusion
            ce_spk, acc_spk = self.speaker_loss(speaker_logits.detach(), labels, batch.speakers)
            extra.update(ce_speaker=ce_spk.item(), acc_speaker=acc_spk, confusion=confusion.item())
        grad_norm = self.optimize("ssl", loss)
        if self.adversary is not None:
            for _ in range(self.settings.losses.adversary_steps):
                self.adversary_step(features, labels, batch.speakers)
        valid = mask & (labels != UNKNOWN)
        acc = float((logits.argmax(-1) == labels)[valid].float().mean()) if valid.any() else 0.0
        return {"loss": loss.item(), "ce_masked": ce_m.item(), "ce_unmasked": ce_u.item(), "acc_masked": acc,
                **extra, "grad_norm": grad_norm}

    def validate(self, batches: list[LabelledBatch]):
        gen = torch.Generator().manual_seed(1234)  # the same masks at every validation
        totals = {"loss": 0.0, "ce_masked": 0.0, "acc_masked": 0.0, "acc_unmasked_input": 0.0}
        for batch in batches:
            frames = num_frames(batch.wave.shape[1])
            mask = mask_spans(batch.wave.shape[0], frames, self.settings.mask_prob, self.settings.mask_length,
                              gen).to(self.device)
            with self.runtime.autocast():
                logits, labels, _ = self.forward(batch, mask)
                clean_logits, _, _ = self.forward(batch, None)
            mask = mask[:, :labels.shape[1]]
            ce_m, _, loss = self.losses(logits, labels, mask)
            valid = labels != UNKNOWN
            totals["loss"] += loss.item()
            totals["ce_masked"] += ce_m.item()
            totals["acc_masked"] += float((logits.argmax(-1) == labels)[valid & mask].float().mean())
            totals["acc_unmasked_input"] += float((clean_logits.argmax(-1) == labels)[valid].float().mean())
        return {k: v / max(1, len(batches)) for k, v in totals.items()}, []

    def export(self, folder: Path) -> Path:
        return export_ssl(self.model, self.head, folder)


def export_ssl(model, head: nn.Module, folder: Path) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": False, "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1,
        "padding_side": "right", "padding_value": 0.0, "return_attention_mask": True,
        "sampling_rate": SAMPLE_RATE}, indent=1) + "\n")
    save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()},
              str(folder / "phone_head.safetensors"))
    (folder / "phones.json").write_text(json.dumps(list(PHONES)) + "\n")
    return folder


# --------------------------------------------------------------------------------------------------------
# the phase
# --------------------------------------------------------------------------------------------------------


def corpus_dir(settings: SSLSettings) -> Path:
    if settings.corpus_dir:
        return Path(settings.corpus_dir).expanduser()
    from kanade_stream.corpus import default_corpus_dir

    return default_corpus_dir().parent / f"ssl-corpus-{settings.corpus}"


def read_ssl_manifest(manifest: str | Path) -> tuple[Path, list[dict]]:
    """(folder the paths are relative to, entries) of a voice corpus's manifest, its folder, or a subset of its
    lines kept beside it; refused when the clips have no phone alignments."""
    from kanade_stream.corpus import load_manifest

    path = Path(manifest).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"ssl manifest {path} does not exist")
    entries = load_manifest(path)
    if not entries:
        raise ValueError(f"ssl manifest {path} has no clips")
    require_phones(entries, f"the SSL phase (ssl manifest {path})", "or a subset of its manifest's lines")
    return (path if path.is_dir() else path.parent), entries


def make_ssl_task(run, runtime: Runtime):
    """The task, its batch stream and validation batches (building the corpus first when needed) of the
    recipe `run` (RunSettings)."""
    settings, seed = run.ssl, run.seed
    batch_size, chunk_seconds = run.batch_size("ssl"), run.chunk_seconds("ssl")
    if runtime.world_size > 1:
        raise ValueError("the SSL phase runs in one process (no torchrun)")
    from kanade_stream.corpus import load_manifest
    from kanade_stream.voices.builder import load_voice_corpus

    if settings.manifest:
        root, entries = read_ssl_manifest(settings.manifest)
    else:
        if settings.corpus == "prebuilt":
            info = load_voice_corpus(corpus_dir(settings))
        else:
            info = build_voice_corpus(corpus_dir(settings), settings.corpus, jobs=settings.corpus_jobs,
                                      progress=runtime.is_main)
        root, entries = info.out_dir, load_manifest(info.manifest)
    if not any(e["split"] == "heldout" for e in entries):
        raise ValueError(f"the voice corpus {root} has no heldout voices to validate on")
    train = [e for e in entries if e["split"] == "train"]
    val = spread([e for e in entries if e["split"] == "heldout"], settings.val_clips)
    chunk = num_frames_to_samples(int(round(chunk_seconds * SAMPLE_RATE / HOP)))
    speakers = {name: i for i, name in enumerate(sorted({e["speaker"] for e in train}))}
    log.info("ssl corpus %s: %d training clips (%d voices), %.2f h; %d validation clips from held-out voices",
             settings.manifest or root, len(train), len(speakers), sum(e["duration"] for e in train) / 3600,
             len(val))
    weights = None
    if settings.voice_weights:
        weights = voice_weights(list(speakers), settings.voice_weights)
    stream = LabelledStream(LabelledClips(root, train, chunk, speakers), batch_size, seed,
                            num_workers=settings.num_workers, speed_perturbation=settings.speed_perturbation,
                            view=(settings.losses.view_speed_spread, settings.losses.view_semitones)
                            if settings.losses.consistency_weight > 0 else None, noise_snr_db=settings.noise_snr_db,
                            equaliser_db=settings.equaliser_db, tilt_db=settings.tilt_db, weights=weights)
    val_batches = fixed_batches(LabelledClips(root, val, chunk, speakers), len(val), batch_size)
    return SSLTask(runtime, settings, seed, num_speakers=len(speakers)), stream, val_batches


def load_ssl_init(task: SSLTask, folder: Path) -> None:
    """Starting weights from an export (config must match the recipe's model; the phone head too when the
    folder has one, else it starts fresh)."""
    from safetensors.torch import load_file
    from transformers import WavLMModel

    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"--init {folder}: not a transformers WavLM folder (no config.json)")
    source = WavLMModel.from_pretrained(str(folder))
    ours, theirs = task.model.config, source.config
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "conv_dim"):
        mine, given = getattr(ours, key), getattr(theirs, key)
        if (list(mine) if isinstance(mine, (list, tuple)) else mine) != \
                (list(given) if isinstance(given, (list, tuple)) else given):
            raise ValueError(f"--init {folder}: {key} is {given}, the recipe's ssl.model has {mine}; pass the "
                             "--config the folder was trained with")
    task.model.load_state_dict(source.state_dict())
    head = folder / "phone_head.safetensors"
    if head.is_file():
        task.head.load_state_dict(load_file(str(head)))
    log.info("ssl: starting from %s%s", folder, "" if head.is_file() else " (no phone head there: a fresh head)")


def num_frames_to_samples(frames: int) -> int:
    return (frames - 1) * HOP + 400


def train_ssl(settings, runtime: Runtime, resume: str | None = None, overwrite: bool = False,
              stop_after: int | None = None, progress: bool = True, init: str | Path | None = None):
    """Pretrain the SSL model of recipe `settings` (RunSettings) into <out>/ssl. Returns the FitResult.
    `init`: an export of this phase to continue from (weights only: a new optimizer and schedule), e.g. to
    train the shipped model further where a GPU is lent for minutes at a time."""
    from .checkpoint import prepare_folder, seed_everything
    from .logs import setup_logging
    from .trainer import Trainer

    out = Path(settings.out)
    setup_logging(out, runtime.is_main)
    seed_everything(settings.seed)
    folder = out / "ssl"
    if resume is not None and (folder / "done.json").is_file():
        log.info("ssl already finished (%s): skipped", folder / "done.json")
        return None
    out.mkdir(parents=True, exist_ok=True)
    (out / "settings.json").write_text(json.dumps(settings.to_dict(), indent=1, default=str))
    resume_from = prepare_folder(folder, resume, overwrite, runtime)
    task, stream, val_batches = make_ssl_task(settings, runtime)
    if init is not None and resume_from is None:
        load_ssl_init(task, Path(init))
    n_params = sum(p.numel() for p in task.model.parameters())
    log.info("ssl model: WavLM %d layers x %d, %.2f M parameters", settings.ssl.model.num_layers,
             settings.ssl.model.hidden_size, n_params / 1e6)
    return Trainer(task, stream, val_batches, folder, progress=progress).fit(resume=resume_from,
                                                                            stop_after=stop_after)


def ssl_summary(result, out: Path, wall_s: float) -> str:
    if result is None:
        return f"ssl: already finished ({out / 'ssl' / 'done.json'})"
    state = "done" if result.completed else ("interrupted" if result.interrupted else "stopped")
    first, last = result.first_val, result.val
    lines = [f"finished in {wall_s:.0f} s", f"  ssl: {state} at step {result.step} in {result.wall_s:.0f} s; held-out "
             f"masked-frame phone accuracy {first.get('acc_masked', float('nan')):.3f} -> "
             f"{last.get('acc_masked', float('nan')):.3f}, unmasked {last.get('acc_unmasked_input', float('nan')):.3f}"]
    if result.export is not None:
        lines.append(f"  SSL model: {Path(result.export).resolve()} (transformers WavLM: --ssl-model <this folder>)")
    return "\n".join(lines)


def loss_curve(folder: str | Path) -> list[tuple[int, float]]:
    """(step, train loss) from <folder>/logs/train.csv."""
    import csv

    path = Path(folder) / "logs" / "train.csv"
    if not path.is_file():
        return []
    with open(path) as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f) if r.get("loss")]


__all__ = [
    "LabelledBatch",
    "SSLTask",
    "export_ssl",
    "loss_curve",
    "mask_spans",
    "num_frames",
    "train_ssl",
    "wavlm_config",
]


def export_checkpoint(checkpoint: str | Path, settings: SSLSettings, folder: str | Path) -> Path:
    """The SSL model of a checkpoint (e.g. <out>/ssl/checkpoints/last.pt of a run still going) as a
    transformers folder, as the phase's own export writes it at the end."""
    from transformers import WavLMModel

    from .checkpoint import read_checkpoint

    state = read_checkpoint(checkpoint)["models"]["ssl"]
    config = wavlm_config(settings.model)
    net = nn.ModuleDict({"wavlm": WavLMModel(config), "head": nn.Linear(config.hidden_size, len(PHONES))})
    net.load_state_dict({k: v for k, v in state.items() if not k.startswith("adversary.")})  # training-only part
    return export_ssl(net["wavlm"], net["head"], Path(folder))


def main(argv=None) -> int:
    import argparse

    from .settings import load_settings

    p = argparse.ArgumentParser(prog="python -m training.ssl_phase",
                                description="Export the SSL model of a --phase ssl checkpoint as a transformers folder.")
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--config", default=None, help="the run's recipe (its ssl.model section sizes the model)")
    args = p.parse_args(argv)
    print(export_checkpoint(args.checkpoint, load_settings(args.config).ssl, args.out))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
