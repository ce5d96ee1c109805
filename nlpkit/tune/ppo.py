"""PPO for a language model against a reward model: the RLHF step of Ziegler et al. (2019) and
InstructGPT (Ouyang et al. 2022), with the details of Huang et al. (2024, "The N+ implementation
details of RLHF with PPO"). The algorithm, one iteration (``PPO step``):

1. Rollout: sample a response to each of ``rollout_batch`` prompts from the policy (temperature
   1, no top-k: the sampling distribution is the policy itself).
2. Score: the reward model's score of (prompt, response), given at the response's last token;
   every token also pays ``-kl_coef * (log pi - log ref)``, the per-token KL penalty against the
   frozen SFT reference (with LoRA the reference is the same weights, adapters switched off).
3. Advantages: a value head on the policy's last hidden states, GAE(gamma, lambda) over the
   response tokens, advantages whitened over the batch.
4. Optimise: ``ppo_epochs`` passes over shuffled minibatches of the clipped surrogate
   ``max(-A r, -A clip(r, 1 - eps, 1 + eps))`` plus ``vf_coef`` times the clipped value loss.
5. With ``target_kl`` (the default, 0.1 nats per token): the KL coefficient adapts toward it
   (Ziegler's proportional controller: ``kl_coef *= 1 + clip(kl / target - 1, -0.2, 0.2) *
   batch / horizon``), and a trust region around SFT: the policy's KL to SFT is estimated by
   smoothing the rollouts' KL over iterations (``KL_SMOOTHING``), and after each minibatch
   update moved by the update's change measured on the whole rollout batch (importance-
   weighted, ``kl_after``); an update that takes the estimate plus its standard error past the
   target is undone and ends the iteration. Measured on the
   README's example, the controller alone did not hold the target at 16 rollouts per step (it
   lowered the weight while the KL was small, then could not raise it fast enough when the
   policy collapsed into short stock praise: 0.8-1.3 nats per token).

Every iteration appends reward, KL, entropy, clip fraction, value loss, response length and the
time of each phase to train.jsonl. SIGTERM checkpoints and exits 143; ``resume=True`` continues.
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nlpkit.errors import DataError, Interrupted, Stopped, UsageError
from nlpkit.io.deps import import_torch
from nlpkit.lm.lora import LoraConfig

VALUE_HEAD_FILE = "value_head.safetensors"
KL_SMOOTHING = 0.3  # weight of each new rollout in the trust region's KL estimate
RUN_FILE = "ppo_run.json"


@dataclass
class PPOConfig:
    """One PPO run; flags mirror the names (``--rollout-batch`` <-> ``rollout_batch``)."""

    steps: int = 100  # PPO iterations: rollout, score, optimise
    rollout_batch: int = 16  # prompts sampled per iteration
    minibatch: int = 8  # sequences per gradient step
    ppo_epochs: int = 2  # passes over each rollout batch
    max_new_tokens: int = 48  # response length limit
    max_prompt_length: int = 256  # longer prompts are skipped (counted)
    lr: float = 6e-5
    init_kl_coef: float = 0.15
    # nats per response token: the KL weight adapts toward it, and an update that takes the
    # policy's KL to SFT past it is undone (the trust region); None: a fixed weight, no region
    target_kl: float | None = 0.1
    horizon: int = 500  # samples over which the KL controller moves by its full step
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    grad_clip: float = 1.0
    checkpoint_interval: int = 20
    seed: int = 1337
    device: str = "auto"
    threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "rollout_batch", "minibatch", "ppo_epochs", "max_new_tokens", "horizon"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
        if self.max_prompt_length < 1:
            raise UsageError("--max-prompt-length must be at least 1")
        if self.rollout_batch % self.minibatch:
            raise UsageError("--rollout-batch must be a multiple of --minibatch")
        for name in (
            "lr",
            "init_kl_coef",
            "gamma",
            "lam",
            "cliprange",
            "cliprange_value",
            "vf_coef",
            "grad_clip",
        ):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise UsageError(f"--{name.replace('_', '-')} must be a finite number, not negative")
        if self.lr == 0:
            raise UsageError("--lr must be positive")
        if self.target_kl is not None and not (math.isfinite(self.target_kl) and self.target_kl > 0):
            raise UsageError("--target-kl must be a positive number")


# --------------------------------------------------------------------------- the math


def masked_mean(x: Any, mask: Any) -> Any:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: Any, mask: Any) -> Any:
    """Zero mean, unit variance over the masked entries (PPO's advantage normalisation)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return ((x - mean) * (var + 1e-8).rsqrt()) * mask


def gae(rewards: Any, values: Any, mask: Any, gamma: float, lam: float) -> tuple[Any, Any]:
    """Generalised advantage estimation over (B, R) response tokens (masked entries are 0);
    the value after the last token is 0. Returns (advantages, returns = advantages + values)."""
    import torch

    rewards, values = rewards * mask, values * mask
    R = rewards.size(1)
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(R)):
        next_value = values[:, t + 1] if t + 1 < R else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        advantages[:, t] = last
    return advantages * mask, (advantages + values) * mask


