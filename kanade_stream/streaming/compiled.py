"""The compiled streaming step: a core's step cut into graphs without breaks, compiled by torch.export +
AOTInductor (cached on disk) or by torch.compile, for one push size.

A core's step (pipeline.py) has data-dependent shapes in one place only: the interpolation from the
latent rate (100 Hz) to the mel grid (93.75 Hz) emits 3 or 4 mel frames for a 40 ms push, in a cycle. So
the step is run as up to two graphs:

  front (graph)   audio -> tokens / latent frames: its shapes depend on the push size alone
  taps            Python integers: which latent frames each of the m ready mel frames reads
  back (graphs)   the interpolation along those taps, then m mel frames -> m * hop samples: one graph per
                  m the push size produces

The target voice enters the back graphs as the mel decoder's AdaLN-Zero modulation, projected from the
global embedding once per voice (`DecoderCore.modulation`) rather than at every step.

An encoder is the front alone; a converter all three; a decoder's front starts at the tokens. Each part
is a module (`StepPart`) whose state entries go in and come out explicitly (the KV rings, written in
place, are mutated inputs), so it traces as one graph:

- compiler "aot": `torch.export`, then AOTInductor to a `.pt2` package: no Python dispatch at all inside a
  part. Packages are cached in `$KANADE_STREAM_CACHE/aot` (default `~/.cache/kanade_stream/aot`) under a
  key made of the weights, the shapes, this package's streaming code, the torch version and the CPU's
  vector ISA, so a later start loads in about a second. Compiling takes 20-40 s a graph on a 2-core CPU
  and needs a C++ compiler.
- compiler "inductor": `torch.compile(part, fullgraph=True)` (a graph break is an error, not a silent
  fallback), compiled at set-up by two calls on a copy of the state (fresh entries, then entries a step
  made: torch.compile guards on the difference); torch's own cache applies.

The graphs are specialised to batch 1 and one push size. Any other push (a stream's flush, a decoder
push of another token count, a mel-frame count the cycle never produced) runs the same core eagerly on
the same state, so results never depend on which path ran; `CompiledStep.counts` says how many pushes took
each path, and `label` says what ran.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from ..cache import cache_root
from ..modules.streaming import copy_state
from .int8 import exportable_int8
from .kernels import load_kernels, with_kernel_attention
from .pipeline import ConverterCore, DecoderCore, EncoderCore

PACKAGE_VERSION = 1  # bump when the way graphs are made changes without a code change below
KEEP_PACKAGES = 12  # the cache keeps the most recently used packages (a default-size front is ~55 MB)


def default_cache_dir() -> Path:
    return cache_root() / "aot"


COMPILERS = ("aot", "inductor")


def prune_cache(cache_dir: Path, keep: int = KEEP_PACKAGES) -> None:
    """Delete all but the `keep` most recently used packages, and partial builds over an hour old."""
    packages = [p for p in cache_dir.glob("*.pt2") if ".partial-" not in p.name]
    for path in sorted(packages, key=lambda p: p.stat().st_mtime, reverse=True)[keep:]:
        path.unlink(missing_ok=True)
    for path in cache_dir.glob("*.partial-*.pt2"):
        if time.time() - path.stat().st_mtime > 3600:
            path.unlink(missing_ok=True)


class CompileUnavailable(RuntimeError):
    """The compiled step cannot be built here (the message says why)."""


class _ReadRecorder(dict):
    """A state dict that remembers which entries were read (to pass each graph only what it uses)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)


