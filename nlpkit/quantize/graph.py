"""A Llama-family decoder as an ONNX graph built from its weights, for ONNX Runtime.

The graph is written directly (not traced), with ONNX Runtime's fused operators for a decoder:

    input_ids (B, S) int64, attention_mask (B, T) int64 (right-padded: 1 = a real token),
    logits_index (B, P) int64 (the positions whose logits are wanted), past_key_values.{i}.key /
    .value (B, n_kv, past, hs) float32  ->  logits (B, P, vocab), present.{i}.key / .value

    embeddings   Gather (float16 table) -> Cast
    each layer   [Skip]SimplifiedLayerNormalization -> MatMul (fused q|k|v) ->
                 GroupQueryAttention (rotary inside, KV cache, per-row lengths) -> MatMul (o) ->
                 SkipSimplifiedLayerNormalization -> MatMul (fused gate|up) -> SiLU * up -> MatMul
    head         SkipSimplifiedLayerNormalization -> Gather(logits_index) -> MatMul (lm_head)

Every matrix is a float32 ``MatMul`` here; ``quantize.quantize`` then hands the graph to ONNX
Runtime's own weight quantizer (MatMulNBits). Rows of a batch are right-padded: a row's
length is the sum of its attention mask, which GroupQueryAttention reads as ``seqlens_k``, so
one prefill and every decode step serve rows of different lengths. Only the logits asked for
are computed (the last position while generating, every position for perplexity).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from nlpkit.errors import DataError, UsageError

if TYPE_CHECKING:
    import onnx

    from nlpkit.lm.config import ModelConfig

OPSET = 17
MS = "com.microsoft"


def rope_tables(cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin (block_size, hs/2) in float32, the angles nlpkit's Rotary uses."""
    hs = cfg.hs
    inv_freq = 1.0 / cfg.rope_theta ** (np.arange(0, hs, 2, dtype=np.int64).astype(np.float32) / hs)
    angles = np.outer(np.arange(cfg.block_size, dtype=np.float32), inv_freq.astype(np.float32))
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.n = 0

    def init(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.require(array, requirements="C"), name))
        return name

    def op(
        self, op_type: str, inputs: list[str], n_out: int = 1, domain: str = "", **attrs: Any
    ) -> list[str]:
        from onnx import helper

        self.n += 1
        outs = [f"{op_type}_{self.n}_{i}" for i in range(n_out)]
        self.nodes.append(
            helper.make_node(op_type, inputs, outs, name=f"{op_type}_{self.n}", domain=domain, **attrs)
        )
        return outs

    def named(
        self, op_type: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs: Any
    ) -> None:
        from onnx import helper

        self.n += 1
        self.nodes.append(
            helper.make_node(op_type, inputs, outputs, name=f"{op_type}_{self.n}", domain=domain, **attrs)
        )


