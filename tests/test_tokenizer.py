"""nlpkit tokenize: training, round trips, offsets, special-token policies, GGUF rebuilds, pipes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nlpkit.cli.main import app
from nlpkit.errors import DataError, UsageError
from nlpkit.io.gguf_tokenizer import from_gguf
from nlpkit.text.tokenizer import load, to_json
from nlpkit.text.tokenizer_train import MODELS, TrainConfig, train

DATA = Path(__file__).parent / "data"
CORPUS = DATA / "sonnets-tiny.txt"
REAL_HOME = os.environ.get("NLPKIT_HOME")  # read before the suite isolates the store
VOCAB = {"bpe": 400, "wordpiece": 600, "unigram": 400, "wordlevel": 200, "char": 300}
CHATML = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
SMOLLM_IDS = [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198]
# Any text Python can hand to Rust: every code point but lone surrogates.
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)


def lines() -> list[str]:
    return [line for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]


def config(model: str, **kw) -> TrainConfig:  # type: ignore[no-untyped-def]
    return TrainConfig(model=model, vocab_size=VOCAB[model], **kw)


@pytest.fixture(scope="module")
def trained() -> dict[str, object]:
    return {m: train(lines(), config(m)) for m in MODELS}


@pytest.fixture(scope="module")
def bpe_path(tmp_path_factory: pytest.TempPathFactory, trained) -> str:  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    path.write_bytes(to_json(trained["bpe"]))
    return str(path)


def roundtrip(tok, text: str) -> str:  # type: ignore[no-untyped-def]
    return tok.decode(tok.encode(text).ids, skip_special_tokens=False)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("model", ["bpe", "wordpiece", "unigram", "char"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT)
def test_roundtrip_any_text(trained, model: str, text: str) -> None:  # type: ignore[no-untyped-def]
    assert roundtrip(trained[model], text) == text


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_roundtrip_wordlevel_on_its_vocabulary(trained, data) -> None:  # type: ignore[no-untyped-def]
    tok = trained["wordlevel"]
    vocab = tok.get_vocab()
    words = sorted(w for w in vocab if w.isalpha() and "Ġ" + w in vocab)
    text = " ".join(data.draw(st.lists(st.sampled_from(words), min_size=1, max_size=12)))
    assert roundtrip(tok, text) == text


@pytest.mark.parametrize("model", MODELS)
def test_roundtrip_special_tokens_and_odd_text(trained, model: str) -> None:  # type: ignore[no-untyped-def]
    tok, specials = trained[model], config(model).specials
    if model == "wordlevel":  # whole known words only
        vocab = tok.get_vocab()
        w = min(w for w in vocab if w.isalpha() and "Ġ" + w in vocab)
        text = f"{w} {w}{''.join(specials)}"
    else:
        text = f"a\tb  c\r\n {' '.join(specials)} ##x 😀 ÿ\x00"
    assert roundtrip(tok, text) == text


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("model", MODELS)
def test_training_twice_gives_the_same_bytes(trained, model: str) -> None:  # type: ignore[no-untyped-def]
    assert to_json(train(lines(), config(model))) == to_json(trained[model])


def test_same_bytes_across_processes_hash_seeds_and_threads(trained) -> None:  # type: ignore[no-untyped-def]
    code = (
        "import hashlib, sys\n"
        "from tests.test_tokenizer import MODELS, config, lines\n"
        "from nlpkit.text.tokenizer import to_json\n"
        "from nlpkit.text.tokenizer_train import train\n"
        "print(' '.join(hashlib.sha256(to_json(train(lines(), config(m)))).hexdigest() for m in MODELS))\n"
    )
    root = Path(__file__).parent.parent
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            check=True,
            cwd=root,
            env={**os.environ, "PYTHONHASHSEED": seed, "RAYON_NUM_THREADS": threads},
        ).stdout
        for seed, threads in (("1", "1"), ("2", "2"))
    }
    assert len(outs) == 1


def test_cli_train_is_byte_identical_from_a_folder_and_stdin(runner, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr("nlpkit.io.talk._quiet", False)  # -q in an earlier test sticks in this process
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text("{ not json, but a .txt line\n" + CORPUS.read_text(encoding="utf-8"))
    (folder / ".hidden.txt").write_text("never read\n")
    (folder / "link.txt").symlink_to("/etc/hostname")
    r1 = runner.invoke(app, ["tokenize", "train", str(folder), "--vocab-size", "400", "-o", str(tmp_path)])
    assert r1.exit_code == 0, r1.output
    assert "link.txt: skipped (symbolic link" in r1.stderr
    stdin = (folder / "a.txt").read_bytes()
    r2 = runner.invoke(
        app,
        [
            "tokenize",
            "train",
            "--input-format",
            "text",
            "--vocab-size",
            "400",
            "-o",
            str(tmp_path / "b.json"),
        ],
        input=stdin,
    )
    assert r2.exit_code == 0, r2.output
    assert (tmp_path / "tokenizer.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert "never" not in json.loads((tmp_path / "b.json").read_text())["model"]["vocab"]


@pytest.mark.parametrize("pre", ["metaspace", "whitespace"])
@pytest.mark.parametrize("model", ["bpe", "wordpiece", "unigram", "wordlevel"])
def test_other_pre_tokenizers_train_and_are_deterministic(model: str, pre: str) -> None:
    cfg = TrainConfig(model=model, vocab_size=300, pre_tokenizer=pre, normalizer="nfkc,lowercase")
    a, b = train(lines, cfg), train(lines, cfg)  # a callable: WordPiece reads it twice
    assert to_json(a) == to_json(b)
    assert "love" in a.decode(a.encode("Love").ids).replace(" ", "")


def test_wordpiece_other_pre_tokenizer_refuses_a_one_shot_iterator() -> None:
    with pytest.raises(UsageError, match="reads its input twice"):
        train(iter(lines()), TrainConfig(model="wordpiece", vocab_size=300, pre_tokenizer="whitespace"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "sentencepiece"], "--model 'sentencepiece'"),
        (["--vocab-size", "100"], "--vocab-size 100 is too small"),
        (["--normalizer", "nfkc,upper"], "--normalizer 'upper'"),
        (["--model", "char", "--pre-tokenizer", "whitespace"], "does not apply to --model char"),
        (["--model", "unigram", "--min-frequency", "3"], "does not apply to --model unigram"),
        (["-s", "<s>", "-s", "<s>"], "distinct"),
    ],
)
def test_train_usage_errors_exit_2(runner, tmp_path: Path, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    r = runner.invoke(app, ["tokenize", "train", str(CORPUS), "-o", str(tmp_path / "t.json"), *args])
    assert r.exit_code == 2 and message in r.stderr


def test_train_empty_input_exits_65(runner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "blank.txt").write_text("\n  \n")
    r = runner.invoke(app, ["tokenize", "train", str(tmp_path / "blank.txt"), "-o", str(tmp_path / "t.json")])
    assert r.exit_code == 65 and "empty input" in r.stderr
    assert not (tmp_path / "t.json").exists()


# --------------------------------------------------------------------------- offsets


def _byte_decoder() -> dict[str, int]:
    """GPT-2's table of printable stand-ins for the 256 bytes, inverted."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + len(cs) - 188)
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT)
def test_offsets_point_at_the_token_characters(trained, text: str) -> None:  # type: ignore[no-untyped-def]
    table = _byte_decoder()
    enc = trained["bpe"].encode(text)
    for token, (start, end) in zip(enc.tokens, enc.offsets, strict=True):
        if token == "<|endoftext|>":
            assert text[start:end] == token
            continue
        piece = bytes(table[c] for c in token)
        span = text[start:end].encode()
        try:
            assert text[start:end] == piece.decode()  # whole characters: exactly the token's text
        except UnicodeDecodeError:
            assert piece in span and end - start == 1  # part of one character: that character


