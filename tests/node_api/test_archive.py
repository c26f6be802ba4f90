"""Unpacking archives safely and packing folders reproducibly."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from airfed.node_api._archive import ArchiveError, pack_folder, safe_extract
from airfed.sdk.errors import AirfedError

LIMITS = {"max_bytes": 10_000_000, "max_files": 100}


def _tar_gz(path: Path, build: Callable[[tarfile.TarFile], None]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        build(tar)
    return path


def _add_file(tar: tarfile.TarFile, name: str, data: bytes = b"x") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _add_special(
    tar: tarfile.TarFile, name: str, kind: bytes, target: str = ""
) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    tar.addfile(info)


def _sample_folder(root: Path) -> Path:
    folder = root / "code"
    (folder / "pkg").mkdir(parents=True)
    (folder / "algo.py").write_text("def train(ctx):\n    pass\n")
    (folder / "pkg" / "__init__.py").write_text("")
    (folder / "run.sh").write_text("#!/bin/sh\n")
    (folder / "run.sh").chmod(0o755)
    return folder


def _tree(folder: Path) -> dict[str, bytes | None]:
    return {
        p.relative_to(folder).as_posix(): None if p.is_dir() else p.read_bytes()
        for p in sorted(folder.rglob("*"))
    }


def _assert_refused(archive: Path, dest: Path, match: str, **limits: int) -> None:
    with pytest.raises(ArchiveError, match=match):
        safe_extract(archive, dest, **{**LIMITS, **limits})
    assert not dest.exists()
    assert [p.name for p in dest.parent.iterdir() if p.name.startswith(".")] == []


def test_pack_then_extract_gives_back_the_folder(tmp_path: Path) -> None:
    folder = _sample_folder(tmp_path)
    archive = pack_folder(folder, tmp_path / "code.tar.gz")

    safe_extract(archive, tmp_path / "out", **LIMITS)

    assert _tree(tmp_path / "out") == _tree(folder)
    assert (tmp_path / "out" / "run.sh").stat().st_mode & stat.S_IXUSR
    assert not (tmp_path / "out" / "algo.py").stat().st_mode & stat.S_IXUSR


def test_pack_is_reproducible_and_leaves_out_bytecode(tmp_path: Path) -> None:
    folder = _sample_folder(tmp_path)
    first = hashlib.sha256(pack_folder(folder, tmp_path / "a.tar.gz").read_bytes())
    os.utime(folder / "algo.py", (1_000_000, 1_000_000))
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "algo.cpython-311.pyc").write_bytes(b"\0")
    second = hashlib.sha256(pack_folder(folder, tmp_path / "b.tar.gz").read_bytes())

    assert first.hexdigest() == second.hexdigest()
    with tarfile.open(tmp_path / "b.tar.gz") as tar:
        assert tar.getnames() == ["algo.py", "pkg", "pkg/__init__.py", "run.sh"]


def test_pack_refuses_a_symbolic_link(tmp_path: Path) -> None:
    folder = _sample_folder(tmp_path)
    (folder / "secret").symlink_to("/etc/passwd")
    with pytest.raises(ArchiveError, match="symbolic link"):
        pack_folder(folder, tmp_path / "code.tar.gz")
    assert not (tmp_path / "code.tar.gz").exists()


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda t: _add_file(t, "/etc/evil"), "absolute path"),
        (lambda t: _add_file(t, "../evil"), r"leaves the folder"),
        (lambda t: _add_file(t, "a/../../evil"), r"leaves the folder"),
        (lambda t: _add_special(t, "link", tarfile.SYMTYPE, "/etc/passwd"), "link"),
        (lambda t: _add_special(t, "link", tarfile.SYMTYPE, "inside.txt"), "link"),
        (lambda t: _add_special(t, "hard", tarfile.LNKTYPE, "/etc/passwd"), "link"),
        (lambda t: _add_special(t, "tty", tarfile.CHRTYPE), "device or special"),
        (lambda t: _add_special(t, "disk", tarfile.BLKTYPE), "device or special"),
        (lambda t: _add_special(t, "pipe", tarfile.FIFOTYPE), "device or special"),
    ],
    ids=["absolute", "dotdot", "nested-dotdot", "symlink-out", "symlink-in",
         "hardlink", "char-device", "block-device", "fifo"],
)  # fmt: skip
def test_unsafe_member_is_refused_and_nothing_is_left(
    tmp_path: Path, build: Callable[[tarfile.TarFile], None], match: str
) -> None:
    def with_a_good_file_first(tar: tarfile.TarFile) -> None:
        _add_file(tar, "inside.txt")
        build(tar)

    archive = _tar_gz(tmp_path / "bad.tar.gz", with_a_good_file_first)
    _assert_refused(archive, tmp_path / "dest" / "out", match)


def test_too_many_members_is_refused(tmp_path: Path) -> None:
    def many(tar: tarfile.TarFile) -> None:
        for index in range(11):
            _add_file(tar, f"f{index}")

    archive = _tar_gz(tmp_path / "many.tar.gz", many)
    _assert_refused(
        archive, tmp_path / "dest" / "out", "more than 10 members", max_files=10
    )


def test_compression_bomb_is_stopped_at_the_byte_limit(tmp_path: Path) -> None:
    archive = _tar_gz(
        tmp_path / "bomb.tar.gz", lambda t: _add_file(t, "zeros", bytes(20_000_000))
    )
    assert archive.stat().st_size < 100_000
    _assert_refused(
        archive,
        tmp_path / "dest" / "out",
        "more than 1000000 bytes",
        max_bytes=1_000_000,
    )


def test_duplicate_member_is_refused(tmp_path: Path) -> None:
    def twice(tar: tarfile.TarFile) -> None:
        _add_file(tar, "a.py", b"first")
        _add_file(tar, "./a.py", b"second")

    archive = _tar_gz(tmp_path / "dup.tar.gz", twice)
    _assert_refused(archive, tmp_path / "dest" / "out", "appears twice")


@pytest.mark.parametrize(
    "content", [b"not an archive at all", b"\x1f\x8b\x08\x00garbage-after-gzip-magic"]
)
def test_unreadable_archive_is_refused(tmp_path: Path, content: bytes) -> None:
    archive = tmp_path / "junk.tar.gz"
    archive.write_bytes(content)
    _assert_refused(archive, tmp_path / "dest" / "out", "neither|corrupt")


def test_truncated_archive_is_refused(tmp_path: Path) -> None:
    archive = pack_folder(_sample_folder(tmp_path), tmp_path / "code.tar.gz")
    archive.write_bytes(archive.read_bytes()[:-40])
    _assert_refused(archive, tmp_path / "dest" / "out", "corrupt")


def test_setuid_bits_are_dropped(tmp_path: Path) -> None:
    def setuid(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("tool")
        info.mode = 0o4777
        tar.addfile(info, io.BytesIO(b""))

    safe_extract(_tar_gz(tmp_path / "s.tar.gz", setuid), tmp_path / "out", **LIMITS)
    assert stat.S_IMODE((tmp_path / "out" / "tool").stat().st_mode) == 0o755


def test_destination_must_be_absent_or_empty(tmp_path: Path) -> None:
    archive = pack_folder(_sample_folder(tmp_path), tmp_path / "code.tar.gz")
    (tmp_path / "empty").mkdir()
    safe_extract(archive, tmp_path / "empty", **LIMITS)
    assert (tmp_path / "empty" / "algo.py").is_file()

    with pytest.raises(ArchiveError, match="not empty"):
        safe_extract(archive, tmp_path / "empty", **LIMITS)


def test_archive_error_is_an_airfed_error() -> None:
    assert issubclass(ArchiveError, AirfedError)


def _zip(path: Path, members: dict[str, tuple[bytes, int]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zipped:
        for name, (data, mode) in members.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            zipped.writestr(info, data)
    return path


def test_zip_archive_is_extracted(tmp_path: Path) -> None:
    archive = _zip(
        tmp_path / "code.zip",
        {"algo.py": (b"x = 1\n", stat.S_IFREG | 0o644), "pkg/": (b"", stat.S_IFDIR)},
    )
    safe_extract(archive, tmp_path / "out", **LIMITS)
    assert (tmp_path / "out" / "algo.py").read_bytes() == b"x = 1\n"
    assert (tmp_path / "out" / "pkg").is_dir()


@pytest.mark.parametrize(
    ("members", "match"),
    [
        ({"../evil": (b"x", stat.S_IFREG | 0o644)}, "leaves the folder"),
        ({"link": (b"/etc/passwd", stat.S_IFLNK | 0o777)}, "link"),
        ({"zeros": (bytes(5_000_000), stat.S_IFREG | 0o644)}, "more than"),
    ],
    ids=["dotdot", "symlink", "bomb"],
)
def test_unsafe_zip_is_refused(
    tmp_path: Path, members: dict[str, tuple[bytes, int]], match: str
) -> None:
    archive = _zip(tmp_path / "bad.zip", members)
    _assert_refused(archive, tmp_path / "dest" / "out", match, max_bytes=1_000_000)
