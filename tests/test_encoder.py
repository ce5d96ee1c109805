"""Sentence encoder: parity with transformers, ONNX vs torch, batching invariants, the ONNX cache, CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from nlpkit.embed import encoder as enc_mod
from nlpkit.embed import onnx as enc_onnx
from nlpkit.embed.encoder import load_encoder
from nlpkit.errors import DataError, InputMissing, UsageError
from nlpkit.io.tensors import sha256_file
from tests.bert_fixture import make_tiny_bert

pytest.importorskip("torch")

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Short text.",
    "",
    "Hello, world! How are you doing today? Unseen zebra words get split into pieces.",
    "A cat.",
    "Paris is the capital of France; Rome is the capital of Italy.",
    "x",
]
needs_ort = pytest.mark.skipif(not enc_mod._onnxruntime_available(), reason="onnxruntime not installed")


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store for the module, so the tiny BERT is exported to ONNX once, not per test."""
    return tmp_path_factory.mktemp("encoder-home")


@pytest.fixture
def onnx_enc(tiny_bert: Path, shared_home: Path, monkeypatch: pytest.MonkeyPatch) -> enc_mod.SentenceEncoder:
    monkeypatch.setenv("NLPKIT_HOME", str(shared_home))
    return load_encoder(str(tiny_bert), backend="onnx")


@pytest.fixture
def torch_enc(tiny_bert: Path) -> enc_mod.SentenceEncoder:
    return load_encoder(str(tiny_bert), backend="torch")


def test_torch_matches_transformers(tiny_bert: Path, torch_enc: enc_mod.SentenceEncoder) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    ref = transformers.BertModel.from_pretrained(str(tiny_bert)).eval()
    encs = torch_enc.tokenizer.encode_batch(TEXTS)
    T = max(len(e.ids) for e in encs)
    ids = torch.tensor([e.ids + [0] * (T - len(e.ids)) for e in encs])
    mask = torch.tensor([[1] * len(e.ids) + [0] * (T - len(e.ids)) for e in encs])
    with torch.no_grad():
        h = ref(input_ids=ids, attention_mask=mask).last_hidden_state
    m = mask.unsqueeze(-1).float()
    want = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=1).numpy()
    got = torch_enc.encode(TEXTS, batch_size=3)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_bert_prefix_and_pooler_are_accepted(tmp_path: Path, torch_enc: enc_mod.SentenceEncoder) -> None:
    prefixed = make_tiny_bert(tmp_path / "prefixed", prefix="bert.")
    got = load_encoder(str(prefixed), backend="torch").encode(TEXTS)
    np.testing.assert_array_equal(got, torch_enc.encode(TEXTS))


@needs_ort
def test_onnx_matches_torch(onnx_enc: enc_mod.SentenceEncoder, torch_enc: enc_mod.SentenceEncoder) -> None:
    assert onnx_enc.backend == "onnx" and torch_enc.backend == "torch"
    a, b = onnx_enc.encode(TEXTS, batch_size=4), torch_enc.encode(TEXTS, batch_size=4)
    assert (a * b).sum(1).min() > 0.9999
    np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("backend", ["torch", pytest.param("onnx", marks=needs_ort)])
