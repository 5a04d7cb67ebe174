"""Bounded reading of zip archives (DICOM series zips, Sentinel-2 ``.SAFE.zip`` products).

A member is never inflated whole to find out what it is: :func:`read_head` reads its first bytes through a stream,
:func:`open_member` gives a stream for parsers that stop early (pydicom with ``stop_before_pixels``), and
:func:`read_member` reads a whole member only when its declared size is within a bound per kind of member
(:data:`LIMITS`), and stops at the bound even when the zip's header understates the size. Beyond the bound the
member is refused in one line that names the archive and the member.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import IO

from .errors import InputError

MiB = 1 << 20
#: the largest member read whole, per kind (an ESA metadata file is < 2 MiB; an enhanced multi-frame DICOM
#: object of a big CT is well under 2 GiB)
LIMITS = {
    "metadata": 64 * MiB,  # XML / JSON metadata (MTD_MSIL2A.xml, manifest.safe, dataset.json)
    "dicom": 2048 * MiB,  # one DICOM object with its pixel data
}


def open_zip(path: str | Path) -> zipfile.ZipFile:
    """Open a zip archive, or refuse it in one line."""
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"not a readable zip archive ({exc})", path) from None


def _size(n: int) -> str:
    return f"{n / MiB:.0f} MiB" if n >= MiB else f"{n} bytes"


def _refuse(z: zipfile.ZipFile, name: str, size: int, limit: int, kind: str) -> InputError:
    return InputError(f"zip member {name} inflates to {_size(size)}, more than a {kind} member may hold "
                      f"({_size(limit)}); refused", z.filename or "zip archive")


def read_member(z: zipfile.ZipFile, name: str, kind: str) -> bytes:
    """The whole member ``name`` when it inflates to at most ``LIMITS[kind]`` bytes; else a one-line refusal.

    The declared size is checked first; the read itself stops one byte past the bound, so a lying header costs no
    more memory than the bound."""
    limit = LIMITS[kind]
    try:
        info = z.getinfo(name)
        if info.file_size > limit:
            raise _refuse(z, name, info.file_size, limit, kind)
        with z.open(info) as fh:
            data = fh.read(limit + 1)
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError) as exc:
        raise InputError(f"cannot read zip member {name} ({type(exc).__name__}: {exc})",
                         z.filename or "zip archive") from None
    if len(data) > limit:
        raise _refuse(z, name, len(data), limit, kind)
    return data


def read_head(z: zipfile.ZipFile, name: str, n: int) -> bytes:
    """The first ``n`` bytes of a member (inflating only what is needed)."""
    with z.open(name) as fh:
        return fh.read(n)


def open_member(z: zipfile.ZipFile, name: str) -> IO[bytes]:
    """A seekable read stream over a member (inflated as it is read)."""
    return z.open(name)
