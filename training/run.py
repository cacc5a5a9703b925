"""Train the Kanade teacher (phase 1, GAN phase 2) and its Vocos vocoder.

    python training/run.py                        # tiny teacher + vocoder on the embedded corpus, CPU, minutes
    python training/run.py --config kanade_25hz --data /data/LibriTTS --phase 1
    torchrun --nproc_per_node 8 training/run.py --config kanade_25hz --data /data/LibriTTS
    python training/run.py --phase vocoder --init charactr/vocos-mel-24khz --data /data/LibriTTS
    python training/run.py --resume               # continue the run in --out where it stopped
    python training/run.py --phase ssl            # pretrain a small WavLM on the synthetic voice corpus

Everything lands in --out (default from the config, runs/teacher-tiny for the tiny one): one folder per
phase (checkpoints, CSV/TensorBoard logs, mel PNGs) and `export/`, the latest teacher in the official
release format (config.yaml + model.safetensors + ssl_model.txt) with the vocoder in `export/vocoder/`.

This is the command line over `training.pipeline.train_teacher`; `python -m training.run` works the same.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from kanade_stream.audio import AudioError
from kanade_stream.checkpoint import CheckpointError
from kanade_stream.config import ConfigError
from training.data import DataError
from training.pipeline import RunError, summary, train_teacher
from training.runtime import init_runtime, shutdown_runtime
from training.settings import PHASES, RunSettings, SettingsError, check_settings, load_settings

PHASE_ALIASES = {"1": ["phase1"], "2": ["phase2"], "phase1": ["phase1"], "phase2": ["phase2"],
                 "vocoder": ["vocoder"], "all": list(PHASES), "ssl": ["ssl"]}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python training/run.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--config", default=None,
                   help="recipe: tiny (default), kanade_25hz, kanade_12hz, or a YAML file (see training/configs)")
    p.add_argument("--phase", default="all", choices=["1", "2", "vocoder", "all", "ssl"],
                   help="what to train: 1 (tokenizer), 2 (GAN post-training of the mel decoder), vocoder, or all in "
                        "turn; ssl pretrains the WavLM SSL model on the synthetic voice corpus (not part of all)")
    p.add_argument("--data", default=None,
                   help="a folder of audio (scanned recursively; speaker = folder), a manifest.jsonl, or a folder "
                        "holding one (default: the embedded eSpeak corpus); with --phase ssl, a phone-aligned voice "
                        "corpus's manifest or folder, or a subset of its manifest's lines (default: ssl.corpus)")
    p.add_argument("--out", default=None, help="output folder (default: the config's, e.g. runs/teacher-tiny)")
    p.add_argument("--steps", type=int, default=None, help="training steps of each phase run (default: the config's)")
    p.add_argument("--batch-size", type=int, default=None, help="global batch size, split over torchrun processes")
    p.add_argument("--chunk-seconds", type=float, default=None, help="training chunk length (paper: 5.76)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate of each phase run")
    p.add_argument("--speed-perturbation", type=float, default=None,
                   help="play training chunks up to this much faster or slower (0.1: 0.9x to 1.1x; pitch, formants "
                        "and tempo together): more voices from the same clips (data.speed_perturbation, and "
                        "ssl.speed_perturbation for --phase ssl)")
    p.add_argument("--content-perturbation", type=float, default=None,
                   help="phase 1: the content branch alone hears each batch up to this much faster or slower "
                        "(0.15: 0.85x to 1.15x), so the voice must come through the global branch "
                        "(phase1.content_perturbation)")
    p.add_argument("--invariance", type=float, default=None,
                   help="phase 1: weight of the token-invariance loss (the content branch hears each batch again "
                        "as another voice with noise; its FSQ latent must match the chunk's; "
                        "phase1.losses.invariance_weight, view in phase1.invariance)")
    p.add_argument("--phone-loss", type=float, default=None,
                   help="phase 1: weight of the phone loss (each token names the phones of its SSL frames, against "
                        "the voices corpus's alignments; phase1.losses.phone_weight)")
    p.add_argument("--consistency", type=float, default=None,
                   help="--phase ssl: weight of the cross-view consistency loss (each chunk heard again as another "
                        "voice; its content layers must match frame by frame; ssl.losses.consistency_weight)")
    p.add_argument("--noise-snr", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="--phase ssl: add white noise to each training chunk at an SNR (dB) drawn from LOW..HIGH "
                        "(ssl.noise_snr_db)")
    p.add_argument("--equaliser", type=float, default=None, metavar="DB",
                   help="hear audio through another microphone, its bass and treble each moved by up to +-DB dB: "
                        "--phase ssl every training chunk (ssl.equaliser_db), phase 1 the token-invariance "
                        "view (phase1.invariance.equaliser_db)")
    p.add_argument("--tilt", type=float, default=None, metavar="DB",
                   help="with --equaliser: each microphone also tilts the spectrum, bass up and treble down (or the "
                        "reverse) by one draw within +-DB dB (ssl.tilt_db, phase1.invariance.tilt_db)")
    p.add_argument("--voice-weight", action="append", default=None, metavar="VOICES=W",
                   help="--phase ssl: hear the training voices whose names match VOICES (shell pattern, 'pi-joe-*') "
                        "W times as often as the others (0.5: half as often); repeatable, the last match wins "
                        "(ssl.voice_weights)")
    p.add_argument("--num-workers", type=int, default=None, help="data loader workers per process")
    p.add_argument("--ssl-model", default=None,
                   help="WavLM: hub id (microsoft/wavlm-base-plus), local transformers folder, or 'embedded' (tiny)")
    p.add_argument("--init", default=None,
                   help="starting weights of the first phase run: a Kanade release (folder or hub id) for phases "
                        "1/2; a Vocos (charactr/vocos-mel-24khz or a folder) for --phase vocoder; a --phase ssl "
                        "export (transformers WavLM folder, e.g. kanade_stream/assets/teacher-tiny/wavlm) for ssl")
    p.add_argument("--vocoder-init", default=None, help="a Vocos to fine-tune when --phase all reaches the vocoder")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue where the run in --out stopped: from each unfinished phase's last.pt, else its "
                        "newest readable step_*.pt (or from the given checkpoint file); never deletes anything")
    p.add_argument("--overwrite", action="store_true",
                   help="start over, deleting the folder of each phase run (needed when it already holds a run)")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop (with a checkpoint) after this many steps of the phase; the schedule still spans --steps")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16"],
                   help="auto: bf16 autocast on GPU, fp32 on CPU")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per process (torch.set_num_threads); 1 avoids thrashing on a busy machine")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--val-every", type=int, default=None, help="validation interval in steps")
    p.add_argument("--ckpt-every", type=int, default=None, help="checkpoint interval in steps")
    p.add_argument("--log-every", type=int, default=None, help="logging interval in steps")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return p.parse_args(argv)


def apply_overrides(settings: RunSettings, args: argparse.Namespace, phases: list[str]) -> RunSettings:
    data = settings.data
    for attr, value in (("path", args.data), ("batch_size", args.batch_size), ("chunk_seconds", args.chunk_seconds),
                        ("num_workers", args.num_workers)):
        if value is not None:
            setattr(data, attr, value)
    if args.data is not None and "ssl" in phases:
        settings.ssl.manifest = args.data  # the SSL phase reads a phone-aligned voice corpus, not data.path
    if args.speed_perturbation is not None:
        data.speed_perturbation = args.speed_perturbation
        settings.ssl.speed_perturbation = args.speed_perturbation
    if args.content_perturbation is not None:
        settings.phase1.content_perturbation = args.content_perturbation
    if args.invariance is not None:
        settings.phase1.losses.invariance_weight = args.invariance
    if args.phone_loss is not None:
        settings.phase1.losses.phone_weight = args.phone_loss
    if args.consistency is not None:
        settings.ssl.losses.consistency_weight = args.consistency
    if args.voice_weight and "ssl" not in phases:
        raise SettingsError("--voice-weight weighs the SSL phase's voices: use it with --phase ssl")
    for item in args.voice_weight or []:
        pattern, _, weight = item.rpartition("=")
        try:
            settings.ssl.voice_weights[pattern] = float(weight)
        except ValueError:
            pattern = ""
        if not pattern:
            raise SettingsError(f"--voice-weight {item!r}: expected VOICES=WEIGHT, e.g. --voice-weight 'pi-joe-*=2'")
    if args.noise_snr is not None:
        settings.ssl.noise_snr_db = tuple(args.noise_snr)
    if args.equaliser is not None:
        settings.ssl.equaliser_db = args.equaliser
        settings.phase1.invariance.equaliser_db = args.equaliser
    if args.tilt is not None:
        settings.ssl.tilt_db = args.tilt
        settings.phase1.invariance.tilt_db = args.tilt
    for attr, value in (("out", args.out), ("ssl_model", args.ssl_model), ("precision", args.precision),
                        ("seed", args.seed)):
        if value is not None:
            setattr(settings, attr, value)
    for phase in phases:
        ps = settings.phase(phase)
        for attr, value in (("steps", args.steps), ("val_every", args.val_every), ("ckpt_every", args.ckpt_every),
                            ("log_every", args.log_every)):
            if value is not None:
                setattr(ps, attr, value)
        if args.batch_size is not None:
            ps.batch_size = None
        if args.chunk_seconds is not None:
            ps.chunk_seconds = None
        if args.lr is not None:
            ps.optim.lr = args.lr
        if phase == "ssl" and args.num_workers is not None:
            ps.num_workers = args.num_workers
    check_settings(settings)
    return settings


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the per-load "Loading weights" bar of the SSL model
    except ImportError:
        pass
    phases = PHASE_ALIASES[args.phase]
    start = time.time()
    runtime = None
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    try:
        settings = apply_overrides(load_settings(args.config), args, phases)
        runtime = init_runtime(settings.precision, args.device)
        if phases == ["ssl"]:
            from training.ssl_phase import ssl_summary, train_ssl

            result = train_ssl(settings, runtime, resume=args.resume, overwrite=args.overwrite,
                               stop_after=args.stop_after, progress=not args.no_progress, init=args.init)
            print(ssl_summary(result, Path(settings.out), time.time() - start))
            return 0 if result is None or result.completed or args.stop_after else 1
        results = train_teacher(settings, phases, runtime, resume=args.resume, init=args.init,
                                vocoder_init=args.vocoder_init, overwrite=args.overwrite, stop_after=args.stop_after,
                                progress=not args.no_progress)
    except (DataError, CheckpointError, SettingsError, ConfigError, AudioError, RunError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError) as err:
        if phases != ["ssl"]:
            raise
        print(f"error: {err}", file=sys.stderr)  # the voice corpus: a held-out voice, festival missing ...
        return 2
    finally:
        if runtime is not None:
            shutdown_runtime()
    if runtime.is_main:
        print(summary(results, Path(settings.out), time.time() - start))
    return 0 if all(r.completed for r in results.values()) or args.stop_after else 1


if __name__ == "__main__":
    sys.exit(main())
