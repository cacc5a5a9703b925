"""Tokenize audio of any length in bounded memory: the teacher run window by window.

Whole-file encoding holds WavLM's attention over the whole file (a 1-hour file asks for hundreds of GB).
Here the file is read from disk a window at a time, on the whole-file frame grid:

1. Each window of `window_seconds`, with `context_seconds` of real audio on each side, goes through WavLM;
   only the window's own frames are kept. The content input (layers 6 and 9) goes to a float32 file on
   disk, and its per-channel sums feed the whole-file normalisation; the global input (layers 1 and 2)
   goes through the global branch's ConvNeXt at once (it sees 15 frames each side) and its attentive
   pooling is accumulated online (`AttentiveStatsPooling.accumulate`).
2. The normalised content input is read back window by window, with the local encoder's whole receptive
   field as context, so this pass equals whole-file encoding exactly.

WavLM's first conv normalises over time (GroupNorm, one group per channel): a first pass over the file
(that conv only, cheap) gives its whole-file statistics, which the windows then use. What remains different
from whole-file encoding is WavLM's self-attention, which sees the window plus context instead of the
whole file; tests/test_tokenize_corpus.py and the README give the token agreement. Memory is set by the
window, not by the file; the disk holds frames x 768 float32 for the content input (0.55 GB per hour with
WavLM Base+), removed at the end.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

from .audio import AudioError, check_sample_rate, mix_down, resample

DEFAULT_WINDOW_SECONDS = 30.0
DEFAULT_CONTEXT_SECONDS = 5.0


class AudioFile:
    """A mono view of an audio file at `sample_rate`, read in pieces: `read(start, stop)` gives samples
    start .. stop - 1 (zeros outside the file), resampled exactly as whole-file loading resamples them."""

    def __init__(self, path: str | Path, sample_rate: int, mix: str | None = None):
        self.path, self.sample_rate, self.mix = Path(path), check_sample_rate(sample_rate), mix
        if not self.path.is_file():
            raise FileNotFoundError(f"audio file not found: {self.path}")
        try:
            info = sf.info(str(self.path))
        except (sf.LibsndfileError, RuntimeError) as err:
            raise AudioError(f"cannot read {self.path} as audio ({err}); use WAV, FLAC or OGG") from err
        if info.frames <= 0:
            raise AudioError(f"{self.path} is empty (0 samples)")
        if info.channels > 1 and mix is None:
            raise AudioError(f"{self.path} has {info.channels} channels and the model takes mono: choose a mix-down "
                             "(--mix mean, left or right)")
        self.file_rate = check_sample_rate(info.samplerate)
        self.file_samples = int(info.frames)
        g = math.gcd(self.file_rate, self.sample_rate)
        self.block_in, self.block_out = self.file_rate // g, self.sample_rate // g  # resampling period
        # the length torchaudio's resampler gives (its ceil is taken in float32)
        self.num_samples = int(torch.ceil(torch.tensor(self.block_out * self.file_samples / self.block_in,
                                                       dtype=torch.float32)))
        # torchaudio's sinc filter reaches ~6 zero crossings of the lower rate: read that much more, in blocks
        reach = 8 * self.file_rate / min(self.file_rate, self.sample_rate) + 1
        self.margin_blocks = math.ceil(reach / self.block_in)

    @property
    def seconds(self) -> float:
        return self.file_samples / self.file_rate

    def _read_file(self, start: int, stop: int) -> torch.Tensor:
        """File samples start .. stop - 1 (mono, float32), zeros outside the file."""
        lo, hi = max(start, 0), min(stop, self.file_samples)
        data = np.zeros((0, 1), dtype=np.float32)
        if hi > lo:
            with sf.SoundFile(str(self.path)) as f:
                f.seek(lo)
                data = f.read(hi - lo, dtype="float32", always_2d=True)
        wave = mix_down(torch.from_numpy(data.T.copy()), self.mix) if data.size else torch.zeros(0)
        if wave.numel() and not torch.isfinite(wave).all():
            raise AudioError(f"{self.path} contains NaN or infinite samples; clean the signal before encoding")
        return F.pad(wave, (lo - start, stop - start - (lo - start) - wave.numel()))

    def read(self, start: int, stop: int) -> torch.Tensor:
        if self.file_rate == self.sample_rate:
            return self._read_file(start, stop)
        # whole resampling periods, with filter margin; then the exact slice of the resampled piece
        first = math.floor(start / self.block_out) - self.margin_blocks
        last = math.ceil(stop / self.block_out) + self.margin_blocks
        piece = self._read_file(first * self.block_in, last * self.block_in)
        out = resample(piece, self.file_rate, self.sample_rate)
        offset = start - first * self.block_out
        out = out[offset: offset + stop - start]
        # outside the file: zeros, as whole-file resampling gives no samples there (the model pads with zeros)
        inside = (torch.arange(start, stop) >= 0) & (torch.arange(start, stop) < self.num_samples)
        return torch.where(inside, out, torch.zeros(()))

    def load(self) -> torch.Tensor:
        """The whole file at `sample_rate` (for files short enough to encode at once)."""
        return self.read(0, self.num_samples)


@dataclass
class WindowedResult:
    content_token_indices: torch.Tensor  # (T,) int64
    global_embedding: torch.Tensor  # (global_dim,)
    windows: int


def encode_windowed(teacher, audio: AudioFile | torch.Tensor, window_seconds: float = DEFAULT_WINDOW_SECONDS,
                    context_seconds: float = DEFAULT_CONTEXT_SECONDS, scratch_dir: str | Path | None = None,
                    progress: Callable[[int, int], None] | None = None) -> WindowedResult:
    """Tokens and global embedding of `audio` (an AudioFile, or a 1-D tensor at the teacher's rate) computed
    window by window (see the module docstring). `progress(done, total)` is called after each window of
    each of the two passes."""
    if isinstance(audio, torch.Tensor):
        wave = audio
        num_samples = wave.numel()

        def read(start: int, stop: int) -> torch.Tensor:
            lo, hi = max(start, 0), min(stop, num_samples)
            piece = wave[lo:hi] if hi > lo else wave.new_zeros(0)
            return F.pad(piece, (lo - start, stop - start - (lo - start) - piece.numel()))
    else:
        num_samples, read = audio.num_samples, audio.read

    config, ssl = teacher.config, teacher.ssl
    ratio = config.sample_rate / ssl.sample_rate
    hop = ssl.hop_size * ratio  # SSL frame hop in model-rate samples (480 at 24 / 16 kHz)
    span = ssl.min_input_length(1) * ratio  # one frame's receptive field (600 samples)
    if hop != int(hop) or span != int(span):
        raise ValueError("windowed encoding needs the SSL hop to be a whole number of model-rate samples")
    hop, span = int(hop), int(span)
    if num_samples < teacher.min_samples:
        raise AudioError(f"audio is too short: {num_samples} samples; the tokenizer needs {teacher.min_samples}")
    pad = teacher.waveform_padding(num_samples)
    total_frames = ssl.num_frames(math.ceil((num_samples + 2 * pad) / ratio))
    factor = config.downsample_factor
    frames_per_second = config.sample_rate / hop
    window = max(factor, int(window_seconds * frames_per_second) // factor * factor)
    context = max(int(context_seconds * frames_per_second), 0)
    local_reach = _local_receptive_field(teacher)
    windows = list(range(0, total_frames, window))
    device = teacher.device

    def ssl_input(first: int, last: int) -> torch.Tensor:
        """16 kHz input of whole-file frames first .. last - 1: frame k reads model-rate samples
        [k hop - pad, k hop - pad + span) of the file."""
        segment = read(first * hop - pad, (last - 1) * hop - pad + span).to(device)
        return resample(segment, config.sample_rate, ssl.sample_rate)[None]

    with tempfile.TemporaryDirectory(prefix="kanade-windowed-", dir=scratch_dir) as scratch, \
            _whole_file_group_norm(ssl, ssl_input, windows, window, total_frames):
        # plain file reads and writes, not a memory map: mapped pages would count in the process's memory
        content = _FrameFile(Path(scratch) / "content.f32", ssl.feature_dim)
        sums = torch.zeros(ssl.feature_dim, dtype=torch.float64)
        squares = torch.zeros(ssl.feature_dim, dtype=torch.float64)
        pooling = teacher.global_encoder.pooling
        stats = None
        with torch.inference_mode():
            # pass 1: WavLM per window; content input to disk, global branch accumulated
            for i, start in enumerate(windows):
                stop = min(start + window, total_frames)
                left, right = min(context, start), min(context, total_frames - stop)
                first, last = start - left, stop + right  # frames computed
                layers = ssl(ssl_input(first, last))
                keep = slice(left, left + stop - start)
                local_in = teacher.mix_layers(layers, config.local_ssl_layers)[0]
                content.append(local_in[keep].float().cpu().numpy())
                sums += local_in[keep].double().sum(0).cpu()
                squares += local_in[keep].double().pow(2).sum(0).cpu()
                hidden = teacher.global_encoder.backbone(teacher.mix_layers(layers, config.global_ssl_layers)
                                                         .transpose(1, 2))[..., keep]
                if stats is None:
                    zeros = torch.zeros(1, hidden.shape[1], dtype=torch.float64, device=device)
                    stats = (zeros - 1e300, zeros, zeros.clone(), zeros.clone())
                stats = pooling.accumulate(hidden, *stats)
                if progress is not None:
                    progress(i + 1, 2 * len(windows))
            global_embedding = pooling.pooled(*stats[1:])[0]

            # pass 2: whole-file normalisation, then the local encoder with its full receptive field
            mean = sums / total_frames
            std = ((squares - total_frames * mean * mean) / max(total_frames - 1, 1)).clamp(min=0).sqrt()
            mean, std = mean.float().to(device), std.float().to(device)
            normalize = config.normalize_ssl_features
            tokens = []
            for i, start in enumerate(windows):
                stop = min(start + window, total_frames)
                left, right = min(local_reach, start), min(local_reach, total_frames - stop)
                x = torch.from_numpy(content.read(start - left, stop + right)).to(device)
                if normalize:
                    x = (x - mean) / (std + 1e-8)
                encoded = teacher.local_encoder(x[None])[:, left: left + stop - start]
                latent = teacher.conv_downsample(encoded.transpose(1, 2)).transpose(1, 2)
                tokens.append(teacher.local_quantizer.encode(latent)[1][0].cpu())
                if progress is not None:
                    progress(len(windows) + i + 1, 2 * len(windows))
            content.close()
    return WindowedResult(torch.cat(tokens), global_embedding.cpu(), len(windows))


class _FrameFile:
    """Frames (T, dim) float32 on disk, appended in order and read back by range."""

    def __init__(self, path: Path, dim: int):
        self.dim, self.frames = dim, 0
        self.file = open(path, "w+b")

    def append(self, frames: np.ndarray) -> None:
        self.file.seek(self.frames * self.dim * 4)
        self.file.write(np.ascontiguousarray(frames, dtype=np.float32).tobytes())
        self.frames += frames.shape[0]

    def read(self, start: int, stop: int) -> np.ndarray:
        self.file.flush()
        self.file.seek(start * self.dim * 4)
        data = np.frombuffer(self.file.read((stop - start) * self.dim * 4), dtype=np.float32)
        return data.reshape(stop - start, self.dim).copy()

    def close(self) -> None:
        self.file.close()


def _local_receptive_field(teacher) -> int:
    """Frames each side that one output of the local encoder can see through all its layers."""
    encoder = teacher.local_encoder
    if encoder.window_size is None:
        raise ValueError("windowed encoding needs a local-window content encoder (window_size in the config)")
    return (encoder.window_size // 2) * len(encoder.layers)


@contextlib.contextmanager
def _whole_file_group_norm(ssl, ssl_input, windows: list[int], window: int, total_frames: int):
    """While active, WavLM's first-conv GroupNorm (per channel, over time) uses the statistics of the whole
    file instead of those of each window. Computed by a pass of that conv alone over the file, window by
    window (one frame of margin each side absorbs the resampler's edges). Models without it (WavLM Large's
    per-frame LayerNorm) are left as they are."""
    first_layer = ssl.model.feature_extractor.conv_layers[0]
    norm = getattr(first_layer, "layer_norm", None)
    if not isinstance(norm, torch.nn.GroupNorm) or norm.num_groups != norm.num_channels:
        yield
        return
    conv = first_layer.conv
    kernel, stride = conv.kernel_size[0], conv.stride[0]
    per_frame = ssl.hop_size // stride  # first-conv outputs per SSL frame
    whole_length = ssl.min_input_length(total_frames)  # 16 kHz samples the whole file's frames read
    count = (whole_length - kernel) // stride + 1
    sums = squares = None
    with torch.inference_mode():
        for start in windows:
            stop = min(start + window, total_frames)
            lo, hi = max(start - 1, 0), min(stop + 1, total_frames)
            out = conv(ssl_input(lo, hi)[:, None])[0].double()  # (C, n) from 16 kHz sample 320 lo on
            begin = (start - lo) * per_frame
            end = (stop - lo) * per_frame if stop < total_frames else count - lo * per_frame
            out = out[:, begin:end]
            sums = out.sum(1) if sums is None else sums + out.sum(1)
            squares = out.pow(2).sum(1) if squares is None else squares + out.pow(2).sum(1)
    mean = (sums / count).float()
    variance = (squares / count - (sums / count) ** 2).clamp(min=0).float()
    scale = norm.weight / torch.sqrt(variance + norm.eps)
    shift = norm.bias - mean * scale

    def whole_file_norm(x: torch.Tensor) -> torch.Tensor:
        return x * scale[None, :, None] + shift[None, :, None]

    norm.forward = whole_file_norm
    try:
        yield
    finally:
        del norm.forward  # back to the class's GroupNorm.forward
