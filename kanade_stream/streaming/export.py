"""Portable export of the streaming steps (the compiled fast paths are in compiled.py).

- `export_torchscript(core, path)`: a TorchScript file of the whole core (its `init_state`, `step`, and
  for decoders `flush`) that loads with `torch.jit.load` in a process that never imports kanade_stream:

      m = torch.jit.load("converter.pt")
      state = m.init_state(1)                                   # a dict of named state tensors
      audio, state = m.step(samples[None], state, g[None])      # samples: float32 (n,) at the input rate,
                                                                # g: the target voice's global embedding
      tokens, state = encoder.step(samples[None], state)        # an encoder takes no condition
      g_so_far = state[meta["global_embedding_state"]]          # the encoder's running global embedding

  The file carries `kanade_stream.json` (read with `_extra_files`) with the rates, the SSL / token hops,
  and the end-of-stream padding rule (push `flush_padding(n)` zeros, computed there in closed form for
  the encoder; or simply push zeros for `latency_ms`, then trim), and the name of the encoder's running
  global-embedding state entry.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from .pipeline import ConverterCore, DecoderCore, EncoderCore

META_NAME = "kanade_stream.json"


def script_core(core: torch.nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():  # torch 2.11 marks TorchScript deprecated; it is still the portable format
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(core.eval())


def _metadata(core: torch.nn.Module) -> dict:
    meta: dict = {"kind": type(core).__name__}
    encoder = core if isinstance(core, EncoderCore) else getattr(core, "encoder", None)
    decoder = core if isinstance(core, DecoderCore) else getattr(core, "decoder", None)
    if encoder is not None:
        rs = encoder.resampler
        meta.update(input_rate=encoder.input_rate, ssl_rate=encoder.ssl_rate, ssl_hop=encoder.ssl_hop,
                    token_hop=encoder.token_hop, resampler_block=[rs.orig, rs.new], resampler_delay_s=rs.delay_seconds)
        if encoder.with_global:
            meta["global_embedding_state"] = encoder.global_key
    if decoder is not None:
        meta.update(output_rate=decoder.output_rate, token_samples=decoder.token_samples,
                    decoder_latency_ms=decoder.latency_ms())
    return meta


def export_torchscript(core: torch.nn.Module, path: str | Path) -> Path:
    """Script `core` (EncoderCore, DecoderCore or ConverterCore) and save it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scripted = script_core(core)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted.save(str(path), _extra_files={META_NAME: json.dumps(_metadata(core))})
    return path


def export_student(student, path: str | Path, kind: str = "converter", sample_rate: int = 16000,
                   with_global: bool = True) -> Path:
    """Export one streaming use of `student`: kind = "encoder" | "decoder" | "converter"."""
    student = student.eval()
    if kind == "encoder":
        core = EncoderCore(student, sample_rate, with_global)
    elif kind == "decoder":
        core = DecoderCore(student)
    elif kind == "converter":
        core = ConverterCore(student, sample_rate)
    else:
        raise ValueError(f"kind must be 'encoder', 'decoder' or 'converter', got {kind!r}")
    return export_torchscript(core, path)


def load_metadata(path: str | Path) -> dict:
    extra = {META_NAME: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.load(str(path), _extra_files=extra)
    return json.loads(extra[META_NAME])
