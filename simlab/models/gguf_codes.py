"""A GGUF's first use on simlab's kernel, read straight from the file: its codes, and beside its config
and tokenizer the few float tensors the kernel does not replace (norms, biases, an untied embedding).

The full conversion (`models.gguf.convert`) dequantizes every weight to float32 through transformers,
which holds the whole float model in memory, and more while it saves it: 5.3 GB at the embedded
model's first start, and more than a 24 GB machine has for a 3B file. The kernel reads none of those
floats. This reads each tensor as transformers' GGUF loader does (its name map and its
architecture's tensor processor, the same one `models.gguf_groups.by_module` asks for the rows'
order): the quantized ones become codes a slice of rows at a time, and only the others are
dequantized. A file this cannot take whole (a weight in a format the kernel does not read, an
architecture transformers loads another way, rows whose order its processor does not just permute)
goes the full way instead, as before.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from simlab.models import gguf

CODES = "codes"  # the marker's "weights" for a folder of this kind (no float copy of the weights)


def build(
    spec: str, folder: Path, codes_path_of: Callable[[str], Path], say: Callable[[str], None], again=False
) -> str | None:
    """Write `folder` (config, tokenizer, float tensors) and the codes cache at `codes_path_of(sha256)`;
    the GGUF's sha256, or None when this file is to be converted the full way. `again`: the folder
    was written before and its codes are not there (a new layout, or a cache removed)."""
    from safetensors.torch import save_file

    if spec != "embedded":
        gguf.weights_in(Path(spec).expanduser().resolve(), spec)  # a cut or foreign file: one line
    from simlab.models import gguf_groups

    with gguf.source_file(spec) as path:
        try:
            listed = gguf_groups.file_tensors(path)[1]
            processor = _processor(path, listed)
        except Exception:  # noqa: BLE001 - metadata transformers' reader cannot read: the full way says it
            processor = None
        if processor is None:
            return None
        what = "the embedded model (Gemma 3 270M base)" if spec == "embedded" else spec
        if again:
            say(
                f"Reading {what} into its cache again (this simlab keeps its codes in a new layout, "
                "or the cache was removed); once."
            )
        elif spec == "embedded":
            say(f"First start: reading {what} into a cache; once, about 30 s.")
        else:
            say(
                f"First use of {spec}: reading its codes into a cache "
                "(1.0-1.35x the file's size, more for an untied model); once."
            )
        if spec == "embedded":
            sha = gguf.embedded_sha256()
        else:
            with gguf.stage("hashing the GGUF", say):
                sha = gguf.sha256_of(path)
        work = folder.parent / f".reading-{folder.name}-{os.getpid()}"
        gguf.discard(work)
        work.mkdir(parents=True)
        try:
            floats, codes = _contents(path, listed, processor, work, say)
            if codes is None:
                return None
            save_codes(codes, codes_path_of(sha), say)
            save_file(floats, str(work / "model.safetensors"))
            source = spec if spec == "embedded" else str(Path(spec).expanduser().resolve())
            record = {"format": gguf.CACHE_FORMAT, "weights": CODES, "gguf_sha256": sha, "source": source}
            (work / gguf.MARKER).write_text(json.dumps(record, indent=2), encoding="utf-8")
            _move(work, folder)
        except Exception:  # noqa: BLE001 - what transformers cannot read this way: the full way says it
            return None
        finally:
            gguf.discard(work)
    return sha


def _move(work: Path, folder: Path) -> None:
    """`work` becomes `folder`, unless another process has written a complete one meanwhile (a
    float32 conversion holds all a codes folder does, and a process may be loading it): that one
    stays. Only a folder left half-written (no marker) is replaced."""
    if gguf.read_marker(folder) is None:
        gguf.discard(folder)
    try:
        os.rename(work, folder)
    except OSError:
        if gguf.read_marker(folder) is None:
            raise


def _processor(path: Path, listed: list):
    """transformers' tensor processor for the file, or None when the file goes the full way: an
    architecture its loader reads another way, a processor that does more than move rows by a
    tensor's name (Llama's q and k) or change norms, or a tensor format the codes are not read from."""
    from transformers.integrations.gguf import GGUF_ARCHS, read_gguf_metadata
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        Gemma2TensorProcessor,
        LlamaTensorProcessor,
        TensorProcessor,
    )

    arch = read_gguf_metadata(str(path))[0].get("general.architecture")
    processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)
    simple = processor in (TensorProcessor, LlamaTensorProcessor, Gemma2TensorProcessor)
    return processor if simple and arch not in GGUF_ARCHS and _all_read(listed) else None


def _all_read(listed: list) -> bool:
    """Whether every tensor is in a format the codes are read from, or float (norms, biases): a
    float16 file, or one holding Q3_K or IQ formats, is converted the full way, told so at once."""
    from gguf import GGMLQuantizationType as Kind

    from simlab.models import gguf_groups

    floats = (Kind.F32, Kind.F16, Kind.BF16)
    if any(t.tensor_type not in floats and t.tensor_type.name not in gguf_groups.FORMATS for t in listed):
        return False
    return any(t.tensor_type not in floats for t in listed)


def _contents(path: Path, listed: list, processor_class, work: Path, say) -> tuple[dict, dict | None]:
    """(the float tensors by name, the codes as `quant.quantize` returns them), the config and
    tokenizer saved into `work`; codes None when a weight cannot be read as codes. `listed`: the
    file's tensors (`gguf_groups.file_tensors`)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from simlab.models import gguf_groups, quant
    from simlab.models.hub import quiet_transformers

    quiet_transformers()
    where, name = str(path.parent), path.name
    with gguf.one_reader_per_file(header_only=True), gguf.no_progress_bars():
        with gguf.stage("reading the GGUF metadata and building the tokenizer", say):
            AutoTokenizer.from_pretrained(where, gguf_file=name).save_pretrained(work)
            config = AutoConfig.from_pretrained(where, gguf_file=name, **gguf.llama_cpp_reads(path))
            parsed = loader_config(path)  # (the same parse: inside its context)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tied = bool(getattr(config.get_text_config(), "tie_word_embeddings", False))
    if tied:
        model.tie_weights()  # as from_pretrained does
    config.architectures, config.dtype = [type(model).__name__], torch.float32  # as it saves them
    config.save_pretrained(work)
    if model.can_generate():
        model.generation_config.save_pretrained(work)
    if tied == any(t.name == "output.weight" for t in listed):
        return {}, None  # a tied model with its own unembedding, or an untied one without: as transformers
    with gguf.stage("reading the GGUF's own codes for simlab's kernel", say):
        found = gguf_groups.by_module(path, model, parsed, strict=True)
        try:
            codes = quant.quantize(
                model,
                "gguf",
                groups_of=lambda key: _groups(*found[key]) if key in found else None,
                trust_file=True,
            )
            floats = _floats(listed, model, processor_class(config=parsed))
        except LookupError:
            return {}, None  # a weight the kernel does not read from this file, or one it lacks
    return floats, codes


