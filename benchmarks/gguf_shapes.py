"""GGUF files in the shapes of released base models, with random weights, for the benchmarks.

Each shape is a real model's hidden size, layers, heads, KV heads, FFN size, vocabulary size and
tied or untied unembedding (from the models' config.json files). The weights are random (normal,
std 0.02; norms one), the tokenizer a byte-level BPE of the model's vocabulary size whose merges are
made up (every byte, then byte pairs, then pair-and-byte; Gemma: a sentencepiece vocabulary, its
pieces scored by their place), so llama.cpp and transformers both read the file as they read a
real one. A Gemma 2 file carries what llama.cpp's converter writes: the key length, both softcaps,
the sliding window and the norms after attention and after the MLP. The file is written in
float16 with `gguf`'s writer and then quantized by llama.cpp's own `llama-quantize` when one is
given (K-quants and the _M mixes, as released files are made); without it only the types `gguf`'s
quantizer knows (Q4_0, Q5_0, Q8_0).

    python benchmarks/gguf_shapes.py SHAPE QUANT [--out DIR] [--quantize PATH/TO/llama-quantize]
"""

from __future__ import annotations

import argparse
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Shape:
    arch: str  # GGUF architecture
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    tied: bool
    rope_theta: float = 10_000.0
    qkv_bias: bool = False
    eps: float = 1e-5
    head_dim: int | None = None  # hidden / heads unless the model says otherwise (Gemma)
    window: int | None = None  # Gemma 2's sliding window (every other layer, from the first)


SHAPES = {
    # HuggingFaceTB/SmolLM2-135M
    "smollm2-135m": Shape("llama", 576, 30, 9, 3, 1536, 49_152, True, 100_000.0),
    # HuggingFaceTB/SmolLM2-360M
    "smollm2-360m": Shape("llama", 960, 32, 15, 5, 2560, 49_152, True, 100_000.0),
    # Qwen/Qwen2.5-0.5B
    "qwen2.5-0.5b": Shape("qwen2", 896, 24, 14, 2, 4864, 151_936, True, 1_000_000.0, True, 1e-6),
    # TinyLlama/TinyLlama_v1.1
    "tinyllama-1.1b": Shape("llama", 2048, 22, 32, 4, 5632, 32_000, False),
    # meta-llama/Llama-3.2-1B
    "llama3.2-1b": Shape("llama", 2048, 16, 32, 8, 8192, 128_256, True, 500_000.0),
    # google/gemma-2-2b (attention scores capped at 50, logits at 30, as every Gemma 2)
    "gemma2-2b": Shape("gemma2", 2304, 26, 8, 4, 9216, 256_000, True, eps=1e-6, head_dim=256, window=4096),
}

LEGACY = {"Q4_0", "Q5_0", "Q8_0", "F16"}  # what gguf's own quantizer writes


def vocabulary(size: int) -> tuple[list[str], list[str]]:
    """`size` byte-level BPE tokens (the last one `<|endoftext|>`) and the merges that make them."""
    from tokenizers import pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    alphabet = sorted(alphabet, key=ord)
    tokens, merges = list(alphabet), []
    want = size - 1
    pairs = []
    for a in alphabet:
        for b in alphabet:
            if len(tokens) == want:
                break
            tokens.append(a + b)
            merges.append(f"{a} {b}")
            pairs.append(a + b)
    for pair in pairs:
        for c in alphabet:
            if len(tokens) == want:
                break
            tokens.append(pair + c)
            merges.append(f"{pair} {c}")
        if len(tokens) == want:
            break
    assert len(tokens) == want, "a vocabulary larger than bytes, pairs and pair-and-byte"
    return [*tokens, "<|endoftext|>"], merges


def write_sentencepiece(writer, size: int) -> None:
    """A sentencepiece vocabulary as Gemma files have it (`<pad>`, `<eos>`, `<bos>`, `<unk>`, the
    256 byte tokens, then pieces best-first, scored by their place), of `size` tokens: printable
    characters and the word mark, then their pairs, then triples. transformers rebuilds the merges
    from the order, llama.cpp merges by the scores: the same order."""
    import itertools

    chars = ["\u2581"] + [chr(c) for c in range(33, 127)]
    special = ["<pad>", "<eos>", "<bos>", "<unk>"]
    tokens = special + [f"<0x{b:02X}>" for b in range(256)] + chars
    types = [3, 3, 3, 2] + [6] * 256 + [1] * len(chars)
    for n in (2, 3):
        for combo in itertools.product(chars, repeat=n):
            if len(tokens) == size:
                break
            tokens.append("".join(combo))
            types.append(1)
    assert len(tokens) == size, "a vocabulary larger than characters, pairs and triples"
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores([-float(i) for i in range(size)])
    writer.add_token_types(types)
    writer.add_pad_token_id(0)
    writer.add_eos_token_id(1)
    writer.add_bos_token_id(2)
    writer.add_unk_token_id(3)
    writer.add_add_bos_token(True)