def test_order_padding_and_norms(backend: str, request: pytest.FixtureRequest) -> None:
    enc = request.getfixturevalue(f"{backend}_enc")
    batched = enc.encode(TEXTS, batch_size=3)  # sorted by length inside, padded per batch
    alone = np.concatenate([enc.encode([t]) for t in TEXTS])  # no padding at all
    assert batched.dtype == np.float32 and batched.shape == (len(TEXTS), enc.dim)
    np.testing.assert_allclose(batched, alone, atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(batched[0], batched[1])
    assert enc.encode([]).shape == (0, enc.dim)


def test_truncates_to_max_length(tiny_bert: Path, torch_enc: enc_mod.SentenceEncoder, tmp_path: Path) -> None:
    assert torch_enc.max_length == 64  # no sentence_bert_config.json: the position table's size
    long = " ".join(["the quick brown fox"] * 100)
    assert torch_enc.encode([long]).shape == (1, torch_enc.dim)
    folder = make_tiny_bert(tmp_path / "m")
    (folder / "sentence_bert_config.json").write_text('{"max_seq_length": 8}')
    short = load_encoder(str(folder), backend="torch")
    assert short.max_length == 8
    np.testing.assert_allclose(short.encode([long]), short.encode([long + " more words"]), atol=1e-6)


@needs_ort
def test_onnx_cache_written_once_then_reused(tiny_bert: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_export = enc_onnx.export_onnx
    monkeypatch.setattr(enc_onnx, "export_onnx", lambda *a: calls.append(a) or real_export(*a))
    first = load_encoder(str(tiny_bert), backend="onnx").encode(TEXTS)
    path = enc_onnx.onnx_cache_dir(tiny_bert) / "model.onnx"
    assert path.is_file() and path.with_suffix(".json").is_file() and len(calls) == 1
    second = load_encoder(str(tiny_bert), backend="onnx").encode(TEXTS)
    assert len(calls) == 1
    np.testing.assert_array_equal(first, second)
    assert not [p for p in path.parent.iterdir() if ".tmp-" in p.name]


@needs_ort
def test_concurrent_loads_export_once(tiny_bert: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    calls = []
    real_export = enc_onnx.export_onnx
    monkeypatch.setattr(enc_onnx, "export_onnx", lambda *a: calls.append(a) or real_export(*a))
    results: list[tuple[Path, bool]] = []
    threads = [
        threading.Thread(target=lambda: results.append(enc_onnx.ensure_onnx(tiny_bert))) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sorted(fresh for _, fresh in results) == [False, False, True]


@needs_ort
@pytest.mark.parametrize("damage", ["garbage", "truncate", "flip"])
def test_damaged_onnx_cache_is_exported_again(
    damage: str, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    want = load_encoder(str(tiny_bert), backend="onnx").encode(TEXTS)
    path = enc_onnx.onnx_cache_dir(tiny_bert) / "model.onnx"
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"not an onnx graph" * 10)
    elif damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:  # same size, one weight byte changed: only the receipt's SHA-256 notices
        path.write_bytes(data[:-100] + bytes([data[-100] ^ 0xFF]) + data[-99:])
    calls = []
    real_export = enc_onnx.export_onnx
    monkeypatch.setattr(enc_onnx, "export_onnx", lambda *a: calls.append(a) or real_export(*a))
    np.testing.assert_array_equal(load_encoder(str(tiny_bert), backend="onnx").encode(TEXTS), want)
    assert len(calls) == 1


@needs_ort
def test_unloadable_graph_with_valid_receipt_is_redone(tiny_bert: Path) -> None:
    load_encoder(str(tiny_bert), backend="onnx")
    path = enc_onnx.onnx_cache_dir(tiny_bert) / "model.onnx"
    path.write_bytes(b"\x00" * 64)  # and a receipt that vouches for it
    receipt = {"sha256": sha256_file(path), "size": 64}
    path.with_suffix(".json").write_text(json.dumps(receipt))
    assert load_encoder(str(tiny_bert), backend="onnx").encode(["hi"]).shape == (1, 32)


def test_auto_falls_back_to_torch_without_onnxruntime(
    tiny_bert: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(enc_mod, "_onnxruntime_available", lambda: False)
    assert load_encoder(str(tiny_bert)).backend == "torch"
    assert "onnxruntime is not installed" in capsys.readouterr().err


def test_load_errors(tiny_bert: Path, tmp_path: Path) -> None:
    with pytest.raises(InputMissing, match="no such model folder"):
        load_encoder(str(tmp_path / "absent"))
    with pytest.raises(UsageError):
        load_encoder(str(tiny_bert), backend="tensorflow")
    bad = make_tiny_bert(tmp_path / "bad")
    (bad / "tokenizer.json").unlink()
    with pytest.raises(InputMissing, match="tokenizer.json"):
        load_encoder(str(bad))
    bad = make_tiny_bert(tmp_path / "bad2")
    (bad / "config.json").write_text('{"model_type": "bert", "hidden_size": 30, "num_attention_heads": 4}')
    with pytest.raises(DataError, match="config"):
        load_encoder(str(bad), backend="torch")
    bad = make_tiny_bert(tmp_path / "bad3")
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 48}))
    with pytest.raises(DataError, match="shape"):
        load_encoder(str(bad), backend="torch")
    (bad / "model.safetensors").write_bytes(b"\xff" * 16)
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DataError):
        load_encoder(str(bad), backend="torch")


def test_named_model_not_pulled_exits_66(runner, tiny_bert: Path) -> None:  # type: ignore[no-untyped-def]
    from nlpkit.cli.main import app

    result = runner.invoke(app, ["embed", "-m", "minilm-l6-v2", "hello"])
    assert result.exit_code == 66
    assert "nlpkit models pull minilm-l6-v2" in result.stderr


# --------------------------------------------------------------------------- CLI


def test_cli_jsonl_passes_fields_through(runner, tiny_bert: Path) -> None:  # type: ignore[no-untyped-def]
    from nlpkit.cli.main import app

    stdin = 'Short text.\n\n{"id": 7, "text": "A cat."}\n{"id": 8, "text": ""}\n'
    result = runner.invoke(app, ["embed", "-m", str(tiny_bert), "--backend", "torch"], input=stdin)
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r.get("id") for r in rows] == [None, 7, 8]  # the blank line is skipped, "" is embedded
    want = load_encoder(str(tiny_bert), backend="torch").encode(["Short text.", "A cat.", ""])
    np.testing.assert_allclose(np.array([r["embedding"] for r in rows]), want, atol=1e-6)


