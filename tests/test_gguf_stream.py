"""Streaming conversion (issue 17): ``save_tensors_streaming`` writes the bytes ``save_tensors``
writes while holding one tensor at a time, and ``gguf_to_folder`` uses it, so converting a GGUF
costs about one float32 tensor of memory instead of the whole model (a 1.5B model took > 22 GB)."""

from __future__ import annotations

import gc
import re
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

from nlpkit.io.tensors import TensorSpec, load_tensors, provenance, save_tensors, save_tensors_streaming

gguf = pytest.importorskip("gguf")

from nlpkit.io.gguf import read_gguf  # noqa: E402
from nlpkit.store.gguf_folder import gguf_to_folder, hf_name, unpermute_rows  # noqa: E402

MB = 1 << 20


def mixed_tensors() -> dict[str, np.ndarray]:
    """Every dtype the files hold, odd shapes, an empty tensor, names that sort apart from their
    insertion order (safetensors lays data out by dtype, in an order of its own, then by name)."""
    rng = np.random.default_rng(0)
    return {
        "z.weight": rng.standard_normal((3, 5)).astype(np.float32),
        "a.ids": rng.integers(-9, 9, 7).astype(np.int32),
        "m.double": rng.standard_normal((2, 2, 3)),
        "b.half": rng.standard_normal(6).astype(np.float16),
        "bytes": rng.integers(0, 255, 11).astype(np.uint8),
        "signed": rng.integers(-100, 100, (2, 3)).astype(np.int8),
        "shorts": rng.integers(-999, 999, 4).astype(np.int16),
        "longs": rng.integers(-(2**40), 2**40, 3).astype(np.int64),
        "mask": rng.integers(0, 2, 5).astype(bool),
        "empty": np.zeros((0, 4), np.float32),
        "a.weight": rng.standard_normal((4, 1)).astype(np.float32),
        "ünïcode.名": np.arange(3, dtype=np.float32),
    }


def specs_of(tensors: dict[str, np.ndarray]) -> list[TensorSpec]:
    return [TensorSpec(k, v.dtype, v.shape) for k, v in tensors.items()]


META = provenance(**{"nlpkit.source": "test", "zeta": "last", "alpha": "ünïcode"})


def test_streaming_writes_the_bytes_save_tensors_writes(tmp_path: Path) -> None:
    tensors = mixed_tensors()
    save_tensors(str(tmp_path / "plain.safetensors"), tensors, META, kind="test.kind")
    asked: list[str] = []

    def produce(name: str) -> np.ndarray:
        asked.append(name)
        return tensors[name]

    save_tensors_streaming(
        str(tmp_path / "stream.safetensors"), specs_of(tensors), produce, META, kind="test.kind"
    )
    plain, stream = (
        (tmp_path / "plain.safetensors").read_bytes(),
        (tmp_path / "stream.safetensors").read_bytes(),
    )
    assert stream == plain
    assert sorted(asked) == sorted(tensors) and len(asked) == len(tensors)  # each asked for once
    got, meta = load_tensors(str(tmp_path / "stream.safetensors"))
    assert meta == {"nlpkit.kind": "test.kind", **META}
    other = load_file(str(tmp_path / "stream.safetensors"))
    for name, want in tensors.items():
        assert got[name].dtype == want.dtype and np.array_equal(got[name], want), name
        assert np.array_equal(other[name], want), name
    assert not list(tmp_path.glob(".*tmp*"))


def test_a_scalar_keeps_its_shape(tmp_path: Path) -> None:
    """safetensors.numpy (0.8) writes a 0-d array as shape [1]; the streaming writer keeps []."""
    scalar = np.array(2.5, np.float32)
    path = str(tmp_path / "s.safetensors")
    save_tensors_streaming(path, [("s", np.float32, ())], lambda name: scalar, {}, kind="k")
    got, _ = load_tensors(path)
    assert got["s"].shape == () and got["s"] == 2.5 and load_file(path)["s"].shape == ()


