"""Writing files and folders so that nothing is left half-written: build beside the destination, then move."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def staged_folder(destination: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """A temporary folder beside ``destination`` that replaces it only if the block succeeds."""
    destination = Path(destination)
    if destination.exists() and not overwrite:
        raise FileExistsError(f"{destination} exists; choose another output folder or pass --overwrite")
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        yield tmp
        _default_permissions(tmp)
        if destination.exists():  # the old folder survives until the new one is in place
            old = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old.", dir=destination.parent))
            destination.rename(old / destination.name)
            tmp.rename(destination)
            shutil.rmtree(old)
        else:
            tmp.rename(destination)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def staged_file(destination: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """A temporary file beside ``destination`` that replaces it only if the block succeeds."""
    destination = Path(destination)
    if destination.is_dir():
        raise ValueError(f"{destination} is a folder; give a file name")
    if destination.exists() and not overwrite:
        raise FileExistsError(f"{destination} exists; choose another output file or pass --overwrite")
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".partial", dir=destination.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _default_permissions(tmp)
        os.replace(tmp, destination)
    finally:
        tmp.unlink(missing_ok=True)


def _default_permissions(staged: Path) -> None:
    # mkdtemp/mkstemp make it private (0700/0600); what we write is meant to be shared like any output
    umask = os.umask(0)
    os.umask(umask)
    for path in [staged, *(staged.rglob("*") if staged.is_dir() else ())]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
