"""Storage every cache and record shares: atomic writes, content hashes for cache keys, keyed tensor files."""
from __future__ import annotations

import errno
import hashlib
import io
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

__all__ = ["StorageError"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class StorageError(OSError):
    """A cache or results folder that cannot be created or written."""


def _folder_problem(folder: Path, e: OSError) -> StorageError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return _full_disk(folder, e)
    return StorageError(f"cannot write to the folder {folder} ({type(e).__name__}: {e.strerror or e}). Point "
                        "CONVTIPS_CACHE (caches) or --out (results) at a writable folder, or remove the file in the "
                        "way.")


def _full_disk(path: Path, e: OSError) -> StorageError:
    """A StorageError naming `path` on a full disk (or quota), keeping `e`'s errno."""
    err = StorageError(f"cannot write {path}: {e.strerror or e} (the disk or your quota is full). Free space there, "
                       "or point --out (results) or CONVTIPS_CACHE (caches) at a folder on another disk.")
    err.errno = e.errno
    return err


def writable_dir(folder) -> Path:
    """`folder`, created if needed, after checking a file can be written in it; else `StorageError` naming it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise _folder_problem(folder, e) from e
    return folder


def atomic_write(path, data: bytes | str) -> Path:
    """Write `data` to `path` via a temporary file in the same folder and a rename: never a half-written file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _folder_problem(path.parent, e) from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _full_disk(path, e) from e
        raise
    return path


def cache_dir(kind: str = "features") -> Path:
    """The cache folder for `kind`: `$CONVTIPS_CACHE/<kind>`, else ~/.cache/convtips/<kind>."""
    root = os.environ.get("CONVTIPS_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "convtips") / kind


def hash_key(*parts) -> str:
    """sha256 (hex) of the repr of `parts`: a cache key covering everything that changes the cached value."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def state_hash(module: nn.Module) -> str:
    """sha256 of a module's state dict (names, shapes, dtypes, values; buffers such as BN running stats included)."""
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(f"{k}:{tuple(v.shape)}:{v.dtype}".encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def save_tensors(path, payload: dict) -> Path:
    """Write a dict of tensors, strings and lists with torch.save, atomically."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write(path, buf.getvalue())


def load_tensors(path, key: str, fields: Iterable[str]) -> dict | None:
    """The payload stored at `path` for `key` (`weights_only=True`); None when absent, or (warning) unreadable or stale."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("key") != key or not all(f in payload for f in fields):
            raise ValueError("stored key or fields do not match")
        return payload
    except Exception as e:  # noqa: BLE001 - any unreadable cache file is rebuilt
        warnings.warn(f"cache file {path} is unreadable ({type(e).__name__}: {e}); rebuilding it", stacklevel=3)
        return None


def _check_entry(path: Path) -> None:
    """`StorageError` unless a file can be written at `path`: its folder writable and no folder in its place."""
    writable_dir(path.parent)
    if path.exists() and not path.is_file():
        raise StorageError(f"cannot write the cache entry {path}: a folder (or other non-file) is in its place. "
                           "Remove it, or point CONVTIPS_CACHE at another folder.")


def _store(path: Path, payload: dict) -> None:
    """`save_tensors`; a failed write (disk full, no permission) is one warning, as the payload is already built."""
    try:
        save_tensors(path, payload)
    except OSError as e:
        e = e.__cause__ if isinstance(e, StorageError) and isinstance(e.__cause__, OSError) else e   # the OS's words
        warnings.warn(f"could not store the cache entry {path} ({type(e).__name__}: {e.strerror or e}); the result "
                      "is used now but not kept, so the next run builds it again. Free disk space, or point "
                      "CONVTIPS_CACHE at a writable folder.", stacklevel=4)


def cached(path, key: str, fields: tuple, build: Callable[[], dict]) -> tuple:
    """(payload, hit, seconds): load `path` when it holds `key`, else build, store atomically and return it. Where
    the entry cannot be written, `StorageError` before the (slow) build; a write failing after it only warns."""
    t = time.perf_counter()
    path = Path(path)
    payload = load_tensors(path, key, fields)
    hit = payload is not None
    if not hit:
        _check_entry(path)
        payload = dict(build(), key=key)
        _store(path, payload)
    return payload, hit, time.perf_counter() - t
