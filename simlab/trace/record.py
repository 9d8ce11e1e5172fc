"""Residual-stream capture during the engine's own cached decoding, and per-node trace files.

Hooks on the model read the residual stream as the normal forward passes compute it (no second
pass): the input to the first block ("embed"), each block's output ("block.i"), and the final
norm's output ("norm"). The vector at position p is the state that predicts token p+1, so a reply
of N tokens has N captured vectors (the last prompt position, then each generated token but the
last); with `prompt` on, every prompt position is kept too. Hooks exist only inside
`Recorder.attached()`, which removes them in `finally`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from simlab.errors import TraceError
from simlab.models.steering import block_list
from simlab.trace.config import TraceConfig
from simlab.trace.files import node_trace_path

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
NORM_NAMES = ("norm", "ln_f", "final_layernorm", "norm_f", "final_norm", "final_layer_norm")
FORMAT = "simlab-trace/1"


@dataclass
class Architecture:
    """Where the residual stream lives in a model, found from its structure."""

    blocks: torch.nn.ModuleList
    norm: torch.nn.Module
    unembed: torch.nn.Module
    softcap: float | None
    block_path: str
    norm_path: str
    hidden: int

    @property
    def layers(self) -> int:
        return len(self.blocks)


def find_architecture(model) -> Architecture:
    base = getattr(model, getattr(model, "base_model_prefix", ""), None) or model.base_model
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    try:
        block_name, blocks = block_list(model)
    except ValueError as exc:
        raise TraceError(str(exc)) from None
    norm_name = next((n for n in NORM_NAMES if isinstance(getattr(base, n, None), torch.nn.Module)), None)
    if norm_name is None:  # the last norm-like child after the blocks
        norms = [n for n, m in base.named_children() if "norm" in type(m).__name__.lower()]
        norm_name = norms[-1] if norms else None
    if norm_name is None:
        raise TraceError(f"{type(model).__name__}: no final norm found after the blocks")
    unembed = model.get_output_embeddings()
    if unembed is None:
        raise TraceError(
            f"{type(model).__name__}: no output embeddings (unembedding) to read the stream with"
        )
    prefix = getattr(model, "base_model_prefix", "")
    return Architecture(
        blocks,
        getattr(base, norm_name),
        unembed,
        getattr(config, "final_logit_softcapping", None),
        f"{prefix}.{block_name}",
        f"{prefix}.{norm_name}",
        int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0)),
    )


@dataclass
class BranchTrace:
    vectors: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # point -> [(d,) or (T, d)]
    positions: list[int] = field(default_factory=list)


class Recorder:
    """Collects the chosen points for each branch of one engine run."""

    def __init__(self, model, config: TraceConfig):
        self.arch = find_architecture(model)
        self.config = config
        self.points = config.points(self.arch.layers)
        self.dtype = DTYPES[config.dtype]
        self._latest: dict[str, torch.Tensor] = {}
        self._prompt_passes: dict[str, list[torch.Tensor]] | None = None  # while the prompt goes in
        self.branches: list[BranchTrace] = []
        self._shared: dict[str, torch.Tensor] = {}
        self._shared_positions: list[int] = []
        self._next_position: list[int] = []

    def bytes_per_token(self) -> int:
        return self.config.bytes_per_token(self.arch.layers, self.arch.hidden)

    @contextmanager
    def attached(self) -> Iterator[Recorder]:
        handles = []

        def keep(name: str):
            def hook(module, args, output=None):
                value = output if output is not None else args[0]
                value = value[0] if isinstance(value, tuple) else value
                self._latest[name] = value.detach()
                if self._prompt_passes is not None:
                    self._prompt_passes.setdefault(name, []).append(value.detach())

            return hook

        try:
            if "embed" in self.points:  # the input of block 0: embeddings as the blocks receive them
                handles.append(self.arch.blocks[0].register_forward_pre_hook(keep("embed")))
            for i, block in enumerate(self.arch.blocks):
                if f"block.{i}" in self.points:
                    handles.append(block.register_forward_hook(keep(f"block.{i}")))
            if "norm" in self.points:
                handles.append(self.arch.norm.register_forward_hook(keep("norm")))
            yield self
        finally:
            for handle in handles:
                handle.remove()
            self._latest.clear()

    def prefill_started(self) -> None:
        """The prompt goes in now, in one or more forward passes (batch 1)."""
        self._prompt_passes = {}

    def prefill_done(self, n: int, prompt_length: int) -> None:
        """After the prompt's forward passes: keep its last position, or all of it."""
        passes, self._prompt_passes = self._prompt_passes or {}, None
        whole = {
            name: torch.cat(passes[name], dim=1) if name in passes else self._latest[name]
            for name in self.points
        }
        keep = slice(None) if self.config.prompt else slice(-1, None)
        self._shared = {name: whole[name][0, keep].to(self.dtype) for name in self.points}  # (T', d)
        first = 0 if self.config.prompt else prompt_length - 1
        self._shared_positions = list(range(first, prompt_length))
        self.branches = [BranchTrace({name: [] for name in self.points}) for _ in range(n)]
        self._next_position = [prompt_length] * n

    def step_done(self, active: list[int]) -> None:
        """After a decode step's forward pass: row r holds branch active[r]'s newest position."""
        for row, branch in enumerate(active):
            trace = self.branches[branch]
            for name in self.points:
                trace.vectors[name].append(self._latest[name][row, -1].to(self.dtype))
            trace.positions.append(self._next_position[branch])
            self._next_position[branch] += 1

    def result(self, branch: int) -> tuple[dict[str, torch.Tensor], list[int]]:
        """Each point as a (P, d) tensor on the CPU, and the P positions."""
        trace = self.branches[branch]
        tensors = {
            name: torch.cat([self._shared[name], *[v.unsqueeze(0) for v in trace.vectors[name]]]).cpu()
            for name in self.points
        }
        return tensors, self._shared_positions + trace.positions


