"""Real small file systems for storage-fault tests: a tmpfs that can be filled or made read-only.

Mounting needs root (as in CI); without it the tests that use these skip, saying why.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

FILLER = "filler"


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "600k") -> Iterator[Path]:
    """Mount a tmpfs of `size` on `path` for the duration; always unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs the storage-fault tests as root)")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill(mount: Path) -> None:
    """Fill the file system at `mount` until writes fail with ENOSPC."""
    block = bytes(4096)
    fd = os.open(mount / FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        while os.write(fd, block):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    assert os.statvfs(mount).f_bavail == 0


def free(mount: Path) -> None:
    """Undo `fill`."""
    (mount / FILLER).unlink()


def remount(mount: Path, mode: str) -> None:
    """Make the file system at `mount` read-only ("ro") or writable again ("rw")."""
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount)], check=True)
