"""Strict JSON out, tolerant JSON in, and file reads that never follow a symbolic link. Standard library only.

Writers use :func:`dumps` (``allow_nan=False``; NaN/Infinity become ``null``); readers use :func:`read_json`,
which refuses links, directories, FIFOs, non-UTF-8 bytes and (given ``max_bytes``) oversized files with a
:class:`CorruptRecord` saying which. :func:`open_folder` opens a folder of the runs root without following a link,
for code that then works relative to it (``dir_fd``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import stat
from enum import Enum
from pathlib import Path
from typing import Any


class CorruptRecord(ValueError):
    """A run file exists but cannot be used; the message says which and why."""


class UnsafeEntry(OSError):
    """A path distill_nb writes to (a lock file, a folder of the device queue) is a symbolic link or the wrong kind
    of file; it is refused, never followed or replaced. The message names the path and the fix."""


MAX_RECORD_BYTES = 4 << 20  # status.json, config.json, rankN_error.json: a few KB when distill_nb writes them


def kind(mode: int) -> str:
    """What an ``lstat`` mode is, in words ("a symbolic link", "a folder", "a FIFO", ...)."""
    for test, words in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
                        (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"),
                        (stat.S_ISREG, "a regular file")):
        if test(mode):
            return words
    return "an unknown kind of file"


def too_big(name: str, size: int, max_bytes: int) -> str | None:
    """Why a record of ``size`` bytes is not read (more than ``max_bytes``), or None."""
    if size <= max_bytes:
        return None
    return (f"{name} is {size / 2**20:.1f} MB, more than the {max_bytes / 2**20:g} MB cap for a run record (distill_nb "
            f"writes a few KB): it was not written by distill_nb; move it out of the run folder (or delete the run)")


def finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no NaN/Infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k.value if isinstance(k, Enum) else k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    return value


def number(value: Any) -> float | None:
    """``value`` as a float if it is a finite JSON number (not a bool, string, NaN/inf or an int too large for a
    float), else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:
            return None
        return value if math.isfinite(value) else None
    return None


def dumps(value: Any, indent: int | None = None) -> str:
    """Strict JSON: NaN/Infinity become null, anything not JSON-able raises TypeError."""
    return json.dumps(finite(value), allow_nan=False, indent=indent)


def _no_constants(name: str) -> None:
    return None  # NaN/Infinity in an old file read as null, never as a float that breaks JSON.parse


MAX_DEPTH = 64  # no record distill_nb writes nests deeper than a few levels
MAX_INT_DIGITS = 30  # no count, pid or timestamp has more; a longer integer reads as a float (then inf -> null)


def _int(digits: str) -> int | float:
    return int(digits) if len(digits.lstrip("-")) <= MAX_INT_DIGITS else float(digits)


