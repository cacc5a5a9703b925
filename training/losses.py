"""The losses of teacher training and distillation, and the codebook metrics of validation.

- mel: L1 between log-mels, over the frames both have
- multi-resolution STFT: spectral convergence + log-magnitude L1, averaged over STFT sizes
- GAN (Vocos' hinge form): D: mean(relu(1 - D(real))) + mean(relu(1 + D(fake))); G: mean(relu(1 - D(fake)));
  feature matching: the mean absolute difference of every feature map, real ones detached
- FSQ matching (distillation): the student's pre-rounding FSQ values against the teacher's
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# STFT (n_fft, hop) pairs: the Vocos recipe's, and the student vocoder's (shorter, for 40-160 ms chunks)
VOCOS_STFT_RESOLUTIONS = ((512, 128), (1024, 256), (2048, 512))
STUDENT_STFT_RESOLUTIONS = ((512, 128), (1024, 256), (256, 64))


def mel_loss(mel: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between log-mels (..., n_mels, frames), over the frames both have."""
    frames = min(mel.shape[-1], target.shape[-1])
    return F.l1_loss(mel[..., :frames], target[..., :frames])


def stft_loss(audio: torch.Tensor, target: torch.Tensor, resolutions=VOCOS_STFT_RESOLUTIONS,
              floor: float = 1e-7) -> torch.Tensor:
    """Multi-resolution STFT loss of (batch, samples) audio: per STFT size, the spectral convergence
    |S - S_hat|_F / |S|_F plus the L1 of the log-magnitudes (clamped at `floor`); averaged over the sizes."""
    total = audio.new_zeros(())
    for n_fft, hop in resolutions:
        window = torch.hann_window(n_fft, device=audio.device)
        s_hat = torch.stft(audio, n_fft, hop, window=window, return_complex=True).abs().clamp_min(floor)
        s = torch.stft(target, n_fft, hop, window=window, return_complex=True).abs().clamp_min(floor)
        total = total + torch.linalg.norm(s - s_hat) / torch.linalg.norm(s).clamp_min(floor)
        total = total + F.l1_loss(torch.log(s_hat), torch.log(s))
    return total / len(resolutions)


# --------------------------------------------------------------------------------------------------------
# GAN
# --------------------------------------------------------------------------------------------------------


def split_halves(outputs):
    """Outputs of a discriminator run on cat([real, fake]) -> (real part, fake part), nested lists kept."""
    if isinstance(outputs, torch.Tensor):
        n = outputs.shape[0] // 2
        return outputs[:n], outputs[n:]
    pairs = [split_halves(o) for o in outputs]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def discriminator_loss(real: list[torch.Tensor], fake: list[torch.Tensor]) -> torch.Tensor:
    return sum(torch.relu(1 - r).mean() + torch.relu(1 + f).mean() for r, f in zip(real, fake))


def generator_loss(fake: list[torch.Tensor]) -> torch.Tensor:
    return sum(torch.relu(1 - f).mean() for f in fake)


def feature_matching_loss(real_maps, fake_maps) -> torch.Tensor:
    return sum((r.detach() - f).abs().mean() for rs, fs in zip(real_maps, fake_maps) for r, f in zip(rs, fs))


# --------------------------------------------------------------------------------------------------------
# FSQ
# --------------------------------------------------------------------------------------------------------


def level_values(levels: list[int], device) -> list[torch.Tensor]:
    """The integer values each FSQ dimension rounds to: -L//2 .. L - 1 - L//2 (-4..3 for 8, -2..2 for 5)."""
    return [torch.arange(level, device=device, dtype=torch.float32) - level // 2 for level in levels]


def fsq_matching_losses(bounded: torch.Tensor, goal: torch.Tensor, levels: list[int]):
    """Pre-rounding FSQ values (B, T, levels) against a teacher's, over the frames both have: their MSE,
    a per-level cross-entropy on the rounded values, and the agreement of whole tokens and of single
    levels after rounding."""
    n = min(bounded.shape[1], goal.shape[1])
    bounded, goal = bounded[:, :n], goal[:, :n]
    mse = F.mse_loss(bounded, goal)
    ce = bounded.new_zeros(())
    for d, values in enumerate(level_values(levels, bounded.device)):
        # a soft "which level" classifier: closer to a level value = more likely; the teacher's level wins
        logits = -(bounded[..., d, None] - values) ** 2 * 4.0
        label = torch.round(goal[..., d]) - values[0]
        ce = ce + F.cross_entropy(logits.reshape(-1, len(values)), label.long().reshape(-1))
    same = torch.round(bounded) == torch.round(goal)
    return mse, ce / len(levels), same.all(dim=-1).float().mean(), same.float().mean()


# --------------------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------------------


def codebook_stats(indices: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Perplexity, fraction of the codebook used and entropy in bits of a set of token indices."""
    counts = torch.bincount(indices.flatten().cpu(), minlength=codebook_size).double()
    probs = counts / counts.sum().clamp_min(1)
    entropy = -(probs * torch.log(probs + 1e-12)).sum()
    return {"perplexity": float(torch.exp(entropy)), "codebook_usage": float((counts > 0).sum() / codebook_size),
            "bits_per_token": float(entropy / math.log(2))}
