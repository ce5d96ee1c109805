"""Evaluate the RLHF worked example (README "RLHF on real human labels"): the reward model on
held-out preference pairs, then SFT, PPO and DPO policies on held-out movie prompts.

    python bench/rlhf_eval.py --sft sft --rm rm --policy ppo=ppo --policy dpo=dpo \
        --pairs preference-test.jsonl --prompts prompt-test.jsonl --prompts prompt-validation.jsonl

Reward model: pair accuracy (chosen scored above rejected) on the pairs, against two baselines
that use no preference labels: the SFT model as a scorer (the response's mean log-probability
per token given the prompt: does the language model already prefer the fresh review?) and the
reward model's own starting point (the SFT body with a fresh, untrained score head).

Policies: for each prompt, ``--samples`` responses sampled at temperature 1 (the distribution
PPO trains), up to ``--max-new-tokens``. Per policy: the reward model's mean score (and the SFT
samples' standard deviation as the yardstick), the KL to SFT per response token (the mean of
log pi - log sft over the policy's own samples: an unbiased estimate), the share of favourable
reviews by two judges that took no part in training (VADER compound > 0.05; AFINN sum > 0), and
the perplexity of the samples under the original base model (reward hacking into gibberish
would raise it). A JSON summary goes to --out, samples to --samples-out.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nlpkit.data.sentiment import judge
from nlpkit.io.records import read_records
from nlpkit.lm.lora import adapters_disabled, load_adapter
from nlpkit.lm.model import load_model
from nlpkit.store.resolve import resolve_model
from nlpkit.text.chat_template import ChatTemplate
from nlpkit.text.tokenizer import load as load_tokenizer
from nlpkit.tune import ppo
from nlpkit.tune.pairs import PairSet, read_pairs, render
from nlpkit.tune.reward import RewardModel, Scorer


def records(paths: list[str]) -> list[dict[str, Any]]:
    return [r for _, r in read_records(paths, fmt="jsonl", required=False, string=False)]


# --------------------------------------------------------------------------- reward model


def pair_accuracy(score: Any, pairs: Any, batch: int = 8) -> float:
    """Share of pairs whose chosen side scores higher; ``score(ids, labels) -> (2B,)``."""
    data = PairSet(pairs, pad_id=2, train=False)
    wins = n = 0
    with torch.inference_mode():
        for ids, labels in data.eval_batches(batch):
            s = score(ids, labels)
            B = ids.size(0) // 2
            wins += int((s[:B] > s[B:]).sum())
            n += B
    return wins / n


def mean_logp_scorer(lm: Any) -> Any:
    from nlpkit.tune.dpo import sequence_logps

    def score(ids: Any, labels: Any) -> Any:
        return sequence_logps(lm, ids, labels) / (labels[:, 1:] != -100).sum(1)

    return score


def evaluate_rm(args: argparse.Namespace, sft: Path) -> dict[str, Any]:
    tok, template = load_tokenizer(str(sft)), ChatTemplate.from_folder(sft)
    pairs, report = read_pairs(args.pairs, tok, template, max_length=512)
    lm, _ = load_model(sft)
    scorer = Scorer.load(args.rm)
    fresh_head = RewardModel.from_lm(lm, seed=1337).eval()
    out = {
        "pairs": report.pairs,
        "reward_model": pair_accuracy(lambda ids, _: scorer.rm(ids), pairs),
        "baseline_sft_logprob": pair_accuracy(mean_logp_scorer(lm), pairs),
        "baseline_untrained_head": pair_accuracy(lambda ids, _: fresh_head(ids), pairs),
    }
    print(f"reward model pair accuracy on {report.pairs} held-out pairs: {out['reward_model']:.3f} "
          f"(SFT log-prob scorer {out['baseline_sft_logprob']:.3f}, untrained head "
          f"{out['baseline_untrained_head']:.3f})", file=sys.stderr)  # fmt: skip
    return out


# --------------------------------------------------------------------------- policies


def sample_policy(
    model: Any, prompts: list[list[int]], args: argparse.Namespace, eos: int, seed: int
) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    out: list[list[int]] = []
    for i in range(0, len(prompts), args.batch):
        out += ppo.sample(model, prompts[i : i + args.batch], args.max_new_tokens, eos, 2, g)
    return out


def logps_of(
    policy: Any, prompts: list[list[int]], responses: list[list[int]], batch: int = 16
) -> list[np.ndarray]:
    """Per-token log-probabilities of each response under ``policy`` (a PolicyWithValue)."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(prompts), batch):
            p, r = prompts[i : i + batch], responses[i : i + batch]
            ids, plen, tokens, _ = ppo.assemble(p, r, 2, "cpu")
            logp, _ = ppo.response_logps(policy(ids, plen, tokens.size(1))[0], tokens)
            out += [logp[b, : len(r[b])].numpy() for b in range(len(r))]
    return out


Row = dict[str, Any]


