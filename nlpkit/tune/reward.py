"""Reward models: a decoder with a linear head on the last token, trained on preference pairs
with the pairwise (Bradley-Terry) loss, as in InstructGPT (Ouyang et al. 2022, eq. 1):

    loss = -log sigmoid(r(prompt, chosen) - r(prompt, rejected))

    rm = RewardModel.from_lm(sft_model)         # the SFT weights plus a fresh score head
    rewards = rm(ids)                           # (B,) one score per right-padded sequence
    save_reward_model(rm, "rm/", tokenizer_from="sft/")
    rm, cfg = load_reward_model("rm/")

The folder is Hugging Face's ``LlamaForSequenceClassification`` with one label: config.json,
model.safetensors (``model.*`` and ``score.weight``), the tokenizer. The score is read at the
last token that is not padding, found by transformers' own rule (the last position whose id is
not ``pad_token_id``), so ``transformers`` gives the same numbers from the same folder.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn as nn
from torch.nn import functional as F

from nlpkit.errors import DataError, UsageError
from nlpkit.lm.config import ModelConfig
from nlpkit.lm.llama import Llama

ARCHITECTURE = "LlamaForSequenceClassification"


class RewardModel(Llama):
    """A Llama body and ``score``: Linear(n_embd, 1) read at each sequence's last real token."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        del self.lm_head
        self.score = nn.Linear(cfg.n_embd, 1, bias=False)
        nn.init.normal_(self.score.weight, std=0.02)  # transformers' initializer_range

    def forward(self, idx: torch.Tensor, *_: Any) -> torch.Tensor:  # type: ignore[override]
        x = self.hidden(idx)  # (B, T, C)
        return self.score(
            x[torch.arange(idx.size(0), device=idx.device), last_tokens(idx, self.pad)]
        ).squeeze(-1)

    @property
    def pad(self) -> int:
        return int(self.cfg.pad_id if self.cfg.pad_id is not None else -1)

    @classmethod
    def from_lm(cls, lm: Llama, seed: int = 0) -> RewardModel:
        """``lm``'s weights (shared, not copied) and a new score head, N(0, 0.02)."""
        with torch.device("meta"):
            rm = cls(lm.cfg)
        w = lm.model.norm.weight
        score = torch.empty(1, lm.cfg.n_embd, dtype=w.dtype, device=w.device)
        nn.init.normal_(score, std=0.02, generator=torch.Generator(w.device).manual_seed(seed))
        state = {k: v for k, v in lm.state_dict().items() if not k.startswith("lm_head.")}
        rm.load_state_dict(state | {"score.weight": score}, assign=True)
        rm.rotary = lm.rotary
        return rm.train(lm.training)


def last_tokens(idx: torch.Tensor, pad: int) -> torch.Tensor:
    """(B,) index of each row's last token that is not ``pad`` (transformers' rule)."""
    positions = torch.arange(idx.size(1), device=idx.device)
    return (positions * (idx != pad)).argmax(-1)


