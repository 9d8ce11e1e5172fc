"""Vectors saved by steering-vectors (steering-vectors/steering-vectors), which has no file format of
its own: its users `torch.save` either the SteeringVector or its `layer_activations` (a dict of
layer number -> tensor). Both are read here without running pickled code (torch.load's
weights_only; the SteeringVector class is allowed only where the steering_vectors package is
installed). Its layer N with layer_type "decoder_block" is the output of the model's block N, where
simlab and llama.cpp add direction.N, so the numbers carry over; any other hook point is refused,
since the same vector added there has another effect."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simlab.errors import SteerError
from simlab.steer.vector import SteerVector

SUFFIXES = (".pt", ".pth")


def read_torch(path: Path) -> tuple[SteerVector, list[str]]:
    """The vector a steering-vectors save holds, and what was left out of it (block 0: llama.cpp's
    file has no direction.0)."""
    import torch

    where = str(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SteerError(f"{where}: no such file") from None
    except Exception as exc:  # weights_only refuses a pickled class it was not told of
        data = _steering_vector(path, exc)
    layer_type = "decoder_block"
    if hasattr(data, "layer_activations"):
        layer_type, data = getattr(data, "layer_type", layer_type), data.layer_activations
    if layer_type != "decoder_block":
        raise SteerError(
            f"{where}: a steering-vectors vector for {layer_type!r} outputs; simlab (as llama.cpp) adds at "
            "each block's output (layer_type 'decoder_block'), where the same vector has another effect"
        )
    if not isinstance(data, dict) or not data or not all(isinstance(k, int) for k in data):
        raise SteerError(
            f"{where}: not a steering-vectors save (a SteeringVector, or its layer_activations: a dict "
            "of layer number -> tensor, as torch.save writes them)"
        )
    directions, left = {}, []
    for layer, tensor in sorted(data.items()):
        try:
            value = np.asarray(
                tensor.detach().float().cpu().numpy() if hasattr(tensor, "detach") else tensor, np.float32
            )
        except (TypeError, ValueError, RuntimeError):
            raise SteerError(f"{where}: layer {layer} is not a vector of numbers") from None
        if value.ndim != 1 or not np.isfinite(value).all() or layer < 0:
            raise SteerError(f"{where}: layer {layer} is not one finite vector ({value.shape})")
        if layer == 0:
            left.append("block 0 (llama.cpp's control-vector file has no direction.0)")
            continue
        directions[layer] = value.astype(np.float32)
    if not directions:
        raise SteerError(f"{where}: only block 0, which a control-vector file cannot hold")
    if len({v.shape[0] for v in directions.values()}) > 1:
        raise SteerError(f"{where}: its layers' vectors differ in width")
    meta = {"source": "steering-vectors", "imported_from": path.name}
    return SteerVector(directions, meta), left


def _steering_vector(path: Path, error: Exception):
    """A pickled SteeringVector, read with its class allowed (the package must be installed)."""
    import torch

    if "global" not in str(error).lower():  # (weights_only names the class it will not build)
        raise SteerError(f"{path}: not a file torch.load reads ({type(error).__name__})") from None
    try:
        from steering_vectors import SteeringVector
    except ImportError:
        raise SteerError(
            f"{path}: a pickled object torch will not read without its class ({type(error).__name__}); "
            "install steering-vectors to read a saved SteeringVector, or save its layer_activations: "
            "torch.save(vector.layer_activations, FILE)"
        ) from None
    try:
        with torch.serialization.safe_globals([SteeringVector]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SteerError(f"{path}: not a file torch.load reads ({type(exc).__name__})") from None
