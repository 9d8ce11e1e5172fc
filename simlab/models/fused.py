"""The modules that stand in a model whose products are simlab's kernel (models.lean puts them
there): several layers that read one input as one product (`_Fused`, `FusedPart`), simlab's RMS
norm (`FusedRMSNorm`) and an activation applied row by row (`RowActivation`). models.blocks reads
them too."""

from __future__ import annotations

import torch

from simlab.models import native
from simlab.models.native import NativeGroup, NativeLinear


class _Fused:
    """Several layers that read the same input, as one product: the first call computes every
    member's output, the others take theirs while the input is the very same unchanged tensor."""

    def __init__(self, layer: NativeGroup, sizes: list[int]):
        self.layer, self.sizes = layer, sizes
        # (input, its version, the outputs), replaced as one object: a forward in another thread
        # never sees one input paired with another's outputs
        self.last: tuple | None = None

    def output(self, x: torch.Tensor, index: int) -> torch.Tensor:
        version = None if x.is_inference() else x._version  # (inference tensors keep no count)
        last = self.last
        if last is None or last[0] is not x or last[1] != version:
            last = (x, version, self.layer.forward(x).split(self.sizes, dim=-1))
            self.last = last
        if index == len(self.sizes) - 1 and self.last is last:  # the last member read its part
            self.last = None  # let the input go
        return last[2][index]


class FusedPart(torch.nn.Module):
    """One member of a `_Fused` group, in place of the layer it was: its part of the product, plus
    its own bias (Qwen2's q/k/v), added as the layer added it."""

    def __init__(self, fused: _Fused, index: int, layer: NativeLinear):
        super().__init__()
        self._fused, self.index = fused, index
        self.out_features, self.in_features = layer.out_features, layer.in_features
        self.bias = layer.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._fused.output(x, self.index)
        return y if self.bias is None else y + self.bias


class FusedRMSNorm(torch.nn.Module):
    """The norm in one call, in place of one written as five ops (pow, mean, add, rsqrt, mul) plus
    the weight's: simlab's own (`native.rms_norm`, the squares summed in double: the same bits on
    every instruction set) for float32 on the CPU, else `torch.nn.functional.rms_norm`. It stands
    only in models whose products are simlab's kernel, so prefill, decode and traced runs all
    read it."""

    def __init__(self, norm: torch.nn.Module, gemma: bool):
        super().__init__()
        self.weight = norm.weight  # kept as it was, for state dicts and readers of .weight
        self.eps = float(getattr(norm, "eps", getattr(norm, "variance_epsilon", 1e-6)))
        self.gemma = gemma
        self.shape = (norm.weight.shape[-1],)
        self._scale: tuple | None = None  # (weight's version, 1 + weight in float32), made once

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale()
        if x.dtype == torch.float32 and x.device.type == "cpu" and scale.dtype == torch.float32:
            if native.library() is not None:
                return native.rms_norm(x, scale, self.eps)
        x32 = x if x.dtype == torch.float32 else x.float()
        if self.gemma:
            out = torch.nn.functional.rms_norm(x32, self.shape, scale, self.eps)
            return out if out.dtype == x.dtype else out.type_as(x)
        out = torch.nn.functional.rms_norm(x32, self.shape, None, self.eps)
        return self.weight * (out if out.dtype == x.dtype else out.to(x.dtype))

    def scale(self) -> torch.Tensor:
        """What the normalised values are multiplied by: Gemma's 1 + weight (made once), else the weight."""
        return self._gemma_scale() if self.gemma else self.weight

    def _gemma_scale(self) -> torch.Tensor:
        version = self.weight._version
        if self._scale is None or self._scale[0] != version:
            self._scale = (version, 1.0 + self.weight.float())
        return self._scale[1]


class RowActivation(torch.nn.Module):
    """An activation applied to each batch row on its own. torch splits an elementwise op of 32,768
    values or more across threads at points that are not a multiple of its vector width, and the
    values at a split go through the scalar function, which rounds tanh or exp otherwise (measured:
    GELU-tanh on (7, 10240) gave 2 of 7 rows other bits than alone); a row alone is split as it is
    alone. Under 16,384 values (the least of torch's grains, GELU's: one serial pass on any number of
    threads) with rows a multiple of 64 long, the batch goes in one call: its vectors fall on each
    row's values as they do alone (tested at several thread counts)."""

    def __init__(self, act: torch.nn.Module):
        super().__init__()
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[0] == 1 or (x.numel() < 16384 and x.shape[-1] % 64 == 0):
            return self.act(x)
        return torch.cat([self.act(x[i : i + 1]) for i in range(x.shape[0])])
