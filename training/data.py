"""Training data: manifests of audio folders, random fixed-length chunks at 24 kHz, sharded loading.

A manifest is a JSON-lines file, one utterance a line, in the same form as the embedded corpus
(`kanade_stream.corpus`): {"path" (relative to the manifest's folder), "speaker", "split" ("train" or
"heldout"), "text", "duration" (seconds), "sample_rate"}; a voices corpus (`kanade_stream.voices.builder`)
adds "phones" (the clip's phone segments) and "phone_set", which phase 1's phone loss reads.

- `build_manifest(folder)` scans a folder recursively (LibriTTS `speaker/chapter/file.wav`, the embedded
  corpus `split/speaker/file.wav`, or any `speaker/file.wav` tree); unreadable files are skipped and
  counted, never fatal.
- `ChunkDataset` serves one random chunk (5.76 s by default) per clip, resampled to 24 kHz and mixed to
  mono, and with `phone_labels` the phone of each of its 50 Hz SSL frames (`LabelledBatch`). The chunk
  offset is a pure function of (seed, epoch, clip index), so a run is reproducible and resumable no matter
  how many loader workers there are.
- Clips shorter than a chunk: policy "pad" (default) zero-pads them at the end; policy "skip" leaves them
  out. Clips shorter than `min_seconds` are always left out. Both are counted and reported.
- `ShardedSampler` is a `DistributedSampler` that yields (epoch, index) pairs and can start in the middle
  of an epoch, so `--resume` continues on exactly the batches that were next.
- `RunData` is a run's data: the manifest, its train / held-out split, and each phase's batch stream and
  validation batches.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from kanade_stream.audio import AUDIO_SUFFIXES, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, resample
from kanade_stream.ssl import conv_frames
from kanade_stream.voices.builder import read_phones
from kanade_stream.voices.phones import FRAME_RATE, LABEL_OFFSET, UNKNOWN, frame_labels

from .runtime import Runtime
from .settings import SettingsError

log = logging.getLogger("training")

# transcript side files, most specific first (LibriTTS has .normalized.txt and .original.txt)
TRANSCRIPT_SUFFIXES = (".normalized.txt", ".txt", ".original.txt")
# path components that mark held-out material in a folder without a manifest
HELDOUT_DIRS = {"heldout", "held_out", "held-out", "dev", "val", "valid", "validation", "test",
                "dev-clean", "dev-other", "test-clean", "test-other"}
MANIFEST_NAME = "manifest.jsonl"
SHORT_CLIP_POLICIES = ("pad", "skip")


class DataError(ValueError):
    """Training data that cannot be used; the message says what was found and what to change."""


# --------------------------------------------------------------------------------------------------------
# manifests
# --------------------------------------------------------------------------------------------------------


@dataclass
class Manifest:
    """Utterances (absolute paths) plus what was left out while building or filtering."""

    records: list[dict]
    root: Path
    skipped: dict[str, int] = field(default_factory=dict)

    def split(self, name: str) -> list[dict]:
        return [r for r in self.records if r["split"] == name]

    @property
    def speakers(self) -> list[str]:
        return sorted({r["speaker"] for r in self.records})


def _speaker_of(rel: Path) -> str:
    """Speaker from the folder structure: the outermost folder whose name prefixes the file name
    (LibriTTS `19/198/19_198_000000_000000.wav`, the corpus `train/spk03/spk03_0001.wav`), else the
    folder the file is in, else "unknown" for files at the top."""
    parents = rel.parts[:-1]
    stem = rel.name
    for part in parents:
        if part.lower() not in HELDOUT_DIRS and stem.startswith(part + "_"):
            return part
    meaningful = [p for p in parents if p.lower() not in HELDOUT_DIRS and p.lower() not in ("train", "wavs", "wav")]
    return meaningful[-1] if meaningful else "unknown"


def _transcript_of(path: Path) -> str:
    for suffix in TRANSCRIPT_SUFFIXES:
        side = path.with_name(path.name[: -len(path.suffix)] + suffix)
        if side.is_file():
            try:
                return side.read_text(encoding="utf-8", errors="replace").strip()
            except OSError:
                return ""
    return ""


def build_manifest(folder: str | os.PathLike, write_to: str | os.PathLike | None = None) -> Manifest:
    """Scan `folder` recursively for audio; unreadable files are skipped with a count.

    The split is "heldout" for files under a dev/test/heldout folder, else "train". Returns the manifest
    with absolute paths; `write_to` also writes it as JSON lines with paths relative to `folder`.
    """
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) under {root}: point --data at a folder of "
                        "speech (e.g. LibriTTS) or a manifest.jsonl, or leave it out for the embedded corpus")
    records, unreadable = [], []
    for path in files:
        try:
            info = sf.info(str(path))
            if info.frames <= 0 or info.samplerate <= 0:
                raise RuntimeError("no samples")
        except (sf.LibsndfileError, RuntimeError, OSError) as err:
            unreadable.append(f"{path}: {err}")
            continue
        rel = path.relative_to(root)
        records.append({
            "path": str(path),
            "speaker": _speaker_of(rel),
            "split": "heldout" if any(p.lower() in HELDOUT_DIRS for p in rel.parts[:-1]) else "train",
            "text": _transcript_of(path),
            "duration": round(info.frames / info.samplerate, 4),
            "sample_rate": int(info.samplerate),
        })
    if unreadable:
        log.warning("skipped %d unreadable audio file(s) under %s, e.g. %s", len(unreadable), root,
                    "; ".join(unreadable[:3]))
    if not records:
        raise DataError(f"none of the {len(files)} audio files under {root} could be read, e.g. {unreadable[0]}")
    manifest = Manifest(records, root, {"unreadable": len(unreadable)} if unreadable else {})
    if write_to is not None:
        write_manifest(manifest, write_to)
    return manifest


def write_manifest(manifest: Manifest, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for r in manifest.records:
        entry = dict(r)
        entry["path"] = os.path.relpath(r["path"], path.parent.resolve())
        lines.append(json.dumps(entry, ensure_ascii=False))
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def read_manifest(path: str | os.PathLike) -> Manifest:
    """A manifest.jsonl (paths relative to its folder, or absolute). Lines whose file is missing are skipped
    with a count; a malformed line is an error naming the line."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise DataError(f"manifest not found: {path}")
    records, missing = [], 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            audio = Path(entry["path"])
            record = {
                "path": str(audio if audio.is_absolute() else (path.parent / audio).resolve()),
                "speaker": str(entry.get("speaker", "unknown")),
                "split": str(entry.get("split", "train")),
                "text": str(entry.get("text", "")),
                "duration": float(entry["duration"]),
                "sample_rate": int(entry["sample_rate"]),
            }
            if entry.get("phones"):  # a voices corpus: the clip's phone segments (for phase 1's phone loss)
                phones = Path(entry["phones"])
                record["phones"] = str(phones if phones.is_absolute() else (path.parent / phones).resolve())
                record["phone_set"] = entry.get("phone_set")
            entry = record
        except (ValueError, KeyError, TypeError) as err:
            raise DataError(f"{path}:{number}: not a manifest line ({err!r}); expected JSON with path, speaker, "
                            "split, duration, sample_rate") from err
        if entry["split"] not in ("train", "heldout"):
            raise DataError(f"{path}:{number}: split must be 'train' or 'heldout', got {entry['split']!r}")
        if not Path(entry["path"]).is_file():
            missing += 1
            continue
        records.append(entry)
    if missing:
        log.warning("%s: skipped %d line(s) whose audio file is missing", path, missing)
    if not records:
        raise DataError(f"{path} lists no existing audio files")
    return Manifest(records, path.parent, {"missing": missing} if missing else {})


