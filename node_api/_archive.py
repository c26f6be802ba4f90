"""Code archives: unpack them safely, pack a folder reproducibly.

A function's code and a data sample arrive as a tar.gz (or zip) of a folder.
:func:`safe_extract` unpacks one only if every member is a plain file or a
folder inside the destination:

1. names must be relative and must not contain ``..``;
2. links are refused outright, symbolic and hard alike (a function or a data
   sample never needs one, and refusing them rules out every link that would
   leave the folder);
3. device files, FIFOs and other special members are refused;
4. at most ``max_files`` members and ``max_bytes`` of content, counted while
   the bytes are written (headers are not trusted);
5. nothing is left behind on refusal: members go to a temporary folder next to
   the destination, which is renamed into place only when all went well.

:func:`pack_folder` writes the same bytes for the same folder (sorted members,
fixed times and owners, no gzip timestamp), so its SHA-256 identifies the code.
"""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Protocol

from airfed.sdk.errors import AirfedError

__all__ = ["ArchiveError", "pack_folder", "safe_extract"]

_CHUNK = 1024 * 1024
_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGIC = b"PK\x03\x04"
_SKIPPED_NAMES = frozenset({"__pycache__"})


# mypy runs on the folders (``node_api``), so ``airfed.*`` imports are Any to it.
class ArchiveError(AirfedError):  # type: ignore[misc,unused-ignore]
    """An archive is unreadable, unsafe or too large; nothing was extracted."""


def safe_extract(archive: Path, dest: Path, *, max_bytes: int, max_files: int) -> None:
    """Unpack a tar.gz or zip ``archive`` into ``dest``, or raise ArchiveError.

    ``dest`` must not exist or must be an empty folder; on error it is left
    as it was.
    """
    archive, dest = Path(archive), Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ArchiveError(f"cannot extract into {dest}: it exists and is not empty")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        _extract_into(archive, staging, _Budget(max_bytes, max_files))
        if dest.exists():
            dest.rmdir()
        staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def pack_folder(folder: Path, dest_tar_gz: Path) -> Path:
    """Write ``folder``'s content to a reproducible tar.gz and return its path.

    Members are the folder's files and sub-folders relative to it, sorted,
    with mtime 0, owner 0 and modes 0644/0755. ``__pycache__`` folders are
    left out. A symbolic link in the folder raises ArchiveError.
    """
    folder, dest_tar_gz = Path(folder), Path(dest_tar_gz)
    if not folder.is_dir():
        raise ArchiveError(f"cannot pack {folder}: it is not a folder")
    dest_tar_gz.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{dest_tar_gz.name}.", dir=dest_tar_gz.parent
    )
    try:
        with os.fdopen(fd, "wb") as raw:
            _write_tar_gz(folder, raw)
        Path(tmp_name).replace(dest_tar_gz)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return dest_tar_gz


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Budget:
    """Counts members and bytes against the archive's limits."""

    def __init__(self, max_bytes: int, max_files: int) -> None:
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.bytes = 0
        self.files = 0

    def add_member(self) -> None:
        self.files += 1
        if self.files > self.max_files:
            raise ArchiveError(
                f"archive has more than {self.max_files} members; "
                "split it or raise the node's limit"
            )

    def add_bytes(self, count: int) -> None:
        self.bytes += count
        if self.bytes > self.max_bytes:
            raise ArchiveError(
                f"archive unpacks to more than {self.max_bytes} bytes; "
                "make it smaller or raise the node's limit"
            )


def _extract_into(archive: Path, root: Path, budget: _Budget) -> None:
    try:
        with archive.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise ArchiveError(f"cannot read archive {archive}: {exc}") from exc
    if magic.startswith(_GZIP_MAGIC):
        reader = _extract_tar
    elif magic == _ZIP_MAGIC:
        reader = _extract_zip
    else:
        raise ArchiveError(f"{archive.name} is neither a tar.gz nor a zip archive")
    try:
        reader(archive, root, budget)
    except (
        tarfile.TarError,
        gzip.BadGzipFile,
        zipfile.BadZipFile,
        zlib.error,
        EOFError,
    ) as exc:
        raise ArchiveError(f"archive {archive.name} is corrupt: {exc}") from exc
    except OSError as exc:
        raise ArchiveError(f"cannot extract archive {archive.name}: {exc}") from exc