@pytest.mark.parametrize("dtype", [np.float32, np.int32])
def test_one_dtype_and_orders_of_memory_give_the_same_bytes(tmp_path: Path, dtype: type) -> None:
    rng = np.random.default_rng(1)
    tensors: dict[str, np.ndarray] = {
        f"t{i}": (rng.standard_normal((i + 1, 3)) * 100).astype(dtype) for i in (3, 0, 2, 1)
    }
    save_tensors(str(tmp_path / "plain.safetensors"), tensors, {}, kind="k")
    # Fortran-ordered and strided views of the same values write the same bytes
    views = {
        k: np.asfortranarray(v) if i % 2 else np.repeat(v, 2, axis=1)[:, ::2]
        for i, (k, v) in enumerate(tensors.items())
    }
    assert not all(v.flags.c_contiguous for v in views.values())
    save_tensors_streaming(
        str(tmp_path / "s.safetensors"), specs_of(tensors), views.__getitem__, {}, kind="k"
    )
    assert (tmp_path / "s.safetensors").read_bytes() == (tmp_path / "plain.safetensors").read_bytes()
    # no tensors at all: a header only, as safetensors writes it
    save_tensors(str(tmp_path / "none.safetensors"), {}, {}, kind="k")
    save_tensors_streaming(str(tmp_path / "none2.safetensors"), [], views.__getitem__, {}, kind="k")
    assert (tmp_path / "none2.safetensors").read_bytes() == (tmp_path / "none.safetensors").read_bytes()