def evaluate_policy(name: str, adapter: str | None, args: argparse.Namespace, sft: Path,
                    prompts: list[tuple[str, list[int]]], tok: Any, base_policy: Any,
                    judges: dict[str, Any], scorer: Scorer) -> tuple[Row, list[Row]]:  # fmt: skip
    lm, _ = load_model(sft)
    if adapter:
        load_adapter(lm, adapter)
    policy = ppo._policy_class()(lm).eval()
    ids = [p for _, p in prompts] * args.samples
    texts_prompt = [t for t, _ in prompts] * args.samples
    t0 = time.perf_counter()
    responses = sample_policy(policy, ids, args, args.eos, args.seed)
    sample_s = time.perf_counter() - t0
    texts = [tok.decode([x for x in r if x != args.eos]).strip() for r in responses]
    rewards = list(scorer.score(list(zip(texts_prompt, texts, strict=True))))
    kl = 0.0
    if adapter:
        mine = logps_of(policy, ids, responses)
        with adapters_disabled(lm):
            ref = logps_of(policy, ids, responses)
        kl = float(sum((a - b).sum() for a, b in zip(mine, ref, strict=True)) / sum(len(a) for a in mine))
    # perplexity under the original base model of the response tokens, given the prompt
    base_lp = logps_of(base_policy, ids, responses)
    ppl = math.exp(-sum(a.sum() for a in base_lp) / sum(len(a) for a in base_lp))
    scores = {j: [f(t)["score"] for t in texts] for j, f in judges.items()}
    row = {
        "policy": name,
        "samples": len(texts),
        "reward_mean": float(np.mean(rewards)),
        "reward_std": float(np.std(rewards)),
        "kl_per_token": kl,
        "vader_favourable": float(np.mean([s > 0.05 for s in scores["vader"]])),
        "afinn_favourable": float(np.mean([s > 0 for s in scores["afinn"]])),
        "base_ppl": ppl,
        "mean_tokens": float(np.mean([len(r) for r in responses])),
        "sample_s": round(sample_s, 1),
    }
    print(json.dumps(row), file=sys.stderr)
    samples = [{"policy": name, "prompt": p, "response": t, "reward": round(r, 3)}
               for p, t, r in zip(texts_prompt, texts, rewards, strict=True)]  # fmt: skip
    return row, samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sft", required=True)
    ap.add_argument("--rm", required=True)
    ap.add_argument(
        "--base", default="smollm2-135m-instruct", help="the model the perplexity is measured under"
    )
    ap.add_argument("--policy", action="append", default=[], help="NAME=ADAPTER_FOLDER (repeatable)")
    ap.add_argument("--pairs", action="append", default=[])
    ap.add_argument("--prompts", action="append", default=[])
    ap.add_argument("--samples", type=int, default=2, help="responses per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench/results/rlhf_example.json")
    ap.add_argument("--samples-out", default="bench/results/rlhf_samples.jsonl")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sft = resolve_model(args.sft)
    result: dict[str, Any] = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "samples_out")}
    }
    if args.pairs:
        result["reward_model"] = evaluate_rm(args, sft)
    if args.prompts:
        tok, template = load_tokenizer(str(sft)), ChatTemplate.from_folder(sft)
        args.eos = tok.token_to_id("<|im_end|>")
        prompts = [(r["prompt"], render(tok, template, [{"role": "user", "content": r["prompt"]}]))
                   for r in records(args.prompts)]  # fmt: skip
        base_lm, _ = load_model(resolve_model(args.base))
        base_policy = ppo._policy_class()(base_lm).eval()
        judges = {"vader": judge("vader"), "afinn": judge("afinn")}
        scorer = Scorer.load(args.rm)
        rows, samples = [], []
        for name, adapter in [("sft", None), *(p.split("=", 1) for p in args.policy)]:
            row, s = evaluate_policy(name, adapter, args, sft, prompts, tok, base_policy, judges, scorer)
            rows.append(row)
            samples += s
        sft_row = rows[0]
        for row in rows:
            row["reward_gain_in_sft_sd"] = (row["reward_mean"] - sft_row["reward_mean"]) / sft_row[
                "reward_std"
            ]
            row["ppl_ratio_to_sft"] = row["base_ppl"] / sft_row["base_ppl"]
        result["policies"] = rows
        Path(args.samples_out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.samples_out, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(s) + "\n" for s in samples)
        print("| policy | reward (mean ± sd) | gain (SFT sd) | KL/token to SFT | VADER favourable | "
              "AFINN favourable | base ppl (× SFT) |\n|---|---|---|---|---|---|---|")  # fmt: skip
        for r in rows:
            print(f"| {r['policy']} | {r['reward_mean']:.2f} ± {r['reward_std']:.2f} | "
                  f"{r['reward_gain_in_sft_sd']:+.2f} | "
                  f"{r['kl_per_token']:.3f} | {r['vader_favourable']:.0%} | {r['afinn_favourable']:.0%} | "
                  f"{r['base_ppl']:.1f} ({r['ppl_ratio_to_sft']:.2f}×) |")  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
