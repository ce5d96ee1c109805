import numpy as np
from gguf import GGUFReader
import os
from pathlib import Path

P = os.environ.get("NLPKIT_GGUF") or str(next((Path(os.environ.get("NLPKIT_HOME", Path.home() / ".cache" / "nlpkit")) / "models" / "smollm2-135m-instruct").glob("*.gguf")))
_r = GGUFReader(P)
T = {t.name: t for t in _r.tensors}
def q41(name):
    t = T[name]; raw = np.asarray(t.data).view(np.uint8)
    nout = int(t.shape[1]); nin = int(t.shape[0])
    b = raw.reshape(nout, nin // 32, 20)
    d = b[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    m = b[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    qs = b[..., 4:]
    q = np.concatenate([qs & 15, qs >> 4], -1).astype(np.int32)  # (nout, nb, 32)
    return d, m, q
def q80(name):
    t = T[name]; raw = np.asarray(t.data).view(np.uint8)
    nout = int(t.shape[1]); nin = int(t.shape[0])
    b = raw.reshape(nout, nin // 32, 34)
    d = b[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    q = b[..., 2:].copy().view(np.int8).astype(np.int32)
    return d, q
def quant_q8_1(x, recip=True):
    b = x.reshape(-1, 32).astype(np.float32)
    amax = np.abs(b).max(-1)
    d = (amax / np.float32(127)).astype(np.float32)
    if recip:
        idd = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
        q = np.rint(b * idd[:, None])
    else:
        q = np.rint(np.where(d[:, None] > 0, b / np.where(d > 0, d, 1)[:, None], 0))
    q = q.astype(np.int32)
    s = (d * q.sum(-1).astype(np.float32)).astype(np.float32)
    return d, q, s
def f16(a): return np.asarray(a, np.float32).astype(np.float16).astype(np.float32)
