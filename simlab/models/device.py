"""Device and dtype selection: auto picks cuda, then mps, then cpu; dtype follows the device."""

from __future__ import annotations

import torch

from simlab.errors import ConfigError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(requested: str = "auto") -> torch.device:
    """Resolve 'auto' and check that an explicit device exists here."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {requested}: no CUDA GPU is visible here; use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {requested}: only {torch.cuda.device_count()} CUDA device(s) here; use cuda:0..."
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {requested}: MPS is not available here; use --device cpu or auto")
    return device


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    """Resolve 'auto': bf16 on GPUs that support it, fp16 on other GPUs and mps; on a CPU, bf16
    where it measures faster than fp32 (decoding reads every weight per token, so half the bytes
    usually wins, but not on CPUs that emulate bf16 slowly), else fp32."""
    if requested != "auto":
        return _DTYPES[requested]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16 if cpu_prefers_bfloat16() else torch.float32


def cpu_prefers_bfloat16() -> bool:
    """A decode-shaped product (1 x 1024 by 1024 x 16384) timed in both dtypes, once per CPU and
    torch version; the answer is cached in the simlab home."""
    import json
    import platform
    import time

    from simlab.config import simlab_home

    key = f"{_cpu_name()}|{platform.machine()}|torch {torch.__version__}|{torch.get_num_threads()} threads"
    path = simlab_home() / "cpu-dtype.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return bool(known[key]["bfloat16"])
    times = {}
    with torch.inference_mode():
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(1, 1024, dtype=dtype)
            w = torch.randn(16384, 1024, dtype=dtype)
            for _ in range(3):
                torch.nn.functional.linear(x, w)
            best = float("inf")
            for _ in range(7):
                started = time.perf_counter()
                torch.nn.functional.linear(x, w)
                best = min(best, time.perf_counter() - started)
            times[dtype_name(dtype)] = best
    faster = times["bfloat16"] < 0.75 * times["float32"]
    known[key] = {"bfloat16": faster, "seconds": times}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(known, indent=1))
    except OSError:
        pass  # measured again next time
    return faster


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
