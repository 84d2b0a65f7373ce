"""Tests for convtips_lib.core.store: atomic writes, cache folders, keys, keyed tensor files."""
from pathlib import Path

import errno
import os

import pytest
import torch
from torch import nn

import convtips_lib.core.store as store
from convtips_lib.core.store import (StorageError, atomic_write, cache_dir, cached, hash_key, load_tensors,
                                     save_tensors, state_hash)


def test_interrupted_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.pt"
    save_tensors(path, dict(key="old", x=torch.zeros(3)))
    before = path.read_bytes()

    def boom(*a, **kw):
        raise KeyboardInterrupt("interrupted")
    monkeypatch.setattr(store.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        save_tensors(path, dict(key="new", x=torch.ones(3)))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["f.pt"]


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CONVTIPS_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path / "features"
    monkeypatch.delenv("CONVTIPS_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "convtips" / "features"




def test_hash_key_changes_with_any_part():
    assert hash_key("a", 1, [2]) == hash_key("a", 1, [2])
    assert len({hash_key("a", 1, [2]), hash_key("a", 1, [3]), hash_key("b", 1, [2])}) == 3


def test_state_hash_sees_weights_and_buffers():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    h = state_hash(a)
    with torch.no_grad():
        a[1].running_mean += 1
    assert state_hash(a) != h


def test_cached_builds_once_then_loads(tmp_path):
    calls = []
    build = lambda: calls.append(1) or dict(x=torch.arange(3))  # noqa: E731
    first = cached(tmp_path / "c.pt", "k1", ("x",), build)
    second = cached(tmp_path / "c.pt", "k1", ("x",), build)
    assert (first[1], second[1], len(calls)) == (False, True, 1)
    assert torch.equal(second[0]["x"], torch.arange(3))
    with pytest.warns(UserWarning, match="rebuilding"):
        assert not cached(tmp_path / "c.pt", "k2", ("x",), build)[1]   # another key: rebuilt


def test_load_tensors_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"key": "k", "x": object()}, path)
    with pytest.warns(UserWarning, match="unreadable"):
        assert load_tensors(path, "k", ("x",)) is None


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_atomic_write_text(tmp_path):
    path = atomic_write(tmp_path / "a.json", '{"x": 1}')
    assert path == tmp_path / "a.json"
    assert path.read_text() == '{"x": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_atomic_write_bytes_and_creates_folder(tmp_path):
    path = atomic_write(tmp_path / "sub" / "deeper" / "b.bin", b"\x00\x01\xff")
    assert path.read_bytes() == b"\x00\x01\xff"
    assert _leftovers(path.parent) == []


def test_atomic_write_overwrites(tmp_path):
    atomic_write(tmp_path / "c.txt", "old")
    atomic_write(tmp_path / "c.txt", "new")
    assert (tmp_path / "c.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]


def test_atomic_write_failure_keeps_old_content(tmp_path, monkeypatch):
    target = tmp_path / "d.json"
    target.write_text("old content")

    def broken_replace(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="simulated"):
        atomic_write(target, "new content that never lands")
    assert target.read_text() == "old content"
    assert _leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json"]


def test_a_full_disk_while_writing_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    import errno
    import io
    target = tmp_path / "r.json"
    target.write_text("old content")

    class Full(io.BytesIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(store.os, "fdopen", lambda fd, mode: (os.close(fd), Full())[1])
    with pytest.raises(StorageError, match=f"cannot write {target}: No space left on device .*Free space") as e:
        atomic_write(target, "new")
    assert e.value.errno == errno.ENOSPC and target.read_text() == "old content" and _leftovers(tmp_path) == []


def test_atomic_write_failure_without_old_file(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "replace", lambda src, dst: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "e.json", "x")
    assert list(tmp_path.iterdir()) == []




def test_atomic_write_gives_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "report.html", "<html></html>")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("shape", ["a file", "inside a file"])
def test_unwritable_cache_folder_fails_before_the_build(tmp_path, shape):
    (tmp_path / "cache").write_text("in the way")
    folder = tmp_path / "cache" if shape == "a file" else tmp_path / "cache" / "features"
    built = []
    with pytest.raises(StorageError, match="CONVTIPS_CACHE"):
        cached(folder / "x.pt", "k", ("x",), lambda: built.append(1) or {"x": torch.zeros(1)})
    assert built == []   # nothing was computed only to be lost
    with pytest.raises(StorageError, match=str(folder)):
        atomic_write(folder / "r.json", "{}")


def test_a_folder_where_the_cache_entry_goes_fails_before_the_build(tmp_path):
    (tmp_path / "x.pt").mkdir()
    built = []
    with pytest.raises(StorageError, match=r"x\.pt.*folder") as e:
        cached(tmp_path / "x.pt", "k", ("x",), lambda: built.append(1) or {"x": torch.zeros(1)})
    assert built == [] and "CONVTIPS_CACHE" in str(e.value)


def _disk_full(*a, **kw):
    raise OSError(errno.ENOSPC, "No space left on device")


def _no_permission(*a, **kw):
    raise PermissionError(errno.EACCES, "Permission denied")


@pytest.mark.parametrize("where, fail", [("os.replace", _disk_full), ("tempfile.mkstemp", _no_permission)],
                         ids=["disk full", "permission"])
def test_a_write_that_fails_after_the_build_keeps_the_result_with_one_warning(tmp_path, monkeypatch, where, fail):
    module, name = where.split(".")
    monkeypatch.setattr(getattr(store, module), name, fail)
    calls = []
    build = lambda: calls.append(1) or dict(x=torch.arange(3))  # noqa: E731
    with pytest.warns(UserWarning) as caught:
        payload, hit, _ = cached(tmp_path / "c.pt", "k", ("x",), build)
    assert not hit and torch.equal(payload["x"], torch.arange(3)) and payload["key"] == "k"
    assert len(caught) == 1 and str(tmp_path / "c.pt") in str(caught[0].message)
    assert "CONVTIPS_CACHE" in str(caught[0].message) and list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert not cached(tmp_path / "c.pt", "k", ("x",), build)[1] and calls == [1, 1]   # built again, now stored
    assert cached(tmp_path / "c.pt", "k", ("x",), build)[1] and calls == [1, 1]
