"""Files ppd writes: readable under the user's umask (not mkstemp's 0600), on disk before
they replace the old file, and temporary files orphaned by a killed writer cleaned up."""

from __future__ import annotations

import os
import stat
import time

import numpy as np
import pytest
import torch

from ppd import io
from ppd.cli.common import save_png


@pytest.fixture
def umask():
    """Set the process umask for one test, then restore it."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.fixture(autouse=True)
def fresh_sweeps(monkeypatch):
    """Every test starts as a new process would: no folder swept yet."""
    monkeypatch.setattr(io, "_swept", {})


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize(
    "name, write",
    [
        ("state.json", lambda p: io.save_json({"a": 1}, p)),
        ("notes.txt", lambda p: io.save_text("hello\n", p)),
        ("weights.pt", lambda p: io.save_torch({"w": torch.ones(3)}, p)),
        ("mask.png", lambda p: save_png(np.zeros((4, 5), np.uint8), p)),
    ],
    ids=["json", "text", "torch", "png"],
)
def test_written_files_get_the_umask_mode(tmp_path, umask, name, write):
    path = tmp_path / name
    for mask, mode in [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)]:
        umask(mask)
        write(path)  # a new file, then rewrites of it
        assert _mode(path) == mode, oct(mask)


def test_current_umask_reads_without_changing_it(umask):
    umask(0o027)
    assert io.current_umask() == 0o027
    assert os.umask(0o027) == 0o027  # still set


def test_file_is_flushed_to_disk_before_it_replaces_the_target(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = io.save_json({"round": 3}, tmp_path / "state.json")
    kinds = [e[0] for e in events]
    assert kinds == ["fsync", "replace", "fsync"]
    tmp = events[1][1]
    assert events[0][1] == tmp and events[1][2] == str(target)  # the temp file, before the rename
    assert events[2][1] == str(tmp_path)  # then the folder, so the rename itself is on disk


def _age(path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_stale_temporary_files_are_removed_on_the_next_write(tmp_path, caplog):
    stale = tmp_path / ".state.json.a1b2c3d4.tmp"
    other_stale = tmp_path / ".attacker.zip.zz_9k0qx.tmp"
    fresh = tmp_path / ".state.json.q9w8e7r6.tmp"  # a writer in another process, still going
    not_ours = [tmp_path / ".notes.tmp", tmp_path / "keep.tmp", tmp_path / ".x.ABCDEFGH.tmp"]
    for p in [stale, other_stale, fresh, *not_ours]:
        p.write_text("partial")
    for p in [stale, other_stale, *not_ours]:
        _age(p, io.STALE_TMP_SECONDS + 60)
    with caplog.at_level("INFO", logger="ppd.io"):
        io.save_json({"round": 1}, tmp_path / "state.json")
    assert not stale.exists() and not other_stale.exists()
    assert fresh.exists() and all(p.exists() for p in not_ours)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["state.json", fresh.name, *(p.name for p in not_ours)]
    )
    assert any("removed 2 stale temporary file(s)" in r.getMessage() and str(tmp_path) in r.getMessage()
               for r in caplog.records)


def test_a_folder_is_swept_once_per_interval(tmp_path, monkeypatch):
    io.save_json({}, tmp_path / "a.json")
    late = tmp_path / ".a.json.abcdefgh.tmp"
    late.write_text("x")
    _age(late, io.STALE_TMP_SECONDS + 60)
    io.save_json({}, tmp_path / "a.json")
    assert late.exists()  # the folder was swept moments ago
    monkeypatch.setattr(io, "_swept", {})  # as in the next process
    io.save_json({}, tmp_path / "a.json")
    assert not late.exists()


def test_stale_symlinks_and_folders_are_left_alone(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep")
    link = tmp_path / ".precious.txt.abcdefgh.tmp"
    link.symlink_to(target)
    folder = tmp_path / ".dir.abcdefgh.tmp"
    folder.mkdir()
    os.utime(link, (0, 0), follow_symlinks=False)
    os.utime(folder, (0, 0))
    assert io.remove_stale_tmp_files(tmp_path) == []
    assert link.is_symlink() and folder.is_dir() and target.read_text() == "keep"


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    io.save_text("old\n", tmp_path / "notes.txt")

    def broken(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        io.atomic_write(tmp_path / "notes.txt", broken)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    assert (tmp_path / "notes.txt").read_text() == "old\n"
