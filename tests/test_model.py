"""model.py: the three networks on tiny configs; the KV cache; folders; Hugging Face parity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from nlpkit.errors import DataError, InputMissing, UsageError  # noqa: E402
from nlpkit.lm.config import ModelConfig  # noqa: E402
from nlpkit.lm.layers import Rotary, _RMSNormFn, _RopeFn, apply_rope  # noqa: E402
from nlpkit.lm.model import _head_and_embedding, build_model, load_model, save_model  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # tiny ops: a shared machine's second thread only adds waiting


def tiny(arch: str = "llama", **kw: object) -> ModelConfig:
    base: dict[str, object] = dict(arch=arch, vocab_size=40, block_size=16, n_layer=2, n_embd=16, n_head=4)
    if arch == "seq2seq":
        base |= dict(pad_id=0, bos_id=1, eos_id=2)
    return ModelConfig(**(base | kw))  # type: ignore[arg-type]


def test_rms_norm_function_matches_torch_and_its_gradient_checks() -> None:
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, dtype=torch.float64, requires_grad=True)
    ref = torch.nn.functional.rms_norm(x, (8,), w, 1e-5)
    assert torch.allclose(_RMSNormFn.apply(x, w, 1e-5), ref)
    assert torch.autograd.gradcheck(lambda a, b: _RMSNormFn.apply(a, b, 1e-5), (x, w))


def test_rope_matches_hugging_face_rotate_half_and_its_gradient_checks() -> None:
    rot = Rotary(8, 6, 10000.0).double()
    x = torch.randn(2, 6, 3, 8, dtype=torch.float64, requires_grad=True)  # (B, T, nh, hs)
    inv = 1.0 / 10000.0 ** (torch.arange(0, 8, 2).double() / 8)
    emb = torch.cat([torch.outer(torch.arange(6).double(), inv)] * 2, dim=-1)[:, None]  # (T, 1, hs)
    x1, x2 = x.chunk(2, dim=-1)
    hf = x * emb.cos() + torch.cat((-x2, x1), dim=-1) * emb.sin()  # transformers' apply_rotary_pos_emb
    assert torch.allclose(apply_rope(x, rot(0, 6)), hf)
    assert torch.autograd.gradcheck(lambda a: _RopeFn.apply(a, *rot(0, 6)), (x,))


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_kv_cache_gives_the_full_forward_logits(n_kv_head: int) -> None:
    torch.manual_seed(0)
    model = build_model(tiny(n_kv_head=n_kv_head)).eval()
    idx = torch.randint(0, 40, (2, 12))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_cache(2)
        steps = [model(idx[:, :5], cache=cache)[0][:, -1], model(idx[:, 5:9], cache=cache)[0][:, -1]]
        steps += [model(idx[:, t : t + 1], cache=cache)[0][:, -1] for t in range(9, 12)]
    for got, t in zip(steps, [4, 8, 9, 10, 11], strict=True):
        assert torch.allclose(got, full[:, t], atol=1e-5)


def test_grouped_query_attention_equals_repeated_heads() -> None:
    torch.manual_seed(0)
    cfg = tiny(n_kv_head=2)
    model = build_model(cfg).eval()
    attn, x = model.model.layers[0].self_attn, torch.randn(1, 5, 16)
    rope = model.rotary(0, 5)
    with torch.no_grad():
        got = attn(x, rope, causal=True)
        q = apply_rope(attn.q_proj(x).view(1, 5, 4, 4), rope).transpose(1, 2)
        k = apply_rope(attn.k_proj(x).view(1, 5, 2, 4), rope).transpose(1, 2).repeat_interleave(2, dim=1)
        v = attn.v_proj(x).view(1, 5, 2, 4).transpose(1, 2).repeat_interleave(2, dim=1)
        att = (q @ k.transpose(-2, -1) / 2.0).masked_fill(torch.ones(5, 5).triu(1).bool(), float("-inf"))
        want = attn.o_proj((att.softmax(-1) @ v).transpose(1, 2).reshape(1, 5, 16))
    assert torch.allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("arch", ["llama", "lstm", "seq2seq"])
@pytest.mark.parametrize("tie", [True, False])
def test_folder_round_trip(tmp_path: Path, arch: str, tie: bool) -> None:
    torch.manual_seed(0)
    cfg = tiny(arch, tie_embeddings=tie)
    model = build_model(cfg).eval()
    save_model(model, cfg, tmp_path)
    loaded, cfg2 = load_model(tmp_path)
    assert cfg2.to_hf() == cfg.to_hf()
    idx = torch.randint(3, 40, (2, 7))
    args = (idx, idx) if arch == "seq2seq" else (idx,)
    with torch.no_grad():
        assert torch.equal(model(*args)[0], loaded(*args)[0])
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        assert f.metadata()["format"] == "pt"  # transformers refuses files without it
    assert ("lm_head.weight" in names or "head.weight" in names) != tie
    head, embedding = _head_and_embedding(loaded)
    assert (head.weight is embedding.weight) == tie  # tied again after loading, not a copy


def test_llama_folder_uses_hugging_face_names_and_keys(tmp_path: Path) -> None:
    cfg = tiny(n_kv_head=2)
    save_model(build_model(cfg), cfg, tmp_path)
    hf = json.loads((tmp_path / "config.json").read_text())
    assert hf["model_type"] == "llama" and hf["architectures"] == ["LlamaForCausalLM"]
    assert (hf["hidden_size"], hf["num_attention_heads"], hf["num_key_value_heads"], hf["head_dim"]) == (
        16,
        4,
        2,
        4,
    )
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert {"model.embed_tokens.weight", "model.norm.weight", "model.layers.1.mlp.down_proj.weight"} <= names
    assert "model.layers.0.self_attn.k_proj.weight" in names


def test_config_from_transformers_style_json() -> None:
    d = {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
         "num_attention_heads": 9, "num_key_value_heads": 3, "rms_norm_eps": 1e-5, "vocab_size": 49152,
         "max_position_embeddings": 8192, "tie_word_embeddings": True, "hidden_act": "silu",
         "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0}}  # fmt: skip
    cfg = ModelConfig.from_hf(d)
    assert (cfg.n_layer, cfg.n_embd, cfg.kv_heads, cfg.hs, cfg.ffn_size(), cfg.rope_theta) == (
        30,
        576,
        3,
        64,
        1536,
        1e5,
    )
    with pytest.raises(DataError, match="model_type"):
        ModelConfig.from_hf({"model_type": "gpt2"})
    with pytest.raises(DataError, match="invalid model config"):
        ModelConfig.from_hf(d | {"num_attention_heads": 7})


def test_config_errors_name_the_flag() -> None:
    with pytest.raises(UsageError, match="--n-embd 30 is not a multiple of --n-head 4"):
        tiny(n_embd=30)
    with pytest.raises(UsageError, match="--n-kv-head"):
        tiny(n_kv_head=3)
    with pytest.raises(UsageError, match="--dropout"):
        tiny(dropout=1.5)


def test_loading_bad_folders(tmp_path: Path) -> None:
    with pytest.raises(InputMissing):
        load_model(tmp_path / "nope")
    with pytest.raises(InputMissing, match="config.json"):
        load_model(tmp_path)
    cfg = tiny()
    save_model(build_model(cfg), cfg, tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_hf() | {"num_hidden_layers": 3}))
    with pytest.raises(DataError, match="missing"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_model(tmp_path)
    import pickle

    (tmp_path / "config.json").write_text(json.dumps(cfg.to_hf()))
    (tmp_path / "model.safetensors").write_bytes(pickle.dumps({"a": 1}))  # never unpickled
    with pytest.raises(DataError):
        load_model(tmp_path)


def test_seq2seq_padding_does_not_change_a_sequence() -> None:
    torch.manual_seed(0)
    model = build_model(tiny("seq2seq")).eval()
    src = torch.tensor([[5, 6, 7, 2]])
    padded = torch.tensor([[5, 6, 7, 2, 0, 0], [9, 8, 7, 6, 5, 2]])
    tgt = torch.tensor([[1, 7, 6]])
    with torch.no_grad():
        alone, _ = model(src, tgt)
        batch, _ = model(padded, tgt.expand(2, 3))
    assert torch.allclose(alone[0], batch[0], atol=1e-5)


def test_sequences_longer_than_the_block_are_refused() -> None:
    model = build_model(tiny())
    with pytest.raises(UsageError, match="longer than"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_transformers_loads_the_folder_with_the_same_logits(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    for tie, folder in ((True, tmp_path / "tied"), (False, tmp_path / "untied")):
        cfg = tiny(n_kv_head=2, tie_embeddings=tie)
        model = build_model(cfg).eval()
        folder.mkdir()
        save_model(model, cfg, folder)
        theirs = transformers.LlamaForCausalLM.from_pretrained(str(folder)).eval()
        idx = torch.randint(0, 40, (2, 16))
        with torch.no_grad():
            assert (model(idx)[0] - theirs(idx).logits).abs().max().item() < 1e-4
    # and the other way: a transformers checkpoint loads here
    theirs.save_pretrained(str(tmp_path / "hf"))
    ours, _ = load_model(tmp_path / "hf")
    with torch.no_grad():
        assert (ours(idx)[0] - theirs(idx).logits).abs().max().item() < 1e-4
