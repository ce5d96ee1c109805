"""Hostile GGUF metadata (finding 1 of the hostile-input review): every count that sizes an
allocation (layers, heads, head size, vocabulary, context) is checked against the tensors the
file holds, and every float for being finite, before anything is allocated. A conversion either
writes a folder that loads, or fails with one NlpkitError line; never another exception, never
memory until the kernel steps in."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")
resource = pytest.importorskip("resource")  # POSIX: the memory limits below
pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from nlpkit.cli.main import app  # noqa: E402
from nlpkit.errors import DataError, NlpkitError, UsageError  # noqa: E402
from nlpkit.llm.generate import Generator  # noqa: E402
from nlpkit.lm.config import ModelConfig  # noqa: E402
from nlpkit.store.gguf_folder import gguf_to_folder, hf_name  # noqa: E402
from tests.test_chat import write_llama_gguf  # noqa: E402

VT = gguf.GGUFValueType
Value = gguf.GGUFValue
GiB = 1 << 30


def u32(v: int) -> Any:
    return Value(v, VT.UINT32)


def f32(v: float) -> Any:
    return Value(v, VT.FLOAT32)


Reference = tuple[dict[str, Any], dict[str, np.ndarray]]  # metadata (typed values), tensors


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """The tiny Llama of test_chat (2 layers, width 64, 4 heads of 16, 2 kv heads, ffn 96, 421
    tokens), taken apart so that variants differ from it in their metadata only."""
    path = tmp_path_factory.mktemp("bounds") / "ref.gguf"
    write_llama_gguf(path)
    reader = gguf.GGUFReader(str(path))
    meta = {}
    for key, field in reader.fields.items():
        if not key.startswith("GGUF."):  # the reader's own header pseudo-fields
            sub = field.types[-1] if field.types[0] == VT.ARRAY else None
            meta[key] = Value(field.contents(), field.types[0], sub)
    return meta, {t.name: np.array(t.data) for t in reader.tensors}


def write_variant(ref: Reference, path: Path, changes: dict[str, Any]) -> Path:
    """The reference model with some metadata values replaced (a ``GGUFValue``) or left out (None)."""
    meta, tensors = ref
    w = gguf.GGUFWriter(str(path), "llama")
    for key, value in {**meta, **changes}.items():
        w.kv_data[0].pop(key, None)  # general.architecture is already there
        if value is not None:
            w.kv_data[0][key] = value
    for name, a in tensors.items():
        w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@contextmanager
def memory_headroom(extra: int) -> Iterator[None]:
    """This process may map ``extra`` more bytes than it has now, until the block ends: a
    conversion that allocates by a hostile count gets a MemoryError, not the whole machine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if not os.path.exists("/proc/self/statm"):  # not Linux: no way to know the size now
        yield
        return
    with open("/proc/self/statm") as f:
        now = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    cap = min([now + extra] + [x for x in (soft, hard) if x != resource.RLIM_INFINITY])  # never looser
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


# ``python -m nlpkit ARGS...`` in a process that first caps its own address space (a
# preexec_fn would run in a fork of this threaded process)
_LIMITED_CLI = (
    "import resource, runpy, sys; "
    "resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), resource.getrlimit(resource.RLIMIT_AS)[1])); "
    "sys.argv = ['nlpkit', *sys.argv[2:]]; "
    "runpy.run_module('nlpkit', run_name='__main__', alter_sys=True)"
)