def _extract_tar(archive: Path, root: Path, budget: _Budget) -> None:
    seen: set[PurePosixPath] = set()
    with (
        gzip.open(archive, "rb") as unzipped,
        tarfile.open(fileobj=unzipped, mode="r|") as tar,
    ):
        for member in tar:
            budget.add_member()
            relative = _member_path(member.name, seen)
            if relative is None:
                continue
            if member.isdir():
                _make_folder(root, relative)
            elif member.isfile():
                source = tar.extractfile(member)
                assert source is not None  # a regular member always has data
                _write_member(root, relative, source, budget, member.mode)
            else:
                raise ArchiveError(f"archive member {member.name!r} {_kind(member)}")
        _drain(unzipped, budget)


def _drain(unzipped: _Readable, budget: _Budget) -> None:
    """Read past the end-of-archive marker so gzip checks its length and CRC."""
    for chunk in iter(lambda: unzipped.read(_CHUNK), b""):
        budget.add_bytes(len(chunk))


def _extract_zip(archive: Path, root: Path, budget: _Budget) -> None:
    seen: set[PurePosixPath] = set()
    with zipfile.ZipFile(archive) as zipped:
        for info in zipped.infolist():
            budget.add_member()
            relative = _member_path(info.filename, seen)
            if relative is None:
                continue
            mode = info.external_attr >> 16
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise ArchiveError(
                    f"archive member {info.filename!r} is a link or special "
                    "file; only files and folders are accepted"
                )
            if info.is_dir():
                _make_folder(root, relative)
            else:
                with zipped.open(info) as source:
                    _write_member(root, relative, source, budget, mode)


def _member_path(name: str, seen: set[PurePosixPath]) -> PurePosixPath | None:
    """The member's path relative to the root, or None for the root itself."""
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("\\"):
        raise ArchiveError(f"archive member {name!r} has an absolute path")
    if ".." in path.parts:
        raise ArchiveError(f"archive member {name!r} leaves the folder (..)")
    parts = [part for part in path.parts if part != "."]
    if not parts:
        return None
    relative = PurePosixPath(*parts)
    if relative in seen:
        raise ArchiveError(f"archive member {name!r} appears twice")
    seen.add(relative)
    return relative


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym() or member.islnk():
        return "is a link; links are not accepted in archives"
    return "is a device or special file; only files and folders are accepted"


def _make_folder(root: Path, relative: PurePosixPath) -> None:
    target = root.joinpath(*relative.parts)
    target.mkdir(mode=0o755, parents=True, exist_ok=True)


def _write_member(
    root: Path, relative: PurePosixPath, source: _Readable, budget: _Budget, mode: int
) -> None:
    target = root.joinpath(*relative.parts)
    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    file_mode = 0o755 if mode & 0o111 else 0o644
    with target.open("xb") as out:
        for chunk in iter(lambda: source.read(_CHUNK), b""):
            budget.add_bytes(len(chunk))
            out.write(chunk)
    target.chmod(file_mode)


def _write_tar_gz(folder: Path, raw: IO[bytes]) -> None:
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in _walk_sorted(folder):
            relative = path.relative_to(folder).as_posix()
            info = tarfile.TarInfo(relative)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if path.is_dir():
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
                continue
            info.size = path.stat().st_size
            info.mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
            with path.open("rb") as content:
                tar.addfile(info, content)


def _walk_sorted(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        if path.name in _SKIPPED_NAMES:
            continue
        if path.is_symlink():
            raise ArchiveError(
                f"cannot pack {path}: it is a symbolic link; copy the file instead"
            )
        if path.is_dir():
            yield path
            yield from _walk_sorted(path)
        elif path.is_file():
            yield path
        else:
            raise ArchiveError(f"cannot pack {path}: not a regular file or folder")
