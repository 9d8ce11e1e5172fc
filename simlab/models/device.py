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
    """Resolve 'auto': bf16 on GPUs that support it, fp16 on other GPUs and mps, fp32 on cpu."""
    if requested != "auto":
        return _DTYPES[requested]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