def convert_cli(gg: Path, out: Path) -> tuple[subprocess.CompletedProcess[bytes], float]:
    """``nlpkit convert`` as a process with 2 GiB of address space, as a user would run it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", _LIMITED_CLI, str(2 * GiB), "convert", str(gg), "-o", str(out)],
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )
    return proc, time.monotonic() - start


# --------------------------------------------------------------------------- regressions


def test_the_unchanged_model_converts_under_the_memory_limit(reference: Reference, tmp_path: Path) -> None:
    """The control: 2 GiB is plenty for an honest file, so the exits below are the checks'."""
    proc, _ = convert_cli(write_variant(reference, tmp_path / "ok.gguf", {}), tmp_path / "m")
    assert proc.returncode == 0, proc.stderr.decode()
    assert (tmp_path / "m" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("llama.block_count", u32(10**9), "llama.block_count is 1000000000 but the file holds 2 layers"),
        ("llama.attention.head_count", u32(0), "llama.attention.head_count is 0, expected at least 1"),
        ("llama.context_length", u32(2**32 - 1), "llama.context_length is 4294967295, over nlpkit's limit"),
        ("llama.vocab_size", Value(2**64 - 1, VT.UINT64), "llama.vocab_size is 18446744073709551615 but"),
        ("llama.rope.freq_base", f32(math.nan), "llama.rope.freq_base is nan, expected a finite number"),
    ],
)
def test_hostile_counts_exit_65_quickly_under_a_memory_limit(
    reference: Reference, tmp_path: Path, key: str, value: Any, message: str
) -> None:
    gg = write_variant(reference, tmp_path / "bad.gguf", {key: value})
    proc, seconds = convert_cli(gg, tmp_path / "m")
    lines = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 65, proc.stderr.decode()
    assert len(lines) == 1 and lines[0].startswith(f"nlpkit: error: {gg}: ") and message in lines[0], lines
    assert seconds < 30  # ~0.5 s: nothing was allocated, let alone 10**9 layers
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"llama.block_count": u32(1)}, "llama.block_count is 1 but the file holds 2 layers"),
        ({"llama.block_count": u32(3)}, "llama.block_count is 3 but the file holds 2 layers"),
        ({"llama.block_count": Value(-3, VT.INT32)}, "llama.block_count is -3, expected at least 1"),
        ({"llama.block_count": f32(2.0)}, "llama.block_count must be an integer, not float 2.0"),
        ({"llama.block_count": Value(math.inf, VT.FLOAT64)}, "llama.block_count must be an integer, not float inf"),
        ({"llama.block_count": None}, "GGUF metadata lacks llama.block_count"),
        ({"llama.attention.head_count": u32(0)}, "llama.attention.head_count is 0, expected at least 1"),
        ({"llama.attention.head_count": Value("4", VT.STRING)}, "head_count must be an integer, not str '4'"),
        ({"llama.attention.head_count_kv": u32(0)}, "llama.attention.head_count_kv is 0, expected at least 1"),
        ({"llama.attention.head_count_kv": u32(3)}, "head_count_kv 3 does not divide llama.attention.head_count 4"),
        ({"llama.attention.head_count_kv": u32(4)}, "llama.attention.head_count_kv is 4: 4 heads of 16 make 64 rows, but blk.0.attn_k.weight has 32"),
        ({"llama.attention.head_count": u32(2)}, "llama.attention.head_count is 2: 2 heads of 16 make 32 rows"),
        ({"llama.attention.head_count": u32(3), "llama.rope.dimension_count": None}, "head_count 3 does not divide llama.embedding_length 64"),
        ({"llama.rope.dimension_count": u32(15)}, "the head size 15 (llama.rope.dimension_count) is odd"),
        ({"llama.embedding_length": u32(128)}, "llama.embedding_length is 128 but token_embd.weight is 64 wide"),
        ({"llama.feed_forward_length": u32(2**20)}, "llama.feed_forward_length is 1048576 but blk.0.ffn_gate.weight has 96 rows"),
        ({"llama.context_length": u32(0)}, "llama.context_length is 0, expected at least 1"),
        ({"llama.context_length": u32(2**20 + 1)}, "llama.context_length is 1048577, over nlpkit's limit of 1048576"),
        ({"llama.context_length": u32(2**20), "llama.rope.dimension_count": u32(256)}, "llama.context_length 1048576 x the head size 256 is over nlpkit's limit of 134217728 rotary table entries"),
        ({"llama.rope.freq_base": f32(math.nan)}, "llama.rope.freq_base is nan, expected a finite number of at least 1"),
        ({"llama.rope.freq_base": f32(-math.inf)}, "llama.rope.freq_base is -inf"),
        ({"llama.rope.freq_base": f32(0.0)}, "llama.rope.freq_base is 0.0"),
        ({"llama.attention.layer_norm_rms_epsilon": f32(math.nan)}, "layer_norm_rms_epsilon is nan, expected a finite number above 0"),
        ({"llama.attention.layer_norm_rms_epsilon": f32(0.0)}, "layer_norm_rms_epsilon is 0.0"),
        ({"llama.attention.layer_norm_rms_epsilon": Value(True, VT.BOOL)}, "must be a number, not bool True"),
        ({"llama.vocab_size": u32(420)}, "llama.vocab_size is 420 but tokenizer.ggml.tokens holds 421 tokens"),
        ({"llama.vocab_size": u32(0)}, "llama.vocab_size is 0, expected at least 1"),
        ({"tokenizer.ggml.tokens": u32(5), "llama.vocab_size": None}, "tokenizer.ggml.tokens must be an array of strings, not int 5"),
        ({"llama.rope.scaling.type": Value([1, 2], VT.ARRAY, VT.INT32)}, "llama.rope.scaling.type must be a string, not ndarray"),
        ({"general.architecture": Value([1, 2], VT.ARRAY, VT.INT32)}, "GGUF architecture ndarray array([1, 2], dtype=int32) is not supported"),
        ({"tokenizer.ggml.model": Value([1, 2], VT.ARRAY, VT.INT32)}, "unsupported GGUF tokenizer model 'ndarray'"),
        ({"tokenizer.ggml.pre": Value([1, 2], VT.ARRAY, VT.INT32)}, "tokenizer.ggml.pre must be a string, not ndarray"),
    ],
)  # fmt: skip
def test_each_bad_value_is_a_data_error_naming_it(
    reference: Reference, tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    gg = write_variant(reference, tmp_path / "bad.gguf", changes)
    with pytest.raises(DataError) as e:
        gguf_to_folder(gg, tmp_path / "m")
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not (tmp_path / "m").exists()  # checked before anything was written


def test_a_token_list_longer_than_the_embedding_is_refused(reference: Reference, tmp_path: Path) -> None:
    meta = reference[0]
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta["tokenizer.ggml.token_type"]
    changes = {
        "tokenizer.ggml.tokens": Value([*tokens.value, "extra"], VT.ARRAY, VT.STRING),
        "tokenizer.ggml.token_type": Value([*types.value, 1], VT.ARRAY, VT.INT32),
        "llama.vocab_size": None,
    }
    gg = write_variant(reference, tmp_path / "bad.gguf", changes)
    with pytest.raises(DataError, match="tokens holds 422 tokens but token_embd.weight has 421 rows"):
        gguf_to_folder(gg, tmp_path / "m")


def test_generate_on_a_gguf_with_no_context_is_exit_65(runner, reference: Reference, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """It used to convert (exit 0) and then fail, or complete nothing with exit 0."""
    gg = write_variant(reference, tmp_path / "ctx0.gguf", {"llama.context_length": u32(0)})
    res = runner.invoke(app, ["generate", str(gg), "hello", "-n", "2", "--device", "cpu"])
    assert res.exit_code == 65, res.output
    assert "llama.context_length is 0" in res.stderr and "Traceback" not in res.stderr


def test_layer_numbers_are_plain_ascii_without_leading_zeros() -> None:
    assert hf_name("blk.10.attn_q.weight") == "model.layers.10.self_attn.q_proj.weight"
    for odd in (
        "blk.01.attn_q.weight",
        "blk.\u0661.attn_q.weight",
        "blk.\u00b2.attn_q.weight",
        "blk.-1.ffn_up.weight",
    ):
        assert hf_name(odd) is None  # "unknown tensor", not a second layer 1 (or a ValueError)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_head": 0},
        {"n_kv_head": 0},
        {"n_kv_head": -2},
        {"head_dim": 0},
        {"intermediate_size": -1},
        {"n_layer": True},
        {"rope_theta": math.nan},
        {"rope_theta": math.inf},
        {"rope_theta": 0.5},
        {"rope_theta": "10000"},
        {"norm_eps": math.nan},
        {"norm_eps": 0.0},
        {"norm_eps": -1e-5},
        {"block_size": 1 << 20, "head_dim": 4096, "n_head": 1},  # 2**32 rotary table entries
    ],
)
def test_model_config_refuses_zero_heads_and_nonfinite_floats(kwargs: dict[str, Any]) -> None:
    with pytest.raises(UsageError) as e:
        ModelConfig(arch="llama", **kwargs)
    assert "\n" not in str(e.value)


