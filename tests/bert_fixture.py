"""A tiny random BERT folder (Hugging Face BertModel layout) for encoder tests.

``make_tiny_bert(folder)`` writes ``config.json`` (hidden 32, 2 layers, 4 heads, FFN 64, 64
positions), ``model.safetensors`` (HF BertModel tensor names, pooler included) and
``tokenizer.json`` (a small WordPiece vocabulary from fixed sentences, with BERT's normalizer,
pre-tokenizer and ``[CLS] ... [SEP]`` post-processor). Same seed, same bytes; no network.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A journey of a thousand miles begins with a single step.",
    "To be or not to be, that is the question.",
    "All that glitters is not gold.",
    "The cat sat on the mat and looked at the dog.",
    "Python is a programming language that lets you work quickly.",
    "Sentence embeddings map text to vectors of numbers.",
    "Mean pooling averages the token vectors of a sentence.",
    "Retrieval finds the documents closest to a question.",
    "The weather today is sunny with a light breeze.",
    "It was raining heavily when the train arrived at the station.",
    "She sells sea shells by the sea shore.",
    "Knowledge is power, and power corrupts.",
    "The early bird catches the worm.",
    "Every model reads tokens and writes vectors.",
    "Attention is all you need, said the paper.",
    "A small tokenizer learns word pieces from a few sentences.",
    "Numbers like 42 and 3.14 appear in text too.",
    "Hello, world! How are you doing today?",
    "Paris is the capital of France; Rome is the capital of Italy.",
    "Dogs and cats are popular pets in many homes.",
    "The library reference describes the standard modules.",
    "Transformers stack layers of attention and feed-forward networks.",
    "Normalisation makes every embedding a unit vector.",
    "He walked slowly along the river bank at dawn.",
    "Cron jobs run commands on a schedule without anyone watching.",
    "Short text.",
    "Longer sentences with many different words help the tokenizer learn useful pieces.",
    "Unicode text such as café, naïve and résumé is normalised.",
    "The end.",
]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # [PAD] = 0, as in BERT

CONFIG = {
    "architectures": ["BertModel"],
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "type_vocab_size": 2,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
    "position_embedding_type": "absolute",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "initializer_range": 0.02,
}


def _tokenizer_json() -> tuple[str, int]:
    """A WordPiece vocabulary built from SENTENCES by a fixed rule (tokenizers' trainer breaks
    ties differently from run to run): specials, every character and its ``##`` form, a few
    suffixes, then every word, in sorted order."""
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    norm, pre = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = Counter(w for s in SENTENCES for w, _ in pre.pre_tokenize_str(norm.normalize_str(s)))
    chars = sorted({c for w in words for c in w})
    suffixes = ["##s", "##ed", "##ing", "##er", "##ly", "##tion"]
    pieces = [*chars, *(f"##{c}" for c in chars), *suffixes, *sorted(words)]
    vocab = {t: i for i, t in enumerate(dict.fromkeys([*SPECIALS, *pieces]))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.add_special_tokens(SPECIALS)
    tok.normalizer, tok.pre_tokenizer, tok.decoder = norm, pre, decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return tok.to_str(), tok.get_vocab_size()


def _weights(cfg: dict[str, int], seed: int, prefix: str) -> dict[str, np.ndarray]:
    """Random weights big enough that tokens and positions matter (std 0.02 would wash out)."""
    rng = np.random.default_rng(seed)
    C, F = cfg["hidden_size"], cfg["intermediate_size"]

    def w(*shape: int, std: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def ln(name: str) -> dict[str, np.ndarray]:
        return {f"{name}.weight": 1.0 + w(C, std=0.1), f"{name}.bias": w(C, std=0.1)}

    t = {
        "embeddings.word_embeddings.weight": w(cfg["vocab_size"], C, std=0.5),
        "embeddings.position_embeddings.weight": w(cfg["max_position_embeddings"], C, std=0.3),
        "embeddings.token_type_embeddings.weight": w(cfg["type_vocab_size"], C, std=0.3),
        **ln("embeddings.LayerNorm"),
    }
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for name, (rows, cols) in {
            "attention.self.query": (C, C),
            "attention.self.key": (C, C),
            "attention.self.value": (C, C),
            "attention.output.dense": (C, C),
            "intermediate.dense": (F, C),
            "output.dense": (C, F),
        }.items():
            t[p + name + ".weight"] = w(rows, cols)
            t[p + name + ".bias"] = w(rows, std=0.05)
        t.update(ln(p + "attention.output.LayerNorm"))
        t.update(ln(p + "output.LayerNorm"))
    t["pooler.dense.weight"] = w(C, C)
    t["pooler.dense.bias"] = w(C, std=0.05)
    return {prefix + k: v for k, v in t.items()}


def make_tiny_bert(folder: Path, seed: int = 0, *, prefix: str = "") -> Path:
    """Write a tiny random BertModel folder; ``prefix="bert."`` names tensors as BertFor* do."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer, vocab_size = _tokenizer_json()
    cfg = {**CONFIG, "vocab_size": vocab_size}
    (folder / "tokenizer.json").write_text(tokenizer)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    save_file(_weights(cfg, seed, prefix), str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder
