"""A GGUF model with `--weights gguf` built straight from its cached codes: no float copy of the
weights is read, so the model is ready in about the time the codes take to read, and the process
never holds more than the codes and the few float tensors (norms) that are not quantized.

The model is made from its config with uninitialised (untouched) parameters; the norms and any other
float tensors come from the converted folder's float32 files by name, every linear layer and the
tied embedding from the cache. Anything not accounted for sends the caller back to the full load.
A Gemma 3 text model (the embedded one) is simlab's own `models.gemma3`, the same modules without
transformers' modeling stack (about 1.2 s and 130 MiB less at start-up); others are transformers'.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from simlab.models.info import LoadedModel


def load(folder: Path, stored_path: Path, *, spec: str, name: str, revision: str, own_cache: bool):
    """The model as `load._with_weights` builds it, or None when this way cannot build all of it."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from simlab.models import gemma3, heap, hub, lean, quant

    hub.quiet_transformers()
    files = sorted(folder.glob("*.safetensors"))
    if not files or not stored_path.is_file():
        return None
    # the tokenizer first, as from_pretrained does: its big allocations then come before
    # the codes' pages, which keeps the peak lower (measured on the embedded model: 915 -> 736 MiB)
    tokenizer = hub.load_tokenizer(
        str(folder), spec=spec, offline=True, trust_remote_code=False, own_cache=own_cache
    )
    heap.give_back()  # the parse's scratch, if it ran here
    try:
        stored = load_file(str(stored_path))
    except Exception:  # noqa: BLE001 - a damaged cache: the full load rebuilds it
        return None
    model = gemma3.build(folder) if gemma3.supports(folder) else _transformers_model(folder)
    replaced = {key.rsplit(".", 1)[0] + ".weight" for key in stored if "." in key}
    if "embedding.shared" in stored:
        replaced.add(_name_of(model, model.get_input_embeddings().weight))
    wanted = {n for n, _ in model.named_parameters()} - replaced
    found: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as reader:
            found.update({key: reader.get_tensor(key) for key in reader.keys() if key in wanted})
    if set(found) != wanted:
        return None  # a float tensor this way would leave uninitialised: load it all instead
    model.load_state_dict(found, strict=False, assign=True)
    model.requires_grad_(False)
    info = hub.describe(model, spec=spec, name=name, revision=revision, source=str(folder), from_cache=True)
    quant.quantize(model, "gguf", stored)
    del stored  # each layer holds its own tensors now (fused groups read them where they lie)
    lean.on_the_kernel(model)
    return LoadedModel(model, tokenizer, replace(info, weights="gguf"))


def _transformers_model(folder: Path) -> torch.nn.Module:
    """transformers' own model for the config, its parameters uninitialised (untouched)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    config = AutoConfig.from_pretrained(folder)
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if getattr(config.get_text_config(), "tie_word_embeddings", False):
        model.tie_weights()  # as from_pretrained does: one table, counted once
    return model.eval().requires_grad_(False)


def _name_of(model: torch.nn.Module, tensor: torch.Tensor) -> str:
    return next(n for n, p in model.named_parameters() if p is tensor)