def test_offsets_with_a_normalizer_point_into_the_original(runner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bert.json"
    path.write_bytes(to_json(bert_like()))
    r = runner.invoke(app, ["tokenize", "encode", "-t", str(path)], input="Héllo WORLD, naïve\n")
    assert r.exit_code == 0, r.output
    rec = orjson.loads(r.stdout)
    assert rec["tokens"] == ["[CLS]", "hello", "world", ",", "naive", "[SEP]"]
    assert [rec["text"][s:e] for s, e in rec["offsets"]] == ["", "Héllo", "WORLD", ",", "naïve", ""]


def bert_like():  # type: ignore[no-untyped-def]
    """A tiny BERT-style tokenizer (as MiniLM's): lower-casing, accent-stripping, [CLS] ... [SEP]."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world", ",", "naive", "na", "##ive"]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.decoder = decoders.WordPiece()
    tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    tok.enable_padding(length=16)  # as MiniLM's tokenizer.json: records must not be padded
    return tok


# --------------------------------------------------------------------------- special tokens


def test_special_policies(runner, bpe_path: str) -> None:  # type: ignore[no-untyped-def]
    text = "plain line\nend<|endoftext|>here\n"
    base = ["tokenize", "encode", "-t", bpe_path]
    allow = [orjson.loads(x) for x in runner.invoke(app, base, input=text).stdout.splitlines()]
    deny = [
        orjson.loads(x)
        for x in runner.invoke(app, [*base, "--special", "deny"], input=text).stdout.splitlines()
    ]
    assert 0 in allow[1]["ids"] and "<|endoftext|>" in allow[1]["tokens"]
    assert 0 not in deny[1]["ids"] and "<|endoftext|>" not in deny[1]["tokens"]
    assert allow[0] == deny[0]
    tok = load(bpe_path)
    assert tok.decode(deny[1]["ids"]) == "end<|endoftext|>here"
    r = runner.invoke(app, [*base, "--special", "error"], input=text)
    assert r.exit_code == 65
    assert r.stderr == (
        "nlpkit: error: <stdin>:2: special token '<|endoftext|>' in the text at character 3; "
        "use --special deny to encode it as plain text, or --special allow\n"
    )
    r = runner.invoke(app, [*base, "--special", "maybe"], input=text)
    assert r.exit_code == 2


# --------------------------------------------------------------------------- encode / decode CLI


def test_encode_passes_fields_through_and_decode_reverses(runner, bpe_path: str) -> None:  # type: ignore[no-untyped-def]
    records = b'{"id": 7, "text": "Shall I compare thee"}\n{"id": 8, "text": "to a summer\'s day?"}\n'
    enc = runner.invoke(app, ["tokenize", "encode", "-t", bpe_path, "--batch-size", "1"], input=records)
    assert enc.exit_code == 0, enc.output
    out = [orjson.loads(x) for x in enc.stdout.splitlines()]
    assert [r["id"] for r in out] == [7, 8] and set(out[0]) == {"id", "text", "ids", "tokens", "offsets"}
    dec = runner.invoke(app, ["tokenize", "decode", "-t", bpe_path], input=enc.stdout)
    back = [orjson.loads(x) for x in dec.stdout.splitlines()]
    assert [r["text"] for r in back] == ["Shall I compare thee", "to a summer's day?"]
    ids = runner.invoke(app, ["tokenize", "encode", "-t", bpe_path, "-f", "text"], input=records)
    assert ids.stdout.splitlines()[0] == " ".join(map(str, out[0]["ids"]))
    text = runner.invoke(app, ["tokenize", "decode", "-t", bpe_path, "-f", "text"], input=ids.stdout)
    assert text.stdout == "Shall I compare thee\nto a summer's day?\n"


def test_txt_files_are_plain_text_and_empty_input_is_an_error(runner, bpe_path: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "a.txt").write_text('{"text": "not a record"}\nhello\n')
    r = runner.invoke(app, ["tokenize", "encode", "-t", bpe_path, "-i", str(tmp_path / "a.txt")])
    assert [orjson.loads(x)["text"] for x in r.stdout.splitlines()] == ['{"text": "not a record"}', "hello"]
    empty = runner.invoke(app, ["tokenize", "encode", "-t", bpe_path], input="\n \n")
    assert empty.exit_code == 65 and "<stdin>: empty input" in empty.stderr


def test_check_roundtrip_names_the_first_failing_line(runner, trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "wl.json"
    path.write_bytes(to_json(trained["wordlevel"]))
    vocab = trained["wordlevel"].get_vocab()
    w = min(w for w in vocab if w.isalpha() and "Ġ" + w in vocab)
    (tmp_path / "in.txt").write_text(f"{w} {w}\n\n{w} zyzzyva\n{w}\n")
    r = runner.invoke(
        app, ["tokenize", "encode", "-t", str(path), "-i", str(tmp_path / "in.txt"), "--check-roundtrip"]
    )
    assert r.exit_code == 65
    where = f"{tmp_path / 'in.txt'}:3: round trip fails: at character {len(w)}: expected ' zyzzyva', decoded '[UNK]'"
    assert where in r.stderr
    ok = runner.invoke(app, ["tokenize", "encode", "-t", str(path), "--check-roundtrip"], input=f"{w} {w}\n")
    assert ok.exit_code == 0


def test_template_tokens_do_not_break_the_roundtrip_check(runner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bert.json"
    path.write_bytes(to_json(bert_like()))
    r = runner.invoke(
        app, ["tokenize", "encode", "-t", str(path), "--check-roundtrip"], input="hello world, naive\n"
    )
    assert r.exit_code == 0, r.stderr
    short = runner.invoke(
        app, ["tokenize", "encode", "-t", str(path), "--max-length", "3"], input="hello world\n"
    )
    assert orjson.loads(short.stdout)["tokens"] == ["[CLS]", "hello", "[SEP]"]


@pytest.mark.parametrize("model", MODELS)
def test_record_tokens_are_the_encoding_tokens(trained, model: str) -> None:  # type: ignore[no-untyped-def]
    from nlpkit.io.records import RecordBatch
    from nlpkit.text.tokenizer import encode_records

    tok = trained[model]
    texts = ["Shall I compare thee to a summer's day?", "x", "", "😀 <unk> [UNK] <|endoftext|> zyzzyva ##s"]
    batch = RecordBatch("t")
    batch.records, batch.texts, batch.linenos = [{"text": t} for t in texts], texts, [1, 2, 3, 4]
    ((data, n),) = encode_records(tok, [batch])
    records = [orjson.loads(line) for line in data.splitlines()]
    assert n == 4 and [r["tokens"] for r in records] == [e.tokens for e in tok.encode_batch(texts)]


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        ("1 2 x\n", "<stdin>:1: expected token ids separated by spaces, or a JSON record"),
        ('{"ids": [1, "2"]}\n', "<stdin>:1: field 'ids' must be a list of integers"),
        ("1 2\n5 99999\n", "<stdin>:2: token id 99999 is outside the vocabulary (0..399)"),
        ("", "empty input"),
    ],
)
def test_decode_bad_ids_exit_65(runner, bpe_path: str, stdin: str, message: str) -> None:  # type: ignore[no-untyped-def]
    r = runner.invoke(app, ["tokenize", "decode", "-t", bpe_path], input=stdin)
    assert r.exit_code == 65 and message in r.stderr


def test_tokenizer_specs(runner, tmp_path: Path, bpe_path: str, _isolated_home: Path) -> None:  # type: ignore[no-untyped-def]
    enc = ["tokenize", "encode", "-f", "text", "-t"]
    want = runner.invoke(app, [*enc, bpe_path], input="hello\n").stdout
    folder = Path(bpe_path).parent
    assert runner.invoke(app, [*enc, str(folder)], input="hello\n").stdout == want
    missing = runner.invoke(app, [*enc, str(tmp_path / "nope")], input="hello\n")
    assert missing.exit_code == 66 and "no such tokenizer" in missing.stderr
    (tmp_path / "bad.json").write_text('{"model": 1}')
    bad = runner.invoke(app, [*enc, str(tmp_path / "bad.json")], input="hello\n")
    assert bad.exit_code == 65 and "not a tokenizer.json" in bad.stderr
    not_pulled = runner.invoke(app, [*enc, "minilm-l6-v2"], input="hello\n")
    assert not_pulled.exit_code == 66 and "nlpkit models pull minilm-l6-v2" in not_pulled.stderr
    asset = _isolated_home / "models" / "minilm-l6-v2"  # a pulled asset, as the store lays it out
    asset.mkdir(parents=True)
    (asset / "asset.json").write_text("{}")
    (asset / "tokenizer.json").write_bytes(to_json(bert_like()))
    named = runner.invoke(app, [*enc, "minilm-l6-v2"], input="Hello naive\n")
    assert named.exit_code == 0 and named.stdout == "2 4 7 3\n"


# --------------------------------------------------------------------------- GGUF


def tiny_gguf(path: Path, **override) -> Path:  # type: ignore[no-untyped-def]
    """A GGUF whose tokenizer is a byte-level BPE trained here, in llama.cpp's layout, plus the
    reference: the same BPE as a ``tokenizers`` object (digits split, as SmolLM2's)."""
    gguf = pytest.importorskip("gguf")

    ref = smollm_like()
    data = json.loads(ref.to_str())
    vocab = data["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.__getitem__)
    types = [3 if i < 3 else 4 if t == "Ġlove" else 1 for i, t in enumerate(tokens)]
    merges = [" ".join(m) if isinstance(m, list) else m for m in data["model"]["merges"]]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model(override.get("model", "gpt2"))
    w.add_tokenizer_pre("smollm")
    w.add_token_list(override.get("tokens", tokens))
    w.add_token_merges(override.get("merges", merges))
    w.add_token_types(override.get("types", types))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    return path


def smollm_like():  # type: ignore[no-untyped-def]
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    specials = [
        AddedToken(s, special=True, normalized=False) for s in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
    ]
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([*lines(), "in 1609 and 2024"], trainer)
    tok.add_tokens([AddedToken("Ġlove", normalized=False)])
    return tok


def gguf_vocab(tok):  # type: ignore[no-untyped-def]
    """A tokenizers BPE as a GGUF file lists it: the tokens in id order (the added ones after the
    model's), and the merges as "a b" strings."""
    import json

    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    tokens += [a.content for a in sorted(tok.get_added_tokens_decoder().values(), key=lambda a: a.content)
               if a.content not in vocab]  # fmt: skip
    merges = [" ".join(m) if isinstance(m, list) else m for m in data["model"]["merges"]]
    return tokens, merges


@pytest.fixture(scope="module")
def gguf_pair(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """(the tokenizer rebuilt from a tiny GGUF, the tokenizer the GGUF was made from)."""
    path = tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    return from_gguf(path), smollm_like()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT)
def test_gguf_rebuild_matches_the_original_tokenizer(gguf_pair, text: str) -> None:  # type: ignore[no-untyped-def]
    rebuilt, original = gguf_pair
    assert rebuilt.encode(text).ids == original.encode(text).ids


def test_gguf_rebuild_specials_chatml_digits_and_determinism(tmp_path: Path) -> None:
    path = tiny_gguf(tmp_path / "tiny.gguf")
    tok = from_gguf(path)
    enc = tok.encode("<|im_start|>user\nin 2024<|im_end|>\n")
    assert enc.ids[0] == 1 and enc.tokens[-2:] == ["<|im_end|>", "Ċ"]
    assert [t for t in enc.tokens if t.isdigit()] == ["2", "0", "2", "4"]
    assert {t.content for t in tok.get_added_tokens_decoder().values() if t.special} == {
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
    }
    tok.encode_special_tokens = True  # deny: the specials are plain text, and still decode back
    assert 1 not in tok.encode("<|im_start|>").ids
    assert to_json(from_gguf(path)) == to_json(from_gguf(path))


def test_gguf_as_a_cli_tokenizer_file_and_folder(runner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "model").mkdir()
    path = tiny_gguf(tmp_path / "model" / "tiny.gguf")
    for spec in (str(path), str(path.parent)):
        r = runner.invoke(
            app, ["tokenize", "encode", "-t", spec, "-f", "text"], input=orjson.dumps({"text": CHATML})
        )
        assert r.exit_code == 0 and r.stdout.split()[0] == "1"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"model": "llama"}, "unsupported GGUF tokenizer model 'llama'"),
        ({"tokens": ["a", "b", "a"], "merges": [], "types": [1, 1, 1]}, "appears twice"),
        ({"merges": ["Ġ"]}, "is not two tokens"),
        ({"merges": ["zz qq"]}, "cannot build the BPE"),
        ({"types": [1, 1]}, "differ in length"),
        ({"types": ["a"]}, "array of integers"),
    ],
)
def test_gguf_bad_tokenizers_exit_65(runner, tmp_path: Path, override: dict, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tiny_gguf(tmp_path / "bad.gguf", **override)
    with pytest.raises(DataError, match=message):
        from_gguf(path)
    r = runner.invoke(app, ["tokenize", "encode", "-t", str(path)], input="hi\n")
    assert r.exit_code == 65 and message in r.stderr


@pytest.mark.slow
def test_smollm2_chatml_ids_from_the_real_gguf(monkeypatch: pytest.MonkeyPatch) -> None:
    from nlpkit.errors import InputMissing
    from nlpkit.store.assets import asset_dir

    if REAL_HOME:
        monkeypatch.setenv("NLPKIT_HOME", REAL_HOME)
    else:
        monkeypatch.delenv("NLPKIT_HOME")
    try:
        folder = asset_dir("smollm2-135m-instruct")
    except InputMissing:
        pytest.skip("run `nlpkit models pull smollm2-135m-instruct` first")
    tok = load("smollm2-135m-instruct")
    assert tok.encode(CHATML).ids == SMOLLM_IDS
    assert tok.decode(SMOLLM_IDS, skip_special_tokens=False) == CHATML
    assert tok.get_vocab_size() == 49152
    assert to_json(tok) == to_json(from_gguf(next(folder.glob("*.gguf"))))


# --------------------------------------------------------------------------- real pipes


def test_encode_decode_as_real_pipes(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    tok = tmp_path / "tok.json"
    tok.write_bytes(to_json(trained["unigram"]))
    cmd = (
        f"nlpkit tokenize encode -t {tok} -i {CORPUS} --input-format text --check-roundtrip "
        f"| nlpkit tokenize decode -t {tok} -f text"
    ).replace("nlpkit", f"{sys.executable} -m nlpkit")
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, timeout=60)
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    assert r.stdout.decode().splitlines() == lines()


def test_tokenize_into_embed(tmp_path: Path, table_path: str) -> None:
    cfg = TrainConfig(model="wordlevel", vocab_size=20, pre_tokenizer="whitespace", normalizer="lowercase")
    tok = tmp_path / "words.json"
    tok.write_bytes(to_json(train(["the king and the queen", "the man and the woman"] * 2, cfg)))
    cmd = (
        f"echo 'The King and the QUEEN' | nlpkit tokenize encode -t {tok} "
        f"| nlpkit embed --field tokens --vectors {table_path} --oov skip"
    ).replace("nlpkit", f"{sys.executable} -m nlpkit")
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    record = orjson.loads(r.stdout)
    assert record["tokens"] == ["the", "king", "and", "the", "queen"]
    assert record["vectors"] == [[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0]]  # king, queen


# --------------------------------------------------------------------------- the batched reader


LINE_BYTES = st.lists(
    st.one_of(
        st.binary(max_size=12),
        st.sampled_from(
            [b"", b"  ", b"\r", b'{"text": "j\\u00e9"}', b'{"id": 1}', b'{"text": 3}', b"{bad", b"\xff"]
        ),
        st.text(max_size=12).map(str.encode),
    ),
    max_size=12,
)


def _outcome(fn):  # type: ignore[no-untyped-def]
    try:
        return fn()
    except DataError as e:
        return str(e)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    parts=LINE_BYTES,
    end=st.sampled_from([b"", b"\n", b"\r\n"]),
    fmt=st.sampled_from(["auto", "text", "jsonl"]),
)
def test_batched_reader_matches_read_records(
    tmp_path: Path, parts: list[bytes], end: bytes, fmt: str
) -> None:
    from nlpkit.io.records import read_record_batches, read_records

    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(parts) + end)
    plain = _outcome(lambda: [(w, r) for w, r in read_records(str(path), fmt=fmt)])
    batched = _outcome(
        lambda: [
            (b.where(i), r)
            for b in read_record_batches(str(path), fmt=fmt, size=3)
            for i, r in enumerate(b.records)
        ]
    )
    assert batched == plain


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=LINE_BYTES, block=st.integers(1, 9), limit=st.integers(1, 12))
def test_block_lines_match_iter_lines_at_any_block_size(
    tmp_path: Path, parts: list[bytes], block: int, limit: int
) -> None:
    from nlpkit.io.records import _line_blocks, iter_lines

    path = tmp_path / "in.txt"
    path.write_bytes(b"\n".join(parts))
    plain = _outcome(lambda: [(w, line) for w, line in iter_lines(str(path), max_line_bytes=limit)])
    blocks = _outcome(
        lambda: [
            (f"{path}:{n}", line)
            for first, lines in _line_blocks(str(path), limit, block)
            for n, line in enumerate(lines, first)
            if line.strip()
        ]
    )
    assert blocks == plain