def load_data(data: str | os.PathLike | None, cache_dir: str | os.PathLike | None = None) -> Manifest:
    """`--data`: None = the embedded eSpeak corpus; a manifest file; a folder with a manifest.jsonl; or a
    folder of audio (scanned, and the manifest cached in `cache_dir` when given)."""
    if data is None:
        from kanade_stream.corpus import ensure_default_corpus

        info = ensure_default_corpus()
        log.info("data: the embedded eSpeak corpus at %s", info.out_dir)
        return read_manifest(info.manifest)
    path = Path(data).expanduser()
    if path.is_file():
        return read_manifest(path)
    if not path.exists():
        raise DataError(f"--data {data}: no such file or folder")
    if (path / MANIFEST_NAME).is_file():
        return read_manifest(path / MANIFEST_NAME)
    write_to = Path(cache_dir) / MANIFEST_NAME if cache_dir is not None else None
    if write_to is not None and write_to.is_file():  # scanned before (e.g. a resumed run): reuse
        cached = read_manifest(write_to)
        root = str(path.resolve())
        if all(r["path"].startswith(root + os.sep) for r in cached.records):
            log.info("data: reusing the manifest of %s in %s (delete it to rescan)", path, write_to)
            return cached
    manifest = build_manifest(path, write_to=write_to)
    if write_to is not None:
        log.info("data: %d clips under %s (manifest written to %s)", len(manifest.records), path, write_to)
    return manifest