def loader_config(path) -> dict:
    """The config transformers' GGUF loader gives its tensor processors: the file's own keys, without
    the model config's defaults (Llama's q and k rows are moved only where the file gives its
    key-value heads)."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    with gguf.one_reader_per_file(header_only=True):
        return load_gguf_checkpoint(str(path), return_tensors=False)["config"]


def _groups(tensor, order):
    """A tensor's groups, its pages of the file then given back (the file is not held whole)."""
    from simlab.models import gguf_groups

    try:
        return gguf_groups.read(tensor, order)
    finally:
        getattr(tensor, "release", lambda: None)()


def _floats(listed: list, model: torch.nn.Module, processor) -> dict[str, torch.Tensor]:
    """The model's parameters the codes left unset, each dequantized and processed as transformers'
    GGUF loader does (`load_gguf_checkpoint`: float32, its processor, its name map)."""
    import numpy as np
    from gguf.quants import dequantize
    from transformers.modeling_gguf_pytorch_utils import TensorProcessor, get_gguf_hf_weights_map

    wanted = {n: p for n, p in model.named_parameters() if p.is_meta}
    to_file = {hf: name for name, hf in get_gguf_hf_weights_map(model, TensorProcessor()).items()}
    tensors = {t.name: t for t in listed}
    out = {}
    for hf, param in wanted.items():
        tensor = tensors.get(to_file.get(hf, ""))
        if tensor is None:
            raise LookupError(f"{hf} is not in the file")
        weights = processor.process(
            weights=dequantize(tensor.data, tensor.tensor_type), name=tensor.name
        ).weights
        out[hf] = torch.from_numpy(np.copy(weights)).to(torch.float32)
        if out[hf].shape != param.shape:
            raise LookupError(f"{hf}: {tuple(out[hf].shape)} in the file, {tuple(param.shape)} in the model")
    return out


def save_codes(
    tensors: dict[str, torch.Tensor], path: Path, say: Callable[[str], None], what: str = "gguf"
) -> None:
    """Quantized layers' cache, written whole or not at all; a failure only costs the next start time."""
    import contextlib

    from safetensors.torch import save_file

    partial = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(partial))
        os.replace(partial, path)
    except OSError as exc:
        say(f"note: could not cache the {what} weights in {path.parent} ({exc.strerror or exc})")
        with contextlib.suppress(OSError):
            partial.unlink()
