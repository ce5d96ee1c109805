"""Word vectors: analogy, neighbours, format round trips, evaluations."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nlpkit.errors import DataError, UsageError
from nlpkit.vectors import evaluate as E
from nlpkit.vectors import wordvectors as V

from .conftest import DATA, TABLE


@pytest.fixture
def table() -> V.WordVectors:
    return V.WordVectors(list(TABLE), np.array(list(TABLE.values()), dtype=np.float32))


def test_analogy_on_the_hand_built_table(table) -> None:
    best = V.analogy(table, ["king", "woman"], ["man"], k=3)
    assert best[0][0] == "queen"
    assert {w for w, _ in best}.isdisjoint({"king", "woman", "man"})  # query words excluded
    # cosine of queen (1,0,1,0) to the unit mean of king^ + woman^ - man^
    k, w, m = (np.array(TABLE[x]) / np.linalg.norm(TABLE[x]) for x in ("king", "woman", "man"))
    mean = (k + w - m) / np.linalg.norm(k + w - m)
    assert best[0][1] == pytest.approx(mean @ (np.array(TABLE["queen"]) / np.sqrt(2)), abs=1e-6)


def test_cosmul_and_case_folding(table) -> None:
    assert V.analogy(table, ["KING", "Woman"], ["man"], k=1, method="mul")[0][0] == "queen"
    with pytest.raises(DataError, match="'KING' is not in the vocabulary"):
        V.analogy(table, ["KING"], [], fold_case=False)
    with pytest.raises(UsageError):
        V.analogy(table, ["king"], [], method="bogus")


def test_restrict_vocab_limits_the_search(table) -> None:
    # only the first four rows: queen is row 3, kings and prince are out of reach
    assert [w for w, _ in V.similar(table, "king", k=5, restrict=4)] == ["man", "queen", "woman"]


@pytest.mark.parametrize(
    ("terms", "expected"),
    [
        (["king - man + woman"], (["king", "woman"], ["man"])),
        (["king", "-", "man", "+", "woman"], (["king", "woman"], ["man"])),
        (["man", "king", "woman"], (["king", "woman"], ["man"])),
        (["paris - france + italy - x + y"], (["paris", "italy", "y"], ["france", "x"])),
        (["frog"], (["frog"], [])),
    ],
)
def test_parse_expression(terms, expected) -> None:
    assert V.parse_expression(terms) == expected


@pytest.mark.parametrize("terms", [["king", "+"], ["- king"], ["king woman"], ["king + - man"], []])
def test_parse_expression_rejects(terms) -> None:
    with pytest.raises(UsageError):
        V.parse_expression(terms)


words = st.text(st.characters(blacklist_categories=("Cs", "Zs", "Cc", "Zl", "Zp")), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(words, min_size=1, max_size=8, unique=True),
    st.integers(1, 5),
    st.sampled_from(["nlpkit", "glove", "word2vec", "word2vec-bin"]),
)
def test_format_round_trips(tmp_path_factory, ws, dim, fmt) -> None:
    rng = np.random.default_rng(len(ws) * 7 + dim)
    wv = V.WordVectors(ws, rng.standard_normal((len(ws), dim)).astype(np.float32))
    ext = {"nlpkit": ".safetensors", "glove": ".txt", "word2vec": ".vec", "word2vec-bin": ".bin"}[fmt]
    path = str(tmp_path_factory.mktemp("v") / f"v{ext}")
    V.save_as(wv, path, fmt)
    back = V.load_vectors(path, fmt)
    assert back.words == ws
    tol = 0 if fmt in ("nlpkit", "word2vec-bin") else 1e-5
    np.testing.assert_allclose(back.vectors, wv.vectors, rtol=tol, atol=tol)


def test_auto_detection(tmp_path, table) -> None:
    for name, fmt in [("a.safetensors", "nlpkit"), ("a.txt", "glove"), ("a.bin", "word2vec-bin")]:
        V.save_as(table, str(tmp_path / name), fmt)
        assert V.detect_format(str(tmp_path / name)) == fmt
    V.save_as(table, str(tmp_path / "w.txt"), "word2vec")
    assert V.detect_format(str(tmp_path / "w.txt")) == "word2vec"
    assert V.load_vectors(str(tmp_path / "w.txt")).words == list(TABLE)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"a 1 2\nb 1\n", "v.txt:2: expected a word and 2 numbers, got 1"),
        (b"a 1 nan\n", "v.txt:1: NaN or infinite"),
        (b"a 1 x\n", "v.txt:1: a value is not a number"),
        (b"", "empty vectors file"),
        (b"\xff 1 2\n", "not valid UTF-8"),
    ],
)
def test_glove_rows_are_validated(tmp_path, content, message) -> None:
    (tmp_path / "v.txt").write_bytes(content)
    with pytest.raises(DataError, match=message):
        V.load_vectors(str(tmp_path / "v.txt"), "glove")


def test_lying_word2vec_headers_are_refused_before_allocating(tmp_path) -> None:
    # 10^12 rows of 300 floats would be 1.2 TB: refused from the file size, nothing allocated
    (tmp_path / "huge.bin").write_bytes(b"1000000000000 300\nx " + struct.pack("<3f", 1, 2, 3))
    with pytest.raises(DataError, match="header promises 1000000000000 rows"):
        V.load_vectors(str(tmp_path / "huge.bin"))
    (tmp_path / "huge.vec").write_bytes(b"1000000000000 300\na 1 2\n")
    with pytest.raises(DataError, match="header promises"):
        V.load_vectors(str(tmp_path / "huge.vec"), "word2vec")
    (tmp_path / "short.vec").write_bytes(b"3 2\na 1 2\nb 3 4\n" + b" " * 40)
    with pytest.raises(DataError, match="header promises 3 rows, the file has 2"):
        V.load_vectors(str(tmp_path / "short.vec"), "word2vec")
    (tmp_path / "trunc.bin").write_bytes(
        b"2 3\na " + struct.pack("<3f", 1, 2, 3) + b"\nbbbbbbbbbbbbb " + b"\0" * 5
    )
    with pytest.raises(DataError, match="row 2: file ends inside the vector"):
        V.load_vectors(str(tmp_path / "trunc.bin"))


def test_nlpkit_file_of_another_kind_is_refused(tmp_path) -> None:
    from nlpkit.io.tensors import save_tensors

    save_tensors(str(tmp_path / "m.safetensors"), {"w": np.zeros(2, np.float32)}, {}, kind="model")
    with pytest.raises(DataError, match="not an nlpkit vectors file"):
        V.load_vectors(str(tmp_path / "m.safetensors"))


def _gensim_reference(wv: V.WordVectors, path: str, restrict: int) -> tuple[int, int, int]:
    """A plain transcription of gensim's evaluate_word_analogies loop, one question at a time."""
    n = min(restrict, len(wv))
    ok = {}
    for i in reversed(range(n)):
        ok[wv.words[i].upper()] = i
    unit = wv.vectors[:n] / np.linalg.norm(wv.vectors[:n], axis=1, keepdims=True)
    correct = incorrect = oov = 0
    for line in Path(path).read_text().splitlines():
        if line.startswith(": "):
            continue
        parts = [w.upper() for w in line.split()]
        if len(parts) != 4:
            continue
        a, b, c, expected = parts
        if any(w not in ok for w in parts):
            oov += 1
            continue
        mean = unit[ok[b]] + unit[ok[c]] - unit[ok[a]]
        dists = unit @ (mean / np.linalg.norm(mean))
        best = [i for i in np.argsort(-dists)[:8] if i not in {ok[a], ok[b], ok[c]}][:5]
        predicted = None
        for i in best:  # gensim: the first of the top 5 that is not an input (case folded) ...
            predicted = wv.words[i].upper()
            if predicted in ok and predicted not in {a, b, c}:
                break
        if predicted == expected:  # ... and otherwise the fifth, which is an input: wrong
            correct += 1
        else:
            incorrect += 1
    return correct, incorrect, oov