def split_train_val(manifest: Manifest, heldout_speakers: int = 2) -> tuple[list[dict], list[dict], str]:
    """Training and validation records. Validation is on held-out voices: the manifest's "heldout" split,
    else the last `heldout_speakers` speakers (sorted by name), else (one speaker only) every 10th clip."""
    train, val = manifest.split("train"), manifest.split("heldout")
    if val and train:
        return train, val, "the manifest's heldout split"
    records = manifest.records
    speakers = sorted({r["speaker"] for r in records})
    if len(speakers) > heldout_speakers >= 1:
        held = set(speakers[-heldout_speakers:])
        return ([r for r in records if r["speaker"] not in held], [r for r in records if r["speaker"] in held],
                f"held-out speakers {sorted(held)}")
    if len(records) < 2:
        raise DataError(f"only {len(records)} usable clip(s): need at least 2 (one to train, one to validate)")
    val = records[::10] if len(records) >= 10 else records[-1:]
    chosen = {id(r) for r in val}
    return [r for r in records if id(r) not in chosen], val, "every 10th clip (one speaker only: not held-out voices)"


def filter_clips(records: list[dict], chunk_seconds: float, short_clips: str = "pad",
                 min_seconds: float = 0.5) -> tuple[list[dict], dict[str, int]]:
    """Drop clips too short to use. Returns the kept records and counts of what was done."""
    if short_clips not in SHORT_CLIP_POLICIES:
        raise DataError(f"short_clips must be one of {SHORT_CLIP_POLICIES}, got {short_clips!r}")
    kept, counts = [], {"too_short": 0, "padded": 0, "shorter_than_chunk_skipped": 0}
    for r in records:
        if r["duration"] < min_seconds:
            counts["too_short"] += 1
        elif r["duration"] < chunk_seconds:
            if short_clips == "skip":
                counts["shorter_than_chunk_skipped"] += 1
            else:
                counts["padded"] += 1
                kept.append(r)
        else:
            kept.append(r)
    return kept, {k: v for k, v in counts.items() if v}


# --------------------------------------------------------------------------------------------------------
# chunks
# --------------------------------------------------------------------------------------------------------


SSL_SAMPLE_RATE = 16000  # the SSL model's input rate (its 50 Hz frames are what phone labels mark)
SPEED_RATE_STEP = 80  # perturbed source rates are multiples of this (keeps the resampling kernel small)


def perturbed_rate(file_rate: int, speed: float) -> int:
    """The rate to read a file as so that it plays `speed` times as fast: the nearest multiple of 80 Hz,
    kept within the rates the resampler takes."""
    if speed == 1.0:
        return int(file_rate)
    rate = round(file_rate * speed / SPEED_RATE_STEP) * SPEED_RATE_STEP
    return min(max(rate, MIN_SAMPLE_RATE), MAX_SAMPLE_RATE)


