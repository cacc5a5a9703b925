"""Offline teacher throughput on the full-size 25 Hz architecture with random weights.

    python benchmarks/teacher_throughput.py [--seconds 10] [--repeats 3] [--threads N]

Prints encode / decode / vocode wall time for one utterance and throughput in seconds of audio per
second. Random weights cost the same as trained ones; WavLM is a random WavLM Base+ (transformers
defaults), cut at layer 9 as the teacher uses it. The official implementation, on the same 2-core
machine class, takes about 1.4-1.8 s to encode and 0.85 s to decode 10 s of audio.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from kanade_stream import KanadeConfig, KanadeTeacher
from kanade_stream.ssl import SSLFeatureExtractor

REFERENCE = Path(__file__).resolve().parents[1] / "tests" / "data" / "official_release" / "kanade_25hz_config.yaml"


def full_size_teacher(config_path: Path) -> KanadeTeacher:
    from transformers import WavLMConfig, WavLMModel

    config = KanadeConfig.from_yaml(config_path)
    ssl = SSLFeatureExtractor(WavLMModel(WavLMConfig()), num_layers=config.ssl_output_layer)
    return KanadeTeacher(config, ssl).eval()


def timed(fn, repeats: int) -> tuple[float, object]:
    fn()  # warm-up: allocator, oneDNN kernels
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="utterance length (default 10 s)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--config", type=Path, default=REFERENCE if REFERENCE.is_file() else None,
                        help="release config.yaml of the architecture (default: the official 25 Hz one)")
    args = parser.parse_args()
    if args.config is None:
        parser.error("pass --config path/to/kanade_25hz_config.yaml")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    torch.set_grad_enabled(False)

    teacher = full_size_teacher(args.config)
    params = sum(p.numel() for p in teacher.release_state_dict().values()) / 1e6
    wave = torch.randn(int(args.seconds * teacher.sample_rate)) * 0.1

    encode_s, features = timed(lambda: teacher.encode(wave), args.repeats)
    decode_s, mel = timed(
        lambda: teacher.decode(features.global_embedding, content_token_indices=features.content_token_indices,
                               target_audio_length=wave.numel()),
        args.repeats,
    )
    print(f"kanade-25hz architecture, random weights: {params:.2f} M parameters (+ WavLM Base+ to layer 9)")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.seconds:g} s of 24 kHz audio, "
          f"median of {args.repeats}")
    print(f"{'stage':<10}{'wall s':>10}{'audio s / s':>14}")
    for name, seconds in (("encode", encode_s), ("decode", decode_s)):
        print(f"{name:<10}{seconds:>10.3f}{args.seconds / seconds:>14.1f}")
    print(f"tokens: {features.content_token_indices.numel()}, mel frames: {mel.shape[-1]}")
    print("official implementation (same machine class): encode 1.4-1.8 s, decode 0.85 s per 10 s")


if __name__ == "__main__":
    main()