def test_analogy_evaluation_matches_gensim_rules(table) -> None:
    path = str(DATA / "questions-tiny.txt")
    report = E.evaluate_analogies(table, path, restrict=300000)
    ref = _gensim_reference(table, path, 300000)
    assert (report["total"]["correct"], report["total"]["incorrect"], report["oov"]) == ref
    assert report["questions"] == 5 and report["oov"] == 1
    assert [s["section"] for s in report["sections"]] == ["royal", "plural"]
    assert report["sections"][0]["correct"] == 2  # both cases of man:king::woman:queen


def test_evaluation_on_random_vectors_matches_reference(tmp_path) -> None:
    rng = np.random.default_rng(0)
    ws = [f"w{i}" for i in range(300)]
    wv = V.WordVectors(ws, rng.standard_normal((300, 8)).astype(np.float32))
    lines = [": a"] + [" ".join(rng.choice(ws, 4, replace=False)) for _ in range(150)]
    lines += [": b"] + [" ".join(rng.choice(ws, 4, replace=False)).upper() for _ in range(150)]
    path = tmp_path / "q.txt"
    path.write_text("\n".join(lines) + "\n")
    for restrict in (300, 200):
        report = E.evaluate_analogies(wv, str(path), restrict=restrict)
        assert (report["total"]["correct"], report["total"]["incorrect"], report["oov"]) == _gensim_reference(
            wv, str(path), restrict
        )


