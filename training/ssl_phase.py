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

    python training/run.py --phase ssl                         # tiny model on the tiny corpus, CPU, minutes
    python training/run.py --phase ssl --config ssl_full --resume   # the full recipe (runs/ssl-full)

Output `<out>/ssl/`: the trainer's folder (checkpoints, logs, done.json) and `export/`, a Hugging Face
folder (config.json + model.safetensors + preprocessor_config.json) that `SSLFeatureExtractor.from_pretrained`
and `KanadeTeacher.from_pretrained(..., ssl_model=folder)` load as they load WavLM Base+, with the phone
head beside it (phone_head.safetensors, phones.json; not read by those loaders).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from torch import nn

from kanade_stream.voices.builder import build_voice_corpus, read_phones
from kanade_stream.audio import resample
from kanade_stream.voices.phones import FRAME_RATE, LABEL_OFFSET, PHONES, UNKNOWN, frame_labels

from .data import perturbed_rate
from .runtime import Runtime
from .settings import SSLModelSettings, SSLSettings
from .trainer import Task

log = logging.getLogger("training")
SAMPLE_RATE = 16000
CONV_KERNEL = (10, 3, 3, 3, 3, 2, 2)  # WavLM's front end: 320 samples a frame at 16 kHz
CONV_STRIDE = (5, 2, 2, 2, 2, 2, 2)
HOP = 320


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
    for k, s in zip(CONV_KERNEL, CONV_STRIDE):
        samples = (samples - k) // s + 1
    return max(samples, 0)


# --------------------------------------------------------------------------------------------------------
# data: chunks of audio with their frame labels
# --------------------------------------------------------------------------------------------------------


@dataclass
class LabelledBatch:
    """Waves (B, samples), frame phone labels (B, frames) and speaker indices (B,; -1 for voices outside
    the training set); what the Trainer moves and counts."""

    wave: torch.Tensor
    labels: torch.Tensor
    speakers: torch.Tensor

    def to(self, device, non_blocking: bool = False) -> LabelledBatch:
        return LabelledBatch(*(t.to(device, non_blocking=non_blocking) for t in (self.wave, self.labels,
                                                                                 self.speakers)))

    @property
    def shape(self):
        return self.wave.shape