def kl_rewards(logps: Any, ref_logps: Any, scores: Any, mask: Any, kl_coef: float) -> tuple[Any, Any]:
    """Per-token rewards (B, R): ``-kl_coef * (logp - ref)`` on every response token, plus the
    score at each row's last token; and the per-token KL estimate (logp - ref)."""
    import torch

    kl = (logps - ref_logps) * mask
    rewards = -kl_coef * kl
    last = (mask.sum(1) - 1).clamp(min=0).long()
    rewards[torch.arange(rewards.size(0)), last] += scores
    return rewards * mask, kl


def ppo_losses(
    logps: Any, old_logps: Any, advantages: Any, values: Any, old_values: Any, returns: Any, mask: Any,
    cliprange: float, cliprange_value: float,
) -> tuple[Any, Any, dict[str, Any]]:  # fmt: skip
    """The clipped surrogate (policy) loss, the clipped value loss, and what to log."""
    import torch

    ratio = torch.exp(logps - old_logps)
    pg1 = -advantages * ratio
    pg2 = -advantages * ratio.clamp(1.0 - cliprange, 1.0 + cliprange)
    pg_loss = masked_mean(torch.maximum(pg1, pg2), mask)
    clipped = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    vf_loss = 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)
    numbers = {
        "clipfrac": masked_mean((pg2 > pg1).float(), mask),
        "approx_kl": 0.5 * masked_mean((logps - old_logps) ** 2, mask),
        "vf_clipfrac": masked_mean(((clipped - returns) ** 2 > (values - returns) ** 2).float(), mask),
    }
    return pg_loss, vf_loss, numbers


class AdaptiveKL:
    """Ziegler et al.'s proportional controller of the KL coefficient."""

    def __init__(self, coef: float, target: float | None, horizon: int):
        self.coef, self.target, self.horizon = coef, target, horizon

    def update(self, kl: float, samples: int) -> None:
        if self.target is None:
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.coef *= 1.0 + error * samples / self.horizon


# --------------------------------------------------------------------------- the model


def _policy_class() -> Any:
    import torch.nn as nn

    class PolicyWithValue(nn.Module):
        """The LoRA policy and a value head on its last hidden states (one body for both)."""

        def __init__(self, lm: Any):
            super().__init__()
            self.lm = lm
            w = lm.model.norm.weight
            self.v_head = nn.Linear(lm.cfg.n_embd, 1, device=w.device)
            nn.init.zeros_(self.v_head.weight)
            nn.init.zeros_(self.v_head.bias)

        def forward(self, ids: Any, plen: Any, R: int) -> tuple[Any, Any]:
            """Logits (B, R, vocab) predicting each response token and values (B, R) of the
            states before them; row b's response starts at column ``plen[b]`` of ``ids``."""
            import torch

            x = self.lm.hidden(ids)  # (B, T, C)
            pos = (plen[:, None] + torch.arange(R, device=ids.device) - 1).clamp(max=ids.size(1) - 1)
            x = x.gather(1, pos[..., None].expand(-1, -1, x.size(-1)))  # (B, R, C)
            logits = self.lm.lm_head(x.to(self.lm.lm_head.weight.dtype)).float()
            return logits, self.v_head(x.float()).squeeze(-1)

    return PolicyWithValue