def test_config_json_with_nan_is_a_data_error() -> None:
    good = ModelConfig(arch="llama").to_hf()
    ModelConfig.from_hf(good)
    for key, value in (("rope_theta", math.nan), ("rms_norm_eps", math.inf), ("num_key_value_heads", 0)):
        bad = json.loads(json.dumps(good | {key: value}))  # json writes and reads NaN and Infinity
        with pytest.raises(DataError, match="invalid model config"):
            ModelConfig.from_hf(bad)


# --------------------------------------------------------------------------- property

_COUNT_KEYS = [
    "llama.block_count",
    "llama.context_length",
    "llama.embedding_length",
    "llama.feed_forward_length",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.rope.dimension_count",
    "llama.vocab_size",
]
_FLOAT_KEYS = ["llama.rope.freq_base", "llama.attention.layer_norm_rms_epsilon"]
# the reference model's own values among the hostile ones, so that some examples convert
_NEAR = [0, 1, 2, 3, 4, 8, 16, 32, 64, 96, 421, 2**20, 2**20 + 1, 10**9, 2**31 - 1, 2**32 - 1]

typed_values = st.one_of(
    st.none(),  # the key left out
    st.sampled_from(_NEAR).map(u32),
    st.integers(0, 2**32 - 1).map(u32),
    st.integers(-(2**31), -1).map(lambda v: Value(v, VT.INT32)),
    st.integers(0, 2**64 - 1).map(lambda v: Value(v, VT.UINT64)),
    st.integers(-(2**63), 2**63 - 1).map(lambda v: Value(v, VT.INT64)),
    st.floats(width=32).map(f32),  # nan, inf, -0.0, subnormals, 3.4e38
    st.floats().map(lambda v: Value(v, VT.FLOAT64)),
    st.booleans().map(lambda v: Value(v, VT.BOOL)),
    st.text(max_size=6).map(lambda v: Value(v, VT.STRING)),
    st.lists(st.integers(0, 99), min_size=1, max_size=3).map(lambda v: Value(v, VT.ARRAY, VT.INT32)),
)
hostile_changes = st.dictionaries(
    st.sampled_from(_COUNT_KEYS + _FLOAT_KEYS), typed_values, min_size=1, max_size=3
)