class LabelledClips:
    def __init__(self, root: Path, entries: list[dict], chunk_samples: int, speakers: dict[str, int] | None = None):
        self.root, self.entries, self.chunk = root, entries, chunk_samples
        self.speakers = speakers or {}  # training voice -> index (the adversary's classes)
        self._segments: dict[int, list] = {}

    def speaker(self, index: int) -> int:
        return self.speakers.get(self.entries[index]["speaker"], -1)

    def __len__(self):
        return len(self.entries)

    def load(self, index: int, rng: np.random.Generator | None, speed: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """A chunk (random offset on the 320-sample grid when rng is given, else the start) and its labels;
        `speed` plays it that much faster (read as if recorded at speed x 16 kHz, to the nearest 80 Hz), the
        labels stretched to match."""
        entry = self.entries[index]
        path = self.root / entry["path"]
        total = sf.info(path).frames
        source_rate = perturbed_rate(SAMPLE_RATE, speed)
        speed = source_rate / SAMPLE_RATE  # the speed it plays at exactly
        margin = 0 if source_rate == SAMPLE_RATE else 64  # resampling filter edge
        need = math.ceil(self.chunk * speed) + margin
        start = 0
        if rng is not None and total > need:
            start = int(rng.integers(0, (total - need) // HOP + 1)) * HOP
        audio, _ = sf.read(path, start=start, frames=need, dtype="float32", always_2d=False)
        if source_rate != SAMPLE_RATE:
            audio = resample(torch.from_numpy(audio), source_rate, SAMPLE_RATE).numpy()
        audio = audio[:self.chunk]
        n = num_frames(self.chunk)
        if index not in self._segments:
            self._segments[index] = read_phones(self.root / entry["phones"], entry.get("phone_set"))
        # output frame i is centred at 12.5 ms + i / 50 s of the played chunk: speed x that into the file
        labels = frame_labels(self._segments[index], n, frame_rate=FRAME_RATE / speed, offset=LABEL_OFFSET * speed,
                              start=start / SAMPLE_RATE)
        valid = num_frames(len(audio)) if len(audio) >= 400 else 0
        labels[valid:] = UNKNOWN
        if len(audio) < self.chunk:
            audio = np.pad(audio, (0, self.chunk - len(audio)))
        return audio, labels


class LabelledStream:
    """Endless seeded batches over epochs; state (epoch, batch in epoch) for exact resumption. Batch k of an
    epoch depends only on (seed, epoch, k), so `num_workers` loader processes can make batches ahead (a GPU
    step is faster than reading 64 clips in one process) and the batches are the same with or without them."""

    def __init__(self, clips: LabelledClips, batch_size: int, seed: int, gain: tuple[float, float] = (0.3, 1.0),
                 num_workers: int = 0, speed_perturbation: float = 0.0):
        if len(clips) < batch_size:
            raise ValueError(f"{len(clips)} training clips, fewer than the batch size {batch_size}")
        self.clips, self.batch_size, self.seed, self.gain = clips, batch_size, seed, gain
        self.speed_perturbation = speed_perturbation
        self.batches_per_epoch = len(clips) // batch_size
        self.epoch, self.batch_in_epoch = 0, 0
        self.num_workers = num_workers
        self._iterator = None

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])
        self._iterator = None

    def __iter__(self):
        return self

    def make_batch(self, position: tuple[int, int]) -> LabelledBatch:
        """Batch `index` of epoch `epoch` (position = (epoch, index))."""
        epoch, index = position
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.clips))
        rng = np.random.default_rng([self.seed, epoch, index, 1])
        picks = order[index * self.batch_size:(index + 1) * self.batch_size]
        waves, labels = [], []
        for i in picks:
            speed = 1.0
            if self.speed_perturbation:
                speed = float(rng.uniform(1 - self.speed_perturbation, 1 + self.speed_perturbation))
            audio, lab = self.clips.load(int(i), rng, speed)
            waves.append(audio * rng.uniform(*self.gain))
            labels.append(lab)
        speakers = torch.tensor([self.clips.speaker(int(i)) for i in picks], dtype=torch.long)
        return LabelledBatch(torch.from_numpy(np.stack(waves)).float(), torch.from_numpy(np.stack(labels)),
                             speakers)

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
        self.batch_in_epoch += 1
        if self.batch_in_epoch >= self.batches_per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
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

    def forward(self, batch: LabelledBatch, mask: torch.Tensor | None, with_speaker: bool = False):
        """Phone logits and labels (B, frames); `with_speaker`: also the adversary's speaker logits and its
        input features (B, frames, dim)."""
        out = self.model(batch.wave, mask_time_indices=mask, output_hidden_states=with_speaker)
        logits = self.head(out.last_hidden_state).float()
        frames = min(logits.shape[1], batch.labels.shape[1])
        if not with_speaker:
            return logits[:, :frames], batch.labels[:, :frames]
        features = self.adversary.features(out.hidden_states)[:, :frames]
        return logits[:, :frames], batch.labels[:, :frames], self.adversary.classify(features), features

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
        with self.runtime.autocast():
            if self.adversary is None:
                logits, labels = self.forward(batch, mask)
            else:
                logits, labels, speaker_logits, features = self.forward(batch, mask, with_speaker=True)
        mask = mask[:, :labels.shape[1]]
        ce_m, ce_u, loss = self.losses(logits, labels, mask)
        if self.adversary is not None:
            # the model is pushed towards an adversary that cannot tell the voices apart (the gradient this
            # puts on the adversary's own weights is dropped: it learns below, on the detached features)
            losses = s.losses
            ramp = min(1.0, step / max(1.0, losses.adversary_warmup * s.steps))
            confusion = self.confusion_loss(speaker_logits, labels, batch.speakers)
            loss = loss + losses.speaker_adversarial_weight * ramp * confusion
            ce_spk, acc_spk = self.speaker_loss(speaker_logits.detach(), labels, batch.speakers)
            extra = {"ce_speaker": ce_spk.item(), "acc_speaker": acc_spk, "confusion": confusion.item()}
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
                logits, labels = self.forward(batch, mask)
                clean_logits, _ = self.forward(batch, None)
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


def make_ssl_task(run, runtime: Runtime):
    """The task, its batch stream and validation batches (building the corpus first when needed) of the
    recipe `run` (RunSettings)."""
    settings, seed = run.ssl, run.seed
    batch_size, chunk_seconds = run.batch_size("ssl"), run.chunk_seconds("ssl")
    if runtime.world_size > 1:
        raise ValueError("the SSL phase runs in one process (no torchrun)")
    from kanade_stream.corpus import load_manifest
    from kanade_stream.voices.builder import load_voice_corpus

    if settings.corpus == "prebuilt":
        info = load_voice_corpus(corpus_dir(settings))
    else:
        info = build_voice_corpus(corpus_dir(settings), settings.corpus, jobs=settings.corpus_jobs,
                                  progress=runtime.is_main)
    entries = load_manifest(info.manifest)
    if not any(e["split"] == "heldout" for e in entries):
        raise ValueError(f"the voice corpus {info.out_dir} has no heldout voices to validate on")
    train = [e for e in entries if e["split"] == "train"]
    val = spread([e for e in entries if e["split"] == "heldout"], settings.val_clips)
    chunk = num_frames_to_samples(int(round(chunk_seconds * SAMPLE_RATE / HOP)))
    log.info("ssl corpus %s: %d training clips (%d voices), %.2f h; %d validation clips from held-out voices",
             info.out_dir, len(train), len(info.voices["train"]), info.hours, len(val))
    speakers = {name: i for i, name in enumerate(sorted({e["speaker"] for e in train}))}
    stream = LabelledStream(LabelledClips(info.out_dir, train, chunk, speakers), batch_size, seed,
                            num_workers=settings.num_workers, speed_perturbation=settings.speed_perturbation)
    val_batches = fixed_batches(LabelledClips(info.out_dir, val, chunk, speakers), len(val), batch_size)
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