class RewardObjective(nn.Module):
    """The loop's model for ``rlhf rm``: (2B, T) ids, chosen rows first -> (numbers, loss)."""

    def __init__(self, rm: RewardModel):
        super().__init__()
        self.rm = rm

    def forward(
        self, ids: torch.Tensor, labels: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        r = self.rm(ids).float()
        B = ids.size(0) // 2
        chosen, rejected = r[:B], r[B:]
        loss = -F.logsigmoid(chosen - rejected).mean()
        numbers = {
            "accuracy": (chosen > rejected).float().mean(),
            "margin": (chosen - rejected).mean(),
            "reward_chosen": chosen.mean(),
            "reward_rejected": rejected.mean(),
        }
        return numbers, loss


# --------------------------------------------------------------------------- folders


def is_reward_model(folder: str | Path) -> bool:
    try:
        cfg = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and ARCHITECTURE in (cfg.get("architectures") or [])


def merged_tensors(model: nn.Module) -> tuple[list[tuple[str, tuple[int, ...]]], Any]:
    """The names and shapes of ``model``'s weights with every LoRA adapter folded in, under the
    plain names, and a function giving one of them as a float32 array (computed on demand, so
    writing them holds one tensor at a time; the model itself is left as it is)."""
    import numpy as np

    from nlpkit.lm.lora import LoRALinear

    lora = {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}
    state = model.state_dict()
    names = []
    for name, t in state.items():
        module, _, leaf = name.rpartition(".")
        if module in lora and leaf != "weight":
            continue  # lora_a / lora_b / NF4 buffers: folded into the weight
        if ".lora_a." in name or ".lora_b." in name:
            continue
        shape = tuple(lora[module].weight.shape) if module in lora else tuple(t.shape)
        names.append((name, shape))

    def produce(name: str) -> np.ndarray:
        module = name.rpartition(".")[0]
        with torch.no_grad():
            t = lora[module].base_weight().float() + lora[module].delta() if module in lora else state[name]
            return np.ascontiguousarray(t.detach().float().cpu().numpy())

    return names, produce


def save_reward_model(
    rm: RewardModel, folder: str | Path, tokenizer_from: Path, meta: dict[str, str]
) -> None:
    """The reward model as ``LlamaForSequenceClassification`` (adapters merged, one tensor at a
    time) plus the tokenizer files of ``tokenizer_from``."""
    import numpy as np

    from nlpkit.io.files import write_bytes_atomic
    from nlpkit.io.tensors import provenance, save_tensors_streaming
    from nlpkit.store.gguf_folder import copy_tokenizer_files

    folder = Path(folder)
    names, produce = merged_tensors(rm)
    specs = [(n, np.float32, shape) for n, shape in names if not n.startswith("lm_head.")]
    save_tensors_streaming(
        str(folder / "model.safetensors"),
        specs,
        produce,
        provenance(**meta, format="pt"),
        kind="model.reward",
    )
    write_bytes_atomic(folder / "config.json", (json.dumps(reward_config(rm.cfg), indent=2) + "\n").encode())
    copy_tokenizer_files(tokenizer_from, folder, replace=False)


def reward_config(cfg: ModelConfig) -> dict[str, Any]:
    hf = cfg.to_hf()
    if hf.get("model_type") != "llama":
        raise UsageError(f"reward models are built on llama decoders, not {hf.get('model_type')}")
    return hf | {
        "architectures": [ARCHITECTURE],
        "num_labels": 1,
        "id2label": {"0": "LABEL_0"},
        "label2id": {"LABEL_0": 0},
        "problem_type": "regression",
    }


def load_reward_model(folder: str | Path, device: str = "cpu") -> tuple[RewardModel, ModelConfig]:
    """A reward model folder (``rlhf rm -o``, or transformers' LlamaForSequenceClassification
    with one label), in eval mode."""
    if not is_reward_model(folder):
        raise UsageError(
            f"{folder} is not a reward model (config.json names no {ARCHITECTURE})",
            hint="give a folder written by `nlpkit rlhf rm -o`",
        )
    raw = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    if int(raw.get("num_labels", len(raw.get("id2label") or {0: 0}))) != 1:
        raise DataError(
            "a reward model has one label (num_labels 1)", where=str(Path(folder) / "config.json")
        )
    from nlpkit.lm.model import load_model

    rm, cfg = load_model(folder, device, build=RewardModel)
    return cast(RewardModel, rm), cfg


# --------------------------------------------------------------------------- scoring


class Scorer:
    """A reward model with its tokenizer and chat template: texts in, rewards out.

    scorer = Scorer.load("rm/")
    scorer.score([("Write a review of Up.", "A joy from start to finish.")])  # [1.93]
    """

    def __init__(self, rm: RewardModel, tok: Any, template: Any, device: str, max_length: int):
        self.rm, self.tok, self.template, self.device = rm, tok, template, device
        self.max_length = min(max_length, rm.cfg.block_size)

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu", max_length: int = 1024) -> Scorer:
        from nlpkit.store.resolve import resolve_model
        from nlpkit.text.chat_template import ChatTemplate
        from nlpkit.text.tokenizer import load

        path = resolve_model(str(folder))
        rm, _ = load_reward_model(path, device)
        return cls(rm, load(str(path)), ChatTemplate.from_folder(path), device, max_length)

    def ids(self, prompt: str | list[dict[str, str]], response: str) -> list[int]:
        """The tokens scored: the prompt and response as the pairs were rendered in training."""
        from nlpkit.tune.pairs import render

        if self.template is None:
            text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
            ids = self.tok.encode(text + response, add_special_tokens=False).ids
        else:
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            ids = render(
                self.tok, self.template, [*messages, {"role": "assistant", "content": response}], False
            )
        return ids[-self.max_length :]

    def score_ids(self, rows: list[list[int]]) -> list[float]:
        pad = self.rm.pad if self.rm.pad >= 0 else 0
        T = max(len(r) for r in rows)
        idx = torch.full((len(rows), T), pad, dtype=torch.long)
        for i, r in enumerate(rows):
            idx[i, : len(r)] = torch.tensor(r)
        with torch.inference_mode():
            return [float(x) for x in self.rm(idx.to(self.device)).float().cpu()]

    def score(self, items: Iterable[tuple[Any, str]], batch_size: int = 16) -> Iterator[float]:
        batch: list[list[int]] = []
        for prompt, response in items:
            batch.append(self.ids(prompt, response))
            if len(batch) == batch_size:
                yield from self.score_ids(batch)
                batch = []
        if batch:
            yield from self.score_ids(batch)


def same_tokenizer(a: Any, b: Any) -> bool:
    """Whether two tokenizers map the same strings to the same ids."""
    return bool(a.get_vocab(with_added_tokens=True) == b.get_vocab(with_added_tokens=True))


RESPONSE_FIELDS = ("completion", "response", "output")


def score_records(
    scorer: Scorer, records: Iterable[tuple[str, dict[str, Any]]], field: str = "", batch_size: int = 16
) -> Iterator[dict[str, Any]]:
    """Each record with ``"reward"`` added (``"reward_chosen"`` and ``"reward_rejected"`` for a
    preference pair), in input order; a record without a prompt and a response is refused with
    its ``FILE:LINE`` after the records before it are written."""
    from nlpkit.llm.generate import batches

    def items() -> Iterator[tuple[dict[str, Any], list[tuple[Any, str]], tuple[str, ...]]]:
        for where, record in records:
            prompt = record.get("prompt", record.get("instruction"))
            if isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
                prompt = [{"role": str(m.get("role")), "content": str(m.get("content"))} for m in prompt]
            elif not isinstance(prompt, str):
                raise DataError(
                    'expected a "prompt" (or "instruction") string or list of messages', where=where
                )
            if "chosen" in record and "rejected" in record:
                names, keys = ("reward_chosen", "reward_rejected"), ("chosen", "rejected")
            else:
                found = [f for f in ((field,) if field else RESPONSE_FIELDS) if f in record]
                if not found:
                    want = field or " / ".join(RESPONSE_FIELDS)
                    raise DataError(
                        f"no response field ({want}) to score", where=where, hint="name it with --field"
                    )
                names, keys = ("reward",), (found[0],)  # type: ignore[assignment]
            texts = [_response_text(record[k], where) for k in keys]
            yield record, [(prompt, t) for t in texts], names

    for group in batches(items(), batch_size):
        flat = [pair for _, pairs, _ in group for pair in pairs]
        scores = iter(scorer.score(flat, batch_size=len(flat)))
        for record, _, names in group:
            yield record | {name: round(next(scores), 6) for name in names}


def _response_text(value: Any, where: str) -> str:
    """A response string, or the content of a one-message assistant reply (TRL's shape)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        return str(value[0].get("content", ""))
    raise DataError("a response must be a string or one assistant message", where=where)
