"""rag-index: a document's identity is its resolved path, and --sync removes only what its
sources justify (finding 2 of the hostile-input review)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nlpkit.cli.main import app
from nlpkit.rag.index import open_index

from .conftest import run_cli


def _cli(*args: str, input: str | None = None) -> subprocess.CompletedProcess[bytes]:
    r = CliRunner().invoke(app, list(args), input=input)
    return subprocess.CompletedProcess(args, r.exit_code, r.stdout_bytes, r.stderr_bytes)


def _index(
    tmp: Path, *sources: str, extra: tuple[str, ...] = (), input: str | None = None
) -> subprocess.CompletedProcess[bytes]:
    return _cli("rag-index", *sources, "-o", str(tmp / "kb.idx"), "-m", "hash:64", *extra, input=input)


def _summary(r: subprocess.CompletedProcess[bytes]) -> str:
    assert r.returncode == 0, r.stderr.decode()
    return r.stderr.decode().strip().splitlines()[-1]


def _folder(root: Path, name: str, n: int) -> Path:
    folder = root / name
    (folder / "sub").mkdir(parents=True)
    for i in range(n):
        (folder / f"note{i}.txt").write_text(f"Note {i} of {name}.\n\nIt is about {name} topic {i}.\n")
    (folder / "sub" / "deep.md").write_text(f"# Deep in {name}\n\nZephyr launch code for {name}.\n")
    return folder


def _paths(tmp: Path) -> list[str]:
    with open_index(tmp / "kb.idx") as idx:
        return sorted(p for (p,) in idx.conn.execute("SELECT path FROM documents"))


def test_one_folder_spelled_five_ways_is_one_copy_embedded_once(tmp_path: Path, monkeypatch) -> None:
    docs = _folder(tmp_path, "docs", 3)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(docs)
    monkeypatch.chdir(tmp_path)
    assert "files 4 added" in _summary(_index(tmp_path, "docs"))
    spellings = ["./docs", f"../{tmp_path.name}/docs", str(docs), "elsewhere/../docs/", "link"]
    for spelling in spellings:
        line = _summary(_index(tmp_path, spelling))
        assert "files 0 added, 0 changed, 4 unchanged, 0 removed, 0 skipped; chunks 0 embedded" in line, (
            spelling
        )
    # two spellings in one run: each document once, without a warning
    r = _index(tmp_path, "docs", str(docs / "note1.txt"), "link/sub/*.md")
    assert "files 0 added, 0 changed, 4 unchanged" in _summary(r) and "twice" not in r.stderr.decode()
    real = docs.resolve()
    assert _paths(tmp_path) == sorted(
        str(real / n) for n in ("note0.txt", "note1.txt", "note2.txt", "sub/deep.md")
    )
    # top-k holds no duplicates; a citation under the current folder reads relative to it
    r = _cli("rag-ask", "kb.idx", "Zephyr launch code docs", "--retrieve-only", "--json", "-k", "4")
    chunks = json.loads(r.stdout)["chunks"]
    assert chunks[0]["path"] == "docs/sub/deep.md"
    assert len({c["path"] for c in chunks}) == len(chunks) == 4
    monkeypatch.chdir(tmp_path / "elsewhere")  # ... and absolute from anywhere else
    r = _cli("rag-ask", "../kb.idx", "Zephyr launch code docs", "--retrieve-only", "--json", "-k", "1")
    assert json.loads(r.stdout)["chunks"][0]["path"] == str(real / "sub" / "deep.md")


def test_sync_with_a_folder_holding_no_documents_is_refused(tmp_path: Path) -> None:
    docs = _folder(tmp_path, "docs", 3)
    _summary(_index(tmp_path, str(docs)))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "image.png").write_bytes(b"\x89PNG")  # nothing indexable either
    before = _paths(tmp_path)
    for source in (str(empty), str(tmp_path / "emp*")):  # a folder, a pattern matching it
        r = _index(tmp_path, str(docs), source, extra=("--sync",))
        err = r.stderr.decode()
        assert r.returncode == 2, err
        assert len(err.strip().splitlines()) == 1 and "no documents" in err and source in err
        assert _paths(tmp_path) == before
    r = run_cli("rag-index", str(empty), "-o", str(tmp_path / "new.idx"), "-m", "hash:64", "--sync")
    assert r.returncode == 2 and not (tmp_path / "new.idx").exists()
    assert "files 0 added" in _summary(_index(tmp_path, str(empty)))  # without --sync: nothing to do


def test_sync_of_one_folder_keeps_the_documents_of_other_sources(tmp_path: Path, monkeypatch) -> None:
    a, b = _folder(tmp_path, "a", 3), _folder(tmp_path, "b", 2)
    _summary(_index(tmp_path, str(a)))
    _summary(_index(tmp_path, str(b)))
    _summary(_index(tmp_path, "-", input='{"id": "rec-1", "text": "a record"}\n'))
    everything = _paths(tmp_path)
    assert len(everything) == 8
    assert "0 removed" in _summary(_index(tmp_path, str(a), extra=("--sync",)))
    monkeypatch.chdir(tmp_path)
    assert "0 removed" in _summary(_index(tmp_path, "a/sub", extra=("--sync",)))
    assert "0 removed" in _summary(_index(tmp_path, "b/note0.txt", extra=("--sync",)))
    assert _paths(tmp_path) == everything


def test_sync_removes_just_the_deleted_file_of_its_own_folder(tmp_path: Path, monkeypatch) -> None:
    a, b = _folder(tmp_path, "a", 3), _folder(tmp_path, "b", 2)
    _summary(_index(tmp_path, str(a)))
    _summary(_index(tmp_path, str(b)))
    before = _paths(tmp_path)
    (a / "note1.txt").unlink()
    assert "0 removed" in _summary(_index(tmp_path, str(a)))  # without --sync: kept
    monkeypatch.chdir(tmp_path)
    line = _summary(_index(tmp_path, "./a", extra=("--sync",)))  # another spelling of a
    assert "files 0 added, 0 changed, 3 unchanged, 1 removed" in line
    assert _paths(tmp_path) == [p for p in before if p != str((a / "note1.txt").resolve())]
    # a pattern covers the documents it would match: the deleted one, not its neighbours
    (a / "note2.txt").unlink()
    (b / "note0.txt").unlink()
    line = _summary(_index(tmp_path, "a/*.txt", extra=("--sync",)))
    assert "files 0 added, 0 changed, 1 unchanged, 1 removed" in line
    assert str((a / "sub" / "deep.md").resolve()) in _paths(tmp_path)
    assert str((b / "note0.txt").resolve()) in _paths(tmp_path)  # b was not a source
    # a file source covers that file only: one that is no longer indexable goes
    (b / "note1.txt").write_bytes(b"\x00\x01")
    line = _summary(_index(tmp_path, "b/note1.txt", extra=("--sync",)))
    assert "files 0 added, 0 changed, 0 unchanged, 1 removed, 1 skipped" in line
    assert str((b / "note0.txt").resolve()) in _paths(tmp_path)
    r = _index(tmp_path, "b/note0.txt", extra=("--sync",))
    assert r.returncode == 66  # a named file that is gone is missing input, as before
    assert "1 unchanged, 1 removed, 1 skipped" in _summary(_index(tmp_path, "b", extra=("--sync",)))
    left = ["a/note0.txt", "a/sub/deep.md", "b/sub/deep.md"]
    assert _paths(tmp_path) == [str((tmp_path / n).resolve()) for n in left]


def test_records_sync_removes_only_records(tmp_path: Path) -> None:
    a = _folder(tmp_path, "a", 2)
    _summary(_index(tmp_path, str(a)))
    _summary(_index(tmp_path, "-", input='{"id": 1, "text": "one"}\n{"id": 2, "text": "two"}\n'))
    line = _summary(_index(tmp_path, "-", extra=("--sync",), input='{"id": 2, "text": "two"}\n'))
    assert "1 unchanged, 1 removed" in line
    assert _paths(tmp_path) == sorted([*(str(p.resolve()) for p in a.rglob("*.*")), "2"])


def test_an_index_with_paths_as_typed_is_rekeyed_without_embedding(tmp_path: Path, monkeypatch) -> None:
    """An index built before the rule stored paths as typed (relative, or absolute through a
    link, sometimes both for one file). A run from the folder it was built in finds them."""
    docs = _folder(tmp_path, "docs", 2)
    (tmp_path / "link").symlink_to(docs)
    monkeypatch.chdir(tmp_path)
    old = [("docs/note0.txt", docs / "note0.txt"), ("docs/note1.txt", docs / "note1.txt"),
           (str(tmp_path / "link" / "note1.txt"), docs / "note1.txt"),  # the duplicate
           ("docs/sub/deep.md", docs / "sub" / "deep.md")]  # fmt: skip
    records = "".join(json.dumps({"path": k, "text": f.read_text()}) + "\n" for k, f in old)
    _summary(_index(tmp_path, "-", input=records))  # stores the keys exactly as the old code did
    (docs / "sub" / "deep.md").write_text("# Changed\n\nNew text.\n")
    line = _summary(_index(tmp_path, "docs"))
    assert "files 0 added, 1 changed, 2 unchanged, 1 removed, 0 skipped; chunks 1 embedded" in line
    real = docs.resolve()
    assert _paths(tmp_path) == sorted(str(real / n) for n in ("note0.txt", "note1.txt", "sub/deep.md"))
    assert "3 unchanged, 0 removed" in _summary(_index(tmp_path, str(docs), extra=("--sync",)))


def test_update_refuses_a_bare_true_for_sync(tmp_path: Path) -> None:
    from nlpkit.rag.index import open_writer
    from nlpkit.rag.indexing import SyncScope, file_documents, update

    docs = _folder(tmp_path, "docs", 2)
    with open_writer(tmp_path / "kb.idx", {"encoder": "hash:32"}) as w:
        with pytest.raises(TypeError):
            update(w, [], sync=True)  # type: ignore[arg-type]
        s = update(w, file_documents([str(docs)]), sync=SyncScope.of([str(docs)]))
    assert s.added == 3 and os.path.isabs(_paths(tmp_path)[0])