def response_logps(logits: Any, tokens: Any) -> tuple[Any, Any]:
    """(B, R) log-probability of each response token and the entropy of its distribution."""
    import torch

    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all.gather(-1, tokens[..., None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


# --------------------------------------------------------------------------- prompts


def read_prompts(
    paths: Sequence[str], tok: Any, template: Any, max_prompt_length: int
) -> tuple[list[tuple[Any, list[int]]], str]:
    """Unique prompts as (prompt as the reward model takes it, rendered ids); the report line.

    Any record with a ``"prompt"`` (a string or a list of messages) or an ``"instruction"``
    counts; duplicates (pairs share prompts) and prompts over the length budget are skipped,
    counted."""
    from nlpkit.io.records import read_records
    from nlpkit.tune.pairs import render

    seen, out, skipped = set(), [], {"duplicate": 0, "too long": 0}
    for where, record in read_records(paths, fmt="jsonl", required=False, string=False):
        prompt = record.get("prompt", record.get("instruction"))
        if isinstance(prompt, list) and all(
            isinstance(m, dict) and isinstance(m.get("content"), str) for m in prompt
        ):
            messages = [{"role": str(m.get("role")), "content": m["content"]} for m in prompt]
        elif isinstance(prompt, str) and prompt.strip():
            messages = [{"role": "user", "content": prompt}]
        else:
            raise DataError('expected a record with a non-empty "prompt" (or "instruction")', where=where)
        key = json.dumps(messages)
        if key in seen:
            skipped["duplicate"] += 1
            continue
        seen.add(key)
        if template is not None:
            ids = render(tok, template, messages)
        else:
            ids = tok.encode("\n".join(m["content"] for m in messages), add_special_tokens=False).ids
        if len(ids) > max_prompt_length:
            skipped["too long"] += 1
            continue
        out.append((prompt, ids))
    line = (f"{len(out)} prompts; {skipped['duplicate']} duplicates and {skipped['too long']} over "
            "--max-prompt-length skipped")  # fmt: skip
    if not out:
        raise DataError(
            f"no prompt left ({line})", where=", ".join("<stdin>" if p == "-" else p for p in paths)
        )
    return out, line


# --------------------------------------------------------------------------- rollouts


def sample(
    model: Any, prompts: list[list[int]], max_new: int, eos: int, pad: int, generator: Any
) -> list[list[int]]:
    """Sample a response for each prompt (temperature 1, full distribution), batched with a
    KV cache over left-padded prompts; a response ends with the end token or at ``max_new``."""
    import torch

    lm = model.lm
    dev = lm.model.norm.weight.device
    B, T = len(prompts), max(len(p) for p in prompts)
    cache = lm.new_cache(B, min(T + max_new, lm.cfg.block_size))
    idx = torch.tensor([[pad] * (T - len(p)) + p for p in prompts], device=dev)
    mask = torch.tensor([[False] * (T - len(p)) + [True] * len(p) for p in prompts], device=dev)
    out: list[list[int]] = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    with torch.inference_mode():
        logits = lm(idx, cache=cache, pad_mask=mask)[0][:, -1]
        for _ in range(max_new):
            probs = torch.softmax(logits.float(), -1)
            tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            for b in (~done).nonzero().flatten().tolist():
                out[b].append(int(tokens[b]))
            done |= tokens == eos
            if bool(done.all()) or cache.pos >= cache.max_len:
                break
            logits = lm.step(tokens[:, None], cache)
    return out


@dataclass
class Rollout:
    ids: Any  # (B, T) prompt + response, right-padded
    plen: Any  # (B,) prompt lengths
    tokens: Any  # (B, R) response tokens (pad beyond each response)
    mask: Any  # (B, R) float, 1 on response tokens
    logps: Any  # (B, R) under the policy that sampled
    ref_logps: Any
    values: Any
    scores: Any  # (B,) the reward model's


def assemble(prompts: list[list[int]], responses: list[list[int]], pad: int, device: str) -> tuple[Any, ...]:
    import torch

    B = len(prompts)
    R = max(1, max(len(r) for r in responses))
    T = max(len(p) + len(r) for p, r in zip(prompts, responses, strict=True))
    ids = torch.full((B, T), pad, dtype=torch.long)
    tokens = torch.full((B, R), pad, dtype=torch.long)
    mask = torch.zeros(B, R)
    for b, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        ids[b, : len(p) + len(r)] = torch.tensor(p + r, dtype=torch.long)
        tokens[b, : len(r)] = torch.tensor(r, dtype=torch.long) if r else tokens[b, :0]
        mask[b, : len(r)] = 1.0
    plen = torch.tensor([len(p) for p in prompts])
    return ids.to(device), plen.to(device), tokens.to(device), mask.to(device)


# --------------------------------------------------------------------------- the run


def train_ppo(
    sft: str,
    reward: str,
    paths: Sequence[str],
    out: str | os.PathLike[str],
    lora: LoraConfig | None = None,
    cfg: PPOConfig | None = None,
    *,
    resume: bool = False,
    wait: bool = False,
) -> dict[str, Any]:
    """PPO-train a LoRA adapter of ``sft`` against the reward model ``reward`` on the prompts
    of ``paths``, into the folder ``out`` (adapter files, value head, train.jsonl)."""
    import_torch()
    from nlpkit.lm.train.dist import training_session

    out_dir = Path(out)
    ckpt, saved = None, None
    if resume:
        from nlpkit.lm.train.checkpoint import load_checkpoint

        ckpt = load_checkpoint(out_dir)
        saved = json.loads((out_dir / RUN_FILE).read_text(encoding="utf-8"))
        mine = {k: v for k, v in asdict(cfg or PPOConfig()).items() if k in RESUMABLE}
        cfg, lora = PPOConfig(**(saved["ppo"] | mine)), LoraConfig(**saved["lora"])
    else:
        if any((out_dir / f).exists() for f in ("checkpoints", "adapter_model.safetensors")):
            raise UsageError("the output folder already holds a policy", where=str(out_dir),
                             hint="pass --resume to continue its training, or choose another -o")  # fmt: skip
        cfg, lora = cfg or PPOConfig(), lora or LoraConfig(dropout=0.0)
        lora.modules()
    with training_session(cfg.device, cfg.threads, out_dir, wait) as d:
        if d.world > 1:
            raise UsageError("PPO runs in one process (not under torchrun)")
        run = _setup(sft, reward, paths, out_dir, lora, cfg, d.device, saved)
        if ckpt is not None:
            run.restore(ckpt)
        else:
            record = {"sft": sft, "reward": str(reward), "lora": asdict(lora), "ppo": asdict(cfg),
                      "base": run.fingerprint}  # fmt: skip
            (out_dir / RUN_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        last = _loop(run, out_dir)
    return {"policy": str(out_dir), "step": run.state["step"], "kl_coef": run.kl.coef,
            **{k: last[k] for k in ("reward", "kl", "entropy", "response_length") if k in last}}  # fmt: skip


RESUMABLE = {"steps", "device", "threads", "checkpoint_interval"}  # may change on --resume


@dataclass
class PPORun:
    """Everything the PPO loop touches."""

    policy: Any
    scorer: Any
    tok: Any
    prompts: list[Any]
    cfg: PPOConfig
    lora: LoraConfig
    optimizer: Any
    kl: AdaptiveKL
    generator: Any
    eos: int
    pad: int
    sft: str
    folder: Path
    fingerprint: str
    data_sha256: str
    state: dict[str, Any]

    def restore(self, ckpt: dict[str, Any]) -> None:
        if ckpt.get("data_sha256") != self.data_sha256:
            raise DataError(
                "the prompts differ from the checkpoint's", hint="resume with the same input files"
            )
        self.policy.load_state_dict(ckpt["model"], strict=False)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.state = dict(ckpt["state"])
        self.kl.coef = self.state["kl_coef"]
        self.generator.set_state(ckpt["generator"])

    def checkpoint(self, out: Path) -> None:
        self.state["kl_coef"] = self.kl.coef
        _save(out, self)


def _setup(
    sft: str, reward: str, paths: Sequence[str], out: Path, lora: LoraConfig, cfg: PPOConfig, device: str,
    saved: dict[str, Any] | None,
) -> PPORun:  # fmt: skip
    import torch

    from nlpkit.io.talk import say
    from nlpkit.lm.lora import apply_lora, base_fingerprint
    from nlpkit.lm.model import load_model
    from nlpkit.store.resolve import resolve_model
    from nlpkit.text.chat_template import ChatTemplate
    from nlpkit.text.tokenizer import load
    from nlpkit.tune.reward import Scorer, same_tokenizer

    folder = resolve_model(sft)
    lm, model_cfg = load_model(folder, device)
    if model_cfg.arch != "llama":
        raise UsageError(f"PPO fine-tunes decoder (llama) models; {sft} is a {model_cfg.arch}")
    tok, template = load(str(folder)), ChatTemplate.from_folder(folder)
    scorer = Scorer.load(reward, device)
    if not same_tokenizer(tok, scorer.tok):
        raise UsageError(
            "the reward model has another tokenizer than the policy",
            where=str(reward),
            hint="train the reward model from the same SFT model (`nlpkit rlhf rm SFT ...`)",
        )
    fingerprint = base_fingerprint(lm)
    if saved is not None and saved["base"] != fingerprint:
        raise UsageError(
            "the model differs from the one this run started from", hint=f"resume with {saved['sft']}"
        )
    prompts, line = read_prompts(paths, tok, template, cfg.max_prompt_length)
    say(f"ppo: {line}")
    if len(prompts) < cfg.rollout_batch:
        raise DataError(f"{len(prompts)} prompts, fewer than one rollout batch of {cfg.rollout_batch}",
                        hint="lower --rollout-batch or give more prompts")  # fmt: skip
    torch.manual_seed(cfg.seed)
    apply_lora(lm, lora)
    policy = _policy_class()(lm)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0, fused=True)
    say(f"ppo: LoRA r={lora.rank} on {', '.join(lora.modules())}, {sum(p.numel() for p in params):,} "
        f"trainable parameters; {cfg.rollout_batch} rollouts per step, {cfg.ppo_epochs} epochs of "
        f"minibatch {cfg.minibatch}")  # fmt: skip
    eos = _eos(tok, template, model_cfg)
    lora.base = lora.base or sft
    return PPORun(
        policy, scorer, tok, prompts, cfg, lora, optimizer,
        AdaptiveKL(cfg.init_kl_coef, cfg.target_kl, cfg.horizon),
        torch.Generator(device).manual_seed(cfg.seed),
        eos, model_cfg.pad_id if model_cfg.pad_id is not None else eos, sft, folder, fingerprint,
        _digest(prompts), {"step": 0, "elapsed": 0.0, "kl_coef": cfg.init_kl_coef},
    )  # fmt: skip


def _loop(run: PPORun, out: Path) -> dict[str, Any]:
    """Iterate until ``steps``; append each step's record to train.jsonl; checkpoint on
    schedule, at the end, and on SIGTERM / Ctrl-C (then raise Stopped / Interrupted)."""
    from nlpkit.io.signals import StopFlag
    from nlpkit.io.talk import Progress
    from nlpkit.lm.train.checkpoint import truncate_log

    state, cfg = run.state, run.cfg
    truncate_log(out / "train.jsonl", state["step"])
    t0, base = time.perf_counter(), state["elapsed"]
    last: dict[str, Any] = {}
    with open(out / "train.jsonl", "a", encoding="utf-8") as log, StopFlag() as stop, \
            Progress("ppo", total=cfg.steps, unit=" steps") as progress:  # fmt: skip
        progress.advance(state["step"])
        while state["step"] < cfg.steps:
            if stop.signum:
                run.checkpoint(out)
                how, error = (
                    ("SIGTERM", Stopped) if stop.signum == signal.SIGTERM else ("Ctrl-C", Interrupted)
                )
                raise error(f"stopped by {how} at step {state['step']}; checkpoint saved",
                            where=str(out), hint="continue with --resume")  # fmt: skip
            last = _ppo_step(run, _next_prompts(run.prompts, cfg, state["step"]))
            state["step"] += 1
            state["elapsed"] = base + time.perf_counter() - t0
            last = {"step": state["step"], **last, "elapsed_s": round(state["elapsed"], 3)}
            log.write(json.dumps(last) + "\n")
            log.flush()
            progress.advance(1, reward=f"{last['reward']:.2f}", kl=f"{last['kl']:.3f}")
            if cfg.checkpoint_interval and state["step"] % cfg.checkpoint_interval == 0:
                run.checkpoint(out)
    if not last or not cfg.checkpoint_interval or state["step"] % cfg.checkpoint_interval:
        run.checkpoint(out)
    return last


def _next_prompts(prompts: list[Any], cfg: PPOConfig, step: int) -> list[Any]:
    """The prompts of iteration ``step``: a seeded permutation per pass over the prompts."""
    per_epoch = len(prompts) // cfg.rollout_batch
    epoch, i = divmod(step, per_epoch)
    perm = np.random.default_rng([cfg.seed, epoch]).permutation(len(prompts))
    return [prompts[int(j)] for j in perm[i * cfg.rollout_batch : (i + 1) * cfg.rollout_batch]]


def _ppo_step(run: PPORun, batch: list[Any]) -> dict[str, Any]:
    """One PPO iteration over ``batch`` (prompts): rollout, score, optimise; what to log."""
    import torch

    from nlpkit.lm.lora import adapters_disabled

    policy, cfg, kl, generator, optimizer = run.policy, run.cfg, run.kl, run.generator, run.optimizer
    eos, pad, tok, scorer = run.eos, run.pad, run.tok, run.scorer
    device = str(policy.v_head.weight.device)
    times: dict[str, float] = {}
    t = time.perf_counter()
    policy.eval()
    prompt_ids = [ids for _, ids in batch]
    responses = sample(policy, prompt_ids, cfg.max_new_tokens, eos, pad, generator)
    ids, plen, tokens, mask = assemble(prompt_ids, responses, pad, device)
    R = tokens.size(1)
    with torch.no_grad():
        logits, values = policy(ids, plen, R)
        logps, _ = response_logps(logits, tokens)
        with adapters_disabled(policy.lm):
            ref_logps, _ = response_logps(policy(ids, plen, R)[0], tokens)
    times["rollout_s"] = time.perf_counter() - t
    t = time.perf_counter()
    texts = [tok.decode([x for x in r if x != eos]) for r in responses]
    scores = torch.tensor(
        list(scorer.score([(p, s) for (p, _), s in zip(batch, texts, strict=True)])), device=device
    )
    times["score_s"] = time.perf_counter() - t
    t = time.perf_counter()
    rewards, kl_tokens = kl_rewards(logps, ref_logps, scores, mask, kl.coef)
    # the trust region's view of the policy's KL to SFT: this rollout's KL (a fresh sample of
    # the policy as it is, but noisy: 16 rollouts of one unchanged policy measured 0.10 and
    # 0.17) smoothed over iterations, then moved by each update's change measured on the batch
    # (the batch's own noise cancels in the change)
    rollout_kl, rollout_se = kl_and_error(kl_tokens, mask)
    a = KL_SMOOTHING
    estimate = (1 - a) * run.state.get("kl_estimate", 0.0) + a * rollout_kl
    # its standard error: the rollouts' errors, smoothed alike (independent batches)
    error = math.sqrt((1 - a) ** 2 * run.state.get("kl_error", 0.0) ** 2 + a**2 * rollout_se**2)
    change = 0.0
    advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
    advantages = whiten(advantages, mask)
    policy.train()
    sums: dict[str, float] = {}
    n = 0
    updates, planned = 0, cfg.ppo_epochs * (len(batch) // cfg.minibatch)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    for mb in _minibatches(len(batch), cfg, generator):
        if cfg.target_kl:
            before = ([p.detach().clone() for p in trainable], copy.deepcopy(optimizer.state_dict()))
        new_logits, new_values = policy(ids[mb], plen[mb], R)
        new_logps, entropy = response_logps(new_logits, tokens[mb])
        pg_loss, vf_loss, numbers = ppo_losses(
            new_logps, logps[mb], advantages[mb], new_values, values[mb], returns[mb], mask[mb],
            cfg.cliprange, cfg.cliprange_value,
        )  # fmt: skip
        loss = pg_loss + cfg.vf_coef * vf_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        optimizer.step()
        if cfg.target_kl:
            moved = kl_after(policy, ids, plen, tokens, mask, logps, ref_logps) - rollout_kl
            if estimate + moved + error > cfg.target_kl:
                # the trust region: this update would take the policy past --target-kl from
                # SFT (by the estimate plus its standard error); undo it and end the iteration
                with torch.no_grad():
                    for p, saved in zip(trainable, before[0], strict=True):
                        p.copy_(saved)
                optimizer.load_state_dict(before[1])
                break
            change = moved
        numbers |= {"pg_loss": pg_loss, "value_loss": vf_loss, "entropy": masked_mean(entropy, mask[mb])}
        for k, v in numbers.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        n += 1
        updates += 1
    times["optimize_s"] = time.perf_counter() - t
    lengths = mask.sum(1)
    kl_per_token = rollout_kl
    run.state["kl_estimate"], run.state["kl_error"] = estimate + change, error
    record = {
        "reward": float(scores.mean()),
        "reward_std": float(scores.std()) if len(batch) > 1 else 0.0,
        "kl": kl_per_token,
        "kl_estimate": run.state["kl_estimate"],  # the trust region's, after this step's updates
        "kl_error": error,  # its standard error
        "kl_coef": kl.coef,
        **{k: v / max(n, 1) for k, v in sums.items()},
        "response_length": float(lengths.mean()),
        "updates": updates,  # fewer than planned: an update would have passed --target-kl (undone)
        "planned_updates": planned,
        "ended": float(np.mean([bool(r) and r[-1] == eos for r in responses])),
        **{k: round(v, 3) for k, v in times.items()},
    }
    kl.update(kl_per_token, len(batch))
    return record


def kl_and_error(kl_tokens: Any, mask: Any) -> tuple[float, float]:
    """A rollout's KL to SFT per response token (the sum over tokens / tokens) and the standard
    error of that ratio over its sequences (the delta method: sequences are the samples)."""
    k, n = kl_tokens.sum(1).double(), mask.sum(1).double()
    kl = float(k.sum() / n.sum().clamp(min=1))
    m = len(k)
    if m < 2:
        return kl, 0.0
    return kl, float(((k - kl * n) ** 2).sum().div(m * (m - 1)).sqrt() / n.mean().clamp(min=1e-12))


def kl_after(policy: Any, ids: Any, plen: Any, tokens: Any, mask: Any, old: Any, ref: Any) -> float:
    """The updated policy's KL to SFT per response token, estimated on the rollout batch that
    the previous policy (log-probabilities ``old``) sampled: ``sum w (log pi - log ref) / sum w``
    over the tokens, ``w = pi / pi_old`` (self-normalised importance weights; with ``pi ==
    pi_old`` this is the plain KL of the rollout, as logged and as the evaluation measures)."""
    import torch

    training = policy.training
    policy.eval()
    with torch.no_grad():
        new, _ = response_logps(policy(ids, plen, tokens.size(1))[0], tokens)
    policy.train(training)
    with torch.no_grad():
        w = torch.exp((new - old).clamp(max=20.0)) * mask
        return float((w * (new - ref)).sum() / w.sum().clamp(min=1e-12))


def _minibatches(n: int, cfg: PPOConfig, generator: Any) -> Any:
    """``ppo_epochs`` shuffled passes over the rollout batch, in minibatches."""
    import torch

    for _ in range(cfg.ppo_epochs):
        yield from torch.randperm(n, generator=generator, device=generator.device).split(cfg.minibatch)


def _eos(tok: Any, template: Any, cfg: Any) -> int:
    from nlpkit.tune.sft import _eos as eos_of

    return eos_of(tok, template) if template is not None or cfg.eos_id is None else int(cfg.eos_id)


def _digest(prompts: list[Any]) -> str:
    import hashlib

    h = hashlib.sha256()
    for _, ids in prompts:
        h.update(np.asarray(ids, np.int64).tobytes() + b";")
    return h.hexdigest()


# --------------------------------------------------------------------------- checkpoints


def _save(out: Path, run: PPORun) -> None:
    """checkpoints/step-N.pt and ``latest`` (the loop's checkpoint files), then the adapter and
    value head files."""
    from nlpkit.io.tensors import provenance, save_tensors
    from nlpkit.lm.lora import save_adapter
    from nlpkit.lm.train.checkpoint import trained_state, write_checkpoint
    from nlpkit.store.gguf_folder import copy_tokenizer_files

    state = run.state
    blob = {"model": trained_state(run.policy), "optimizer": run.optimizer.state_dict(), "state": dict(state),
            "generator": run.generator.get_state(), "data_sha256": run.data_sha256}  # fmt: skip
    write_checkpoint(out, state["step"], blob)
    meta = {"nlpkit.step": str(state["step"]), "nlpkit.base_model": run.sft, "nlpkit.task": "ppo"}
    save_adapter(run.policy.lm, run.lora, out, meta, fingerprint=run.fingerprint)
    head = {k: v.detach().float().cpu().numpy() for k, v in run.policy.v_head.state_dict().items()}
    save_tensors(str(out / VALUE_HEAD_FILE), head, provenance(format="pt"), kind="ppo.value_head")
    copy_tokenizer_files(run.folder, out, replace=False)