def _depth(value: Any) -> int:
    """How deeply lists/dicts nest in ``value`` (iterative: no recursion limit to hit)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if level > MAX_DEPTH:
                break
            todo.extend((v, level + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def loads(text: str | bytes) -> Any:
    """``json.loads`` with NaN/Infinity literals read as None, long integers as floats, and anything json cannot
    take (nesting past Python's recursion limit, past ``MAX_DEPTH``; bytes that are not UTF-8) raised as
    ``json.JSONDecodeError`` (a ValueError)."""
    if isinstance(text, bytes | bytearray):  # a request body: the error below needs text to say where it failed
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise json.JSONDecodeError(f"not UTF-8 ({e.reason} at byte {e.start})", "", 0) from None
    try:
        value = json.loads(text, parse_constant=_no_constants, parse_int=_int)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text[:100], 0) from None
    except json.JSONDecodeError:
        raise
    except ValueError as e:  # anything else json itself refuses
        raise json.JSONDecodeError(str(e), text[:100], 0) from None
    if _depth(value) > MAX_DEPTH:
        raise json.JSONDecodeError(f"nested more than {MAX_DEPTH} levels deep", text[:100], 0)
    return value


def _open_regular(path: Path) -> tuple[int, os.stat_result]:
    """An fd of a regular file and its stat, never through a symbolic link.

    Raises:
        FileNotFoundError: missing. CorruptRecord: a link, a directory, a FIFO or a device.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CorruptRecord(f"{path.name} is a symbolic link (not followed)") from None
        if e.errno == errno.ENOENT:
            raise FileNotFoundError(str(path)) from None
        raise CorruptRecord(f"{path.name} cannot be opened ({e.strerror})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):  # a directory, a FIFO, a device
        os.close(fd)
        raise CorruptRecord(f"{path.name} is not a regular file")
    return fd, info


def read_text(path: Path, errors: str = "strict", max_bytes: int | None = None) -> str:
    """A regular file's text, never through a symbolic link, and (with ``max_bytes``) never more than that.

    Raises:
        FileNotFoundError: missing. CorruptRecord: a link, a directory, larger than ``max_bytes`` (it is not read),
        or (``errors="strict"``) not UTF-8.
    """
    fd, info = _open_regular(path)
    with os.fdopen(fd, "rb") as f:
        data = f.read() if max_bytes is None else _read_at_most(f, path.name, info.st_size, max_bytes)
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise CorruptRecord(f"{path.name} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _read_at_most(f: Any, name: str, size: int, max_bytes: int) -> bytes:
    """All of ``f`` (``size`` bytes by its stat), or CorruptRecord if that is more than ``max_bytes``: checked before
    reading, and the read is bounded too (the file may grow meanwhile)."""
    why = too_big(name, size, max_bytes)
    if why is None:
        data = f.read(max_bytes + 1)
        why = too_big(name, len(data), max_bytes)
    if why:
        raise CorruptRecord(why)
    return data


def read_tail(path: Path, max_bytes: int) -> tuple[str, bool]:
    """The last ``max_bytes`` of a regular file as text (undecodable bytes replaced), and whether that is all of it;
    the same refusals as :func:`read_text` (links, directories, FIFOs)."""
    fd, info = _open_regular(path)
    with os.fdopen(fd, "rb") as f:
        start = max(0, info.st_size - max_bytes)
        f.seek(start)
        data = f.read(max_bytes)
    return data.decode("utf-8", errors="replace"), start == 0


def read_json(path: Path, max_bytes: int | None = None) -> Any:
    """Parse a JSON file (of at most ``max_bytes``); NaN/Infinity literals read as None. Raises FileNotFoundError or
    CorruptRecord."""
    text = read_text(path, max_bytes=max_bytes)
    try:
        return loads(text)
    except json.JSONDecodeError as e:
        raise CorruptRecord(f"{path.name} is not valid JSON ({e.msg} at line {e.lineno})") from None


# --- writes that fail for lack of room --------------------------------------------------------------------------
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # disk full, quota exceeded, file-size limit / too large
_NO_ROOM_WORDS = {errno.ENOSPC: ("No space left on device", "StorageFull"), errno.EDQUOT: ("Disk quota exceeded",),
                  errno.EFBIG: ("File too large",)}


def no_room_errno(error: BaseException | None) -> int | None:
    """ENOSPC, EDQUOT or EFBIG if ``error`` (or what caused it) is a write that found no room, else None.

    Libraries lose the errno in their own words: safetensors says "os error 28", torch.save keeps the OSError
    of a file object only as the context of its RuntimeError; both are recognised.
    """
    seen = 0
    while error is not None and seen < 20:
        if isinstance(error, OSError) and error.errno in NO_ROOM:
            return error.errno
        text = str(error)
        for code in NO_ROOM:
            if f"os error {code})" in text or f"os error {code} " in text or text.endswith(f"os error {code}") \
                    or any(w in text for w in _NO_ROOM_WORDS[code]):
                return code
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (a short write is continued; no room raises OSError)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:  # not expected from a regular file; never loop forever
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]


def write_in_place(path: Path, text: str) -> None:
    """Overwrite ``path`` with ``text`` in place (truncate, then write): needs no room for a second copy, so it
    works on a full disk where a temp file + rename cannot. Not atomic: only for a last, small record.

    Raises:
        OSError: no room; UnsafeEntry (an OSError): ``path`` is a link, a folder or a FIFO.
    """
    fd = open_regular_for_writing(path, os.O_WRONLY | os.O_CREAT)
    try:
        os.ftruncate(fd, 0)  # frees the old blocks first, so the new (smaller) record finds room
        write_all(fd, text.encode("utf-8"))
        os.fsync(fd)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None
    finally:
        os.close(fd)


def open_regular_for_writing(path: Path, flags: int, dir_fd: int | None = None) -> int:
    """``os.open(path, flags)`` of a regular file, never through a symbolic link and never blocking on a FIFO
    (``O_NONBLOCK``, then ``fstat``); with ``dir_fd``, ``path.name`` is opened in that folder.

    Raises:
        UnsafeEntry: ``path`` is a link, a folder, a FIFO or a device (the message names it and says to remove it).
        OSError: anything else (no room, no permission).
    """
    try:
        fd = os.open(path.name if dir_fd is not None else path,
                     flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o644, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):  # ENXIO: a FIFO nobody reads, opened to write
            raise UnsafeEntry(_not_regular(path, "a symbolic link" if e.errno == errno.ELOOP else
                                           "a folder" if e.errno == errno.EISDIR else "a FIFO")) from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise UnsafeEntry(_not_regular(path, kind(mode)))
    return fd


def _not_regular(path: Path, what: str) -> str:
    return (f"{path} is {what}, not a regular file: distill_nb never writes through links or into other kinds of "
            "file there; remove it (distill_nb makes the file again) and try again (e.g. Resume the run)")


def open_folder(path: Path, create: bool = False, dir_fd: int | None = None) -> int:
    """A file descriptor of the real folder ``path`` (made first if ``create``), never through a symbolic link; with
    ``dir_fd``, ``path.name`` inside that folder. Work inside it relative to the descriptor (``dir_fd=``), so that
    nothing is ever reached through a link, even one put there after this call.

    Raises:
        FileNotFoundError: missing (``create=False``). UnsafeEntry: a link, a file, a FIFO (the message names it and
        says to remove it). OSError: anything else (no permission).
    """
    name = path.name if dir_fd is not None else path
    if create:
        try:
            os.mkdir(name, 0o755, dir_fd=dir_fd)  # never follows a link: one there raises FileExistsError
        except FileExistsError:
            pass
    try:  # O_DIRECTORY fails before a FIFO's open could block; O_NONBLOCK in case it did not
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                       dir_fd=dir_fd)
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        try:
            what = kind(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        except OSError:
            what = "something else"
        raise UnsafeEntry(f"{path} is {what}, not a folder: distill_nb never follows links or replaces other files "
                          "there; remove it (distill_nb makes the folder again) and try again (e.g. Resume the "
                          "run)") from None


def remove_entry(path: str | os.PathLike) -> None:
    """Remove whatever is at ``path`` (nothing if missing), never following a link and never opening it:
    ``shutil.rmtree`` opens its argument, and opening a FIFO blocks until a writer comes. A folder goes with its
    contents (inside it, rmtree unlinks entries without opening them); a link goes as the link."""
    try:
        is_folder = stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return
    if is_folder:
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def not_utf8(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be written under (its name is not valid UTF-8: files and libraries that save text
    paths refuse it), or None."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"its name is not valid UTF-8 text (undecodable byte at character {e.start})"
    return None