def write_f16(name: str, shape: Shape, path: Path, seed: int = 0) -> None:
    """The shape's file in float16 (norms and biases in float32, as converters write them)."""
    import gguf

    rng = np.random.default_rng(seed)
    head_dim = shape.head_dim or shape.hidden // shape.heads
    writer = gguf.GGUFWriter(str(path), shape.arch)
    writer.add_name(f"random-{name}")
    writer.add_context_length(32_768)
    writer.add_embedding_length(shape.hidden)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.ffn)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(shape.rope_theta)
    writer.add_layer_norm_rms_eps(shape.eps)
    gemma = shape.arch == "gemma2"
    if gemma:  # as llama.cpp's converter writes a Gemma 2
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_attn_logit_softcapping(50.0)
        writer.add_final_logit_softcapping(30.0)
        writer.add_sliding_window(shape.window or 4096)
    writer.add_vocab_size(shape.vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    if gemma:
        write_sentencepiece(writer, shape.vocab)
    else:
        tokens, merges = vocabulary(shape.vocab)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_types([1] * (len(tokens) - 1) + [3])
        writer.add_token_merges(merges)
        writer.add_bos_token_id(len(tokens) - 1)
        writer.add_eos_token_id(len(tokens) - 1)
        writer.add_add_bos_token(False)

    def matrix(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    kv, width = shape.kv_heads * head_dim, shape.heads * head_dim
    writer.add_tensor("token_embd.weight", matrix(shape.vocab, shape.hidden))
    for i in range(shape.layers):
        blk = f"blk.{i}."
        writer.add_tensor(blk + "attn_norm.weight", ones(shape.hidden))
        for part, rows in (("attn_q", width), ("attn_k", kv), ("attn_v", kv)):
            writer.add_tensor(blk + part + ".weight", matrix(rows, shape.hidden))
            if shape.qkv_bias:
                writer.add_tensor(blk + part + ".bias", rng.standard_normal(rows, dtype=np.float32) * 0.02)
        writer.add_tensor(blk + "attn_output.weight", matrix(shape.hidden, width))
        if gemma:  # Gemma 2's norms after attention and after the MLP
            writer.add_tensor(blk + "post_attention_norm.weight", ones(shape.hidden))
        writer.add_tensor(blk + "ffn_norm.weight", ones(shape.hidden))
        writer.add_tensor(blk + "ffn_gate.weight", matrix(shape.ffn, shape.hidden))
        writer.add_tensor(blk + "ffn_up.weight", matrix(shape.ffn, shape.hidden))
        writer.add_tensor(blk + "ffn_down.weight", matrix(shape.hidden, shape.ffn))
        if gemma:
            writer.add_tensor(blk + "post_ffw_norm.weight", ones(shape.hidden))
    writer.add_tensor("output_norm.weight", ones(shape.hidden))
    if not shape.tied:
        writer.add_tensor("output.weight", matrix(shape.vocab, shape.hidden))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def quantize_legacy(source: Path, quant: str, target: Path) -> None:
    """Rewrite a float16 file's matrices in a type `gguf`'s quantizer knows (norms, biases stay)."""
    import gguf
    from gguf.quants import quantize

    reader = gguf.GGUFReader(str(source))
    arch = str(bytes(reader.fields["general.architecture"].parts[-1]), "utf-8")
    writer = gguf.GGUFWriter(str(target), arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        value = field.contents()
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(field.name, value, kind, sub_type=field.types[-1])
        else:
            writer.add_key_value(field.name, value, kind)
    qtype = gguf.GGMLQuantizationType[quant]
    for tensor in reader.tensors:
        data = np.asarray(tensor.data)
        if data.ndim == 2 and quant != "F16":
            writer.add_tensor(tensor.name, quantize(data.astype(np.float32), qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(tensor.name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def make(
    name: str, quant: str, out: Path, llama_quantize: str | None = None, shapes: dict | None = None
) -> Path:
    """The file for this shape (in `shapes`, else SHAPES) and quant type, written once in `out`."""
    shape = (shapes or SHAPES)[name]
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{name}-{quant}.gguf"
    if target.exists():
        return target
    f16 = out / f"{name}-F16.gguf"
    if not f16.exists():
        write_f16(name, shape, f16.with_suffix(".part"))
        os.replace(f16.with_suffix(".part"), f16)
    if quant == "F16":
        return f16
    partial = target.with_suffix(".part")
    if llama_quantize:
        subprocess.run([llama_quantize, str(f16), str(partial), quant], check=True, capture_output=True)
    elif quant in LEGACY:
        quantize_legacy(f16, quant, partial)
    else:
        raise SystemExit(f"{quant} needs llama.cpp's llama-quantize: pass --quantize PATH")
    os.replace(partial, target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("quant", help="Q4_0, Q5_0, Q8_0, F16, or with --quantize any of llama.cpp's")
    parser.add_argument("--out", type=Path, default=Path.home() / ".cache" / "simlab-bench")
    parser.add_argument("--quantize", help="path to llama.cpp's llama-quantize")
    args = parser.parse_args()
    print(make(args.shape, args.quant, args.out, args.quantize))


if __name__ == "__main__":
    main()