def meaning(point: str) -> str:
    if point == "embed":
        return "input to block 0: the embeddings as the first block receives them"
    if point == "norm":
        return "final norm of the last block's output: what the unembedding reads (already normed)"
    return f"output of block {point.split('.')[1]}: the residual stream after it"


def manifest(
    recorder: Recorder, info, prompt_ids: list[int], token_ids: list[int], positions: list[int], **extra: Any
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "model": info.spec,
        "model_name": info.name,
        "revision": info.revision,
        "architecture": info.architecture,
        "blocks": recorder.arch.block_path,
        "final_norm": recorder.arch.norm_path,
        "dtype": recorder.config.dtype,
        "points": [{"name": p, "meaning": meaning(p)} for p in recorder.points],
        "prompt_length": len(prompt_ids),
        "token_ids": list(prompt_ids) + list(token_ids),
        "positions": positions,
        "note": "the vector at position p is the state that predicts token p+1",
        **extra,
    }


def save(path: Path, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> Path:
    """Write a trace file atomically: a temporary file in the same folder, then a rename."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata={"simlab": json.dumps(info)})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load(path: Path | str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise TraceError(f"no trace at {path}; trace replies with --trace (or /trace on in the REPL)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            info = json.loads((handle.metadata() or {}).get("simlab", "{}"))
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as exc:  # safetensors raises its own error types for a damaged file
        raise TraceError(f"{path}: not a readable trace file ({exc})") from None
    if info.get("format") != FORMAT:
        raise TraceError(f"{path}: not a simlab trace (format {info.get('format')!r})")
    return tensors, info


class Tracer:
    """Trace settings for a command or a REPL: a recorder per run, a file per reply."""

    def __init__(self, config: TraceConfig, say=print):
        self.config = config
        self.say = say
        self.announced = False

    def recorder(self, engine) -> Recorder:
        recorder = Recorder(engine.model, self.config)
        if not self.announced:
            self.announced = True
            per_token = recorder.bytes_per_token()
            self.say(
                f"tracing {len(recorder.points)} points x {recorder.arch.hidden} dims in "
                f"{self.config.dtype}: {per_token:,} bytes ({per_token / 1024:.1f} KiB) per token"
                + ("; the prompt's positions too" if self.config.prompt else "")
            )
        return recorder

    def save(
        self,
        path: Path,
        recorder: Recorder,
        branch: int,
        engine,
        prompt_ids: list[int],
        completion,
        **extra: Any,
    ) -> Path:
        tensors, positions = recorder.result(branch)
        info = manifest(
            recorder,
            engine.info,
            prompt_ids,
            completion.token_ids,
            positions,
            seed=completion.seed,
            finish_reason=completion.finish_reason,
            **extra,
        )
        return save(path, tensors, info)

    def save_node(self, session, node_id: str, recorder: Recorder, run, completion, **extra: Any) -> Path:
        """The trace of one reply of `run`, beside its session."""
        return self.save(
            node_trace_path(session.path, node_id),
            recorder,
            completion.index,
            run.engine,
            run.prompt_ids,
            completion,
            session=session.name,
            node=node_id,
            **extra,
        )
