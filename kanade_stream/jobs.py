"""Tokenize a corpus: many files, any length, several processes, nothing lost.

`tokenize_corpus` streams the files (their lengths come from the file headers; audio is read a batch at a
time), skips and reports every file it cannot use with its path and reason, and keeps going. Outputs:

    <out>/<relative path>.npy          content tokens, int32 (T,)
    <out>/<relative path>.global.npy   global (speaker) embedding, float32 (global_dim,)
    <out>/manifest.jsonl               one line per tokenized file: audio, tokens, global, duration, num_tokens

Each output is written to a temporary name and renamed into place (atomic on one filesystem), tokens last,
so a killed run leaves no half-written file and a file whose token file exists is complete: the next run
skips it (`overwrite=True` redoes everything). Files longer than `whole_seconds` are encoded window by
window in bounded memory (kanade_stream/windowed.py); the others in length-sorted batches.

Under torchrun (RANK / WORLD_SIZE set) the files are dealt out across ranks by length, each rank works and
resumes on its own, and rank 0 merges the ranks' manifests at the end.
"""

from __future__ import annotations

import io
import json
import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from .audio import AUDIO_SUFFIXES, AudioError
from .windowed import DEFAULT_CONTEXT_SECONDS, DEFAULT_WINDOW_SECONDS, AudioFile, encode_windowed

MANIFEST_NAME = "manifest.jsonl"


@dataclass
class CorpusFile:
    path: Path  # the audio file
    relative: Path  # its path below the input root: the outputs keep this structure

    def outputs(self, out: Path) -> tuple[Path, Path]:
        tokens = out / self.relative.with_suffix(".npy")
        return tokens, tokens.with_suffix(".global.npy")


@dataclass
class JobSummary:
    done: int = 0
    skipped: int = 0  # complete outputs found from an earlier run
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    audio_seconds: float = 0.0
    tokens: int = 0

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def add(self, other: "JobSummary") -> None:
        self.done += other.done
        self.skipped += other.skipped
        self.failed += other.failed
        self.audio_seconds += other.audio_seconds
        self.tokens += other.tokens

    def report(self, verb: str = "tokenized") -> str:
        return (f"{verb} {self.done} file(s) ({self.audio_seconds:.1f} s of audio, {self.tokens} tokens), "
                f"skipped {self.skipped} already done, failed {len(self.failed)}")

    def print(self, verb: str = "tokenized") -> None:
        """The summary on stdout, one line per failed file (path: reason) on stderr."""
        for path, reason in self.failed:
            print(f"failed: {path}: {reason}", file=sys.stderr)
        print(self.report(verb))


def find_audio(inputs: list[str | Path]) -> list[CorpusFile]:
    """Every audio file under the inputs (files or folders, searched recursively), in a stable order."""
    found = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
            found += [CorpusFile(p, p.relative_to(path)) for p in files]
        elif path.is_file():
            found.append(CorpusFile(path, Path(path.name)))
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    if not found:
        raise FileNotFoundError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) in {', '.join(map(str, inputs))}")
    return found


