"""Logs, metrics and pictures: the "training" logger (stderr + <out>/train.log), metric CSVs always,
TensorBoard when the `tensorboard` package is installed, and mel spectrogram PNGs written with zlib +
struct (no matplotlib or Pillow needed).

Only rank 0 logs; `MetricLogger(None)` is the silent logger of the other ranks.
"""

from __future__ import annotations

import csv
import logging
import math
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("training")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (it may be replaced, e.g. by pytest)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(out: Path | None = None, is_main: bool = True) -> None:
    """The "training" logger (used by training and distillation) to stderr, and to <out>/train.log when
    `out` is given (replacing the file of an earlier run in this process). Other ranks log warnings only."""
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("[training] %(message)s"))
        log.addHandler(handler)
    log.propagate = False
    if out is not None and is_main:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for h in [h for h in log.handlers if isinstance(h, logging.FileHandler)]:
            log.removeHandler(h)
            h.close()
        handler = logging.FileHandler(out / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)


class MetricLogger:
    """`<folder>/train.csv` and `<folder>/val.csv` (one row per logged step, one column per metric), and
    TensorBoard event files in `<folder>/tensorboard` when available."""

    def __init__(self, folder: str | Path | None, tensorboard: bool = True):
        self.folder = Path(folder) if folder is not None else None
        self._writers: dict[str, tuple] = {}
        self.tb = None
        self.start = time.time()
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.folder / "tensorboard"))
            except ImportError:  # torch's writer needs the tensorboard package
                log.info("tensorboard is not installed: metrics go to CSV only (pip install tensorboard)")

    def log(self, split: str, step: int, metrics: dict[str, float]) -> None:
        if self.folder is None:
            return
        row = {"step": step, "time_s": round(time.time() - self.start, 2), **{k: float(v) for k, v in metrics.items()}}
        path = self.folder / f"{split}.csv"
        if split not in self._writers:
            existing = None
            if path.is_file():  # a resumed run appends under the header it wrote before
                with open(path, newline="") as f:
                    existing = next(csv.reader(f), None)
            fields = existing or list(row)
            handle = open(path, "a", newline="")
            writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
            if not existing:
                writer.writeheader()
            self._writers[split] = (handle, writer)
        handle, writer = self._writers[split]
        writer.writerow(row)
        handle.flush()
        if self.tb is not None:
            for key, value in metrics.items():
                self.tb.add_scalar(f"{split}/{key}", float(value), step)

    def image(self, tag: str, step: int, rgb: np.ndarray) -> None:
        if self.tb is not None:
            self.tb.add_image(tag, rgb, step, dataformats="HWC")

    def close(self) -> None:
        for handle, _ in self._writers.values():
            handle.close()
        self._writers.clear()
        if self.tb is not None:
            self.tb.close()


# --------------------------------------------------------------------------------------------------------
# PNG
# --------------------------------------------------------------------------------------------------------

# a perceptually ordered dark-blue -> green -> yellow colour ramp (viridis anchor points)
_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float32)


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an (H, W, 3) uint8 array as an 8-bit RGB PNG."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    height, width, channels = rgb.shape
    if channels != 3:
        raise ValueError(f"expected (H, W, 3), got {rgb.shape}")
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(height))  # filter type 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return path


def colorize(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """(H, W) floats -> (H, W, 3) uint8 through the colour ramp."""
    x = np.clip((values - low) / max(high - low, 1e-9), 0, 1) * (len(_RAMP) - 1)
    lo = np.floor(x).astype(int).clip(0, len(_RAMP) - 2)
    frac = (x - lo)[..., None]
    return (_RAMP[lo] * (1 - frac) + _RAMP[lo + 1] * frac).astype(np.uint8)


def mel_panel(mels: list[torch.Tensor], scale: int = 2, dynamic_range: float = 11.0) -> np.ndarray:
    """Log-mels (n_mels, frames), stacked top to bottom with low frequencies at the bottom of each panel,
    separated by white lines, each pixel repeated `scale` times. All panels share the colour range of the
    first one: its maximum down to `dynamic_range` below it (natural-log units)."""
    first = mels[0].detach().float()
    high = float(first.max())
    low = max(float(first.min()), high - dynamic_range)
    rows = []
    for i, mel in enumerate(mels):
        image = colorize(mel.detach().float().cpu().numpy()[::-1], low, high)
        rows.append(image.repeat(scale, axis=0).repeat(scale, axis=1))
        if i < len(mels) - 1:
            rows.append(np.full((2, rows[-1].shape[1], 3), 255, dtype=np.uint8))
    return np.concatenate(rows, axis=0)


def save_mel_plots(folder: str | Path, step: int, pairs: list[tuple[torch.Tensor, torch.Tensor]],
                   logger: MetricLogger | None = None) -> list[Path]:
    """One PNG per validation clip: target mel on top, model output below."""
    paths = []
    for i, (target, predicted) in enumerate(pairs):
        frames = min(target.shape[-1], predicted.shape[-1])
        image = mel_panel([target[:, :frames], predicted[:, :frames]])
        paths.append(write_png(Path(folder) / f"step_{step:07d}_clip{i}.png", image))
        if logger is not None:
            logger.image(f"mel/clip{i}", step, image)
    return paths


def format_metrics(metrics: dict[str, float]) -> str:
    def fmt(v: float) -> str:
        return f"{v:.4g}" if math.isfinite(v) else str(v)

    return " ".join(f"{k}={fmt(float(v))}" for k, v in metrics.items())