@pytest.mark.parametrize(
    ("produced", "message"),
    [
        (lambda a: a.astype(np.float64), "produced float64 (3, 5), declared float32 (3, 5)"),
        (lambda a: a.reshape(5, 3), "produced float32 (5, 3), declared float32 (3, 5)"),
        (lambda a: a.astype(">f4"), "produced >f4 (3, 5), declared float32 (3, 5)"),
        (lambda a: a.tolist(), "produced list, declared float32"),
    ],
)
def test_an_array_unlike_its_declaration_writes_nothing(
    tmp_path: Path, produced: Callable[[np.ndarray], object], message: str
) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"old")
    tensors = {"w": np.ones((3, 5), np.float32), "a": np.ones(2, np.float32)}

    def produce(name: str) -> np.ndarray:
        return produced(tensors[name]) if name == "w" else tensors[name]  # type: ignore[return-value]

    with pytest.raises(ValueError, match=re.escape(f"tensor 'w': {message}")):
        save_tensors_streaming(str(path), specs_of(tensors), produce, {}, kind="k")
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_a_failing_producer_and_bad_declarations(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"

    def boom(name: str) -> np.ndarray:
        raise KeyError(name)

    with pytest.raises(KeyError):
        save_tensors_streaming(str(path), [("w", np.float32, (2,))], boom, {}, kind="k")
    assert not list(tmp_path.iterdir())
    ones = lambda name: np.ones(2, np.float32)  # noqa: E731
    bad: list[tuple[list[Any], str]] = [
        ([("w", np.float32, (2,)), ("w", np.float32, (2,))], "declared twice"),
        ([("__metadata__", np.float32, (2,))], "bad tensor name"),
        ([("w", np.complex64, (2,))], "hold no complex64"),
        ([("w", np.uint16, (2,))], "hold no uint16"),
        ([("w", np.float32, (-1,))], "bad shape"),
        ([("w", np.float32, (2.0,))], "bad shape"),
    ]
    for specs, message in bad:
        with pytest.raises(ValueError, match=message):
            save_tensors_streaming(str(path), specs, ones, {}, kind="k")
    with pytest.raises(TypeError, match="str->str"):
        save_tensors_streaming(str(path), [("w", np.float32, (2,))], ones, {"n": 1}, kind="k")  # type: ignore[dict-item]
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- gguf_to_folder


def old_state(path: Path) -> dict[str, np.ndarray]:
    """What gguf_to_folder computed before streaming: every tensor at once, Q/K rows put back."""
    gg = read_gguf(path)
    arch = gg.metadata["general.architecture"]
    heads = {} if arch == "qwen2" else {
        "q_proj": gg.metadata["llama.attention.head_count"],
        "k_proj": gg.metadata["llama.attention.head_count_kv"],
    }  # fmt: skip
    state = {}
    for tname in gg.tensors:
        target = hf_name(tname)
        if target is None:
            continue
        w = gg.tensor(tname)
        proj = target.rsplit(".", 2)[-2]
        if proj in heads:
            w = unpermute_rows(w, heads[proj])
        state[target] = np.ascontiguousarray(w, dtype=np.float32)
    return state


@pytest.mark.parametrize("model", ["llama", "llama-Q8_0", "qwen2", "qwen2-tied"])
def test_the_converted_folder_holds_the_bytes_of_the_old_conversion(tmp_path: Path, model: str) -> None:
    pytest.importorskip("torch")
    if model.startswith("llama"):
        from tests.test_chat import write_llama_gguf

        write_llama_gguf(tmp_path / "m.gguf", quant=model.partition("-")[2] or "F32")
    else:
        from tests.test_qwen2 import write_qwen2_gguf

        write_qwen2_gguf(tmp_path / "m.gguf", tied=model.endswith("tied"))
    cfg = gguf_to_folder(tmp_path / "m.gguf", tmp_path / "out")
    got, meta = load_tensors(str(tmp_path / "out" / "model.safetensors"))
    kind = meta.pop("nlpkit.kind")
    assert kind == "model.llama" and meta["nlpkit.source"] == "m.gguf"
    state = old_state(tmp_path / "m.gguf")
    assert ("lm_head.weight" in got) == (not cfg["tie_word_embeddings"]) == ("lm_head.weight" in state)
    save_tensors(str(tmp_path / "old.safetensors"), state, meta, kind=kind)
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (
        tmp_path / "old.safetensors"
    ).read_bytes()
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert names == {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json",
                     "special_tokens_map.json", "generation_config.json"}  # fmt: skip


def test_the_converted_tiny_llama_computes_its_reference_logits(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from nlpkit.llm.generate import Generator
    from tests.test_chat import write_llama_gguf

    model, _ = write_llama_gguf(tmp_path / "tiny.gguf")
    gguf_to_folder(tmp_path / "tiny.gguf", tmp_path / "model")
    gen = Generator.load(tmp_path / "model", "cpu")
    ids = torch.tensor([[5, 9, 33, 2, 60, 7]])
    with torch.inference_mode():
        assert torch.allclose(model(ids)[0], gen.model(ids)[0], atol=1e-5)


def test_an_undecodable_tensor_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from nlpkit.errors import DataError
    from tests.test_chat import write_llama_gguf

    write_llama_gguf(tmp_path / "m.gguf")
    name = "blk.1.ffn_down.weight"  # sorts late: many tensors would be written before it
    info = read_gguf(tmp_path / "m.gguf").tensors[name]
    data = bytearray((tmp_path / "m.gguf").read_bytes())
    # its ggml type, the u32 after the name and the dimensions: F32 -> I32, the same size,
    # which the reader accepts and nlpkit cannot dequantize
    at = data.index(name.encode()) + len(name) + 4 + 8 * len(info.shape)
    assert int.from_bytes(data[at : at + 4], "little") == info.ggml_type == 0
    data[at : at + 4] = (26).to_bytes(4, "little")
    (tmp_path / "bad.gguf").write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"tensor '{name}' .* is I32, which nlpkit cannot dequantize"):
        gguf_to_folder(tmp_path / "bad.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def write_wide_llama(path: Path, width: int, heads: int) -> int:
    """A one-layer Llama whose seven projections are each ``width`` x ``width`` float32, with
    test_chat's tokenizer; returns the bytes of one projection."""
    from tests.test_tokenizer import gguf_vocab, smollm_like

    tokens, merges = gguf_vocab(smollm_like())
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(width)
    w.add_block_count(1)
    w.add_feed_forward_length(width)
    w.add_head_count(heads)
    w.add_head_count_kv(heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types([3 if i < 3 else 1 for i in range(len(tokens))])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    rng = np.random.default_rng(0)
    w.add_tensor("token_embd.weight", rng.standard_normal((len(tokens), width), np.float32))
    w.add_tensor("output_norm.weight", np.ones(width, np.float32))
    for name in ("attn_norm", "ffn_norm"):
        w.add_tensor(f"blk.0.{name}.weight", np.ones(width, np.float32))
    for name in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
        w.add_tensor(f"blk.0.{name}.weight", rng.standard_normal((width, width), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return width * width * 4


def test_conversion_holds_about_one_tensor_not_the_model(tmp_path: Path) -> None:
    """Seven 4 MB projections and a 1.7 MB embedding (30 MB of float32): the conversion's peak
    of Python and numpy allocations stays near one tensor (two while Q/K rows are permuted),
    where the dict-then-write conversion held the whole model, and then copies of it."""
    tensor = write_wide_llama(tmp_path / "wide.gguf", width=1024, heads=8)
    total = sum(int(np.prod(i.shape)) * 4 for i in read_gguf(tmp_path / "wide.gguf").tensors.values())
    assert tensor == 4 * MB and total > 7 * tensor
    gc.collect()
    tracemalloc.start()
    try:
        gguf_to_folder(tmp_path / "wide.gguf", tmp_path / "out")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2.5 * tensor, (
        f"peak {peak / MB:.1f} MB for {tensor / MB:.0f} MB tensors, {total / MB:.0f} MB in all"
    )
    got, _ = load_tensors(str(tmp_path / "out" / "model.safetensors"))
    gg = read_gguf(tmp_path / "wide.gguf")
    assert np.array_equal(got["model.layers.0.mlp.down_proj.weight"], gg.tensor("blk.0.ffn_down.weight"))
    assert np.array_equal(
        got["model.layers.0.self_attn.q_proj.weight"], unpermute_rows(gg.tensor("blk.0.attn_q.weight"), 8)
    )
