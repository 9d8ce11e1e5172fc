"""Where a prompt's sliding-window layers keep their past beyond the window (engine.kvcache): a
temporary file in the simlab home, the very bytes, read back only when a later prompt is cut back
further than memory holds."""

from __future__ import annotations

import contextlib
import os
import tempfile
import weakref
from pathlib import Path
from typing import IO

import torch

from simlab.config import simlab_home

_FOLDER: list[Path | None] = [None]  # where spills go; None: the simlab home's spill folder
_MAX_OPEN = 256  # spill files open at once, at most (each holds a descriptor; past it: memory)
_OPEN: weakref.WeakSet = weakref.WeakSet()  # the spills whose file is open


def _open() -> IO[bytes]:
    """A new spill file, in the simlab home (not the system's temporary folder: often a tmpfs, which
    would keep it in memory), unnamed where the system allows, so nothing stays behind. OSError past
    _MAX_OPEN files (a sweep of long prompts on a model of many layers would otherwise take the
    descriptors a session's own files need)."""
    if len(_OPEN) >= _MAX_OPEN:
        raise OSError(f"{_MAX_OPEN} spill files are open already")
    folder = _FOLDER[0] or simlab_home() / "spill"
    folder.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryFile(dir=folder)


class Spill:
    """The oldest keys and values of a sliding-window layer, moved out of memory into a temporary file
    (deleted by the system when it is closed), position after position; `take` gives back the newest
    it holds, the very bytes, and forgets them. A copy whose file the disk refuses holds its bytes in
    memory instead."""

    def __init__(self, like: torch.Tensor, values_like: torch.Tensor) -> None:
        self.file, self.memory = _open(), None
        weakref.finalize(self, self.file.close)
        _OPEN.add(self)
        self.count = 0  # positions held
        self.shapes = (like.shape[:2] + like.shape[3:], values_like.shape[:2] + values_like.shape[3:])
        self.dtype, self.device = like.dtype, like.device
        self.row = sum(torch.Size(s).numel() for s in self.shapes) * like.element_size()  # bytes a position

    def put(self, keys: torch.Tensor, values: torch.Tensor) -> bool:
        """Append positions (B, H, n, D) of keys and values; False (nothing kept) where they are not
        this spill's shape or the disk refuses them."""
        if self.memory is not None or self.shapes != (
            keys.shape[:2] + keys.shape[3:],
            values.shape[:2] + values.shape[3:],
        ):
            return False
        n = keys.shape[-2]
        rows = torch.cat([t.permute(2, 0, 1, 3).reshape(n, -1) for t in (keys, values)], dim=1)
        data = rows.cpu().contiguous().view(torch.uint8).numpy()
        try:
            written = os.pwrite(self.file.fileno(), data, self.count * self.row)
        except (OSError, AttributeError):  # (a full disk; a system without pwrite)
            written = -1
        if written != data.nbytes:
            return False
        self.count += n
        return True

    def _read(self, size: int, at: int) -> bytearray:
        if self.memory is not None:
            return self.memory[at : at + size]
        data = bytearray(size)
        got = os.preadv(self.file.fileno(), [data], at)
        if got != size:
            raise OSError(f"a spilled KV cache came back short ({got} of {size} bytes)")
        return data

    def take(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The newest n positions' keys and values (B, H, n, D), no longer held here."""
        data = self._read(n * self.row, (self.count - n) * self.row)
        self.truncate(self.count - n)
        rows = torch.frombuffer(data, dtype=torch.uint8).view(self.dtype).view(n, -1)
        width = torch.Size(self.shapes[0]).numel()
        keys, values = rows[:, :width], rows[:, width:]
        return tuple(  # type: ignore[return-value]
            part.reshape(n, *shape[:2], *shape[2:]).permute(1, 2, 0, 3).contiguous().to(self.device)
            for part, shape in ((keys, self.shapes[0]), (values, self.shapes[1]))
        )

    def truncate(self, count: int) -> None:
        """Forget every position from `count` on (the file shrinks with them)."""
        self.count = min(self.count, count)
        if self.memory is not None:
            del self.memory[self.count * self.row :]
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self.file.fileno(), self.count * self.row)

    def __deepcopy__(self, memo) -> Spill:
        """A copy with a file of its own (copied by the system where it can, else 16 MiB at a time),
        or, where the disk refuses it, with the bytes in memory."""
        twin = object.__new__(Spill)
        twin.__dict__.update(self.__dict__)
        size = self.count * self.row
        try:
            twin.file = _open()
            weakref.finalize(twin, twin.file.close)
            _OPEN.add(twin)
            if self.memory is None:
                _copy(self.file.fileno(), twin.file.fileno(), size)
            elif os.pwrite(twin.file.fileno(), self.memory, 0) != size:
                raise OSError("a spilled KV cache could not be copied")
            twin.memory = None
        except (OSError, AttributeError):
            _OPEN.discard(twin)
            twin.file, twin.memory = None, bytearray(self._read(size, 0))
        return twin


def _copy(source: int, target: int, size: int) -> None:
    at = 0
    while at < size:
        try:
            done = os.copy_file_range(source, target, size - at, at, at)
        except (OSError, AttributeError):  # (a file system or system that cannot): through a buffer
            done = os.pwrite(target, os.pread(source, min(size - at, 1 << 24), at), at)
        if done <= 0:
            raise OSError("a spilled KV cache could not be copied")
        at += done
