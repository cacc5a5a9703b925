"""Command line: `python -m kanade_stream {demo,tokenize,decode,resynthesize,convert} ...`.

Every command runs on the embedded demo model by default (no download); `--model`, `--ssl-model` and
`--vocoder` select real weights (hub ids or local folders).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .audio import MIX_CHOICES, AudioError, load_audio, save_audio
from .checkpoint import CheckpointError
from .config import ConfigError
from .pretrained import default_teacher, default_vocoder
from .windowed import DEFAULT_CONTEXT_SECONDS, DEFAULT_WINDOW_SECONDS


def load_teacher(args):
    from .teacher import KanadeTeacher

    return KanadeTeacher.from_pretrained(args.model, ssl_model=args.ssl_model, device=args.device)


def load_voc(args):
    from .vocoder import load_vocoder

    return load_vocoder(args.vocoder, device=args.device)


def write_wave(path: Path, vocoder, mel: torch.Tensor, sample_rate: int) -> Path:
    from .vocoder import vocode

    return save_audio(path, vocode(vocoder, mel), sample_rate)


def cmd_tokenize(args) -> int:
    from .jobs import distributed_context, tokenize_corpus

    rank, world_size, local_rank = distributed_context()
    if world_size > 1 and args.device.startswith("cuda") and ":" not in args.device:
        args.device = f"cuda:{local_rank}"  # one GPU per process under torchrun
    teacher = load_teacher(args)
    summary = tokenize_corpus(teacher, args.inputs, args.out, batch_size=args.batch_size, mix=args.mix,
                              overwrite=args.overwrite, window_seconds=args.window_seconds,
                              context_seconds=args.context_seconds)
    if rank == 0:
        summary.print()
        print(f"outputs in {args.out}/: <name>.npy tokens, <name>.global.npy speaker, manifest.jsonl")
    return summary.exit_code


def cmd_decode(args) -> None:
    teacher, vocoder = load_teacher(args), load_voc(args)
    tokens = torch.from_numpy(np.load(args.tokens)).long()
    global_path = Path(args.global_embedding or Path(args.tokens).with_suffix(".global.npy"))
    if not global_path.is_file():
        raise FileNotFoundError(f"no global embedding at {global_path}: pass --global FILE.global.npy")
    speaker = torch.from_numpy(np.load(global_path)).float()
    mel = teacher.decode(speaker, content_token_indices=tokens)
    print(f"wrote {write_wave(Path(args.out), vocoder, mel, teacher.sample_rate)}")


def cmd_resynthesize(args) -> int:
    from .jobs import JobSummary, find_audio

    teacher, vocoder = load_teacher(args), load_voc(args)
    files = find_audio(args.inputs)
    single = len(files) == 1 and Path(args.inputs[0]).is_file() and Path(args.out).suffix.lower() == ".wav"
    summary = JobSummary()
    for item in tqdm(files, desc="resynthesizing", unit="file", disable=len(files) < 2):
        try:  # one bad file is reported and skipped; the others go on
            wave, _ = load_audio(item.path, teacher.sample_rate, mix=args.mix)
            feat = teacher.encode(wave)
            mel = teacher.decode(feat.global_embedding, content_token_indices=feat.content_token_indices,
                                 target_audio_length=wave.numel())
            target = Path(args.out) if single else Path(args.out) / item.relative.with_suffix(".wav")
            write_wave(target, vocoder, mel, teacher.sample_rate)
            summary.done += 1
            summary.audio_seconds += wave.numel() / teacher.sample_rate
        except (AudioError, OSError) as err:
            summary.failed.append((str(item.path), str(err)))
    summary.print("resynthesized")
    print(f"outputs in {args.out}")
    return summary.exit_code


def cmd_convert(args) -> None:
    teacher, vocoder = load_teacher(args), load_voc(args)
    source, _ = load_audio(args.source, teacher.sample_rate, mix=args.mix)
    reference, _ = load_audio(args.ref, teacher.sample_rate, mix=args.mix)
    mel = teacher.voice_conversion(source, reference)
    print(f"wrote {write_wave(Path(args.out), vocoder, mel, teacher.sample_rate)} "
          f"(content of {args.source}, voice of {args.ref})")


def cmd_demo(args) -> None:
    """The whole offline pipeline on the embedded model and two synthetic eSpeak voices."""
    from .corpus import make_voices, synthesize

    teacher, vocoder = load_teacher(args), load_voc(args)
    out = Path(args.out)
    sr = teacher.sample_rate
    source_voice, reference_voice = make_voices(2, seed=args.seed)
    source = torch.from_numpy(synthesize(args.text, source_voice, sr))
    reference = torch.from_numpy(synthesize("A different voice reads this reference sentence aloud.", reference_voice, sr))
    save_audio(out / "source.wav", source, sr)
    save_audio(out / "reference.wav", reference, sr)

    start = time.perf_counter()
    feat = teacher.encode(source)
    encode_s = time.perf_counter() - start
    np.save(out / "source.tokens.npy", feat.content_token_indices.numpy().astype(np.int32))
    mel = teacher.decode(feat.global_embedding, content_token_indices=feat.content_token_indices,
                         target_audio_length=source.numel())
    write_wave(out / "resynthesized.wav", vocoder, mel, sr)
    write_wave(out / "converted.wav", vocoder, teacher.voice_conversion(source, reference), sr)

    streaming = _demo_streaming(out, source, reference, sr, args.chunk_ms)

    seconds = source.numel() / sr
    tokens = feat.content_token_indices
    print(f"model: {args.model}\nvocoder: {args.vocoder}")
    print(f"source: {seconds:.2f} s of '{args.text}' ({source_voice.name}); reference voice: {reference_voice.name}")
    print(f"tokens: {tokens.numel()} ({tokens.numel() / seconds:.1f}/s, "
          f"{tokens.numel() * np.log2(teacher.local_quantizer.codebook_size) / seconds:.0f} bit/s), "
          f"first 12: {tokens[:12].tolist()}")
    print(f"encode took {encode_s * 1000:.0f} ms on {args.device}")
    print(f"wrote {out}/source.wav, reference.wav, source.tokens.npy, resynthesized.wav, converted.wav")
    if streaming:
        print(streaming)


def _demo_streaming(out: Path, source: torch.Tensor, reference: torch.Tensor, rate: int, chunk_ms: int) -> str | None:
    """The embedded streaming student converting the source through the real-time engine (file mode)."""
    from .pretrained import EMBEDDED_STUDENT
    from .realtime import ArrayBackend, run_session
    from .streaming import StreamingConverter, load_student

    if not (EMBEDDED_STUDENT / "model.safetensors").is_file():
        return None
    torch.set_num_threads(1)  # what the live demo uses
    converter = StreamingConverter(load_student(EMBEDDED_STUDENT), reference=reference.numpy(), sample_rate=rate,
                                   chunk_ms=chunk_ms)
    backend = ArrayBackend(source.numpy(), rate, block=rate // 100)  # 10 ms device buffers
    s = run_session(converter, backend)
    save_audio(out / "streamed_conversion.wav", backend.output[s.engine_delay_samples :], converter.output_rate)
    return (f"streaming student ({chunk_ms} ms chunks, 1 thread): algorithmic latency {converter.latency_ms:.0f} ms, "
            f"compute per chunk p50 {s.compute_p50_ms:.1f} ms / p99 {s.compute_p99_ms:.1f} ms, "
            f"real-time factor {s.real_time_factor:.2f} -> {out}/streamed_conversion.wav")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kanade_stream", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", default=str(default_teacher()),
                        help="Kanade release: hub id (frothywater/kanade-25hz) or folder (default: embedded demo model)")
    common.add_argument("--ssl-model", default=None,
                        help="WavLM hub id or transformers folder (default: the one the model names or bundles)")
    common.add_argument("--vocoder", default=default_vocoder(),
                        help="Vocos hub id (charactr/vocos-mel-24khz), Vocos folder, or griffin-lim "
                             "(default: embedded vocoder, else griffin-lim)")
    common.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1 ...)")
    common.add_argument("--mix", choices=MIX_CHOICES, default=None,
                        help="how to mix multi-channel files down to mono (required for stereo input)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", parents=[common], help="tokenize, resynthesize and convert synthetic speech")
    p.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    p.add_argument("--text", default="The quick brown fox jumps over the lazy dog near the river bank.")
    p.add_argument("--seed", type=int, default=0, help="which synthetic voices to use")
    p.add_argument("--chunk-ms", type=int, default=80, help="chunk of the streaming student (40, 80, 160)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("tokenize", parents=[common], help="audio file(s) or folder(s) -> tokens (.npy)")
    p.add_argument("inputs", nargs="+", help="audio files or folders (searched recursively)")
    p.add_argument("--out", required=True, help="output folder; keeps the input folder structure")
    p.add_argument("--batch-size", type=int, default=8, help="utterances encoded together (default 8)")
    p.add_argument("--overwrite", action="store_true",
                   help="redo files whose outputs exist (default: skip them, so an interrupted run resumes)")
    p.add_argument("--window-seconds", type=float, default=DEFAULT_WINDOW_SECONDS,
                   help=f"files longer than window + 2 x context are encoded in windows of this length, in "
                        f"bounded memory (default {DEFAULT_WINDOW_SECONDS:g})")
    p.add_argument("--context-seconds", type=float, default=DEFAULT_CONTEXT_SECONDS,
                   help=f"audio each side of a window that WavLM also sees (default {DEFAULT_CONTEXT_SECONDS:g})")
    p.set_defaults(func=cmd_tokenize)

    p = sub.add_parser("decode", parents=[common], help="tokens (.npy) + global embedding -> audio")
    p.add_argument("tokens", help="token file written by `tokenize`")
    p.add_argument("--global", dest="global_embedding", default=None,
                   help="speaker embedding (.global.npy; default: next to the tokens)")
    p.add_argument("--out", required=True, help="output .wav")
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("resynthesize", parents=[common], help="audio -> tokens -> audio")
    p.add_argument("inputs", nargs="+", help="audio files or folders")
    p.add_argument("--out", required=True, help="output .wav (one input file) or folder")
    p.set_defaults(func=cmd_resynthesize)

    p = sub.add_parser("convert", parents=[common], help="voice conversion: content of SOURCE, voice of --ref")
    p.add_argument("source", help="speech whose words and prosody are kept")
    p.add_argument("--ref", required=True, help="reference clip of the target voice")
    p.add_argument("--out", required=True, help="output .wav")
    p.set_defaults(func=cmd_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "batch_size", 1) < 1:
        print("error: --batch-size must be at least 1", file=sys.stderr)
        return 2
    if getattr(args, "window_seconds", 1) <= 0 or getattr(args, "context_seconds", 0) < 0:
        print("error: --window-seconds must be > 0 and --context-seconds >= 0", file=sys.stderr)
        return 2
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per WavLM load is noise on the command line
    try:
        with torch.no_grad():  # scoped: main() is also called in-process (tests, scripts)
            code = args.func(args)
    except (AudioError, CheckpointError, ConfigError, FileNotFoundError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return code or 0
