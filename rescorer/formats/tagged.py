"""One on-disk layout for every project file: a format tag, plain tensors, JSON metadata.

A tagged file is a ``torch.save`` dict ``{"format": "<family>/<version>", "tensors":
{name: tensor}, "meta": "<JSON text>"}``. Tensors and strings are all that
``torch.load(..., weights_only=True)`` must accept, on torch 1.13 (whose weights-only
loader refuses Python floats, hence JSON for everything that is not a tensor) and 2.x.

Reading never runs code from the file: ``weights_only=True`` first; if that refuses the
file, a second unpickler of the archive, which rebuilds tensors itself and resolves no
other global, reads files written before this layout (plain data with Python floats,
which torch 1.13's weights-only loader rejects). (torch 1.13's ``torch.load`` ignores a
``pickle_module`` unless ``weights_only`` is set, so that unpickler is not passed to it.) A file that holds any other object (a class, a function
such as ``os.system``) is refused with ``UnsafeFileError``; nothing falls back to full
unpickling. Writes are atomic (``rescorer.utils.atomic_path``).
"""

from __future__ import annotations

import collections
import io
import json
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Dict, Mapping, Optional, Tuple

import torch

from rescorer.utils import PathLike, atomic_path


class FormatError(ValueError):
    """A file that is not the expected project format (the message names the file)."""


class UnsafeFileError(FormatError):
    """A file holding objects that plain-data loading refuses; it is never unpickled."""


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


class _RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.qualname = f"{module}.{name}"


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    """Stands in for ``torch._utils._rebuild_tensor_v2``: a view of a storage read from the archive."""
    return torch.as_strided(storage, tuple(size), tuple(stride), int(storage_offset))


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles a ``torch.save`` archive's ``data.pkl`` resolving no global but tensor
    rebuilding (done here, not by torch) and ``OrderedDict``; storages come from the archive."""

    def __init__(self, data, storage_bytes, allowed: Optional[Mapping[Tuple[str, str], Any]] = None):
        super().__init__(data, encoding="utf-8")
        self._storage_bytes = storage_bytes
        self._allowed = dict(allowed or {})
        self._storages: Dict[str, torch.Tensor] = {}

    def find_class(self, module, name):
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) in self._allowed:
            return self._allowed[(module, name)]
        raise _RefusedGlobal(module, name)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        dtype, key = pid[1], str(pid[2])
        if key not in self._storages:
            raw = bytearray(self._storage_bytes(key))
            self._storages[key] = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return self._storages[key]


def _load_archive_plainly(path: Path, allowed: Optional[Mapping[Tuple[str, str], Any]] = None) -> Any:
    """Read a ``torch.save`` zip archive with ``_PlainUnpickler`` (little-endian archives only)."""
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkl = next((n for n in names if n.endswith("/data.pkl")), None)
        if pkl is None:
            raise pickle.UnpicklingError("no data.pkl in the archive")
        root = pkl[: -len("data.pkl")]
        if root + "byteorder" in names and z.read(root + "byteorder").strip() != b"little":
            raise pickle.UnpicklingError("a big-endian archive")
        return _PlainUnpickler(io.BytesIO(z.read(pkl)), lambda key: z.read(f"{root}data/{key}"), allowed).load()


def load_plain(path: PathLike, what: str, allowed: Optional[Mapping[Tuple[str, str], Any]] = None) -> Any:
    """``torch.load`` a file of plain data only; ``what`` names the expected format in errors.

    ``allowed`` maps ``(module, name)`` globals the caller trusts (a class whose unpickling
    only rebuilds data, e.g. k2's ``RaggedTensor``) to what stands for them.

    ``weights_only=True`` first; files it refuses are read by ``_PlainUnpickler``, which
    accepts Python floats (refused by torch 1.13's weights-only loader) and refuses every
    object. Raises ``FormatError`` when the file is missing or not a torch file, and
    ``UnsafeFileError`` when it holds objects other than tensors and plain values.
    """
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: no such file (expected a {what} file)")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # refused: an object, or (torch 1.13) a Python float; the plain unpickler decides
    except Exception as e:  # noqa: BLE001 - not a torch file at all
        raise FormatError(f"{path}: not a {what} file (unreadable as a torch file: {type(e).__name__}: {e})") from None
    try:
        return _load_archive_plainly(path, allowed)
    except _RefusedGlobal as e:
        raise UnsafeFileError(
            f"{path} is not a {what} file: it holds objects that plain loading refuses ({e.qualname}); "
            f"refusing to unpickle it"
        ) from None
    except Exception as e:  # noqa: BLE001
        raise FormatError(f"{path}: not a {what} file (unreadable as plain data: {type(e).__name__}: {e})") from None


@dataclass
class TaggedFile:
    """A tagged file as read: its version, tensors and metadata (or a legacy file's whole dict)."""

    path: str
    family: str
    version: int
    tensors: Dict[str, torch.Tensor] = field(default_factory=dict)
    meta: Dict[str, Any] = field(default_factory=dict)
    legacy: Optional[Dict[str, Any]] = None  # the dict of a file written before the tagged layout


def split_tag(tag: Any) -> tuple:
    """("rescorer.word_lattices", 2) of "rescorer.word_lattices/2"; (None, None) if not a tag."""
    if not isinstance(tag, str) or "/" not in tag:
        return None, None
    family, _, version = tag.rpartition("/")
    return (family, int(version)) if version.isdigit() else (None, None)


def write_tagged(path: PathLike, family: str, version: int, tensors: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> Path:
    """Write ``tensors`` + ``meta`` (JSON-able) under the tag ``family/version``, atomically."""
    bad = [k for k, v in tensors.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise TypeError(f"{family}: non-tensor entries {bad} belong in meta")
    obj = {
        "format": f"{family}/{version}",
        "tensors": {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
        "meta": json.dumps(meta, sort_keys=True, allow_nan=False),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, str(tmp))
    return path


def read_tagged(path: PathLike, family: str, versions: Collection[int], legacy_versions: Collection[int] = ()) -> TaggedFile:
    """Read a tagged file of ``family``; its version must be one of ``versions`` (current
    layouts) or ``legacy_versions`` (whole dict returned in ``legacy``, for the format
    module to convert). Any other content is a ``FormatError`` naming the file."""
    obj = load_plain(path, family)
    tag = obj.get("format") if isinstance(obj, dict) else None
    fam, version = split_tag(tag)
    if fam != family:
        got = tag if isinstance(obj, dict) else type(obj).__name__
        raise FormatError(f"{path}: not a {family} file (format {got!r})")
    if version in legacy_versions:
        return TaggedFile(str(path), family, version, legacy=obj)
    if version not in versions:
        known = sorted(set(versions) | set(legacy_versions))
        raise FormatError(f"{path}: {tag} is not a version this code reads ({family}/{known})")
    tensors, meta = obj.get("tensors"), obj.get("meta")
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()) or not isinstance(meta, str):
        raise FormatError(f"{path}: {tag} file without its tensors and JSON metadata")
    try:
        meta = json.loads(meta)
    except ValueError as e:
        raise FormatError(f"{path}: {tag} metadata is not JSON ({e})") from None
    return TaggedFile(str(path), family, version, dict(tensors), meta)


def require(tf: TaggedFile, tensors: Collection[str] = (), meta: Collection[str] = ()) -> None:
    """FormatError naming the file when a tensor or metadata field is missing."""
    missing = [k for k in tensors if k not in tf.tensors] + [k for k in meta if k not in tf.meta]
    if missing:
        raise FormatError(f"{tf.path}: {tf.family}/{tf.version} file lacks {missing}")