def read_chunk(record: dict, num_samples: int, sample_rate: int, offset: float | None,
               speed: float = 1.0) -> torch.Tensor:
    """`num_samples` at `sample_rate` from the clip, mono, zero-padded at the end if the clip is shorter.
    `offset` in [0, 1] places the chunk within the clip (None or 0 = the start). `speed` plays the clip that
    much faster (the file is read as if recorded at `speed` x its rate, to the nearest 80 Hz). Only the
    needed part of the file is read."""
    return read_labelled_chunk(record, num_samples, sample_rate, offset, speed, with_labels=False)[0]


def read_labelled_chunk(record: dict, num_samples: int, sample_rate: int, offset: float | None,
                        speed: float = 1.0, with_labels: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """As `read_chunk`, with the chunk's phone label at each SSL frame (50 Hz, `chunk_phone_labels`) when
    `with_labels`; the record must then come from a voices corpus (a "phones" file)."""
    source_rate = perturbed_rate(int(record["sample_rate"]), speed)
    margin = 0 if source_rate == sample_rate else 64  # resampling filter edge, trimmed below
    need = math.ceil(num_samples * source_rate / sample_rate) + margin
    with sf.SoundFile(record["path"]) as f:
        total = f.frames
        start = int(round((offset or 0.0) * max(total - need, 0)))
        f.seek(start)
        data = f.read(need, dtype="float32", always_2d=True)
    if data.shape[0] == 0:
        raise RuntimeError("no samples read")
    wave = torch.from_numpy(data.mean(axis=1) if data.shape[1] > 1 else data[:, 0].copy())
    wave = resample(wave, source_rate, sample_rate)[:num_samples]
    if not torch.isfinite(wave).all():
        raise RuntimeError("NaN or infinite samples")
    played = wave.numel()
    if wave.numel() < num_samples:
        wave = torch.nn.functional.pad(wave, (0, num_samples - wave.numel()))
    labels = None
    if with_labels:
        played_speed = source_rate / int(record["sample_rate"])
        labels = chunk_phone_labels(record, start / int(record["sample_rate"]), played_speed,
                                    ssl_frames(num_samples, sample_rate), ssl_frames(played, sample_rate))
    return wave.contiguous(), labels


def ssl_frames(num_samples: int, sample_rate: int) -> int:
    """How many 50 Hz frames a WavLM-shaped SSL model gives for `num_samples` at `sample_rate` (it hears them
    resampled to 16 kHz)."""
    return conv_frames(num_samples * SSL_SAMPLE_RATE // sample_rate)


def chunk_phone_labels(record: dict, start_seconds: float, speed: float, num_frames: int,
                       valid_frames: int) -> torch.Tensor:
    """Phone labels (inventory indices) of the SSL frames of a chunk that starts `start_seconds` into the clip
    and plays it `speed` times as fast; frames from `valid_frames` on (padding) are UNKNOWN (ignored)."""
    require_phones([record])
    segments = clip_phones(record["phones"], record.get("phone_set"))
    return torch.from_numpy(phone_labels_at(segments, start_seconds, speed, num_frames, valid_frames))


@functools.lru_cache(maxsize=None)
def clip_phones(path: str, phone_set: str | None) -> tuple:
    """A clip's phone segments, read once per process (every epoch draws a chunk of every clip)."""
    return tuple(read_phones(path, phone_set))


def phone_labels_at(segments: list, start_seconds: float, speed: float, num_frames: int,
                    valid_frames: int) -> np.ndarray:
    """The labels of `num_frames` SSL frames of a chunk starting `start_seconds` into a clip with phone
    `segments`, played `speed` times as fast; frames from `valid_frames` on are UNKNOWN."""
    # frame i is centred at LABEL_OFFSET + i / 50 s of the played chunk: speed x that into the file
    labels = frame_labels(segments, num_frames, frame_rate=FRAME_RATE / speed, offset=LABEL_OFFSET * speed,
                          start=start_seconds)
    labels[valid_frames:] = UNKNOWN
    return labels


@dataclass
class LabelledBatch:
    """Waves (B, samples) with frame phone labels (B, frames), and for the SSL phase speaker indices (B,; -1
    for voices outside the training set); what the Trainer moves and counts. With a second view (the SSL
    phase's consistency loss): `view` (B, samples), the same stretches of the files heard as other voices, and
    `view_ratio` (B,), the first view's speed over the second's (frame i of `wave` is centred where frame
    `aligned_positions(...)[i]` of `view` is)."""

    wave: torch.Tensor
    labels: torch.Tensor
    speakers: torch.Tensor | None = None
    view: torch.Tensor | None = None
    view_ratio: torch.Tensor | None = None

    def to(self, device, non_blocking: bool = False) -> LabelledBatch:
        return LabelledBatch(*(None if t is None else t.to(device, non_blocking=non_blocking)
                               for t in (self.wave, self.labels, self.speakers, self.view, self.view_ratio)))

    @property
    def shape(self):
        return self.wave.shape


class ChunkDataset(Dataset):
    """One random chunk per clip and epoch. Items are keyed (epoch, index); see `ShardedSampler`.

    A clip that cannot be read is replaced by the next readable one (up to 8 tries) and the failure is
    reported in the item, so the trainer can count it; it never stops training.
    """

    MAX_TRIES = 8

    def __init__(self, records: list[dict], chunk_samples: int, sample_rate: int = 24000, seed: int = 0,
                 random_offset: bool = True, speed_perturbation: float = 0.0, phone_labels: bool = False):
        if not records:
            raise DataError("no clips to train on")
        if phone_labels:
            require_phones(records)
        if not 0.0 <= speed_perturbation < 0.5:
            raise DataError(f"speed_perturbation must be in [0, 0.5), got {speed_perturbation}")
        self.records, self.chunk_samples, self.sample_rate = records, int(chunk_samples), int(sample_rate)
        self.seed, self.random_offset, self.speed_perturbation = int(seed), random_offset, speed_perturbation
        self.phone_labels = phone_labels  # items carry their SSL frames' phone labels (LabelledBatch)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key) -> tuple[torch.Tensor | tuple[torch.Tensor, torch.Tensor], int]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        failures = 0
        for attempt in range(self.MAX_TRIES):
            i = (index + attempt) % len(self.records)
            offset, speed = None, 1.0
            rng = np.random.default_rng([self.seed, epoch, i])  # the same chunk after a resume
            if self.random_offset:
                offset = float(rng.random())
            if self.speed_perturbation:
                speed = float(rng.uniform(1 - self.speed_perturbation, 1 + self.speed_perturbation))
            try:
                wave, labels = read_labelled_chunk(self.records[i], self.chunk_samples, self.sample_rate, offset,
                                                   speed, with_labels=self.phone_labels)
                return (wave if labels is None else (wave, labels)), failures
            except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as err:
                failures += 1
                log.warning("cannot read %s (%s); using another clip", self.records[i]["path"], err)
        raise DataError(f"{self.MAX_TRIES} clips in a row could not be read (last: {self.records[i]['path']}); "
                        "check the data folder")


def collate(items) -> tuple[torch.Tensor | LabelledBatch, int]:
    chunks, failures = zip(*items)
    if isinstance(chunks[0], tuple):
        waves, labels = zip(*chunks)
        return LabelledBatch(torch.stack(waves), torch.stack(labels)), int(sum(failures))
    return torch.stack(chunks), int(sum(failures))


def require_phones(records: list[dict], user: str = "the phone loss",
                   otherwise: str = "or set its weight to 0") -> None:
    """Refuse clips without a phone alignment: `user` needs a voices corpus, `otherwise` the other way out."""
    missing = [r["path"] for r in records if not r.get("phones")]
    if missing:
        raise DataError(f"{len(missing)} of {len(records)} clip(s) have no phone alignment (first: {missing[0]}): "
                        f"{user} needs a voices corpus (python -m kanade_stream.voices.builder; its "
                        f"manifest names a .phones file per clip), {otherwise}")


class ShardedSampler(DistributedSampler):
    """DistributedSampler over (epoch, index) keys that can start `start` samples into its shard."""

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.start = 0

    def set_position(self, epoch: int, start: int) -> None:
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self):
        indices = list(super().__iter__())[self.start:]
        self.start = 0
        return iter([(self.epoch, i) for i in indices])

    def __len__(self) -> int:
        return self.num_samples - self.start


def ignore_sigint(_worker_id: int) -> None:
    # Ctrl-C goes to the whole process group; the main process handles it and saves a checkpoint, so the
    # loader workers must not die of it first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class EpochCursor:
    """Where an endless stream of batches is: (epoch, batches done in it), the state checkpoints keep so that a
    resumed run reads on from the same batch. A subclass sets `batches_per_epoch` and makes the batches."""

    batches_per_epoch: int

    def __init__(self):
        self.epoch, self.batch_in_epoch = 0, 0
        self._iterator = None  # a subclass's loader iterator, made anew from the position when it is None

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])
        self._iterator = None

    def __iter__(self):
        return self

    def advance(self) -> bool:
        """One batch done; True when that ended the epoch (the next batch is the next epoch's first)."""
        self.batch_in_epoch += 1
        if self.batch_in_epoch < self.batches_per_epoch:
            return False
        self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        return True


