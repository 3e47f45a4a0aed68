"""Read the tensors of a PyTorch checkpoint as numpy arrays, without PyTorch.

The speaker model's weights ship as a checkpoint in PyTorch's legacy format: five pickles
in a row (a magic number, the format's protocol version, the writer's system information,
the saved object, and the list of its storage keys), then each storage's raw little-endian
bytes, in the order of that list, each after its element count as an int64.

Unpickling runs whatever callables a file names, so the reader knows only the few names
such a checkpoint uses (an ordered dict, a tensor rebuilt from a storage, a float storage),
maps them to plain data, and refuses a file that names any other.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from whisperd.errors import ModelLoadError

MAGIC = 0x1950A86A20F9469CFC6C
"""The number a legacy PyTorch checkpoint starts with."""
PROTOCOL = 1001
"""The legacy format's only protocol version."""

_STORAGE_DTYPES = {"FloatStorage": np.dtype("<f4")}
_COUNT = struct.Struct("<q")


@dataclass(frozen=True, slots=True)
class _StorageType:
    dtype: np.dtype[Any]


@dataclass(frozen=True, slots=True)
class _Storage:
    key: str
    dtype: np.dtype[Any]
    count: int


@dataclass(frozen=True, slots=True)
class _TensorRef:
    """A tensor as the pickle describes it; its storage's bytes come later in the file."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _ints(value: object) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(type(v) is int and v >= 0 for v in value):
        raise ModelLoadError(f"The checkpoint describes a tensor with a bad shape: {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class _RebuildTensor:
    """``torch._utils._rebuild_tensor_v2`` as the reader maps it: a frozen object, so that a
    pickle cannot set attributes on it."""

    def __call__(
        self, storage: object, offset: object, shape: object, stride: object, *_rest: object
    ) -> _TensorRef:
        if not isinstance(storage, _Storage) or type(offset) is not int or offset < 0:
            raise ModelLoadError("The checkpoint describes a tensor without a valid storage.")
        return _TensorRef(storage, offset, _ints(shape), _ints(stride))


class _PlainUnpickler(pickle.Unpickler):
    """Plain data only: any global or persistent reference is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise ModelLoadError(f"The checkpoint names {module}.{name}, which is not allowed.")

    def persistent_load(self, pid: Any) -> Any:
        raise ModelLoadError("The checkpoint refers to a storage where none may be.")


class _ObjectUnpickler(_PlainUnpickler):
    """The saved object: tensors become references to storages, read afterwards."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file)
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _RebuildTensor()
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        match pid:
            case ("storage", _StorageType(dtype), str(key), str(), int(count), None) if count >= 0:
                storage = _Storage(key, dtype, count)
                if self.storages.setdefault(key, storage) != storage:
                    raise ModelLoadError(f"The checkpoint describes storage {key} twice.")
                return storage
        raise ModelLoadError("The checkpoint refers to a storage in an unknown way.")


def _plain(file: io.BytesIO) -> Any:
    return _PlainUnpickler(file).load()


def _read_storages(
    file: io.BytesIO, keys: object, known: dict[str, _Storage], wanted: set[str]
) -> dict[str, npt.NDArray[Any]]:
    if not isinstance(keys, list) or set(keys) != set(known) or len(keys) != len(known):
        raise ModelLoadError("The checkpoint's storage list does not match its tensors.")
    data: dict[str, npt.NDArray[Any]] = {}
    for key in keys:
        storage = known[key]
        header = file.read(_COUNT.size)
        if len(header) != _COUNT.size or _COUNT.unpack(header)[0] != storage.count:
            raise ModelLoadError(f"The checkpoint's storage {key} is cut or has the wrong size.")
        size = storage.count * storage.dtype.itemsize
        if key not in wanted:
            file.seek(size, io.SEEK_CUR)
            continue
        raw = file.read(size)
        if len(raw) != size:
            raise ModelLoadError(f"The checkpoint's storage {key} is cut short.")
        data[key] = np.frombuffer(raw, dtype=storage.dtype)
    return data


def _array(ref: _TensorRef, data: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    count = math.prod(ref.shape)
    contiguous = tuple(math.prod(ref.shape[i + 1 :]) for i in range(len(ref.shape)))
    if len(ref.stride) != len(ref.shape) or (count > 1 and ref.stride != contiguous):
        raise ModelLoadError("The checkpoint holds a tensor that is not contiguous.")
    if ref.offset + count > data.size:
        raise ModelLoadError("The checkpoint holds a tensor past the end of its storage.")
    values = data[ref.offset : ref.offset + count].reshape(ref.shape)
    return values.astype(np.float32)


def read_state(path: Path, field: str) -> dict[str, npt.NDArray[np.float32]]:
    """The tensors of the dict ``field`` of the object saved in checkpoint ``path``.

    Raises :class:`~whisperd.errors.ModelLoadError` when the file is not such a checkpoint,
    is damaged, or names anything but the few PyTorch types such a checkpoint uses.
    """
    try:
        file = io.BytesIO(path.read_bytes())
        if _plain(file) != MAGIC or _plain(file) != PROTOCOL:
            raise ModelLoadError(f"{path} is not a legacy PyTorch checkpoint.")
        info = _plain(file)
        if not isinstance(info, dict) or info.get("little_endian") is not True:
            raise ModelLoadError(f"{path} was not written on a little-endian machine.")
        unpickler = _ObjectUnpickler(file)
        saved = unpickler.load()
        state = saved.get(field) if isinstance(saved, dict) else None
        if not isinstance(state, dict) or not all(
            isinstance(v, _TensorRef) for v in state.values()
        ):
            raise ModelLoadError(f"{path} holds no dict of tensors named {field!r}.")
        wanted = {ref.storage.key for ref in state.values()}
        data = _read_storages(file, _plain(file), unpickler.storages, wanted)
        return {str(name): _array(ref, data[ref.storage.key]) for name, ref in state.items()}
    except (
        pickle.UnpicklingError,
        EOFError,
        AttributeError,
        IndexError,
        KeyError,
        TypeError,
        ValueError,
        OSError,
    ) as exc:
        raise ModelLoadError(f"{path} is not a readable PyTorch checkpoint: {exc}") from exc