def _any_int_type(v: int) -> Any:
    return st.sampled_from([u32(v), Value(v, VT.UINT64), Value(v, VT.INT32), Value(v, VT.INT64)])


# values in range, in any type that holds them: these convert, and the folder must load and compute
plausible_changes = st.fixed_dictionaries(
    {},
    optional={
        "llama.context_length": st.integers(1, 2**20).flatmap(_any_int_type),
        "llama.rope.freq_base": st.one_of(
            st.floats(1.0, width=32, allow_infinity=False).map(f32),
            st.floats(1.0, 1e300).map(lambda v: Value(v, VT.FLOAT64)),
            st.integers(1, 2**32 - 1).map(u32),
            st.none(),  # 10000
        ),
        "llama.attention.layer_norm_rms_epsilon": st.one_of(
            st.floats(0.0, exclude_min=True, width=32, allow_infinity=False).map(f32),
            st.floats(0.0, 1e300, exclude_min=True).map(lambda v: Value(v, VT.FLOAT64)),
        ),
        "llama.rope.dimension_count": st.one_of(st.none(), _any_int_type(16)),  # None: 64 / 4 heads
        "llama.vocab_size": st.one_of(st.none(), _any_int_type(421)),  # None: the token list's length
        "llama.attention.head_count_kv": _any_int_type(2),
    },
)
metadata_changes = st.one_of(hostile_changes, plausible_changes)


@settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(changes=metadata_changes)
def test_random_metadata_converts_to_a_loadable_model_or_fails_cleanly(
    reference: Reference, tmp_path: Path, changes: dict[str, Any]
) -> None:
    here = Path(tempfile.mkdtemp(dir=tmp_path))
    gg = write_variant(reference, here / "x.gguf", changes)
    with memory_headroom(GiB):  # a MemoryError fails the test; the machine is left alone
        try:
            cfg = gguf_to_folder(gg, here / "m")
        except NlpkitError as e:
            event(
                f"{type(e).__name__}: {str(e).split(': ', 1)[1].split(' ')[0]}"
            )  # --hypothesis-show-statistics
            assert "\n" not in str(e)
            assert not (here / "m").exists()
            return
        event("converted")
        gen = Generator.load(here / "m", "cpu")  # what converted loads, and computes numbers
        with torch.inference_mode():
            logits = gen.model(torch.tensor([[5, 9, 33, 2][: cfg["max_position_embeddings"]]]))[0]
    assert torch.isfinite(logits).all()