class BatchStream(EpochCursor):
    """Endless batches over epochs, remembering (epoch, batches done in the epoch) for checkpoints."""

    def __init__(self, dataset: ChunkDataset, batch_size: int, num_workers: int = 0, rank: int = 0,
                 world_size: int = 1, seed: int = 0, pin_memory: bool = False):
        self.sampler = ShardedSampler(dataset, world_size, rank, seed)
        self.batch_size = batch_size
        self.batches_per_epoch = self.sampler.num_samples // batch_size
        if self.batches_per_epoch == 0:
            raise DataError(
                f"{len(dataset)} training clips give {self.sampler.num_samples} per process, fewer than the batch "
                f"size per process {batch_size} (world size {world_size}): use more data or a smaller --batch-size")
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=self.sampler, num_workers=num_workers,
                                 collate_fn=collate, drop_last=True, pin_memory=pin_memory,
                                 worker_init_fn=ignore_sigint if num_workers else None)
        super().__init__()

    def __next__(self) -> tuple[torch.Tensor, int]:
        if self._iterator is None:
            self.sampler.set_position(self.epoch, self.batch_in_epoch * self.batch_size)
            self._iterator = iter(self.loader)
        try:
            batch = next(self._iterator)
        except StopIteration:
            self.epoch, self.batch_in_epoch, self._iterator = self.epoch + 1, 0, None
            return next(self)
        if self.advance():  # the epoch is done: the next call starts the next one's loader
            self._iterator = None
        return batch


