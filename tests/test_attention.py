"""`nlpkit attention`: weights that are probabilities over the visible tokens, records, pictures."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nlpkit.cli.main import app  # noqa: E402
from nlpkit.llm.attention import attention_weights  # noqa: E402
from tests.test_generate import make_folder  # noqa: E402

TEXT = "From fairest creatures we desire increase"


@pytest.fixture(scope="module")
def decoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("att") / "m", block_size=64)


def test_decoder_weights_are_causal_probabilities_and_match_the_model(decoder: Path) -> None:
    from nlpkit.lm.model import load_model

    w, tokens = attention_weights(str(decoder), TEXT)
    L, H, T, _ = w.shape
    assert T == len(tokens) == len(TEXT) and L == 1 and H == 2
    assert np.allclose(w.sum(-1), 1, atol=1e-5) and np.allclose(np.triu(w, 1), 0)
    # the model's own attention output is these weights applied to its values
    from nlpkit.lm.layers import Attention
    from nlpkit.text.tokenizer import load

    model, _ = load_model(decoder)
    attn = next(m for m in model.modules() if isinstance(m, Attention))
    seen: dict[str, Any] = {}
    attn.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    attn.register_forward_hook(lambda m, args, out: seen.update(y=out))
    ids = load(str(decoder)).encode(TEXT, add_special_tokens=False).ids
    with torch.inference_mode():
        model(torch.tensor([ids]))
        v = attn.v_proj(seen["x"]).view(1, T, attn.n_kv, attn.hs).transpose(1, 2)
        v = v.repeat_interleave(attn.n_head // attn.n_kv, 1)  # (1, nh, T, hs)
        y = torch.from_numpy(w[0])[None] @ v  # (1, nh, T, hs)
        y = attn.o_proj(y.transpose(1, 2).reshape(1, T, attn.n_head * attn.hs))
    assert torch.allclose(y, seen["y"], atol=1e-5)


def test_bert_weights_cover_every_token(tiny_bert: Path) -> None:
    w, tokens = attention_weights(str(tiny_bert), "a small test")
    assert w.shape[2] == w.shape[3] == len(tokens) and np.allclose(w.sum(-1), 1, atol=1e-5)
    assert (w > 0).all()  # an encoder sees both directions


def test_records_and_pictures(runner: Any, decoder: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["attention", str(decoder), TEXT, "--token", "w", "--layer", "0", "--head", "1"])
    assert r.exit_code == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert rows and all(x["from_token"] == "w" and x["layer"] == 0 and x["head"] == 1 for x in rows)
    assert abs(sum(x["weight"] for x in rows if x["from"] == rows[0]["from"]) - 1) < 1e-3
    for args, label in (([], "mean of 2 heads"), (["--token", "w"], "what 'w' attends to")):
        out = tmp_path / "a.svg"
        r = runner.invoke(app, ["attention", str(decoder), TEXT, *args, "-o", str(out)])
        assert r.exit_code == 0, r.stderr
        svg = ET.parse(out).getroot()
        texts = "".join(svg.itertext())
        assert label in texts and "F" in texts
    pytest.importorskip("matplotlib")
    png = tmp_path / "a.png"
    assert (
        runner.invoke(app, ["attention", str(decoder), TEXT, "--token", "w", "-o", str(png)]).exit_code == 0
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_requests(runner: Any, decoder: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["attention", str(decoder), TEXT, "--token", "zebra"])
    assert r.exit_code == 2 and "no token 'zebra'" in r.stderr
    r = runner.invoke(app, ["attention", str(decoder), TEXT, "--layer", "5"])
    assert r.exit_code == 2 and "--layer 5 is out of range" in r.stderr
    r = runner.invoke(app, ["attention", str(decoder), TEXT, "-o", str(tmp_path / "a.txt")])
    assert r.exit_code == 2