def test_top_five_all_case_variants_of_inputs_counts_as_wrong(tmp_path) -> None:
    """gensim counts such a question as incorrect (nlpkit once dropped it)."""
    rng = np.random.default_rng(1)
    base = {w: rng.standard_normal(16) for w in ("man", "king", "woman", "queen")}
    query = base["king"] + base["woman"] - base["man"]
    words, vecs = list(base), [base[w] for w in base]
    for w in ("King", "KING", "Woman", "WOMAN", "Man"):  # case variants right on the query
        words.append(w)
        vecs.append(query + 0.01 * rng.standard_normal(16))
    words += [f"x{i}" for i in range(40)]
    vecs += [rng.standard_normal(16) for _ in range(40)]
    wv = V.WordVectors(words, np.array(vecs, dtype=np.float32))
    path = tmp_path / "q.txt"
    path.write_text(": s\nman king woman queen\n")
    report = E.evaluate_analogies(wv, str(path))
    assert (report["total"]["correct"], report["total"]["incorrect"]) == (0, 1)
    assert _gensim_reference(wv, str(path), 300000)[:2] == (0, 1)


def test_evaluation_rejects_questions_without_section(tmp_path, table) -> None:
    (tmp_path / "q.txt").write_text("man king woman queen\n")
    with pytest.raises(DataError, match="q.txt:1: question before"):
        E.evaluate_analogies(table, str(tmp_path / "q.txt"))


def test_word_pairs_spearman(table) -> None:
    report = E.evaluate_word_pairs(table, str(DATA / "pairs-tiny.tsv"))
    assert report["pairs"] == 4 and report["oov"] == 1
    sims = [
        float(table.unit(table.index[a]) @ table.unit(table.index[b]))
        for a, b in [("king", "queen"), ("king", "man"), ("man", "woman"), ("queen", "kings")]
    ]
    gold_rank = np.array([4, 3, 2, 1])
    model_rank = np.argsort(np.argsort(sims)) + 1
    expected = np.corrcoef(gold_rank, model_rank)[0, 1]
    assert report["spearman"] == pytest.approx(expected)


def test_rank_averages_ties() -> None:
    assert E._rank(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]


@settings(max_examples=40, deadline=None)
@given(st.lists(words, min_size=1, max_size=12))
def test_lazy_vocabulary_agrees_with_the_index(tmp_path_factory, ws) -> None:
    path = str(tmp_path_factory.mktemp("lazy") / "v.safetensors")
    V.WordVectors(ws, np.ones((len(ws), 2), np.float32)).save(path)
    lazy, eager = V.load_vectors(path), V.load_vectors(path)
    assert eager.words == ws
    for i, w in enumerate(ws):
        assert lazy.word(i) == w
        assert lazy.lookup(w, fold_case=False) == eager.index[w]  # first occurrence wins
    assert lazy.lookup("\n") is None and lazy.lookup("") is None


def test_plot_vectors_draws_the_words_and_the_parallelogram(tmp_path) -> None:
    """PCA to 2-D: the words drawn; king - man + woman ~ queen as two parallel arrows."""
    import re

    import numpy as np

    from nlpkit.vectors.picture import project
    from nlpkit.vectors.wordvectors import WordVectors
    from tests.conftest import run_cli

    # (royal, male, female, person): every norm sqrt(2), so king - man = queen - woman holds for
    # the unit vectors the picture projects too
    words = {"king": [1, 1, 0, 0], "queen": [1, 0, 1, 0], "man": [0, 1, 0, 1], "woman": [0, 0, 1, 1],
             "prince": [1, 1, 0, 0.3]}  # fmt: skip
    path = str(tmp_path / "t.safetensors")
    WordVectors(list(words), np.array(list(words.values()), dtype=np.float32)).save(path)
    out = tmp_path / "v.svg"
    r = run_cli("plot", "--vectors", path, "--words", "king,man,woman,queen,prince", "-o", str(out))
    assert r.returncode == 0, r.stderr
    svg = out.read_text()
    for w in ("king", "man", "woman", "queen", "prince"):
        assert f">{w}</text>" in svg
    arrows = re.findall(
        r'<line x1="([\d.]+)" y1="([\d.]+)" x2="([\d.]+)" y2="([\d.]+)" stroke="#d62728"', svg
    )
    lines = [np.array([float(v) for v in p]) for p in arrows]
    assert len(lines) == 2
    ab, cd = (line[2:] - line[:2] for line in lines)  # man -> king and woman -> queen: the same move
    assert np.allclose(ab, cd, atol=1.0)
    xy = project(np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], dtype=float))
    assert xy.shape == (4, 2)
    bad = run_cli("plot", "--vectors", path, "--words", "king,nosuchword,man", "-o", str(out))
    assert bad.returncode == 2 and b"not in the vocabulary: nosuchword" in bad.stderr
    bad = run_cli("plot", "--vectors", path, "--words", "king,man", "-o", str(out))
    assert bad.returncode == 2 and b"at least three" in bad.stderr
    assert run_cli("plot", "-o", str(out)).returncode == 2
