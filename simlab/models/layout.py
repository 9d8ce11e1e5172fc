"""The weight layout of simlab's kernel (qmatmul.c): a GGUF tensor's codes with 16 rows side by side.

Each step of the kernel's sums reads the next four codes of 16 weight rows (AVX2's 8-bit codes: 8 rows)
in one load and sums them against four inputs of a row, so each output gathers its group's integer sum
in one lane, and the float part runs once per output and scale group. The codes cache keeps this layout.
"""

from __future__ import annotations

import torch

QK = 32


def block_bytes(bits: int) -> int:
    """The bytes of one block of 32 inputs for a group's 16 rows (qmatmul.c's block_bytes)."""
    return 512 if bits == 8 else 256 + 64 * (bits - 4)


def pack(codes: torch.Tensor, scale: torch.Tensor, offset, bits: int, group: int, lib=None) -> tuple:
    """A weight's codes, scales and offsets as its file has them (q4: (N, K/2) bytes, byte j of each
    32 holding code j in its low nibble and code 16 + j in its high one; q5, q6: (N, K) bytes, a code
    each; q8: (N, K) signed bytes; scales (N, K/group), offsets (N, K/32) or None) in the kernel's
    layout (qmatmul.c): rows in groups of 16 side by side, the last group padded with zero codes and
    scales; q5's and q6's low four bits as q4's, their higher bits in planes after each block's.
    Each is (G, ...), the scales and offsets float32. With the kernel's library (`lib`), in one pass
    in C (no copies on the way: a file's first use packs every layer); else with torch's ops (the
    same bytes, tested)."""
    n, k = scale.shape[0], codes.shape[1] * (2 if bits == 4 else 1)
    groups, blocks, per = -(-n // 16), k // QK, QK // group
    shapes = (tuple(scale.shape), None if offset is None else tuple(offset.shape))
    known = bits in (4, 8) or (bits, group) in ((5, QK), (6, 16))
    if (
        not known
        or codes.shape[0] != n
        or k % QK
        or shapes[0] != (n, k // group)
        or shapes[1] not in (None, (n, k // QK))
    ):
        raise ValueError(
            f"codes {tuple(codes.shape)} and scales {tuple(scale.shape)} are not one {bits}-bit weight"
        )
    if lib is not None:
        codes, scale = codes.contiguous(), scale.float().contiguous()
        offset = None if offset is None else offset.float().contiguous()
        out = torch.empty((groups, blocks * block_bytes(bits)), dtype=codes.dtype)
        scales = torch.empty((groups, blocks * per * 16), dtype=torch.float32)
        offsets = None if offset is None else torch.empty((groups, blocks * 16), dtype=torch.float32)
        given, made = (
            [None if t is None else t.data_ptr() for t in ts]
            for ts in ((codes, scale, offset), (out, scales, offsets))
        )
        lib.simlab_pack(bits, group, *given, n, k, *made)
        return out, scales, offsets
    if bits == 4:
        halves = codes.reshape(n, blocks, QK // 2)
        codes = torch.cat([halves & 15, halves >> 4], dim=-1)
    pad = groups * 16 - n

    def rows(t: torch.Tensor) -> torch.Tensor:  # padded to whole groups, (G, 16, ...)
        t = torch.cat([t, t.new_zeros((pad, *t.shape[1:]))]) if pad else t
        return t.reshape(groups, 16, *t.shape[1:])

    steps = rows(codes.reshape(n, blocks, 8, 4)).permute(0, 2, 3, 1, 4)  # (G, blocks, step, row, 4)
    if bits < 8:
        low = steps & 15
        nibbles = (low[:, :, :, :8] | (low[:, :, :, 8:] << 4)).reshape(groups, blocks, -1)
        wide, weights = steps.int(), torch.arange(8, dtype=torch.int32)
        planes = [  # bit 4 + p of the 64 positions of a step, eight to a byte
            (((wide >> (4 + p)) & 1).reshape(groups, blocks, 8, 1, 8, 8) << weights).sum(-1)
            for p in range(bits - 4)
        ]  # (each step's planes one after another: cat on the plane dimension)
        high = [torch.cat(planes, dim=3).to(codes.dtype).reshape(groups, blocks, -1)] if planes else []
        steps = torch.cat([nibbles, *high], dim=-1)
    scales = rows(scale.float().reshape(n, blocks, per)).permute(0, 2, 3, 1)
    offsets = None if offset is None else rows(offset.float()).permute(0, 2, 1)
    return tuple(None if t is None else t.contiguous().reshape(groups, -1) for t in (steps, scales, offsets))


def unpack(layer) -> tuple:
    """`pack` undone: a `native.NativeLinear`'s codes, scales and offsets as its file has them (the
    scales and offsets float32)."""
    bits, group, n, k = layer.layout.tolist()
    groups, blocks, per = -(-n // 16), k // QK, QK // group
    codes = layer.codes.reshape(groups, blocks, block_bytes(bits))
    if bits == 8:
        steps = codes.reshape(groups, blocks, 8, 16, 4)
    else:
        nibbles = codes[..., :256].reshape(groups, blocks, 8, 8, 4)
        steps = torch.cat([nibbles & 15, nibbles >> 4], dim=3)  # (G, blocks, step, row, 4)
        high = codes[..., 256:].reshape(groups, blocks, 8, bits - 4, 8).int()
        for p in range(bits - 4):
            bit = (high[:, :, :, p, :, None] >> torch.arange(8, dtype=torch.int32)) & 1  # (.., byte, bit)
            steps = steps | (bit.reshape(groups, blocks, 8, 16, 4) << (4 + p)).to(steps.dtype)
    codes = steps.permute(0, 3, 1, 2, 4).reshape(groups * 16, blocks, QK)[:n]
    if bits == 4:
        codes = codes[..., : QK // 2] | (codes[..., QK // 2 :] << 4)
    scale, offset = (_floats(t) for t in (layer.scale, layer.offset))
    scale = scale.reshape(groups, blocks, per, 16).permute(0, 3, 1, 2).reshape(groups * 16, -1)[:n]
    if offset is not None:
        offset = offset.reshape(groups, blocks, 16).permute(0, 2, 1).reshape(groups * 16, -1)[:n]
    return (
        codes.reshape(n, -1).contiguous(),
        scale.contiguous(),
        None if offset is None else offset.contiguous(),
    )


def _floats(t: torch.Tensor | None) -> torch.Tensor | None:
    """Scales or offsets as float32 (float16 ones are held as their int16 bits)."""
    if t is None:
        return None
    return t.view(torch.float16).float() if t.dtype == torch.int16 else t.float()
