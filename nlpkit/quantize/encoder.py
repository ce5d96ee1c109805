"""``nlpkit quantize`` for sentence encoders (BERT, e.g. MiniLM): the exported ONNX graph with
int8 weights (ONNX Runtime's ``quantize_dynamic``, one scale per output channel, int8
activations computed on the fly), for ``embed -m`` and ``rag-index -m``.

Receipt: the cosine between float and int8 embeddings of held-out sentences (mean and worst),
and a retrieval check on the same text (each paragraph's first sentence must find its
paragraph among the top 5): recall@5 with the float encoder and with the int8 one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

ENCODER_FILES = ("config.json", "tokenizer.json", "pooling_config.json", "sentence_bert_config.json")


def quantize_encoder(src: Path, staging: Path) -> int:
    """Write ``staging/model.onnx`` (int8) and the encoder's files; returns the ONNX bytes."""
    import logging

    from nlpkit.embed.config import BertConfig
    from nlpkit.embed.encoder import _max_length
    from nlpkit.embed.onnx import ensure_onnx
    from nlpkit.io.deps import require

    require("onnxruntime", "quantize")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph, _ = ensure_onnx(src)
    onnx = require("onnx", "quantize")
    logging.disable(logging.WARNING)  # the quantizer advises pre-processing on the root logger
    try:
        _quantize_dynamic(quantize_dynamic, QuantType, onnx, graph, staging)
    finally:
        logging.disable(logging.NOTSET)
    for name in ENCODER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, staging / name)
    cfg = BertConfig.from_file(src / "config.json")
    # keep the source's truncation (a named asset's comes from its manifest, which stays behind)
    (staging / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": _max_length(src, cfg.max_position_embeddings)}) + "\n"
    )
    return (staging / "model.onnx").stat().st_size


def measure_encoder(src: Path, quantized: Path, text: tuple[str, str], device: str) -> dict[str, Any]:
    from nlpkit.embed.encoder import load_encoder

    name, body = text
    paragraphs = [p.strip() for p in body.split("\n\n") if len(p.strip()) > 80][:200]
    queries = [p.split(". ")[0] for p in paragraphs]
    before = load_encoder(str(src), "onnx", device)
    after = load_encoder(str(quantized), "onnx", device)
    a, b = before.encode(paragraphs), after.encode(paragraphs)
    cos = np.einsum("ij,ij->i", a, b)  # both L2-normalised
    recall = {}
    for label, enc, docs in (("before", before, a), ("after", after, b)):
        q = enc.encode(queries)
        top = np.argsort(-(q @ docs.T), axis=1)[:, :5]
        recall[label] = round(float(np.mean([i in row for i, row in enumerate(top)])), 4)
    return {
        "eval_text": name,
        "eval_paragraphs": len(paragraphs),
        "cosine_mean": round(float(cos.mean()), 5),
        "cosine_min": round(float(cos.min()), 5),
        "recall_at_5": recall,
        "verdict": "ok" if cos.mean() > 0.99 and recall["after"] >= recall["before"] - 0.02 else
        f"REGRESSION: cosine {cos.mean():.4f}, recall@5 {recall['before']} -> {recall['after']}",
    }  # fmt: skip


def _quantize_dynamic(quantize_dynamic: Any, QuantType: Any, onnx: Any, graph: Path, staging: Path) -> None:
    quantize_dynamic(
        str(graph), str(staging / "model.onnx"), weight_type=QuantType.QInt8, per_channel=True,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},  # the fused graph has contrib ops
    )  # fmt: skip