def test_cli_safetensors_matrix(runner, tiny_bert: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from nlpkit.cli.main import app
    from nlpkit.io.tensors import load_tensors

    out = tmp_path / "e.safetensors"
    args = ["embed", "-m", str(tiny_bert), "--backend", "torch", "--batch-size", "2", "-o", str(out)]
    result = runner.invoke(app, [*args, *TEXTS[:2], "A cat."])
    assert result.exit_code == 0, result.stderr
    tensors, meta = load_tensors(str(out))
    assert tensors["embeddings"].shape == (3, 32)
    assert meta["nlpkit.kind"] == "sentence-embeddings" and meta["nlpkit.dim"] == "32"
    assert json.loads(meta["nlpkit.config"])["model"] == str(tiny_bert)


@pytest.mark.parametrize(
    ("args", "stdin", "code", "message"),
    [
        (["--oov", "skip", "x"], None, 2, "--oov applies to word vectors only"),
        (["--vectors", "glove-6b-50d", "x"], None, 2, "--vectors applies to word vectors only"),
        (["--backend", "jax", "x"], None, 2, "unknown --backend"),
        (["--batch-size", "0", "x"], None, 2, "batch-size"),
        ([], '{"text": 3}\n', 65, "must be a string"),
        ([], "{not json\n", 65, "invalid JSON"),
        ([], "\n\n", 65, "empty input"),
    ],
)
def test_cli_bad_input_exit_codes(  # type: ignore[no-untyped-def]
    runner, tiny_bert: Path, args: list[str], stdin: str | None, code: int, message: str
) -> None:
    from nlpkit.cli.main import app

    result = runner.invoke(app, ["embed", "-m", str(tiny_bert), "--backend", "torch", *args], input=stdin)
    assert result.exit_code == code, result.stderr
    assert message in result.stderr


@needs_ort
def test_cli_real_pipe(onnx_enc: enc_mod.SentenceEncoder, tiny_bert: Path, shared_home: Path) -> None:
    from tests.conftest import run_cli

    stdin = "".join(f'{{"n": {i}, "text": "{t}"}}\n' for i, t in enumerate(TEXTS * 20)).encode()
    r = run_cli("embed", "-m", str(tiny_bert), env={"NLPKIT_HOME": str(shared_home)}, input=stdin)
    assert r.returncode == 0 and r.stderr == b""  # the graph is cached: nothing to say
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["n"] for row in rows] == list(range(len(TEXTS) * 20))
    np.testing.assert_allclose(rows[3]["embedding"], onnx_enc.encode([TEXTS[3]])[0], atol=1e-6)


def test_cli_sentence_flags_need_model(runner) -> None:  # type: ignore[no-untyped-def]
    from nlpkit.cli.main import app

    result = runner.invoke(app, ["embed", "--backend", "torch", "king"])
    assert result.exit_code == 2
    assert "add -m MODEL" in result.stderr


def test_cli_unknown_model_exits_66(runner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from nlpkit.cli.main import app

    result = runner.invoke(app, ["embed", "-m", str(tmp_path / "nope"), "x"])
    assert result.exit_code == 66
    assert "minilm-l6-v2" in result.stderr


# --------------------------------------------------------------------------- the real model


@pytest.mark.slow
def test_minilm_matches_sentence_transformers(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers >= 6
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    except ImportError:
        from sentence_transformers.models import Normalize, Pooling, Transformer
    real = Path(os.path.expanduser("~/.cache/nlpkit/models/minilm-l6-v2"))
    if not (real / "asset.json").is_file():
        pytest.skip("minilm-l6-v2 is not pulled in ~/.cache/nlpkit")
    monkeypatch.setenv("NLPKIT_HOME", str(real.parent.parent))
    ref = SentenceTransformer(
        modules=[Transformer(str(real), max_seq_length=256), Pooling(384, "mean"), Normalize()],
        device="cpu",
    )
    texts = [*TEXTS, " ".join(["a long sentence about many things"] * 80)]  # > 256 tokens
    want = ref.encode(texts, batch_size=3)
    for backend in ["torch", *(["onnx"] if enc_mod._onnxruntime_available() else [])]:
        enc = load_encoder("minilm-l6-v2", backend=backend)
        assert enc.dim == 384 and enc.max_length == 256
        got = enc.encode(texts, batch_size=3)
        assert (got * want).sum(1).min() > 0.9999, backend


def test_a_named_model_that_is_not_an_encoder_is_a_usage_error(runner) -> None:  # type: ignore[no-untyped-def]
    from nlpkit.cli.main import app
    from nlpkit.store import assets as store

    folder = store.models_dir() / "glove-6b-50d"  # pulled, but word vectors, not a BERT folder
    folder.mkdir(parents=True)
    (folder / store.MANIFEST).write_text("{}")
    result = runner.invoke(app, ["embed", "-m", "glove-6b-50d", "x"])
    assert result.exit_code == 2 and "glove-6b-50d is not a sentence encoder" in result.stderr
