"""Atomic writes: a reader sees the old file or the new one, never half of one.

Staging files and folders live beside their target under a hidden name that carries the
writer's process id (``.NAME.memlaw-staging.PID.XXXX``). A writer killed mid-save leaves one
behind; the next write to the same target removes those whose process is gone.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from memlaw.errors import MemlawError

STAGING_TAG = "memlaw-staging"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _staging_prefix(path: Path) -> str:
    return f".{path.name}.{STAGING_TAG}.{os.getpid()}."


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale_staging(path: str | Path) -> list[Path]:
    """Remove the staging leftovers of writers of ``path`` that were killed; return them.

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> (folder / ".run.memlaw-staging.999999999.x").mkdir()
    >>> [p.name for p in remove_stale_staging(folder / "run")]
    ['.run.memlaw-staging.999999999.x']
    """
    path = Path(path)
    marker = f".{path.name}.{STAGING_TAG}."
    removed = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(marker):
            continue
        pid = entry.name[len(marker) :].split(".", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue  # a live writer's staging (or not ours): leave it
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "a.bin"
    >>> atomic_write_bytes(target, b"hello")
    >>> target.read_bytes()
    b'hello'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(path)
    handle, staging = tempfile.mkstemp(prefix=_staging_prefix(path), dir=path.parent)
    try:
        os.fchmod(handle, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text.

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> atomic_write_text(target, "hello")
    >>> target.read_text()
    'hello'
    """
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


def atomic_write_dir(path: str | Path, fill: Callable[[Path], None], *, overwrite: bool) -> None:
    """Build a folder with ``fill(staging)`` and move it into place as a whole.

    An existing ``path`` is replaced only with ``overwrite``; on any failure nothing changes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(path)
    staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(path), dir=path.parent))
    try:
        staging.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; give the usual permissions
        fill(staging)
        if path.exists():
            if not overwrite:
                raise FileExistsError(path)
            retired = Path(tempfile.mkdtemp(prefix=_staging_prefix(path), dir=path.parent))
            os.replace(path, retired / "x")
            os.replace(staging, path)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def atomic_copy_dir(source: str | Path, path: str | Path) -> None:
    """Copy the folder ``source`` to ``path`` whole or not at all, replacing ``path``.

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "a").mkdir(); _ = (root / "a" / "x").write_text("1")
    >>> atomic_copy_dir(root / "a", root / "b")
    >>> (root / "b" / "x").read_text()
    '1'
    """
    atomic_write_dir(
        path, lambda staging: shutil.copytree(source, staging, dirs_exist_ok=True), overwrite=True
    )


# --- checks before the work ----------------------------------------------------------------


def check_writable(
    path: str | Path, what: str, *, folder: bool = False, overwrite: bool = True
) -> None:
    """Fail now, with a one-line MemlawError, if ``path`` could not be written later.

    ``what`` names the path for the user (``--out``); ``folder`` says whether ``path`` is to be
    a folder (written by :func:`atomic_write_dir`) or a file. Nothing is created: the check
    makes and removes one empty file in the nearest existing folder, which is what an atomic
    write needs (the permission bits alone say nothing to root or on a read-only mount).

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> check_writable(folder / "new" / "law.json", "--out")
    >>> check_writable(folder, "--out")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    memlaw.errors.MemlawError: --out '...' is a folder: give a file name
    """
    path = Path(path)
    if path.is_dir() and not folder:
        raise MemlawError(f"{what} '{path}' is a folder: give a file name")
    if path.exists() and folder and not path.is_dir():
        raise MemlawError(f"{what} '{path}' is a file, not a folder: give a folder name")
    if path.exists() and folder and not overwrite:
        raise MemlawError(f"{what} '{path}' already exists: pick another or pass --overwrite")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise MemlawError(f"{what} '{path}' cannot be written: '{parent}' is not a folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=f".{STAGING_TAG}.{os.getpid()}.", dir=parent)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise MemlawError(f"{what} '{path}' cannot be written: {reason} in '{parent}'") from None
    os.close(handle)
    os.unlink(probe)