def validation_batches(records: list[dict], chunk_samples: int, sample_rate: int, max_clips: int,
                       batch_size: int, phone_labels: bool = False) -> list[torch.Tensor | LabelledBatch]:
    """Fixed validation chunks: the middle of up to `max_clips` clips, taken round-robin over speakers (with
    their phone labels, as LabelledBatch, when `phone_labels`)."""
    by_speaker: dict[str, list[dict]] = {}
    for r in records:
        by_speaker.setdefault(r["speaker"], []).append(r)
    queues = [list(v) for _, v in sorted(by_speaker.items())]
    chosen = []
    while queues and len(chosen) < max_clips:
        for q in list(queues):
            if q and len(chosen) < max_clips:
                chosen.append(q.pop(0))
            if not q:
                queues.remove(q)
    if phone_labels:
        require_phones(chosen)
    items, unreadable = [], 0
    for r in chosen:
        try:
            wave, labels = read_labelled_chunk(r, chunk_samples, sample_rate, 0.5, with_labels=phone_labels)
            items.append(((wave, labels) if phone_labels else wave, 0))
        except (sf.LibsndfileError, RuntimeError, OSError, ValueError):
            unreadable += 1
    if unreadable:
        log.warning("validation: skipped %d unreadable clip(s)", unreadable)
    if not items:
        raise DataError("no readable validation clips")
    return [collate(items[i:i + batch_size])[0] for i in range(0, len(items), batch_size)]