class StepPart(nn.Module):
    """One compiled part of a core's step, as a module torch.export can trace:
    (x, the state entries it reads, modulation, taps) -> (outputs, the entries it replaced). The back part
    alone takes `modulation` (`DecoderCore.modulation(global embedding)`) and `taps` (the interpolation's
    `step_taps`: they fix its mel frame count).
    Entries it writes in place (the KV rings) are among those it reads; export records the mutation."""

    def __init__(self, core: nn.Module, part: str):
        super().__init__()
        if part not in ("encode", "front", "back"):
            raise ValueError(f"unknown step part {part!r}")
        self.core, self.part = core, part
        self.reads: list[str] = []
        self.writes: list[str] = []
        self.mutates: list[str] = []  # read and written in place (the KV rings)

    def _decoder(self) -> DecoderCore:
        return self.core.decoder if isinstance(self.core, ConverterCore) else self.core

    def run(self, x: Tensor, state: dict, modulation: Tensor | None, taps: Tensor | None):
        if self.part == "encode":  # EncoderCore: samples -> (tokens, content embeddings)
            tokens, embedding, state = self.core.encode_step(x, state)
            return (tokens, embedding), state
        if self.part == "front":  # converter: samples -> latent frames; decoder: tokens -> latent frames
            if isinstance(self.core, ConverterCore):
                _, embedding, state = self.core.encoder.encode_step(x, state)
            else:  # the stream checked the token range before the step
                embedding = self.core.quantizer.decode_valid(x)
            latent, state = self._decoder().latent_step(embedding, state)
            return (latent,), state
        audio, state = self._decoder().mel_audio_step_undropped(x, state, taps, modulation)  # back
        return (audio,), state

    def forward(self, x: Tensor, state: dict[str, Tensor], modulation: Tensor | None = None,
                taps: Tensor | None = None):
        outputs, new = self.run(x, dict(state), modulation, taps)
        return outputs, {key: new[key] for key in self.writes}

    def trace_io(self, x: Tensor, state: dict[str, Tensor], modulation: Tensor | None = None,
                 taps: Tensor | None = None) -> None:
        """Find the entries this part reads and replaces, from one eager run on a copy of `state`."""
        recorder = _ReadRecorder(copy_state(state))
        before = dict(recorder)
        versions = {key: tensor._version for key, tensor in before.items()}
        with torch.no_grad():
            _, after = self.run(x, recorder, modulation, taps)
        self.reads = sorted(recorder.read)
        self.writes = sorted(key for key in after if after[key] is not before.get(key))
        self.mutates = sorted(key for key in self.reads if before[key]._version != versions[key])


class _CompiledPart:
    """A loaded package and the shapes it was built for."""

    def __init__(self, part: StepPart, runner: Callable, x_shape: tuple, state: dict[str, Tensor]):
        self.reads, self.writes, self.mutates, self.run = part.reads, part.writes, part.mutates, runner
        self.x_shape = x_shape
        self.shapes = {key: tuple(state[key].shape) for key in part.reads}
        self.flat_run: Callable | None = None  # see `use_flat_calls`

    def use_flat_calls(self, loader, x: Tensor, state: dict[str, Tensor], extras: tuple) -> None:
        """Call an AOTInductor package's runner on flat lists, without the pytree (un)flattening of its Python
        wrapper (~40 us a call, more with the caches cold after a step): inputs x, the read entries in
        `reads` order, then the extra tensors; outputs the part's outputs, then the written entries in
        `writes` order: the order torch.export flattens (x, dict, ...) in. Checked once here against the
        wrapper, on state entries of distinct values (random floats; counters offset by their rank), so
        that two entries swapped would show; if the check fails the wrapper stays in use."""
        trial = {key: torch.rand_like(state[key]) if state[key].is_floating_point() else state[key] + rank + 1
                 for rank, key in enumerate(self.reads)}
        try:
            expected_outputs, expected = self.run(x, {k: trial[k].clone() for k in self.reads}, *extras)
            flat = loader.boxed_run([x, *(trial[k].clone() for k in self.reads), *extras])
        except Exception:  # e.g. a counter the graph indexes with: keep the wrapper
            return
        outputs = flat[: len(flat) - len(self.writes)]
        same = len(outputs) == len(expected_outputs) and all(
            torch.equal(a, b) for a, b in zip([*outputs, *flat[len(outputs):]],
                                              [*expected_outputs, *(expected[k] for k in self.writes)]))
        if same:
            self.flat_run = loader.boxed_run

    def fits(self, x: Tensor, state: dict[str, Tensor]) -> bool:
        return tuple(x.shape) == self.x_shape and self.fits_state(state)

    def fits_state(self, state: dict[str, Tensor]) -> bool:
        return (all(tuple(state[k].shape) == s for k, s in self.shapes.items())
                and all(state[k].is_contiguous() for k in self.mutates))

    def __call__(self, x: Tensor, state: dict[str, Tensor], *extras: Tensor):
        """extras: the back graphs' (modulation, taps), contiguous."""
        # A compiled graph assumes the strides it was built for (contiguous) without checking them, and a
        # step's state entries are often views (a conv's tail is the end of its input): pass contiguous
        # tensors. The entries written in place (the KV rings) must be contiguous already (`fits_state`).
        if self.flat_run is not None:
            flat = self.flat_run([x.contiguous(), *[state[key].contiguous() for key in self.reads], *extras])
            count = len(flat) - len(self.writes)
            state.update(zip(self.writes, flat[count:]))
            return flat[:count]
        outputs, new = self.run(x.contiguous(), {key: state[key].contiguous() for key in self.reads}, *extras)
        state.update(new)
        return outputs


