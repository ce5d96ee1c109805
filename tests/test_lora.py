"""LoRA: the layer (init equals base, merged equals unmerged), SFT masks, training through the one
loop (resume after SIGTERM), PEFT interop both ways, --adapter on generate/chat/eval, lora merge,
and the refusals; all on the tiny random Llama of test_chat."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import run_cli, sigterm_after_logging

torch = pytest.importorskip("torch")
pytest.importorskip("gguf")

from nlpkit.cli.main import app  # noqa: E402
from nlpkit.errors import DataError, UsageError  # noqa: E402
from nlpkit.io.tensors import load_tensors  # noqa: E402
from nlpkit.lm.layers import lm_loss  # noqa: E402
from nlpkit.lm.lora import LoraConfig, apply_lora, load_adapter, merge_lora, trainable_params  # noqa: E402
from nlpkit.lm.model import load_model  # noqa: E402
from nlpkit.store.gguf_folder import gguf_to_folder  # noqa: E402
from nlpkit.text.chat_template import ChatTemplate  # noqa: E402
from nlpkit.text.tokenizer import load as load_tokenizer  # noqa: E402
from nlpkit.tune.lora import train_lora  # noqa: E402
from nlpkit.tune.sft import IGNORE, SFTSet, read_examples  # noqa: E402
from tests.test_chat import write_llama_gguf  # noqa: E402

IDS = torch.tensor([[5, 9, 33, 2, 60, 7, 11, 40]])


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lora")
    write_llama_gguf(root / "tiny.gguf")
    gguf_to_folder(root / "tiny.gguf", root / "model")
    data = root / "qa.jsonl"
    with data.open("w") as f:
        for i in range(48):
            f.write(
                json.dumps({"instruction": f"what is {i} plus one?", "input": "", "output": f"{i + 1}"})
                + "\n"
            )
        f.write(
            json.dumps(
                {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
            )
        )
        f.write("\n" + json.dumps({"text": "plain completion text"}) + "\n")
    return root


@pytest.fixture(scope="module")
def adapter(base: Path) -> Path:
    """An adapter trained 8 steps on all linear layers (a high lr: B far from zero)."""
    out = base / "adapter"
    overrides = {
        "max_steps": 8,
        "lr": 2e-2,
        "warmup_steps": 0,
        "device": "cpu",
        "threads": 1,
        "log_interval": 2,
    }
    train_lora(str(base / "model"), [str(base / "qa.jsonl")], out, LoraConfig(targets=("all-linear",)),
               overrides=overrides)  # fmt: skip
    return out


def _logits(model: Any) -> Any:
    with torch.no_grad():
        return model(IDS)[0]


def test_lora_at_init_equals_the_base_and_merged_equals_unmerged(base: Path) -> None:
    model, _ = load_model(base / "model")
    before = _logits(model)
    names = apply_lora(model, LoraConfig(rank=4, alpha=8, dropout=0.0, targets=("all-linear",)))
    assert len(names) == 2 * 7 and all(
        p.requires_grad == (".lora_" in n) for n, p in model.named_parameters()
    )
    assert "model.layers.0.self_attn.q_proj.weight" in model.state_dict()  # base names kept
    assert torch.equal(_logits(model), before)
    with torch.no_grad():
        for p in trainable_params(model).values():
            p.normal_(0, 0.2)
    unmerged = _logits(model)
    assert (unmerged - before).abs().max() > 1e-2
    merged = _logits(merge_lora(model))
    assert not any(".lora_" in n for n in model.state_dict())
    assert torch.allclose(merged, unmerged, atol=1e-4)


def test_unknown_target_and_bad_settings_are_refused() -> None:
    with pytest.raises(UsageError, match="unknown target module 'qproj'"):
        LoraConfig(targets=("qproj",)).modules()
    with pytest.raises(UsageError, match="--rank"):
        LoraConfig(rank=0)


def test_sft_masks_prompt_tokens_and_masked_positions_carry_no_gradient(base: Path) -> None:
    folder = base / "model"
    tok, template = load_tokenizer(str(folder)), ChatTemplate.from_folder(folder)
    examples, report = read_examples([str(base / "qa.jsonl")], tok, template, max_length=64)
    assert report.chat == 49 and report.completion == 1 and report.truncated == 0
    first = examples[0]
    trained = first.labels[first.labels != IGNORE]
    assert tok.decode(trained.tolist(), skip_special_tokens=False) == "1<|im_end|>\n"
    assert (examples[-1].labels == examples[-1].ids).all()  # completion: every token
    model, _ = load_model(folder)
    apply_lora(model, LoraConfig())
    x, y = SFTSet(examples, pad_id=2, train=False).batch(0, np.arange(4))
    logits, _ = model(x)
    logits.retain_grad()
    lm_loss(logits, y).backward()
    grad = logits.grad.abs().sum(-1)  # (B, T)
    assert grad[y == IGNORE].max() == 0 and (grad[y != IGNORE] > 0).all()


def test_long_examples_are_cut_and_wrong_shapes_name_the_line(base: Path, tmp_path: Path) -> None:
    folder = base / "model"
    tok, template = load_tokenizer(str(folder)), ChatTemplate.from_folder(folder)
    _, report = read_examples([str(base / "qa.jsonl")], tok, template, max_length=24)
    assert report.truncated == 49 and report.dropped == 49  # the prompt alone fills 24 tokens
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(DataError, match="fine-tuning takes instruction, messages or completion") as e:
        read_examples([str(bad)], tok, template, 64)
    assert e.value.where == f"{bad}:2"
    bad.write_text('{"messages": [{"role": "user", "content": "only a question"}]}\n')
    with pytest.raises(DataError, match="does not end with an assistant turn"):
        read_examples([str(bad)], tok, template, 64)


def test_training_writes_a_peft_adapter_and_the_loss_falls(adapter: Path) -> None:
    names = {p.name for p in adapter.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "train.jsonl", "checkpoints"} <= names
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 8 and cfg["lora_alpha"] == 16
    tensors, meta = load_tensors(str(adapter / "adapter_model.safetensors"))
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in tensors
    assert tensors["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"].shape == (64, 8)
    assert meta["nlpkit.kind"] == "adapter.lora" and len(meta["nlpkit.base_fingerprint"]) == 32
    losses = [
        r["loss"] for r in map(json.loads, (adapter / "train.jsonl").read_text().splitlines()) if "loss" in r
    ]
    assert losses[-1] < losses[0]
    ckpt = torch.load(adapter / "checkpoints" / "step-00000008.pt", weights_only=True)
    assert all(".lora_" in k for k in ckpt["model"])  # the adapter only, not the base


def test_peft_loads_an_nlpkit_adapter_with_the_same_logits(base: Path, adapter: Path, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    assert run_cli("export", str(base / "model"), "--to", "hf", str(tmp_path / "hf")).returncode == 0
    hf = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    peft_model = peft.PeftModel.from_pretrained(hf, str(adapter)).eval()
    ours, _ = load_model(base / "model")
    load_adapter(ours, adapter)
    ours.eval()
    with torch.no_grad():
        assert torch.allclose(peft_model(IDS).logits, _logits(ours), atol=1e-4)
        assert (peft_model(IDS).logits - _logits(load_model(base / "model")[0])).abs().max() > 1e-3


def test_an_adapter_peft_trained_loads_in_nlpkit(base: Path, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    assert run_cli("export", str(base / "model"), "--to", "hf", str(tmp_path / "hf")).returncode == 0
    hf = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    cfg = peft.LoraConfig(
        r=4, lora_alpha=12, target_modules=["k_proj", "o_proj", "up_proj"], lora_dropout=0.0
    )
    peft_model = peft.get_peft_model(hf, cfg)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    peft_model.save_pretrained(str(tmp_path / "peft"))
    peft_model.eval()
    ours, _ = load_model(base / "model")
    got = load_adapter(ours, tmp_path / "peft")
    assert got.rank == 4 and got.scaling == 3.0
    with torch.no_grad():
        assert torch.allclose(peft_model(IDS).logits, _logits(ours), atol=1e-4)


def test_adapters_for_another_base_or_rank_are_refused(base: Path, adapter: Path, tmp_path: Path) -> None:
    write_llama_gguf(tmp_path / "other.gguf", seed=1)
    gguf_to_folder(tmp_path / "other.gguf", tmp_path / "other")
    other, _ = load_model(tmp_path / "other")
    with pytest.raises(UsageError, match="trained over another base model"):
        load_adapter(other, adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    wrong = tmp_path / "wrong-rank"
    wrong.mkdir()
    (wrong / "adapter_config.json").write_text(json.dumps(cfg | {"r": 4}))
    (wrong / "adapter_model.safetensors").write_bytes((adapter / "adapter_model.safetensors").read_bytes())
    with pytest.raises(UsageError, match=r"is \(8, \d+\), the model needs \(4, \d+\) \(rank 4\)"):
        load_adapter(load_model(base / "model")[0], wrong)


def test_generate_chat_eval_take_the_adapter_and_merge_equals_it(
    runner: Any, base: Path, adapter: Path, tmp_path: Path
) -> None:
    model = str(base / "model")
    args = ["--temperature", "0", "--max-new-tokens", "6", "--device", "cpu", "--dtype", "float32"]
    plain = runner.invoke(app, ["generate", model, "what is 3 plus one?", *args])
    tuned = runner.invoke(app, ["generate", model, "what is 3 plus one?", *args, "--adapter", str(adapter)])
    assert plain.exit_code == 0 and tuned.exit_code == 0, tuned.output
    merged = runner.invoke(app, ["lora", "merge", model, str(adapter), "-o", str(tmp_path / "merged")])
    assert merged.exit_code == 0, merged.output
    again = runner.invoke(app, ["generate", str(tmp_path / "merged"), "what is 3 plus one?", *args])
    assert again.stdout == tuned.stdout
    a, _ = load_model(tmp_path / "merged")
    b, _ = load_model(base / "model")
    load_adapter(b, adapter)
    assert torch.allclose(_logits(a), _logits(b), atol=1e-4)
    chat = runner.invoke(app, ["chat", model, "-i", "-", *args, "--adapter", str(adapter)],
                         input='{"messages":[{"role":"user","content":"what is 3 plus one?"}]}\n')  # fmt: skip
    assert chat.exit_code == 0 and "reply" in json.loads(chat.stdout), chat.output
    held = tmp_path / "held.txt"
    held.write_text("what is 3 plus one? 4\n")
    e1 = runner.invoke(app, ["eval", model, str(held), "--device", "cpu", "--adapter", str(adapter)])
    e2 = runner.invoke(app, ["eval", str(tmp_path / "merged"), str(held), "--device", "cpu"])
    assert e1.exit_code == 0 and json.loads(e1.stdout)["loss"] == pytest.approx(
        json.loads(e2.stdout)["loss"], abs=1e-4
    )
    missing = runner.invoke(app, ["generate", model, "x", "--adapter", str(tmp_path / "nowhere")])
    assert missing.exit_code == 66 and "adapter_config.json" in missing.stderr


def test_cli_train_refusals(runner: Any, base: Path, adapter: Path, tmp_path: Path) -> None:
    model, data = str(base / "model"), str(base / "qa.jsonl")
    bad = runner.invoke(
        app, ["lora", "train", model, data, "-o", str(tmp_path / "x"), "--targets", "q_proj,wq"]
    )
    assert bad.exit_code == 2 and "unknown target module 'wq'" in bad.stderr
    again = runner.invoke(app, ["lora", "train", model, data, "-o", str(adapter), "--max-steps", "1"])
    assert again.exit_code == 2 and "already holds a model or an adapter" in again.stderr
    piped = runner.invoke(app, ["lora", "train", model, "-o", str(tmp_path / "p"), "--max-steps", "2", "--device", "cpu"],
                          input=(base / "qa.jsonl").read_text())  # fmt: skip
    assert piped.exit_code == 0 and json.loads(piped.stdout)["step"] == 2, piped.output
    assert "loss on response tokens only (prompt tokens masked)" in piped.stderr
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text('{"text": "ok"}\n{"label": 1}\n')
    bad_data = runner.invoke(
        app, ["lora", "train", model, str(wrong), "-o", str(tmp_path / "w"), "--max-steps", "1"]
    )
    assert bad_data.exit_code == 65 and f"{wrong}:2: a labelled record: fine-tuning takes" in bad_data.stderr


def test_sigterm_checkpoints_then_resume_continues_the_same_loss_curve(base: Path, tmp_path: Path) -> None:
    common = ["lora", "train", str(base / "model"), str(base / "qa.jsonl"), "--threads", "1", "--device", "cpu",
              "--log-interval", "1", "--checkpoint-interval", "0", "--lr", "1e-2", "--dropout", "0.1"]  # fmt: skip
    full = run_cli(*common, "-o", str(tmp_path / "a"), "--max-steps", "14")
    assert full.returncode == 0, full.stderr
    out = tmp_path / "b"
    returncode, _, stderr = sigterm_after_logging([sys.executable, "-m", "nlpkit", *common, "-o", str(out), "--max-steps", "14"],
                                 out / "train.jsonl", 3)  # fmt: skip
    if returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert returncode == 143 and b"stopped by SIGTERM" in stderr, stderr
    done = run_cli(*common, "-o", str(out), "--resume", "--max-steps", "14")
    assert done.returncode == 0, done.stderr
    a, _ = load_tensors(str(tmp_path / "a" / "adapter_model.safetensors"))
    b, _ = load_tensors(str(out / "adapter_model.safetensors"))
    assert all(np.array_equal(a[k], b[k]) for k in a)

    def curve(folder: Path) -> list[float]:
        return [
            r["loss"]
            for r in map(json.loads, (folder / "train.jsonl").read_text().splitlines())
            if "loss" in r
        ]

    assert curve(out) == curve(tmp_path / "a")


# --------------------------------------------------------------------------- QLoRA


def test_nf4_round_trip_matches_the_reference_codebook() -> None:
    from nlpkit.tune.nf4 import DYNAMIC_CODE, NF4_CODE, dequantize_nf4, quantize_nf4

    assert NF4_CODE.numel() == 16 and NF4_CODE[7] == 0 and NF4_CODE[0] == -1 and NF4_CODE[-1] == 1
    assert DYNAMIC_CODE.numel() == 256 and bool((DYNAMIC_CODE.diff() >= 0).all()) and DYNAMIC_CODE[-1] == 1.0
    # a block holding exactly the 16 levels (times 4 per block) comes back exactly, packed high nibble first
    w = (NF4_CODE.repeat(8) * 0.5).view(2, 64)
    q = quantize_nf4(w)
    assert q.packed[0] == (0 << 4) | 1 and q.packed.numel() == 64
    assert torch.allclose(dequantize_nf4(q), w, atol=1e-3 * 0.5)
    torch.manual_seed(0)
    w = torch.randn(96, 128) * 0.02
    back = dequantize_nf4(quantize_nf4(w))
    blocks, err = w.view(-1, 64), (back - w).view(-1, 64).abs()
    # at most half the widest gap between levels, plus the double-quantized scale's error (~1%)
    gap = NF4_CODE.diff().max() / 2
    assert bool((err <= (gap + 0.01) * blocks.abs().amax(1, keepdim=True)).all())
    assert DYNAMIC_CODE[0] == pytest.approx(-0.99296875) and DYNAMIC_CODE[127] == 0  # bitsandbytes' table
    assert quantize_nf4(w).nbytes() / (w.numel() * 4) < 0.14


def test_nf4_is_byte_for_byte_bitsandbytes_format() -> None:
    bnb = pytest.importorskip("bitsandbytes.functional")
    from nlpkit.tune.nf4 import DYNAMIC_CODE, dequantize_nf4, quantize_nf4

    torch.manual_seed(0)
    w = torch.randn(128, 256) * 0.02
    packed, state = bnb.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
    q = quantize_nf4(w)
    assert torch.equal(packed.view(-1).view(torch.uint8), q.packed)
    assert torch.equal(state.absmax.view(torch.uint8), q.scale_codes)  # double-quantized scales
    assert float(state.offset) == pytest.approx(q.scale_offset, abs=1e-7)
    assert torch.allclose(state.state2.absmax, q.scale_absmax) and torch.allclose(
        state.state2.code, DYNAMIC_CODE
    )
    assert torch.equal(bnb.dequantize_4bit(packed, state), dequantize_nf4(q))


def test_qlora_trains_with_an_nf4_base_and_its_adapter_loads_over_the_float_base(
    base: Path, tmp_path: Path
) -> None:
    out = tmp_path / "q"
    overrides = {
        "max_steps": 4,
        "lr": 2e-2,
        "warmup_steps": 0,
        "device": "cpu",
        "threads": 1,
        "log_interval": 1,
    }
    summary = train_lora(str(base / "model"), [str(base / "qa.jsonl")], out, LoraConfig(targets=("all-linear",)),
                         overrides=overrides, qlora=True)  # fmt: skip
    assert summary["qlora"] and summary["base_bytes"]["ratio"] < 0.2
    losses = [
        r["loss"] for r in map(json.loads, (out / "train.jsonl").read_text().splitlines()) if "loss" in r
    ]
    assert losses[-1] < losses[0]
    model, _ = load_model(base / "model")
    load_adapter(model, out)  # the fingerprint is the float base's
    ckpt = torch.load(out / "checkpoints" / "step-00000004.pt", weights_only=True)
    assert all(".lora_" in k for k in ckpt["model"])


def test_qlora_holds_every_frozen_linear_as_nf4_not_only_the_adapted(base: Path) -> None:
    """With adapters on q_proj and v_proj only, k/o/gate/up/down are NF4 too (QLoRA's base is
    all 4-bit); the head stays; outputs match the float model within NF4's error."""
    from nlpkit.tune.nf4 import NF4Linear, QLoRALinear, dequantize_nf4, quantize_bases

    model, _ = load_model(base / "model")
    x = torch.randint(0, 400, (2, 10))
    with torch.no_grad():
        want = model(x)[0]
    apply_lora(model, LoraConfig(dropout=0.0, targets=("q_proj", "v_proj")))
    sizes = quantize_bases(model)
    kinds = {n.rpartition(".")[2]: type(m) for n, m in model.named_modules() if ".layers." in n}
    assert kinds["q_proj"] is QLoRALinear and kinds["v_proj"] is QLoRALinear
    assert all(kinds[k] is NF4Linear for k in ("k_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
    plain = [n for n, m in model.named_modules() if type(m) is torch.nn.Linear and ".lora_" not in n]
    assert plain == ["lm_head"], plain
    assert type(model.lm_head) is not NF4Linear
    assert sizes["ratio"] < 0.2
    layer = model.model.layers[0].mlp.down_proj
    h = torch.randn(3, layer.in_features)
    assert torch.allclose(layer(h), h @ dequantize_nf4(layer.nf4).T, atol=1e-5)
    with torch.no_grad():
        got = model(x)[0]
    assert (got.softmax(-1) - want.softmax(-1)).abs().max() < 0.1  # 4-bit weights, the same model


def test_the_frozen_head_loss_equals_logits_then_cross_entropy(base: Path) -> None:
    model, _ = load_model(base / "model")
    apply_lora(model, LoraConfig(dropout=0.0, targets=("all-linear",)))
    with torch.no_grad():
        for p in trainable_params(model).values():
            p.normal_(0, 0.1)
    model.train()
    torch.manual_seed(0)
    x = torch.randint(0, 400, (3, 12))
    y = x.roll(-1, 1).masked_fill(torch.rand(3, 12) < 0.4, IGNORE)
    logits, fused = model(x, y)
    assert logits.numel() == 0  # never materialised
    fused.backward()
    got = {n: p.grad.clone() for n, p in trainable_params(model).items()}
    model.zero_grad()
    want = lm_loss(model(x)[0], y)
    want.backward()
    assert torch.allclose(fused, want, atol=1e-5)
    assert all(torch.allclose(got[n], p.grad, atol=1e-6) for n, p in trainable_params(model).items())


def test_the_swiglu_backward_is_the_derivative() -> None:
    from nlpkit.lm.layers import _SwiGLUFn

    gate = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    up = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_SwiGLUFn.apply, (gate, up))
