"""quantize/ and the ONNX Runtime backend: graph parity with the torch decoder, batched rows,
int8/int4 quality on a tiny model, every model command on a quantized folder, and bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx_ir")

from nlpkit.cli.main import app  # noqa: E402
from nlpkit.errors import DataError, InputMissing, Unavailable, UsageError  # noqa: E402
from nlpkit.io.tensors import load_tensors  # noqa: E402
from nlpkit.llm.generate import Generator, Sampling  # noqa: E402
from nlpkit.llm.onnx_decoder import OnnxDecoder, open_session  # noqa: E402
from nlpkit.lm.config import ModelConfig, read_config  # noqa: E402
from nlpkit.lm.model import build_model, load_model, save_model  # noqa: E402
from nlpkit.lm.train.data import char_tokenizer, special_ids  # noqa: E402
from nlpkit.quantize import quantize as q  # noqa: E402
from nlpkit.quantize.graph import build_decoder  # noqa: E402

TEXT = ["From fairest creatures we desire increase,", "That thereby beauty's rose might never die,"]


def make_llama(folder: Path, arch: str = "llama", seed: int = 0) -> Path:
    """A tiny random decoder with grouped-query attention and a feed-forward width (160) that is
    not a multiple of the quantization block."""
    tok = char_tokenizer(TEXT)
    ids = special_ids(tok, add=False)
    cfg = ModelConfig(arch=arch, vocab_size=tok.get_vocab_size(), block_size=64, n_layer=2, n_embd=64, n_head=4,
                      n_kv_head=2, bos_id=ids["bos"], eos_id=None, pad_id=ids["pad"])  # fmt: skip
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    save_model(build_model(cfg), cfg, folder)
    (folder / "tokenizer.json").write_text(tok.to_str())
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_llama(tmp_path_factory.mktemp("q") / "m")


@pytest.fixture(scope="module")
def q8(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("q8") / "q8"
    q.quantize_model(str(tiny), out, bits=8, group_size=32, receipt_checks=False)
    return out


def _float_session(folder: Path, tmp: Path) -> OnnxDecoder:
    import onnx

    cfg = read_config(folder)
    state, _ = load_tensors(str(folder / "model.safetensors"))
    onnx.save(build_decoder(cfg, state), str(tmp / "f32.onnx"))
    return OnnxDecoder(open_session(tmp / "f32.onnx"), cfg)


def test_float_graph_matches_the_torch_decoder(tiny: Path, tmp_path: Path) -> None:
    dec = _float_session(tiny, tmp_path)
    model, _ = load_model(tiny)
    ids = [3, 7, 9, 11, 4, 5]
    cache = dec.new_cache(1, 16)
    got = dec.run([np.array(ids)], cache, every=True)[0]
    with torch.no_grad():
        want = model(torch.tensor([ids]))[0][0]
    assert torch.allclose(got, want, atol=2e-3), (got - want).abs().max()  # float16 embeddings
    step = dec.step(torch.tensor([[8]]), cache)[0]
    with torch.no_grad():
        want_step = model(torch.tensor([[*ids, 8]]))[0][0, -1]
    assert torch.allclose(step, want_step, atol=2e-3)
    assert cache.pos == 7


def test_batched_rows_of_different_lengths_equal_one_at_a_time(tiny: Path, tmp_path: Path) -> None:
    dec = _float_session(tiny, tmp_path)
    gen = Generator(dec, read_config(tiny), Generator.load(tiny, "cpu").tok, "cpu")
    rows = [[3, 7, 9, 11, 4, 5], [6, 2], [9, 9, 9]]
    greedy = Sampling(max_new_tokens=8, temperature=0)
    one_by_one = [list(gen.tokens_from_ids(list(r), greedy)) for r in rows]
    assert gen.batch([list(r) for r in rows], [greedy] * 3) == one_by_one


def test_int8_keeps_the_float_model_s_greedy_text_and_int4_runs(tiny: Path, q8: Path, tmp_path: Path) -> None:
    float_gen = Generator.load(tiny, "cpu", "float32")
    q8_gen = Generator.load(q8, "cpu")
    greedy = Sampling(max_new_tokens=12, temperature=0)
    prompt = float_gen.prompt_ids("From fairest")
    assert list(q8_gen.tokens_from_ids(list(prompt), greedy)) == list(
        float_gen.tokens_from_ids(list(prompt), greedy)
    )
    q.quantize_model(str(tiny), tmp_path / "q4", bits=4, group_size=32, receipt_checks=False)
    out = list(Generator.load(tmp_path / "q4", "cpu").tokens_from_ids(list(prompt), greedy))
    assert len(out) == 12
    receipt = json.loads((tmp_path / "q4" / "quantization.json").read_text())
    assert (
        receipt["bits"] == 4
        and receipt["bytes_after"] < receipt["bytes_before"]
        and not receipt["float_fallback_ops"]
    )


def test_receipt_measures_quality_and_speed(tiny: Path, tmp_path: Path) -> None:
    text = tmp_path / "held-out.txt"
    text.write_text(" ".join(TEXT * 20) + "\n")
    r = q.quantize_model(str(tiny), tmp_path / "out", bits=8, group_size=32, eval_text=str(text))
    on_disk = json.loads((tmp_path / "out" / "quantization.json").read_text())
    assert on_disk == r
    assert r["eval_text"] == str(text) and r["eval_tokens"] > 64
    assert abs(r["perplexity_change"]) < 0.01  # int8 on a random tiny model: nearly nothing lost
    assert 0.9 <= r["token_agreement"] <= 1.0
    assert r["speed"]["after"]["decode_tok_s"] > 0 and r["verdict"]


def test_every_model_command_runs_a_quantized_folder(
    runner: Any, q8: Path, tiny: Path, tmp_path: Path
) -> None:
    r = runner.invoke(app, ["generate", str(q8), "--temperature", "0", "--max-new-tokens", "8", "-f", "jsonl",
                            "From fairest"])  # fmt: skip
    want = runner.invoke(app, ["generate", str(tiny), "--temperature", "0", "--max-new-tokens", "8", "-f",
                               "jsonl", "--dtype", "float32", "From fairest"])  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["completion"] == json.loads(want.stdout)["completion"]
    batched = runner.invoke(app, ["generate", str(q8), "--temperature", "0", "--max-new-tokens", "6",
                                  "--batch-size", "3", "-f", "jsonl", "a", "From fairest", "That"])  # fmt: skip
    single = runner.invoke(app, ["generate", str(q8), "--temperature", "0", "--max-new-tokens", "6",
                                 "-f", "jsonl", "a", "From fairest", "That"])  # fmt: skip
    assert batched.exit_code == 0 and batched.stdout == single.stdout
    held = tmp_path / "held.txt"
    held.write_text(TEXT[0] + "\n")
    ev = runner.invoke(app, ["eval", str(q8), str(held)])
    ev_float = runner.invoke(app, ["eval", str(tiny), str(held), "--device", "cpu"])
    assert ev.exit_code == 0, ev.stderr
    assert json.loads(ev.stdout)["tokens"] == json.loads(ev_float.stdout)["tokens"]
    assert json.loads(ev.stdout)["loss"] == pytest.approx(json.loads(ev_float.stdout)["loss"], rel=0.02)


def test_chat_on_a_quantized_model_keeps_its_template(runner: Any, tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    from nlpkit.store.gguf_folder import gguf_to_folder
    from tests.test_chat import write_llama_gguf

    write_llama_gguf(tmp_path / "tiny.gguf")
    src = tmp_path / "chat"
    gguf_to_folder(tmp_path / "tiny.gguf", src)
    out = tmp_path / "chat-q8"
    r = runner.invoke(app, ["quantize", str(src), "-o", str(out), "--bits", "8", "--no-checks"])
    assert r.exit_code == 0, r.stderr
    reply = runner.invoke(app, ["chat", str(out), "--temperature", "0", "--max-new-tokens", "5"],
                          input='{"messages": [{"role": "user", "content": "hi <|im_end|>"}]}\n')  # fmt: skip
    want = runner.invoke(app, ["chat", str(src), "--temperature", "0", "--max-new-tokens", "5",
                               "--dtype", "float32"],
                         input='{"messages": [{"role": "user", "content": "hi <|im_end|>"}]}\n')  # fmt: skip
    assert reply.exit_code == 0, reply.stderr
    assert json.loads(reply.stdout)["reply"] == json.loads(want.stdout)["reply"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--bits", "3"], 2, "unknown --bits 3"),
        (["--group-size", "48"], 2, "unknown --group-size 48"),
    ],
)
def test_bad_options_are_refused_before_any_work(runner: Any, tiny: Path, tmp_path: Path, args: list[str],
                                                 code: int, message: str) -> None:  # fmt: skip
    r = runner.invoke(app, ["quantize", str(tiny), "-o", str(tmp_path / "o"), *args])
    assert r.exit_code == code and message in r.stderr and not (tmp_path / "o").exists()


@pytest.mark.parametrize("arch", ["seq2seq", "lstm"])
def test_non_decoder_models_are_refused(tmp_path: Path, arch: str) -> None:
    src = make_llama(tmp_path / arch, arch=arch)
    with pytest.raises(UsageError, match="decoder-only"):
        q.quantize_model(str(src), tmp_path / "o", receipt_checks=False)
    assert not (tmp_path / "o").exists()


def test_output_must_be_new_and_writable(runner: Any, tiny: Path, tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("keep")
    r = runner.invoke(app, ["quantize", str(tiny), "-o", str(busy), "--no-checks"])
    assert r.exit_code == 2 and (busy / "x").read_text() == "keep"
    r = runner.invoke(app, ["quantize", str(tiny), "-o", "/proc/nlpkit-quantized", "--no-checks"])
    assert r.exit_code == 74, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_interrupted_export_leaves_nothing_behind(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*a: Any, **k: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(q, "_copy_model_files", interrupted)
    with pytest.raises(KeyboardInterrupt):
        q.quantize_model(str(tiny), tmp_path / "out", receipt_checks=False)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == []


def test_damaged_model_or_receipt_is_refused_at_load(q8: Path, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(q8, bad)
    data = bytearray((bad / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(DataError, match="does not match its receipt"):
        Generator.load(bad, "cpu")
    shutil.copy(q8 / "model.onnx", bad / "model.onnx")
    (bad / "quantization.json").write_text('{"bits": 8, "model_sha')
    with pytest.raises(DataError, match="damaged quantization receipt"):
        Generator.load(bad, "cpu")
    (bad / "quantization.json").unlink()
    with pytest.raises(InputMissing):
        Generator.load(bad, "cpu")


def test_unsupported_precision_or_device_says_so(q8: Path) -> None:
    with pytest.raises(UsageError, match="does not apply to a quantized"):
        Generator.load(q8, "cpu", "float16")
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(Unavailable, match="CUDA"):
            Generator.load(q8, "cuda")


def test_quantize_help_does_not_import_torch_or_onnx() -> None:
    import subprocess
    import sys

    code = (
        "import sys\nfrom typer.testing import CliRunner\nimport nlpkit.cli.main as c\n"
        "r = CliRunner().invoke(c.app, ['quantize', '--help'])\nassert r.exit_code == 0, r.output\n"
        "assert not {'torch', 'onnxruntime', 'onnx'} & set(sys.modules), sorted(sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, env=os.environ)
    assert r.returncode == 0, r.stderr.decode()


def test_sentence_encoder_quantizes_to_int8_for_embed_and_rag(
    runner: Any, tiny_bert: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bert-int8"
    r = runner.invoke(app, ["quantize", str(tiny_bert), "-o", str(out)])
    assert r.exit_code == 2 and "int8 only" in r.stderr and not out.exists()
    text = tmp_path / "held.txt"
    text.write_text(
        "\n\n".join(f"Paragraph {i} talks about topic number {i} at some length. " * 3 for i in range(12))
    )
    r = runner.invoke(
        app, ["quantize", str(tiny_bert), "-o", str(out), "--bits", "8", "--eval-text", str(text)]
    )
    assert r.exit_code == 0, r.stderr
    receipt = json.loads((out / "quantization.json").read_text())
    assert receipt["cosine_mean"] > 0.9 and set(receipt["recall_at_5"]) == {"before", "after"}
    want = runner.invoke(app, ["embed", "-m", str(tiny_bert), "a small test"])
    got = runner.invoke(app, ["embed", "-m", str(out), "a small test"])
    assert got.exit_code == 0, got.stderr
    a, b = np.array(json.loads(want.stdout)["embedding"]), np.array(json.loads(got.stdout)["embedding"])
    assert float(a @ b) > 0.9
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Rivers flow to the sea.\n")
    idx = runner.invoke(app, ["rag-index", str(docs), "-o", str(tmp_path / "idx"), "-m", str(out)])
    assert idx.exit_code == 0, idx.stderr
    (out / "model.onnx").write_bytes(b"not a model")
    bad = runner.invoke(app, ["embed", "-m", str(out), "x"])
    assert bad.exit_code == 65 and "receipt" in bad.stderr


def test_onnx_cache_rows_join_and_leave_like_the_torch_cache(tiny: Path, tmp_path: Path) -> None:
    """merge/select/compact (the serve engine's continuous batching) give every row the logits
    it gets alone, fed the same tokens."""
    dec = _float_session(tiny, tmp_path)
    gen = Generator(dec, read_config(tiny), Generator.load(tiny, "cpu").tok, "cpu")
    a, b = [3, 7, 9, 11, 4, 5], [6, 2]
    feed_a, feed_b = [8, 12, 4, 9, 3, 5, 7, 10, 2], [5, 9, 13, 4, 6, 8, 11, 3, 7]

    def alone(prompt: list[int], feed: list[int]) -> list[Any]:
        logits, cache = gen.prefill([prompt], 12)
        out = [logits[0]]
        for t in feed:
            out.append(gen.step([t], cache)[0])
        return out

    want_a, want_b = alone(a, feed_a), alone(b, feed_b)
    logits, cache = gen.prefill([a], 12)
    got_a = [logits[0]] + [gen.step([t], cache)[0] for t in feed_a[:3]]  # a runs alone for 3 steps
    logits_b, cache_b = gen.prefill([b], 12)
    got_b = [logits_b[0]]
    cache = cache.merge(cache_b, room=12)  # b joins the running batch
    for ta, tb in zip(feed_a[3:], feed_b[:6], strict=True):
        both = gen.step([ta, tb], cache)
        got_a.append(both[0])
        got_b.append(both[1])
    cache = cache.select([1]).compact(room=4)  # a leaves
    got_b += [gen.step([t], cache)[0] for t in feed_b[6:]]
    for got, want in ((got_a, want_a), (got_b, want_b)):
        assert len(got) == len(want)
        assert all(torch.allclose(g, w, atol=1e-4) for g, w in zip(got, want, strict=True))