def _temporary_name(path: Path) -> Path:
    """A hidden name next to `path`; earlier ones (left by a killed run) are removed first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to a temporary name in the same folder, flush it to disk, then rename it into place."""
    temporary = _temporary_name(path)
    try:
        with open(temporary, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def atomic_save(path: Path, array: np.ndarray) -> None:
    """np.save, atomically (see `atomic_write`)."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    atomic_write(path, buffer.getvalue())


def _describe(err: Exception) -> str:
    return str(err) if isinstance(err, (AudioError, FileNotFoundError)) else f"{type(err).__name__}: {err}"


def _manifest_entry(item: CorpusFile, out: Path, duration: float) -> dict:
    tokens_path, global_path = item.outputs(out)
    num_tokens = int(np.load(tokens_path, mmap_mode="r").shape[0])
    return {"audio": str(item.path), "tokens": tokens_path.relative_to(out).as_posix(),
            "global": global_path.relative_to(out).as_posix(), "duration": round(duration, 6),
            "num_tokens": num_tokens}


class CorpusTokenizer:
    """Tokenizes a list of files with one teacher; see the module docstring. `rank`/`world_size` select
    this process's share (torchrun sets them)."""

    def __init__(self, teacher, out: str | Path, batch_size: int = 8, mix: str | None = None,
                 overwrite: bool = False, whole_seconds: float | None = None,
                 window_seconds: float = DEFAULT_WINDOW_SECONDS, context_seconds: float = DEFAULT_CONTEXT_SECONDS,
                 rank: int = 0, world_size: int = 1, progress: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if window_seconds <= 0 or context_seconds < 0:
            raise ValueError("window_seconds must be > 0 and context_seconds >= 0")
        self.teacher, self.out = teacher, Path(out)
        self.batch_size, self.mix, self.overwrite = batch_size, mix, overwrite
        self.window_seconds, self.context_seconds = window_seconds, context_seconds
        self.whole_seconds = window_seconds + 2 * context_seconds if whole_seconds is None else whole_seconds
        self.rank, self.world_size, self.progress = rank, world_size, progress

    # --- the plan ----------------------------------------------------------------------------------

    def share(self, files: list[CorpusFile]) -> tuple[list[tuple[CorpusFile, AudioFile]], JobSummary]:
        """This rank's files, longest first, opened (headers only); files that cannot be opened are failed
        here, by the rank they are dealt to."""
        summary = JobSummary()
        sized = []
        for index, item in enumerate(files):
            try:
                seconds = sf.info(str(item.path)).duration
            except Exception:  # unreadable: its reason is reported by the rank that owns it, below
                seconds = 0.0
            sized.append((-seconds, index, item))
        sized.sort()  # longest first, ties in input order; deal round-robin so ranks get equal work
        mine = [item for position, (_, _, item) in enumerate(sized) if position % self.world_size == self.rank]
        opened = []
        for item in mine:
            try:
                opened.append((item, AudioFile(item.path, self.teacher.sample_rate, self.mix)))
            except (AudioError, FileNotFoundError, OSError) as err:
                summary.failed.append((str(item.path), _describe(err)))
        return opened, summary

    # --- the work ----------------------------------------------------------------------------------

    def run(self, files: list[CorpusFile]) -> tuple[JobSummary, list[dict]]:
        """Tokenize this rank's share. Returns the summary and the manifest entries of its complete files."""
        opened, summary = self.share(files)
        entries = []
        todo = []
        for item, audio in opened:
            if not self.overwrite and all(p.is_file() for p in item.outputs(self.out)):
                summary.skipped += 1
                entries.append(_manifest_entry(item, self.out, audio.seconds))
            else:
                todo.append((item, audio))
        long_files = [(i, a) for i, a in todo if a.seconds > self.whole_seconds]
        short_files = [(i, a) for i, a in todo if a.seconds <= self.whole_seconds]
        bar = tqdm(total=len(todo), desc=f"tokenizing{f' (rank {self.rank})' if self.world_size > 1 else ''}",
                   unit="file", disable=not self.progress or len(todo) < 2, position=self.rank, file=sys.stderr)
        with bar:
            for item, audio in long_files:
                self._encode_long(item, audio, summary, entries)
                bar.update(1)
            for start in range(0, len(short_files), self.batch_size):
                batch = short_files[start: start + self.batch_size]
                self._encode_batch(batch, summary, entries)
                bar.update(len(batch))
        return summary, entries

    def _save(self, item: CorpusFile, tokens: torch.Tensor, global_embedding: torch.Tensor, seconds: float,
              summary: JobSummary, entries: list[dict]) -> None:
        tokens_path, global_path = item.outputs(self.out)
        atomic_save(global_path, global_embedding.detach().cpu().numpy().astype(np.float32))
        atomic_save(tokens_path, tokens.detach().cpu().numpy().astype(np.int32))  # last: marks the file done
        summary.done += 1
        summary.audio_seconds += seconds
        summary.tokens += int(tokens.numel())
        entries.append(_manifest_entry(item, self.out, seconds))

    def _encode_batch(self, batch: list[tuple[CorpusFile, AudioFile]], summary: JobSummary,
                      entries: list[dict]) -> None:
        loaded = []
        for item, audio in batch:
            try:
                wave = audio.load()
                if wave.numel() < self.teacher.min_samples:
                    raise AudioError(f"too short: {audio.seconds * 1000:.0f} ms; a token needs at least "
                                     f"{1000 * self.teacher.min_samples / self.teacher.sample_rate:.0f} ms of audio")
                loaded.append((item, audio, wave))
            except (AudioError, OSError) as err:
                summary.failed.append((str(item.path), _describe(err)))
        if not loaded:
            return
        try:
            features = self.teacher.encode_batch([wave for _, _, wave in loaded])
        except Exception:  # e.g. out of memory on a big batch: one by one, so one file cannot sink the rest
            features = None
        for index, (item, audio, wave) in enumerate(loaded):
            try:
                feature = features[index] if features is not None else self.teacher.encode(wave)
                self._save(item, feature.content_token_indices, feature.global_embedding, audio.seconds,
                           summary, entries)
            except Exception as err:  # reported with its path; the other files go on
                summary.failed.append((str(item.path), _describe(err)))

    def _encode_long(self, item: CorpusFile, audio: AudioFile, summary: JobSummary, entries: list[dict]) -> None:
        windows = tqdm(total=None, desc=f"{item.relative} ({audio.seconds / 60:.1f} min)", unit="window",
                       leave=False, disable=not self.progress, file=sys.stderr)

        def progress(done: int, total: int) -> None:
            windows.total = total
            windows.update(done - windows.n)

        try:
            with windows:
                result = encode_windowed(self.teacher, audio, self.window_seconds, self.context_seconds,
                                         scratch_dir=self.out, progress=progress)
            self._save(item, result.content_token_indices, result.global_embedding, audio.seconds, summary, entries)
        except Exception as err:
            summary.failed.append((str(item.path), _describe(err)))


def write_manifest(out: Path, entries: list[dict], name: str = MANIFEST_NAME) -> Path:
    """One JSON line per tokenized file, sorted by token path (the same for any number of ranks)."""
    lines = [json.dumps(entry, sort_keys=True) for entry in sorted(entries, key=lambda e: e["tokens"])]
    path = out / name
    atomic_write(path, "".join(line + "\n" for line in lines).encode())
    return path


def distributed_context() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) when not under torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def tokenize_corpus(teacher, inputs: list[str | Path], out: str | Path, **options) -> JobSummary:
    """Tokenize every audio file under `inputs` into `out` (see the module docstring); under torchrun each
    rank takes its share, and the returned summary (on every rank) covers all ranks."""
    rank, world_size, _ = distributed_context()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = find_audio(inputs)
    summary, entries = CorpusTokenizer(teacher, out, rank=rank, world_size=world_size, **options).run(files)
    if world_size == 1:
        write_manifest(out, entries)
        return summary
    # each rank leaves its part; after everyone is done, rank 0 merges them into one manifest
    write_manifest(out, entries, name=f".manifest.rank{rank}.jsonl")
    import torch.distributed as dist

    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("gloo")  # a CPU barrier works whatever device the model runs on
    try:
        gathered: list = [None] * world_size
        dist.all_gather_object(gathered, (summary.done, summary.skipped, summary.failed, summary.audio_seconds,
                                          summary.tokens))
        total = JobSummary()
        for done, skipped, failed, seconds, tokens in gathered:
            total.add(JobSummary(done, skipped, list(failed), seconds, tokens))
        if rank == 0:
            merged = []
            for r in range(world_size):
                part = out / f".manifest.rank{r}.jsonl"
                merged += [json.loads(line) for line in part.read_text().splitlines() if line.strip()]
            write_manifest(out, merged)
            for r in range(world_size):
                (out / f".manifest.rank{r}.jsonl").unlink(missing_ok=True)
        dist.barrier()
    finally:
        if owned:
            dist.destroy_process_group()
    return total