def _code_digest() -> str:
    """The streaming code the graphs are traced from: a change there is a new graph."""
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted([*here.glob("*.py"), *(here.parent / "modules").glob("*.py")]):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def _weights_digest(module: nn.Module) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        data = tensor.detach().cpu().contiguous()
        digest.update(name.encode() + str(data.dtype).encode() + str(tuple(data.shape)).encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


class CompiledStep:
    """`core.step` (EncoderCore, ConverterCore or DecoderCore) through compiled graphs, for pushes of
    `push_size` (input samples for an encoder or converter; tokens for a decoder) at batch 1.

    Same interface as the core: `init_state(batch)`, `step(x, state, condition) -> (y, state)`, and the
    same results (within float rounding of the compiled kernels). Raises CompileUnavailable if it cannot be
    built (CoreRunner then falls back to eager, with a warning).
    """

    def __init__(self, core: nn.Module, push_size: int, compiler: str = "aot", cache_dir: str | Path | None = None,
                 log=None, compile_options: dict | None = None):
        if compiler not in COMPILERS:
            raise ValueError(f"compiler must be one of {COMPILERS}, got {compiler!r}")
        if not isinstance(core, (EncoderCore, ConverterCore, DecoderCore)):
            raise TypeError(f"CompiledStep compiles an EncoderCore, ConverterCore or DecoderCore, not {type(core).__name__}")
        if isinstance(core, (EncoderCore, ConverterCore)):
            encoder = core if isinstance(core, EncoderCore) else core.encoder
            if push_size <= 0 or encoder.num_tokens(push_size) == 0 or push_size % encoder.samples_for_tokens(1):
                raise ValueError(f"push_size {push_size} must be a whole number of tokens "
                                 f"({encoder.samples_for_tokens(1)} samples at {encoder.input_rate} Hz)")
        elif push_size <= 0:
            raise ValueError(f"push_size must be a positive number of tokens, got {push_size}")
        self.core, self.push_size, self.compiler = core.eval(), int(push_size), compiler
        # latent frames (100 Hz) a push makes, the interpolation's input (0 for an encoder)
        tokens = core.encoder.num_tokens(self.push_size) if isinstance(core, ConverterCore) else self.push_size
        self.latent_per_push = tokens * self.decoder.upsample_factor if self.decoder is not None else 0
        # what the graphs are traced from: a copy of the core whose int8 layers are an op torch.export can carry
        # and whose attention, on CPU, is this package's kernel for a step's few queries (kernels.py)
        graph_core = exportable_int8(self.core)
        on_cpu = next(self.core.parameters()).device.type == "cpu"
        self.graph_core = with_kernel_attention(graph_core) if on_cpu else graph_core
        self.kernels = load_kernels() if on_cpu or graph_core is not self.core else None
        self.compile_options = dict(compile_options or {})  # torch.compile's, e.g. backend="eager" in tests
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.log = log or (lambda message: None)
        self.counts = {"compiled": 0, "eager": 0}
        self.build_seconds = 0.0
        self.front: _CompiledPart | None = None
        self.backs: dict[int, _CompiledPart] = {}
        self._build_key = ""  # what every part's cache key shares: code, weights, torch, CPU (set by _build)
        self._voice: Tensor | None = None  # the last condition seen, and its modulation (`modulation`)
        self._voice_modulation: Tensor | None = None
        self._taps_by_phase: dict[tuple[int, int], Tensor] = {}
        self._build()

    @property
    def label(self) -> str:
        label = "torch.export + AOTInductor" if self.compiler == "aot" else "torch.compile (whole graphs)"
        return label + (f", {self.kernels} kernels" if self.kernels else "")

    @property
    def decoder(self) -> DecoderCore | None:
        if isinstance(self.core, EncoderCore):
            return None
        return self.core.decoder if isinstance(self.core, ConverterCore) else self.core

    def init_state(self, batch: int = 1) -> dict[str, Tensor]:
        return self.core.init_state(batch)

    # --- building ----------------------------------------------------------------------------------

    def _device(self) -> torch.device:
        return next(self.core.parameters()).device

    def modulation(self, condition: Tensor) -> Tensor:
        """The back graphs' voice input for `condition`, computed when the voice changes (a stream keeps one)."""
        if self._voice is None or not torch.equal(self._voice, condition):
            with torch.no_grad():
                self._voice_modulation = self.decoder.modulation(condition).contiguous()
            self._voice = condition.clone()
        return self._voice_modulation

    def steady_phases(self) -> dict[int, int]:
        """Once a stream of pushes of `push_size` is under way, the mel frames m a push makes (one back graph
        each) and, for each, how many pushes came before one that makes m."""
        latent = self.latent_per_push
        interpolator = self.decoder.mel_interpolator
        phases: dict[int, int] = {}
        for i in range(2, 64):
            m = interpolator.num_outputs(latent * (i + 1)) - interpolator.num_outputs(latent * i)
            if m > 0:
                phases.setdefault(m, i)
        return dict(sorted(phases.items()))

    def _build(self) -> None:
        start = time.perf_counter()
        shared = (PACKAGE_VERSION, torch.__version__, torch.backends.cpu.get_cpu_capability(), type(self.core).__name__,
                  getattr(self.core, "input_rate", None), _code_digest(), _weights_digest(self.graph_core))
        self._build_key = repr(shared)  # hashed once: the weights digest reads every weight
        state = self.core.init_state(1)
        device = self._device()
        x = torch.zeros(1, self.push_size, dtype=torch.long) if isinstance(self.core, DecoderCore) \
            else torch.zeros(1, self.push_size)
        self.front = self._compile(StepPart(self.graph_core, "encode" if isinstance(self.core, EncoderCore) else "front"),
                                   x.to(device), state)
        decoder = self.decoder
        if decoder is not None:
            with torch.no_grad():
                modulation = decoder.modulation(torch.zeros(1, decoder.global_dim, device=device))
            interpolator = decoder.mel_interpolator
            latent = torch.zeros(1, interpolator.channels, self.latent_per_push, device=device)
            for m, pushes in self.steady_phases().items():
                seen = pushes * self.latent_per_push
                taps = interpolator.step_taps(seen, interpolator.num_outputs(seen), self.latent_per_push, device)
                self.backs[m] = self._compile(StepPart(self.graph_core, "back"), latent, state, (modulation, taps))
        self.build_seconds = time.perf_counter() - start

    def _compile(self, part: StepPart, x: Tensor, state: dict[str, Tensor],
                 extras: tuple[Tensor, ...] = ()) -> _CompiledPart:
        """extras: the back graphs' tensor inputs after the state, (modulation, taps)."""
        part.trace_io(x, state, *extras)
        try:
            runner = self._aot_package(part, x, state, extras) if self.compiler == "aot" \
                else self._inductor(part, x, state, extras)
        except Exception as err:  # no compiler, unsupported op or platform: say so, the caller falls back
            first_line = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
            raise CompileUnavailable(f"{type(err).__name__}: {first_line}") from err
        compiled = _CompiledPart(part, runner, tuple(x.shape), state)
        if self.compiler == "aot":
            with torch.inference_mode():
                compiled.use_flat_calls(runner.loader, x, state, extras)
        return compiled

    def _aot_package(self, part: StepPart, x: Tensor, state: dict[str, Tensor], extras: tuple):
        key = self._key(part, x, state, extras)
        path = self.cache_dir / f"{type(self.core).__name__}-{part.part}-{key}.pt2"
        if not path.is_file():
            frames = f" -> {extras[1].shape[1]} mel frames" if part.part == "back" else ""
            self.log(f"compiling the {part.part} of the {type(self.core).__name__} step for {tuple(x.shape)}{frames} "
                     f"with AOTInductor (once; cached in {self.cache_dir}) ...")
            began = time.perf_counter()
            program = torch.export.export(part, (x, {k: state[k] for k in part.reads}, *extras))
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f"{path.stem}.partial-{os.getpid()}.pt2")
            torch._inductor.aoti_compile_and_package(program, package_path=str(partial))
            os.replace(partial, path)  # atomic: a concurrent or killed build never leaves half a package
            self.log(f"  compiled in {time.perf_counter() - began:.0f} s")
            prune_cache(self.cache_dir)
        os.utime(path)  # most recently used: kept by prune_cache
        return torch._inductor.aoti_load_package(str(path))

    def _inductor(self, part: StepPart, x: Tensor, state: dict[str, Tensor], extras: tuple):
        self.log(f"compiling the {part.part} of the {type(self.core).__name__} step for {tuple(x.shape)} with "
                 "torch.compile ...")
        # Every part of every compiled step shares StepPart.forward's code object, and torch.compile counts
        # its graphs per code object (2 per part: fresh and stepped state) against a limit of 8 by default
        import torch._dynamo.config as dynamo_config

        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 256)
        compiled = torch.compile(part, fullgraph=True, dynamic=False, **self.compile_options)
        # Compile now, on a copy of the state, as streams will call it: in inference mode, first on fresh
        # state entries, then on entries a step made (inference tensors; torch.compile guards on the
        # difference, so each is a graph of its own, the second from torch's cache).
        trial = copy_state(state)
        with torch.inference_mode():
            x, extras = x.clone(), tuple(t.clone() for t in extras)
            for _ in range(2):
                _, new = compiled(x, {k: trial[k] for k in part.reads}, *extras)
                trial.update(new)
        return compiled

    def _key(self, part: StepPart, x: Tensor, state: dict[str, Tensor], extras: tuple) -> str:
        digest = hashlib.sha256(self._build_key.encode())
        shapes = [(k, tuple(state[k].shape), str(state[k].dtype)) for k in part.reads]
        extra_shapes = [(tuple(t.shape), str(t.dtype)) for t in extras]
        for item in (str(x.device), part.part, tuple(x.shape), str(x.dtype), shapes, extra_shapes, part.writes):
            digest.update(repr(item).encode())
        return digest.hexdigest()[:24]

    # --- running -----------------------------------------------------------------------------------

    def interpolation_taps(self, seen: int, emitted: int) -> Tensor:
        """The interpolation's taps for a push, from a cache: a stream's pushes cycle through a few."""
        interpolator = self.decoder.mel_interpolator
        phase = interpolator.taps_phase(seen, emitted)
        taps = self._taps_by_phase.get(phase) if phase is not None else None
        if taps is None:
            taps = interpolator.step_taps(seen, emitted, self.latent_per_push, self._device())
            if phase is not None:
                self._taps_by_phase[phase] = taps
        return taps

    def step(self, x: Tensor, state: dict[str, Tensor], condition: Tensor | None = None):
        if not self.front.fits(x, state) or (self.decoder is not None and condition is None):
            self.counts["eager"] += 1
            return self.core.step(x, state, condition)
        if isinstance(self.core, EncoderCore):
            tokens, _ = self.front(x, state)
            self.counts["compiled"] += 1
            return tokens, state
        decoder = self.decoder
        # the interpolation decides how many mel frames are ready; check it has a graph before running anything
        interpolator = decoder.mel_interpolator
        seen = int(state[interpolator.state_prefix + "seen"])
        emitted = int(state[interpolator.state_prefix + "emitted"])
        m = interpolator.num_outputs(seen + self.latent_per_push) - emitted
        back = self.backs.get(m)
        if m > 0 and (back is None or not back.fits_state(state)):
            self.counts["eager"] += 1  # e.g. the first pushes of a stream
            return self.core.step(x, state, condition)
        (latent,) = self.front(x, state)
        self.counts["compiled"] += 1
        if m == 0:
            mel_latent, state = interpolator.step(latent, state)
            return mel_latent.new_zeros(1, 0), state
        drop = decoder.start_drop(state, m)
        (audio,) = back(latent, state, self.modulation(condition), self.interpolation_taps(seen, emitted))
        return audio[:, drop:], state
