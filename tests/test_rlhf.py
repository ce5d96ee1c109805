"""RLHF: preference pairs (masks, counted skips), the reward model (transformers gives the same
scores from the exported folder), DPO (ln 2 at the start, TRL's names), PPO's math against
hand-computed values, KL zero when policy equals reference, PPO end to end with resume, the
CLI; all on the tiny random Llama of test_chat."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import run_cli, sigterm_after_logging

torch = pytest.importorskip("torch")
pytest.importorskip("gguf")

from nlpkit.cli.main import app  # noqa: E402
from nlpkit.errors import DataError, UsageError  # noqa: E402
from nlpkit.lm.lora import LoraConfig, adapters_disabled, apply_lora  # noqa: E402
from nlpkit.lm.model import load_model  # noqa: E402
from nlpkit.store.gguf_folder import gguf_to_folder  # noqa: E402
from nlpkit.text.chat_template import ChatTemplate  # noqa: E402
from nlpkit.text.tokenizer import load as load_tokenizer  # noqa: E402
from nlpkit.tune import ppo  # noqa: E402
from nlpkit.tune.dpo import dpo_loss, sequence_logps  # noqa: E402
from nlpkit.tune.lora import train_lora  # noqa: E402
from nlpkit.tune.pairs import PairSet, read_pairs  # noqa: E402
from nlpkit.tune.reward import RewardModel, Scorer, last_tokens, load_reward_model  # noqa: E402
from nlpkit.tune.sft import IGNORE  # noqa: E402
from tests.test_chat import write_llama_gguf  # noqa: E402

LORA = LoraConfig(rank=4, alpha=8, dropout=0.0, targets=("all-linear",))
FAST = {"lr": 1e-2, "warmup_steps": 0, "device": "cpu", "threads": 1, "log_interval": 1, "batch_size": 4}


def _pair(i: int) -> dict[str, str]:
    return {"prompt": f"review film {i}", "chosen": f"a great fun film {i}", "rejected": f"an awful bore {i}"}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rlhf")
    write_llama_gguf(root / "tiny.gguf")
    gguf_to_folder(root / "tiny.gguf", root / "model")
    with (root / "pairs.jsonl").open("w") as f:
        for i in range(24):
            f.write(json.dumps(_pair(i)) + "\n")
    with (root / "prompts.jsonl").open("w") as f:
        for i in range(12):
            f.write(json.dumps({"prompt": f"review film {i}"}) + "\n")
    return root


@pytest.fixture(scope="module")
def rm(base: Path) -> Path:
    out = base / "rm"
    train_lora(str(base / "model"), [str(base / "pairs.jsonl")], out, LORA,
               overrides=FAST | {"max_steps": 6}, task="rm")  # fmt: skip
    return out


def _tok(base: Path) -> tuple[Any, Any]:
    return load_tokenizer(str(base / "model")), ChatTemplate.from_folder(base / "model")


# --------------------------------------------------------------------------- pairs


def test_pair_labels_cover_the_responses_only(base: Path) -> None:
    tok, template = _tok(base)
    pairs, report = read_pairs([str(base / "pairs.jsonl")], tok, template, max_length=64)
    assert report.pairs == 24 and not report.skipped
    ids, labels = PairSet(pairs, pad_id=2, train=False).batch(0, np.arange(2))
    assert ids.shape[0] == 4  # two chosen rows, then two rejected
    for row, (pair, side) in enumerate([(pairs[0], "chosen"), (pairs[1], "chosen"), (pairs[0], "rejected")]):
        response = getattr(pair, side)
        n, p = len(pair.prompt) + len(response), len(pair.prompt)
        assert (labels[row, :p] == IGNORE).all() and (labels[row, n:] == IGNORE).all()
        assert labels[row, p:n].tolist() == response.tolist() == ids[row, p:n].tolist()
    # the response is the rendered assistant turn, with the end marker
    text = tok.decode(pairs[0].chosen.tolist(), skip_special_tokens=False)
    assert "a great fun film 0" in text and "<|im_end|>" in text


def test_useless_pairs_are_skipped_and_counted(base: Path, tmp_path: Path) -> None:
    tok, template = _tok(base)
    path = tmp_path / "p.jsonl"
    rows = [_pair(1), {"prompt": "x", "chosen": "same", "rejected": "same"},
            {"prompt": "x", "chosen": "   ", "rejected": "fine"}, {"prompt": "long " * 80, "chosen": "a", "rejected": "b"}]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs, report = read_pairs([str(path)], tok, template, max_length=48)
    assert report.pairs == len(pairs) == 1
    assert report.skipped == {"chosen equals rejected": 1, "an empty response": 1,
                              "prompt of --max-length tokens or more": 1}  # fmt: skip
    assert "1 skipped (chosen equals rejected)" in report.line()


def test_a_record_of_another_shape_is_refused_with_its_line(base: Path, tmp_path: Path) -> None:
    tok, template = _tok(base)
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(_pair(1)) + "\n" + json.dumps({"text": "hi"}) + "\n")
    with pytest.raises(DataError, match="preference training takes") as e:
        read_pairs([str(path)], tok, template, max_length=48)
    assert e.value.where.endswith("p.jsonl:2")
    path.write_text(json.dumps({"prompt": "x", "chosen": "s", "rejected": "s"}) + "\n")
    with pytest.raises(DataError, match="no preference pair left"):
        read_pairs([str(path)], tok, template, max_length=48)


def test_masked_prompt_tokens_carry_no_gradient(base: Path) -> None:
    """Only positions whose target is a response token reach the loss: the final hidden
    state of every other position gets exactly zero gradient."""
    tok, template = _tok(base)
    pairs, _ = read_pairs([str(base / "pairs.jsonl")], tok, template, max_length=64)
    ids, labels = PairSet(pairs, pad_id=2, train=False).batch(0, np.arange(2))
    net, _ = load_model(base / "model")
    grads: list[Any] = []

    def keep_grad(module: Any, inputs: Any, out: Any) -> None:
        out.register_hook(grads.append)

    net.model.norm.register_forward_hook(keep_grad)
    sequence_logps(net, ids, labels).sum().backward()
    targets = labels[:, 1:]
    g = grads[0].abs().sum(-1)  # (B, T-1)
    assert (g[targets == IGNORE] == 0).all()
    assert (g[targets != IGNORE] > 0).all()


def test_sequence_logps_sums_the_response_tokens(base: Path) -> None:
    tok, template = _tok(base)
    pairs, _ = read_pairs([str(base / "pairs.jsonl")], tok, template, max_length=64)
    ids, labels = PairSet(pairs, pad_id=2, train=False).batch(0, np.arange(2))
    net, _ = load_model(base / "model")
    with torch.no_grad():
        got = sequence_logps(net, ids, labels)
        logp = torch.log_softmax(net(ids)[0][:, :-1].float(), -1)
    want = [sum(float(logp[b, t, labels[b, t + 1]]) for t in range(ids.size(1) - 1) if labels[b, t + 1] != IGNORE)
            for b in range(ids.size(0))]  # fmt: skip
    assert got.tolist() == pytest.approx(want, abs=1e-4)


# --------------------------------------------------------------------------- reward model


def test_reward_model_reads_the_last_real_token(base: Path) -> None:
    ids = torch.tensor([[5, 9, 7, 2, 2], [5, 9, 7, 8, 6], [2, 2, 2, 2, 2]])
    assert last_tokens(ids, pad=2).tolist() == [2, 4, 0]
    net, _ = load_model(base / "model")
    rm = RewardModel.from_lm(net).eval()
    padded = torch.tensor([[5, 9, 7, 2, 2]])
    with torch.no_grad():
        assert float(rm(padded)) == pytest.approx(float(rm(padded[:, :3])), abs=1e-6)


def test_reward_model_learns_and_transformers_gives_the_same_scores(
    base: Path, rm: Path, tmp_path: Path
) -> None:
    transformers = pytest.importorskip("transformers")
    log = [json.loads(x) for x in (rm / "train.jsonl").read_text().splitlines()]
    assert {"loss", "accuracy", "margin"} <= set(log[0]) and "val_accuracy" in log[-1]
    assert log[-1]["val_accuracy"] == 1.0  # "great fun" over "awful bore" is easy
    r = run_cli("export", str(rm), "--to", "hf", str(tmp_path / "hf"))
    assert r.returncode == 0, r.stderr
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    ours, _ = load_reward_model(rm)
    ids = torch.tensor([[5, 9, 33, 40, 60, 7, 11, 40], [5, 9, 33, 7, 2, 2, 2, 2]])
    with torch.no_grad():
        want = hf(input_ids=ids).logits.squeeze(-1)
        got = ours(ids)
    assert type(hf).__name__ == "LlamaForSequenceClassification"
    assert torch.allclose(got, want, atol=1e-5)


def test_rlhf_score_adds_rewards_to_a_pipe(base: Path, rm: Path) -> None:
    lines = [json.dumps({"prompt": "review film 3", "completion": "a great fun film 3"}),
             json.dumps({"prompt": "review film 3", "completion": "an awful bore 3"}),
             json.dumps(_pair(5))]  # fmt: skip
    r = run_cli("rlhf", "score", str(rm), input=("\n".join(lines) + "\n").encode())
    assert r.returncode == 0, r.stderr
    out = [json.loads(x) for x in r.stdout.decode().splitlines()]
    assert out[0]["reward"] > out[1]["reward"]
    assert out[2]["reward_chosen"] > out[2]["reward_rejected"]
    scorer = Scorer.load(rm)
    assert out[0]["reward"] == pytest.approx(
        next(scorer.score([("review film 3", "a great fun film 3")])), abs=1e-5
    )
    bad = run_cli("rlhf", "score", str(rm), input=b'{"prompt": "x"}\n')
    assert bad.returncode == 65 and b"<stdin>:1" in bad.stderr and b"no response field" in bad.stderr


# --------------------------------------------------------------------------- DPO


def test_dpo_loss_matches_hand_values() -> None:
    loss, chosen, rejected = dpo_loss(torch.tensor([-4.0]), torch.tensor([-6.0]), torch.tensor([-5.0]),
                                      torch.tensor([-5.0]), beta=0.5)  # fmt: skip
    assert chosen.item() == 0.5 and rejected.item() == -0.5
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-1.0))))


def test_dpo_starts_at_ln2_and_logs_trl_names(base: Path) -> None:
    out = base / "dpo"
    summary = train_lora(str(base / "model"), [str(base / "pairs.jsonl")], out, LORA,
                         overrides=FAST | {"max_steps": 4}, task="dpo", beta=0.1)  # fmt: skip
    log = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    assert log[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert log[0]["rewards/chosen"] == 0.0 and log[0]["rewards/margins"] == 0.0
    assert {"rewards/rejected", "rewards/accuracies", "logps/chosen", "logps/rejected"} <= set(log[0])
    assert log[-2]["rewards/margins"] > 0  # it learns to prefer the chosen side
    assert summary["adapter"] == str(out) and (out / "adapter_config.json").is_file()
    assert "val_rewards/accuracies" in summary and "val_ppl" not in summary


# --------------------------------------------------------------------------- PPO math


def test_gae_matches_hand_computed_values() -> None:
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.5, 2.0, 0.0, 0.0]])
    values = torch.tensor([[0.1, 0.2, 0.3, 9.0], [0.4, 0.5, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    adv, ret = ppo.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # row 0 by hand: delta2 = 1 - 0.3 = 0.7; delta1 = 0 + 0.9*0.3 - 0.2 = 0.07; delta0 = 0.9*0.2 - 0.1 = 0.08
    # A2 = 0.7; A1 = 0.07 + 0.72*0.7 = 0.574; A0 = 0.08 + 0.72*0.574 = 0.49328
    # row 1: delta1 = 2 - 0.5 = 1.5; delta0 = 0.5 + 0.9*0.5 - 0.4 = 0.55; A0 = 0.55 + 0.72*1.5 = 1.63
    np.testing.assert_allclose(adv.numpy(), [[0.49328, 0.574, 0.7, 0.0], [1.63, 1.5, 0.0, 0.0]], atol=1e-6)
    np.testing.assert_allclose(ret.numpy(), [[0.59328, 0.774, 1.0, 0.0], [2.03, 2.0, 0.0, 0.0]], atol=1e-6)


def test_kl_rewards_put_the_score_on_the_last_token() -> None:
    logps = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0], [-2.0, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards, kl = ppo.kl_rewards(logps, ref, torch.tensor([2.0, -1.0]), mask, kl_coef=0.1)
    np.testing.assert_allclose(kl.numpy(), [[0.5, 0.0, -1.0], [1.0, 0.0, 0.0]], atol=1e-6)
    np.testing.assert_allclose(rewards.numpy(), [[-0.05, 0.0, 2.1], [-0.1, -1.0, 0.0]], atol=1e-6)


def test_ppo_losses_match_hand_computed_values() -> None:
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.9, 1.1]]))  # ratios 1.5, 0.9, 1.1
    adv = torch.tensor([[1.0, -1.0, 2.0]])
    mask = torch.ones(1, 3)
    values, old_values, returns = (
        torch.tensor([[1.0, 0.0, 0.5]]),
        torch.tensor([[0.5, 0.0, 0.5]]),
        torch.tensor([[2.0, 1.0, 0.5]]),
    )
    pg, vf, numbers = ppo.ppo_losses(new, old, adv, values, old_values, returns, mask, 0.2, 0.2)
    # surrogate: max(-A r, -A clip(r)): token 0: max(-1.5, -1.2) = -1.2 (clipped);
    # token 1: max(0.9, 0.9) = 0.9; token 2: max(-2.2, -2.2) = -2.2  -> mean -0.8333
    assert pg.item() == pytest.approx((-1.2 + 0.9 - 2.2) / 3)
    assert numbers["clipfrac"].item() == pytest.approx(1 / 3)
    # value: token 0: v 1.0, clipped 0.7 -> max((1-2)^2, (0.7-2)^2) = 1.69; token 1: 1; token 2: 0
    assert vf.item() == pytest.approx(0.5 * (1.69 + 1.0 + 0.0) / 3)


def test_adaptive_kl_moves_toward_the_target() -> None:
    kl = ppo.AdaptiveKL(0.1, target=0.05, horizon=100)
    kl.update(0.5, samples=10)  # far above: the full +20% step, scaled by 10/100
    assert kl.coef == pytest.approx(0.1 * 1.02)
    kl.update(0.0, samples=10)
    assert kl.coef == pytest.approx(0.1 * 1.02 * 0.98)


def test_kl_is_zero_when_the_policy_equals_the_reference(base: Path) -> None:
    net, _ = load_model(base / "model")
    apply_lora(net, LORA)  # B = 0: the adapters add nothing yet
    policy = ppo._policy_class()(net)
    ids = torch.tensor([[5, 9, 33, 40, 60, 7], [5, 9, 33, 7, 2, 2]])
    plen, tokens = torch.tensor([3, 3]), torch.tensor([[40, 60, 7], [7, 2, 2]])
    with torch.no_grad():
        logps, _ = ppo.response_logps(policy(ids, plen, 3)[0], tokens)
        with adapters_disabled(net):
            ref, _ = ppo.response_logps(policy(ids, plen, 3)[0], tokens)
        _, kl = ppo.kl_rewards(logps, ref, torch.zeros(2), torch.ones(2, 3), 0.1)
    assert torch.equal(logps, ref) and kl.abs().max().item() == 0.0
    with torch.no_grad():  # a trained adapter moves the policy; switched off, it is the base again
        for name, p in net.named_parameters():
            if "lora_b" in name:
                p.normal_()
        moved, _ = ppo.response_logps(policy(ids, plen, 3)[0], tokens)
        with adapters_disabled(net):
            again, _ = ppo.response_logps(policy(ids, plen, 3)[0], tokens)
    assert not torch.allclose(moved, ref) and torch.equal(again, ref)


# --------------------------------------------------------------------------- PPO end to end


def _ppo_cfg(**kw: Any) -> ppo.PPOConfig:
    return ppo.PPOConfig(**({"steps": 4, "rollout_batch": 4, "minibatch": 2, "max_new_tokens": 6, "lr": 1e-3, "target_kl": 0.1,
                             "device": "cpu", "threads": 1, "checkpoint_interval": 2} | kw))  # fmt: skip


def test_ppo_runs_logs_and_resumes_identically(base: Path, rm: Path, tmp_path: Path) -> None:
    straight = ppo.train_ppo(str(base / "model"), str(rm), [str(base / "prompts.jsonl")], tmp_path / "a",
                             LORA, _ppo_cfg())  # fmt: skip
    log = [json.loads(x) for x in (tmp_path / "a" / "train.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    for key in ("reward", "kl", "kl_coef", "entropy", "clipfrac", "value_loss", "response_length",
                "rollout_s", "score_s", "optimize_s"):  # fmt: skip
        assert key in log[0], key
    assert log[0]["kl"] == 0.0  # the first rollout: policy = reference
    ppo.train_ppo(str(base / "model"), str(rm), [str(base / "prompts.jsonl")], tmp_path / "b", LORA,
                  _ppo_cfg(steps=2))  # fmt: skip
    resumed = ppo.train_ppo(str(base / "model"), str(rm), [str(base / "prompts.jsonl")], tmp_path / "b",
                            None, _ppo_cfg(steps=4), resume=True)  # fmt: skip
    assert resumed["step"] == 4 and resumed["reward"] == straight["reward"]
    from nlpkit.io.tensors import load_tensors

    ta, _ = load_tensors(str(tmp_path / "a" / "adapter_model.safetensors"))
    tb, _ = load_tensors(str(tmp_path / "b" / "adapter_model.safetensors"))
    assert ta.keys() == tb.keys() and all(np.array_equal(ta[k], tb[k]) for k in ta)
    # the adapter loads on the SFT model for generation
    r = run_cli("generate", str(base / "model"), "--adapter", str(tmp_path / "a"), "--chat", "hi",
                "--max-new-tokens", "3", "--temperature", "0")  # fmt: skip
    assert r.returncode == 0, r.stderr


def test_ppo_refuses_a_reward_model_for_another_tokenizer(base: Path, rm: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-rm"
    other.mkdir()
    for f in rm.iterdir():
        if f.is_file():
            (other / f.name).write_bytes(f.read_bytes())
    data = json.loads((other / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[100:102]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (other / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(UsageError, match="another tokenizer"):
        ppo.train_ppo(str(base / "model"), str(other), [str(base / "prompts.jsonl")], tmp_path / "p", LORA,
                      _ppo_cfg())  # fmt: skip


def test_ppo_prompts_skip_duplicates_and_long_ones(base: Path, tmp_path: Path) -> None:
    tok, template = _tok(base)
    path = tmp_path / "p.jsonl"
    rows = [{"prompt": "a"}, {"prompt": "a"}, {"prompt": "word " * 100}, _pair(1)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts, line = ppo.read_prompts([str(path)], tok, template, max_prompt_length=80)
    assert [p for p, _ in prompts] == ["a", "review film 1"]
    assert "1 duplicates and 1 over --max-prompt-length" in line
    path.write_text('{"text": "no prompt"}\n')
    with pytest.raises(DataError, match='"prompt"'):
        ppo.read_prompts([str(path)], tok, template, max_prompt_length=80)


def test_ppo_config_refuses_bad_values() -> None:
    with pytest.raises(UsageError, match="multiple of --minibatch"):
        ppo.PPOConfig(rollout_batch=6, minibatch=4)
    with pytest.raises(UsageError, match="--target-kl"):
        ppo.PPOConfig(target_kl=float("nan"))
    with pytest.raises(UsageError, match="--cliprange"):
        ppo.PPOConfig(cliprange=-1)


# --------------------------------------------------------------------------- CLI


def test_rlhf_cli_sft_rm_dpo(base: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    sft_data = tmp_path / "sft.jsonl"
    sft_data.write_text("".join(json.dumps({"instruction": f"review film {i}", "output": f"fun {i}"}) + "\n"
                                for i in range(12)))  # fmt: skip
    common = ["--max-steps", "2", "--batch-size", "2", "--threads", "1", "--device", "cpu", "-q"]
    runner = CliRunner()
    r = runner.invoke(app, ["rlhf", "sft", str(base / "model"), str(sft_data), "-o", str(tmp_path / "sft"),
                            "--lora", "--rank", "2", *common])  # fmt: skip
    assert r.exit_code == 0, r.output
    sft = tmp_path / "sft"
    assert (sft / "model.safetensors").is_file() and (sft / "adapter_model.safetensors").is_file()
    load_model(sft)  # the merged model is a plain folder
    r = runner.invoke(
        app, ["rlhf", "rm", str(sft), str(base / "pairs.jsonl"), "-o", str(tmp_path / "rm"), *common]
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.splitlines()[-1])["task"] == "rm"
    r = runner.invoke(app, ["rlhf", "dpo", str(sft), str(base / "pairs.jsonl"), "-o", str(tmp_path / "dpo"),
                            "--beta", "0", *common])  # fmt: skip
    assert r.exit_code == 2 and "--beta" in r.output
    r = runner.invoke(
        app, ["rlhf", "ppo", str(sft), str(base / "prompts.jsonl"), "-o", str(tmp_path / "ppo")]
    )
    assert r.exit_code == 2 and "--reward" in r.output


def test_plot_draws_any_logged_number(base: Path, rm: Path, tmp_path: Path) -> None:
    log = tmp_path / "ppo.jsonl"
    log.write_text(
        "".join(json.dumps({"step": i, "reward": 0.1 * i, "kl": 0.01 * i}) + "\n" for i in range(1, 5))
    )
    r = run_cli("plot", str(log), "-o", str(tmp_path / "ppo.svg"))  # a PPO log: reward and kl by default
    assert r.returncode == 0, r.stderr
    svg = (tmp_path / "ppo.svg").read_text()
    assert ">reward<" in svg and ">kl<" in svg
    r = run_cli("plot", str(rm), "-m", "accuracy", "-m", "val_accuracy", "-o", str(tmp_path / "rm.svg"))
    assert r.returncode == 0, r.stderr
    assert ">val_accuracy<" in (tmp_path / "rm.svg").read_text()
    r = run_cli("plot", str(rm), "-m", "nothing", "-o", str(tmp_path / "x.svg"))
    assert r.returncode == 65 and b"no nothing records" in r.stderr


def test_full_sft_trains_every_weight_into_a_model_folder(base: Path, tmp_path: Path) -> None:
    data = tmp_path / "sft.jsonl"
    data.write_text(
        "".join(json.dumps({"instruction": f"say {i}", "output": f"{i}"}) + "\n" for i in range(12))
    )
    summary = train_lora(str(base / "model"), [str(data)], tmp_path / "sft", None, overrides=FAST | {"max_steps": 2},
                         task="sft")  # fmt: skip
    before, _ = load_model(base / "model")
    after, _ = load_model(tmp_path / "sft")
    assert summary["trainable_params"] == sum(p.numel() for p in before.parameters())
    changed = [n for (n, a), (_, b) in zip(before.named_parameters(), after.named_parameters(), strict=True)
               if not torch.equal(a, b)]  # fmt: skip
    assert len(changed) == len(list(before.parameters()))
    with pytest.raises(UsageError, match="trains a LoRA adapter"):
        train_lora(str(base / "model"), [str(data)], tmp_path / "x", None, overrides=FAST, task="dpo")


def test_ppo_trust_region_undoes_updates_past_the_kl_target(base: Path, rm: Path, tmp_path: Path) -> None:
    """With --target-kl, an update that takes the policy's KL to SFT past the target is undone
    and ends the iteration: at a target nothing can meet, the policy stays SFT exactly (every
    LoRA B still zero); without a target every planned minibatch update runs."""
    from nlpkit.io.tensors import load_tensors

    tight = ppo.train_ppo(str(base / "model"), str(rm), [str(base / "prompts.jsonl")], tmp_path / "t", LORA,
                          _ppo_cfg(steps=2, target_kl=1e-9, lr=1e-2))  # fmt: skip
    free = ppo.train_ppo(str(base / "model"), str(rm), [str(base / "prompts.jsonl")], tmp_path / "f", LORA,
                         _ppo_cfg(steps=2, target_kl=None, lr=1e-2))  # fmt: skip
    assert tight["step"] == free["step"] == 2
    t = [json.loads(x) for x in (tmp_path / "t" / "train.jsonl").read_text().splitlines()]
    f = [json.loads(x) for x in (tmp_path / "f" / "train.jsonl").read_text().splitlines()]
    assert [r["planned_updates"] for r in t] == [4, 4] and [r["updates"] for r in f] == [4, 4]
    assert [r["updates"] for r in t] == [0, 0]
    assert all(r["kl"] == 0 and r["kl_estimate"] == 0 for r in t)  # the policy never left SFT
    b_tight = {
        k: v
        for k, v in load_tensors(str(tmp_path / "t" / "adapter_model.safetensors"))[0].items()
        if "lora_B" in k
    }
    b_free = {
        k: v
        for k, v in load_tensors(str(tmp_path / "f" / "adapter_model.safetensors"))[0].items()
        if "lora_B" in k
    }
    assert b_tight and all(not v.any() for v in b_tight.values())
    assert any(v.any() for v in b_free.values())


def test_kl_after_is_the_rollout_kl_and_zero_at_the_reference() -> None:
    """kl_after: with the policy unchanged (pi == pi_old) the importance weights are 1 and it is
    the plain mean of log pi - log ref over the response tokens; against itself it is 0; for a
    policy that moved, the self-normalised importance-weighted mean."""

    class Fixed(torch.nn.Module):
        def __init__(self, logits: torch.Tensor):
            super().__init__()
            self.logits = logits

        def forward(self, ids: torch.Tensor, plen: torch.Tensor, R: int) -> tuple[torch.Tensor, torch.Tensor]:
            return self.logits, torch.zeros(self.logits.shape[:2])

    g = torch.Generator().manual_seed(0)
    logits, ref_logits = torch.randn(2, 3, 5, generator=g), torch.randn(2, 3, 5, generator=g)
    tokens = torch.tensor([[1, 2, 3], [4, 0, 0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    ids, plen = torch.zeros(2, 4, dtype=torch.long), torch.tensor([1, 1])
    old, _ = ppo.response_logps(logits, tokens)
    ref, _ = ppo.response_logps(ref_logits, tokens)
    want = float(((old - ref) * mask).sum() / mask.sum())
    assert ppo.kl_after(Fixed(logits), ids, plen, tokens, mask, old, ref) == pytest.approx(want, abs=1e-6)
    assert ppo.kl_after(Fixed(logits), ids, plen, tokens, mask, old, old) == pytest.approx(0.0, abs=1e-7)
    # a policy that moved: the importance weights pi / pi_old, normalised over the tokens
    moved = logits + torch.randn(2, 3, 5, generator=g)
    new, _ = ppo.response_logps(moved, tokens)
    w = torch.exp(new - old) * mask
    want_moved = float((w * (new - ref)).sum() / w.sum())
    assert ppo.kl_after(Fixed(moved), ids, plen, tokens, mask, old, ref) == pytest.approx(
        want_moved, abs=1e-6
    )


def test_ppo_sigterm_checkpoints_and_resume_finishes_the_same_run(
    base: Path, rm: Path, tmp_path: Path
) -> None:
    import sys

    common = ["rlhf", "ppo", str(base / "model"), str(base / "prompts.jsonl"), "--reward", str(rm),
              "--rollout-batch", "4", "--minibatch", "2", "--max-new-tokens", "6", "--lr", "1e-3",
              "--rank", "4", "--alpha", "8", "--threads", "1", "--device", "cpu", "--checkpoint-interval", "0"]  # fmt: skip
    full = run_cli(*common, "-o", str(tmp_path / "a"), "--steps", "12", timeout=120)
    assert full.returncode == 0, full.stderr
    out = tmp_path / "b"
    returncode, _, stderr = sigterm_after_logging([sys.executable, "-m", "nlpkit", *common, "-o", str(out), "--steps", "12"],
                                 out / "train.jsonl", 2)  # fmt: skip
    if returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert returncode == 143 and b"stopped by SIGTERM" in stderr, stderr
    assert (out / "checkpoints" / "latest").is_file()
    done = run_cli(*common, "-o", str(out), "--resume", "--steps", "12", timeout=120)
    assert done.returncode == 0, done.stderr

    def rewards(folder: Path) -> list[float]:
        return [json.loads(x)["reward"] for x in (folder / "train.jsonl").read_text().splitlines()]

    assert rewards(out) == rewards(tmp_path / "a") and len(rewards(out)) == 12


def test_kl_and_error_is_the_ratio_estimate_and_its_delta_method_error() -> None:
    """Three sequences of 2, 3 and 1 response tokens: the KL per token is the token sum over the
    token count; its error the ratio estimator's over the sequences; one sequence: no error."""
    kl = torch.tensor([[0.1, 0.3, 0.0], [0.2, 0.2, 0.5], [0.4, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    est, err = ppo.kl_and_error(kl, mask)
    assert est == pytest.approx(1.7 / 6)
    k, n = [0.4, 0.9, 0.4], [2, 3, 1]
    want = (sum((ki - est * ni) ** 2 for ki, ni in zip(k, n, strict=True)) / (3 * 2)) ** 0.5 / 2
    assert err == pytest.approx(want)
    assert ppo.kl_and_error(kl[:1], mask[:1]) == (pytest.approx(0.2), 0.0)