# --------------------------------------------------------------------------------------------------------
# a run's data
# --------------------------------------------------------------------------------------------------------


def check_data_given(settings) -> None:
    """A real-scale recipe (data.require_path) never falls back on the embedded corpus: checked before
    anything large is loaded."""
    if settings.data.path is None and settings.data.require_path:
        raise DataError(f"recipe {settings.name!r} trains on real speech and has no data: give --data (a folder "
                        "such as LibriTTS, scanned recursively, or a manifest.jsonl)")


class RunData:
    """The run's manifest split into training and held-out validation clips (built once, on rank 0 first),
    and each phase's batches. `settings` is a training or distillation recipe (anything with .data,
    .batch_size(phase) and .chunk_seconds(phase))."""

    def __init__(self, settings, runtime: Runtime, out: Path):
        self.settings, self.runtime = settings, runtime
        check_data_given(settings)
        path = settings.data.path
        scanned = path is not None and Path(path).is_dir() and not (Path(path) / MANIFEST_NAME).is_file()
        if runtime.is_main:  # builds the embedded corpus, or scans the folder once and writes its manifest
            manifest = load_data(path, cache_dir=out if scanned else None)
        runtime.barrier()
        if not runtime.is_main:
            manifest = read_manifest(out / MANIFEST_NAME) if scanned else load_data(path)
        self.manifest = manifest
        self.train, self.val, how = split_train_val(manifest, settings.data.heldout_speakers)
        if runtime.is_main:
            speakers = lambda recs: len({r["speaker"] for r in recs})  # noqa: E731
            log.info("data: %d training clips (%d speakers, %.1f min), %d validation clips (%d speakers; %s)",
                     len(self.train), speakers(self.train), sum(r["duration"] for r in self.train) / 60,
                     len(self.val), speakers(self.val), how)
            for reason, n in manifest.skipped.items():
                log.info("data: %d file(s) skipped while reading the data: %s", n, reason)

    def for_phase(self, phase: str, seed: int, phone_labels: bool = False) -> tuple[BatchStream, list]:
        """The phase's batch stream and validation batches; with `phone_labels`, LabelledBatch (the chunks'
        phone labels at the SSL frames) instead of plain waves."""
        s, runtime = self.settings, self.runtime
        rate = s.data.sample_rate
        chunk_seconds = s.chunk_seconds(phase)
        chunk = int(round(chunk_seconds * rate))
        train, counts = filter_clips(self.train, chunk_seconds, s.data.short_clips, s.data.min_seconds)
        val, val_counts = filter_clips(self.val, chunk_seconds, "pad", s.data.min_seconds)
        if runtime.is_main:
            for name, n in counts.items():
                log.info("data [%s]: %d training clip(s) %s (chunk %.2f s, short_clips=%s, min %.2f s)", phase, n,
                         name.replace("_", " "), chunk_seconds, s.data.short_clips, s.data.min_seconds)
        if not train:
            raise DataError(f"no training clip is long enough for {chunk_seconds} s chunks (short_clips="
                            f"{s.data.short_clips}, min_seconds={s.data.min_seconds}): use --chunk-seconds or pad")
        if not val:
            raise DataError(f"no validation clip is at least {s.data.min_seconds} s long")
        batch = s.batch_size(phase)
        if batch % runtime.world_size:
            raise SettingsError(f"batch size {batch} does not split over {runtime.world_size} processes")
        dataset = ChunkDataset(train, chunk, rate, seed=seed, speed_perturbation=s.data.speed_perturbation,
                               phone_labels=phone_labels)
        stream = BatchStream(dataset, batch // runtime.world_size, s.data.num_workers, runtime.rank,
                             runtime.world_size, seed, pin_memory=runtime.device.type == "cuda")
        val_batches = (validation_batches(val, chunk, rate, s.data.val_clips, s.data.val_batch_size, phone_labels)
                       if runtime.is_main else [])
        return stream, val_batches
