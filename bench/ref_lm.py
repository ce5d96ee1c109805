"""Plain PyTorch reference loops for bench_lm.py: nanoGPT's GPT, the same loop on a plain Llama,
and a plain LSTM LM.

Written the way people write them (nanoGPT's model.py and train.py; Meta's and Hugging Face's
Llama code; PyTorch's word_language_model example), never imported by nlpkit. Character level:
the vocabulary is the sorted set of characters of the corpus; the first 90% of it trains, the
last 10% validates.

    python bench/ref_lm.py --arch gpt --data corpus.txt --max-time 120 --threads 2

Prints one JSON object: steps, tokens/s over the training loop, the final validation loss over
every non-overlapping block of the validation split, the parameter count. The learning rate
follows warmup then cosine over the time budget (the same rule nlpkit uses when only
--max-time is given), so both sides decay to the end of the same budget.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=False)
        self.resid_dropout = nn.Dropout(dropout)
        self.n_head, self.n_embd, self.dropout = n_head, n_embd, dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0, is_causal=True
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, n_embd: int, dropout: float):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=False)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=False)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln_2 = nn.LayerNorm(n_embd, bias=False)
        self.mlp = MLP(n_embd, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(
        self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int, dropout: float
    ):
        super().__init__()
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(vocab_size, n_embd),
                wpe=nn.Embedding(block_size, n_embd),
                drop=nn.Dropout(dropout),
                h=nn.ModuleList([Block(n_embd, n_head, dropout) for _ in range(n_layer)]),
                ln_f=nn.LayerNorm(n_embd, bias=False),
            )
        )
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(0, idx.size(1), dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


class LlamaBlock(nn.Module):
    """The same architecture as nlpkit's decoder, written plainly (Meta's and Hugging Face's Llama
    code): RMSNorm, rotary embeddings with rotate_half, SwiGLU 8/3 wide, causal SDPA."""

    def __init__(self, n_embd: int, n_head: int, hidden: int):
        super().__init__()
        self.n_head, self.hs = n_head, n_embd // n_head
        self.attention_norm = nn.RMSNorm(n_embd, eps=1e-5)
        self.wq = nn.Linear(n_embd, n_embd, bias=False)
        self.wk = nn.Linear(n_embd, n_embd, bias=False)
        self.wv = nn.Linear(n_embd, n_embd, bias=False)
        self.wo = nn.Linear(n_embd, n_embd, bias=False)
        self.ffn_norm = nn.RMSNorm(n_embd, eps=1e-5)
        self.w1 = nn.Linear(n_embd, hidden, bias=False)
        self.w3 = nn.Linear(n_embd, hidden, bias=False)
        self.w2 = nn.Linear(hidden, n_embd, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        h = self.attention_norm(x)
        q = self.wq(h).view(B, T, self.n_head, self.hs).transpose(1, 2)
        k = self.wk(h).view(B, T, self.n_head, self.hs).transpose(1, 2)
        v = self.wv(h).view(B, T, self.n_head, self.hs).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.wo(y.transpose(1, 2).contiguous().view(B, T, C))
        h = self.ffn_norm(x)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Llama(nn.Module):
    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int):
        super().__init__()
        hidden = 8 * n_embd // 3 // 16 * 16  # as many weights as GPT-2's 4x MLP
        self.tok_embeddings = nn.Embedding(vocab_size, n_embd)
        self.layers = nn.ModuleList([LlamaBlock(n_embd, n_head, hidden) for _ in range(n_layer)])
        self.norm = nn.RMSNorm(n_embd, eps=1e-5)
        self.output = nn.Linear(n_embd, vocab_size, bias=False)
        self.output.weight = self.tok_embeddings.weight
        hs = n_embd // n_head
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, hs, 2).float() / hs))
        freqs = torch.outer(torch.arange(block_size).float(), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)
        for pn, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * n_layer) if pn.endswith(("wo.weight", "w2.weight")) else 0.02
                torch.nn.init.normal_(p, mean=0.0, std=std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        T = idx.size(1)
        x = self.tok_embeddings(idx)
        for layer in self.layers:
            x = layer(x, self.cos[:T], self.sin[:T])
        logits = self.output(self.norm(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


class LSTMModel(nn.Module):
    """PyTorch's word_language_model example, tied weights, batch first."""

    def __init__(self, vocab_size: int, n_embd: int, n_layer: int, dropout: float):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(vocab_size, n_embd)
        self.rnn = nn.LSTM(n_embd, n_embd, n_layer, dropout=dropout if n_layer > 1 else 0.0, batch_first=True)
        self.decoder = nn.Linear(n_embd, vocab_size)
        self.decoder.weight = self.encoder.weight
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        output, _ = self.rnn(self.drop(self.encoder(idx)))
        logits = self.decoder(self.drop(output))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", choices=["gpt", "llama", "lstm"], default="gpt")
    p.add_argument("--data", required=True)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr", type=float, default=1e-4)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--beta2", type=float, default=0.99)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--max-time", type=float, default=120.0)
    p.add_argument("--eval-interval", type=int, default=250)
    p.add_argument("--eval-iters", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=1337)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    # data: nanoGPT's shakespeare_char/prepare.py
    with open(args.data, encoding="utf-8") as f:
        text = f.read()
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    data = np.array([stoi[c] for c in text], dtype=np.uint16)
    n = len(data)
    train_data, val_data = data[: int(n * 0.9)], data[int(n * 0.9) :]
    block_size, batch_size = args.block_size, args.batch_size

    def get_batch(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        d = train_data if split == "train" else val_data
        ix = torch.randint(len(d) - block_size, (batch_size,))
        x = torch.stack([torch.from_numpy(d[i : i + block_size].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(d[i + 1 : i + 1 + block_size].astype(np.int64)) for i in ix])
        return x, y

    model: nn.Module
    if args.arch == "gpt":
        model = GPT(len(chars), block_size, args.n_layer, args.n_head, args.n_embd, args.dropout)
    elif args.arch == "llama":
        model = Llama(len(chars), block_size, args.n_layer, args.n_head, args.n_embd)
    else:
        model = LSTMModel(len(chars), args.n_embd, args.n_layer, args.dropout)
    n_params = sum(p.numel() for p in model.parameters())

    # nanoGPT's configure_optimizers: decay 2-D weights only; fused AdamW on CUDA only
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": args.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, args.beta2))

    def get_lr(it: int, elapsed: float) -> float:
        if it < args.warmup_steps:
            return args.lr * (it + 1) / (args.warmup_steps + 1)
        ratio = min(elapsed / args.max_time, 1.0)
        return args.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (args.lr - args.min_lr)

    @torch.no_grad()
    def estimate_loss() -> float:
        model.eval()
        losses = torch.zeros(args.eval_iters)
        for k in range(args.eval_iters):
            losses[k] = model(*get_batch("val")).item()
        model.train()
        return losses.mean().item()

    log = []
    t0 = time.perf_counter()
    eval_time, it = 0.0, 0
    while True:
        elapsed = time.perf_counter() - t0
        if elapsed >= args.max_time:
            break
        if it > 0 and it % args.eval_interval == 0:
            e0 = time.perf_counter()
            log.append({"step": it, "val_loss": estimate_loss()})
            eval_time += time.perf_counter() - e0
        for group in optimizer.param_groups:
            group["lr"] = get_lr(it, elapsed)
        x, y = get_batch("train")
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        it += 1
    wall = time.perf_counter() - t0
    train_time = wall - eval_time

    # final validation loss: every target of the validation split, in non-overlapping blocks
    # (the last one shorter), as `nlpkit eval` computes it
    model.eval()
    losses, counts = [], []
    with torch.no_grad():
        starts = list(range(0, len(val_data) - 1, block_size))
        full = [i for i in starts if i + block_size + 1 <= len(val_data)]
        batches = [full[b : b + 64] for b in range(0, len(full), 64)] + [[i] for i in starts[len(full) :]]
        for ix in batches:
            T = min(block_size, len(val_data) - 1 - ix[0])
            x = torch.stack([torch.from_numpy(val_data[i : i + T].astype(np.int64)) for i in ix])
            y = torch.stack([torch.from_numpy(val_data[i + 1 : i + 1 + T].astype(np.int64)) for i in ix])
            losses.append(model(x, y).item() * y.numel())
            counts.append(y.numel())
    result = {
        "arch": args.arch, "steps": it, "tokens": it * batch_size * block_size, "train_s": train_time,
        "tokens_per_s": it * batch_size * block_size / train_time, "val_loss": sum(losses) / sum(counts),
        "val_tokens": sum(counts), "params": n_params, "vocab_size": len(chars), "evals": log,
    }  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
