"""Every file featdiff writes, written atomically, and every stored tensor file, read with a clear error.

A writer puts the bytes into a temp file beside the target, flushes them to disk, gives the file
the one mode every featdiff file has (`FILE_MODE`, whatever the umask or `mkstemp`'s private 0600),
and renames it over the target: a process killed at any moment leaves the old file or the new one,
never half of one, and a failed write removes its temp file.

The readers turn a damaged or truncated file into a one-line `UserError` that names the file and
what to do about it, instead of a traceback from deep inside safetensors or the unpickler.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import struct
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from featdiff.errors import UserError

FILE_MODE = 0o644

# What reading a damaged, truncated or unreadable file can raise (and nothing a caller's bug would).
TENSOR_READ_ERRORS: tuple[type[BaseException], ...] = (SafetensorError, OSError)
TORCH_READ_ERRORS: tuple[type[BaseException], ...] = (
    RuntimeError,  # "PytorchStreamReader failed reading zip archive" for a truncated file
    EOFError,
    pickle.UnpicklingError,  # also what the weights_only unpickler raises for a foreign object
    zipfile.BadZipFile,
    ValueError,
    OSError,
)


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(temp)` for a temp file in `path`'s folder, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    temp = Path(temp_name)
    try:
        write(temp)
        with open(temp, "rb+") as stream:  # the data must be on disk before the rename makes it the file
            os.fsync(stream.fileno())
        os.chmod(temp, FILE_MODE)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _strict(value: Any) -> Any:
    """`value` with every non-finite float replaced by None (JSON null), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(item) for item in value]
    return value