def _weight(state: dict[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in state:
        raise DataError(f"the model has no tensor {name}")
    w = np.asarray(state[name], dtype=np.float32)
    if w.shape != shape:
        raise DataError(f"{name} has shape {tuple(w.shape)}, the config says {shape}")
    if not np.isfinite(w).all():
        raise DataError(f"{name} holds NaN or infinite values; the model is damaged")
    return w


def build_decoder(cfg: ModelConfig, state: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The float32 ONNX decoder of a llama-architecture model (Hugging Face tensor names)."""
    from onnx import TensorProto, helper

    if cfg.arch != "llama":
        raise UsageError(
            f"quantize takes decoder-only (llama) models; this one is {cfg.arch}",
            hint="quantize a model trained with train-transformer --arch llama, a .gguf or a named model",
        )
    C, hs, nh, nkv, ff, V = cfg.n_embd, cfg.hs, cfg.n_head, cfg.kv_heads, cfg.ffn_size(), cfg.vocab_size
    b = _Builder()
    embed = _weight(state, "model.embed_tokens.weight", (V, C))
    head = embed if cfg.tie_embeddings else _weight(state, "lm_head.weight", (V, C))
    cos, sin = rope_tables(cfg)
    b.init("cos_cache", cos)
    b.init("sin_cache", sin)
    b.init("embed_tokens", embed.astype(np.float16))
    # per-row lengths for GroupQueryAttention: seqlens_k = sum(mask) - 1, total = mask width
    mask_sum = b.op("ReduceSum", ["attention_mask", b.init("axes_1", np.array([1], np.int64))], keepdims=0)[0]
    minus = b.op("Sub", [mask_sum, b.init("one_i64", np.array(1, np.int64))])[0]
    seqlens = b.op("Cast", [minus], to=TensorProto.INT32)[0]
    shape_mask = b.op("Shape", ["attention_mask"])[0]
    width = b.op("Gather", [shape_mask, b.init("idx_1", np.array(1, np.int64))], axis=0)[0]
    total = b.op("Cast", [width], to=TensorProto.INT32)[0]

    x = b.op("Cast", [b.op("Gather", ["embed_tokens", "input_ids"], axis=0)[0]], to=TensorProto.FLOAT)[0]
    eps = float(cfg.norm_eps)
    pending: str | None = None  # the last block's output, not yet added to the residual stream x
    for i in range(cfg.n_layer):
        p = f"model.layers.{i}."
        ln1 = b.init(f"{p}input_layernorm.weight", _weight(state, f"{p}input_layernorm.weight", (C,)))
        if pending is None:
            h = b.op("SimplifiedLayerNormalization", [x, ln1], axis=-1, epsilon=eps, stash_type=1)[0]
        else:
            h, _, _, x = _skip_norm(b, pending, x, ln1, eps)
        wq = _weight(state, f"{p}self_attn.q_proj.weight", (nh * hs, C))
        wk = _weight(state, f"{p}self_attn.k_proj.weight", (nkv * hs, C))
        wv = _weight(state, f"{p}self_attn.v_proj.weight", (nkv * hs, C))
        qkv = b.op("MatMul", [h, b.init(f"{p}qkv_proj.weight_T", np.concatenate([wq, wk, wv]).T)])[0]
        if f"{p}self_attn.q_proj.bias" in state:  # qwen2: biases on q, k and v
            bias = np.concatenate(
                [np.asarray(state[f"{p}self_attn.{n}_proj.bias"], np.float32) for n in "qkv"]
            )
            qkv = b.op("Add", [qkv, b.init(f"{p}qkv_proj.bias", bias)])[0]
        attn = f"attn_{i}"
        b.named(
            "GroupQueryAttention",
            [qkv, "", "", f"past_key_values.{i}.key", f"past_key_values.{i}.value", seqlens, total,
             "cos_cache", "sin_cache"],
            [attn, f"present.{i}.key", f"present.{i}.value"],
            domain=MS, num_heads=nh, kv_num_heads=nkv, do_rotary=1, rotary_interleaved=0,
            scale=float(hs**-0.5),
        )  # fmt: skip
        wo = _weight(state, f"{p}self_attn.o_proj.weight", (C, nh * hs))
        o = b.op("MatMul", [attn, b.init(f"{p}o_proj.weight_T", wo.T)])[0]
        ln2 = b.init(
            f"{p}post_attention_layernorm.weight", _weight(state, f"{p}post_attention_layernorm.weight", (C,))
        )
        h2, _, _, x = _skip_norm(b, o, x, ln2, eps)
        wg = _weight(state, f"{p}mlp.gate_proj.weight", (ff, C))
        wu = _weight(state, f"{p}mlp.up_proj.weight", (ff, C))
        gu = b.op("MatMul", [h2, b.init(f"{p}gate_up_proj.weight_T", np.concatenate([wg, wu]).T)])[0]
        gate, up = b.op("Split", [gu, b.init(f"split_{i}", np.array([ff, ff], np.int64))], n_out=2, axis=-1)
        act = b.op("Mul", [b.op("Mul", [gate, b.op("Sigmoid", [gate])[0]])[0], up])[0]
        wd = _weight(state, f"{p}mlp.down_proj.weight", (C, ff))
        pending = b.op("MatMul", [act, b.init(f"{p}down_proj.weight_T", wd.T)])[0]
    assert pending is not None
    norm = b.init("model.norm.weight", _weight(state, "model.norm.weight", (C,)))
    y = _skip_norm(b, pending, x, norm, eps)[0]
    # the rows of y (B*S, C) whose logits are wanted: logits_index + row * S
    shape_ids = b.op("Shape", ["input_ids"])[0]
    batch = b.op("Gather", [shape_ids, b.init("idx_0", np.array(0, np.int64))], axis=0)[0]
    seq = b.op("Gather", [shape_ids, "idx_1"], axis=0)[0]
    rows = b.op("Range", [b.init("zero_i64", np.array(0, np.int64)), batch, "one_i64"])[0]
    offsets = b.op("Unsqueeze", [b.op("Mul", [rows, seq])[0], "axes_1"])[0]
    flat_idx = b.op(
        "Reshape", [b.op("Add", ["logits_index", offsets])[0], b.init("minus1", np.array([-1], np.int64))]
    )[0]
    flat_y = b.op("Reshape", [y, b.init("flat_shape", np.array([-1, C], np.int64))])[0]
    picked = b.op("Gather", [flat_y, flat_idx], axis=0)[0]
    batch_1 = b.op("Unsqueeze", [batch, b.init("axes_0", np.array([0], np.int64))])[0]
    bpc = b.op("Concat", [batch_1, b.init("tail_shape", np.array([-1, C], np.int64))], axis=0)[0]
    picked_bpc = b.op("Reshape", [picked, bpc])[0]  # (B, P, C)
    b.named("MatMul", [picked_bpc, b.init("lm_head.weight_T", head.T)], ["logits"])

    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    inputs = [
        helper.make_tensor_value_info("input_ids", i64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", i64, ["batch", "total"]),
        helper.make_tensor_value_info("logits_index", i64, ["batch", "wanted"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", f32, ["batch", "wanted", V])]
    for i in range(cfg.n_layer):
        for kind in ("key", "value"):
            inputs.append(
                helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", f32, ["batch", nkv, "past", hs])
            )
            outputs.append(
                helper.make_tensor_value_info(f"present.{i}.{kind}", f32, ["batch", nkv, "present", hs])
            )
    graph = helper.make_graph(b.nodes, "nlpkit_decoder", inputs, outputs, b.inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)],
        producer_name="nlpkit",
    )
    model.ir_version = 8
    return model


def _skip_norm(b: _Builder, value: str, residual: str, weight: str, eps: float) -> list[str]:
    """(normed, _, _, value + residual): one fused residual add and RMS norm."""
    out, added = f"skipnorm_{b.n + 1}_out", f"skipnorm_{b.n + 1}_sum"
    b.named(
        "SkipSimplifiedLayerNormalization", [value, residual, weight], [out, "", "", added],
        domain=MS, epsilon=eps,
    )  # fmt: skip
    return [out, "", "", added]