def strict_json(value: Any, indent: int | None = None) -> str:
    """JSON that every parser reads: NaN and ±Infinity (which Python's json writes but the JSON
    standard has no words for) become null. Every file featdiff writes goes through here."""
    return json.dumps(_strict(value), indent=indent, allow_nan=False)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic_write(path, lambda temp: temp.write_bytes(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Tensors as safetensors (no pickle: reading the file cannot run code), copied to the CPU first."""
    contiguous = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
    _atomic_write(path, lambda temp: save_file(contiguous, temp, metadata=metadata))


SAFETENSORS_DTYPES: dict[torch.dtype, tuple[str, type]] = {
    torch.float32: ("F32", np.float32),
    torch.float64: ("F64", np.float64),
    torch.int64: ("I64", np.int64),
    torch.int32: ("I32", np.int32),
}


class StreamedTensorFile:
    """A safetensors file written block by block, for tensors too large to hold at once (a balanced
    fill of millions of pseudo-features): every tensor's shape is declared first (the header), its
    rows are appended in order, and the file appears atomically, complete, when the `with` block
    ends; an exception inside it, or a tensor left short, leaves no file. Any safetensors reader
    reads the result; `mapped_tensors` maps it without reading it into memory.

        with StreamedTensorFile(path, {"features": ((n, d), torch.float32), "labels": ((n,), torch.int64)}) as out:
            for x, y in chunks:
                out.append("features", x)
                out.append("labels", y)
    """

    def __init__(self, path: Path, shapes: dict[str, tuple[tuple[int, ...], torch.dtype]], metadata: dict[str, str] | None = None) -> None:
        self.path = Path(path)
        header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
        self._layout: dict[str, tuple[int, int, torch.dtype, tuple[int, ...]]] = {}
        offset = 0
        for name, (shape, dtype) in shapes.items():
            if dtype not in SAFETENSORS_DTYPES:
                raise ValueError(f"{name}: dtype {dtype} is not one of {sorted(map(str, SAFETENSORS_DTYPES))}")
            size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            header[name] = {"dtype": SAFETENSORS_DTYPES[dtype][0], "shape": list(shape), "data_offsets": [offset, offset + size]}
            self._layout[name] = (offset, offset + size, dtype, tuple(shape))
            offset += size
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # safetensors pads its header to 8 bytes
        self._prefix = struct.pack("<Q", len(encoded)) + encoded
        self._cursor = {name: begin for name, (begin, *_rest) in self._layout.items()}
        self._handle: int | None = None
        self._temp: Path | None = None

    def __enter__(self) -> StreamedTensorFile:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        self._handle, self._temp = handle, Path(temp_name)
        os.write(handle, self._prefix)
        return self

    def append(self, name: str, rows: torch.Tensor) -> None:
        """The next rows of tensor `name` (its declared dtype and trailing shape)."""
        begin, end, dtype, shape = self._layout[name]
        rows = rows.detach().to("cpu", dtype).contiguous()
        if tuple(rows.shape[1:]) != shape[1:]:
            raise ValueError(f"{name}: rows of shape {tuple(rows.shape)} for a tensor of shape {shape}")
        data = rows.numpy().tobytes()
        if self._cursor[name] + len(data) > end:
            raise ValueError(f"{name}: more rows than its declared {shape[0]}")
        assert self._handle is not None, "append inside the `with` block"
        os.pwrite(self._handle, data, len(self._prefix) + self._cursor[name])
        self._cursor[name] += len(data)

    def __exit__(self, kind, error, trace) -> None:
        assert self._handle is not None and self._temp is not None
        short = [name for name, (_, end, *_rest) in self._layout.items() if self._cursor[name] != end]
        try:
            if kind is None and not short:
                os.fsync(self._handle)
        finally:
            os.close(self._handle)
        if kind is not None or short:
            self._temp.unlink(missing_ok=True)
            if kind is None:
                raise ValueError(f"{self.path}: {', '.join(short)} not fully written")
            return
        os.chmod(self._temp, FILE_MODE)
        os.replace(self._temp, self.path)


def mapped_tensors(path: Path, fix: str) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors memory-mapped, not read: pages come from the file as rows are
    indexed, and the operating system can drop them again, so a file larger than memory can be
    trained on batch by batch. The tensors are copy-on-write (writing to one never changes the
    file). A missing or damaged file is a UserError ending in `fix`."""
    path = Path(path)
    codes = {code: numpy_type for code, numpy_type in SAFETENSORS_DTYPES.values()}
    try:
        with open(path, "rb") as stream:
            (length,) = struct.unpack("<Q", stream.read(8))
            header = json.loads(stream.read(length))
        tensors = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            begin, end = entry["data_offsets"]
            numpy_type, shape = codes[entry["dtype"]], tuple(entry["shape"])
            if end - begin != math.prod(shape) * np.dtype(numpy_type).itemsize:
                raise ValueError(f"{name}'s data offsets disagree with its shape")
            if end == begin:
                tensors[name] = torch.from_numpy(np.zeros(shape, dtype=numpy_type))
                continue
            array = np.memmap(path, dtype=numpy_type, mode="c", offset=8 + length + begin, shape=shape)
            tensors[name] = torch.from_numpy(array)
        return tensors
    except (OSError, ValueError, KeyError, TypeError, struct.error) as error:
        raise UserError(f"cannot read {path} ({describe_error(error)}): {fix}") from error


def atomic_torch_save(path: Path, state: dict[str, Any]) -> None:
    """Training state (optimizer moments, RNG states) that safetensors cannot hold; read it with `load_torch_state`."""
    _atomic_write(path, lambda temp: torch.save(state, temp))


def append_text(path: Path, text: str) -> None:
    """Append to a log (an append is atomic enough for a log); a new log gets `FILE_MODE` like every other file."""
    handle = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
    try:
        status = os.fstat(handle)
        if status.st_size == 0 and status.st_mode & 0o777 != FILE_MODE:
            os.fchmod(handle, FILE_MODE)
        os.write(handle, text.encode())
    finally:
        os.close(handle)


def describe_error(error: BaseException) -> str:
    """An exception as a few words on one line, for a message that must stay one line."""
    words = " ".join(str(error).split()).split(". ")[0]  # torch's first sentence says it; the rest is advice for torch users
    if len(words) > 160:
        words = words[:157] + "..."
    return f"{type(error).__name__}: {words}" if words else type(error).__name__


def load_tensors(path: Path, fix: str) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a missing, damaged or truncated file is a UserError ending in `fix`."""
    path = Path(path)
    try:
        return load_file(path)
    except TENSOR_READ_ERRORS as error:
        raise UserError(f"cannot read {path} ({describe_error(error)}): {fix}") from error


def load_torch_state(path: Path, fix: str) -> dict[str, Any]:
    """A state written by `atomic_torch_save`, unpickled with weights_only=True (no code can run).

    A missing, damaged or truncated file is a UserError ending in `fix`.
    """
    path = Path(path)
    try:
        return torch.load(path, weights_only=True)
    except TORCH_READ_ERRORS as error:
        raise UserError(f"cannot read {path} ({describe_error(error)}): {fix}") from error
