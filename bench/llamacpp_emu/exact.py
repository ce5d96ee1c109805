import numpy as np
f32 = np.float32
def f16(a): return np.asarray(a, np.float32).astype(np.float16).astype(np.float32)
def quant_q8_1_exact(x):
    """x (..., K) f32 -> d (f32, unrounded), d16, q int32 (..., nb, 32), s16"""
    b = np.asarray(x, np.float32).reshape(*x.shape[:-1], -1, 32)
    amax = np.abs(b).max(-1)
    d = (amax / f32(127)).astype(f32)
    with np.errstate(divide="ignore"):
        idd = np.where(amax != 0, f32(127) / amax, f32(0)).astype(f32)
    q = np.rint((b * idd[..., None]).astype(f32)).astype(np.int32)
    s = f16((d * q.sum(-1).astype(f32)).astype(f32))
    return d, f16(d), q, s
def vec_dot_q41_exact(dw, mw, qw, x, fma_summs=True):
    """dw, mw (O, nb) f32 (from f16); qw (O, nb, 32) int; x (T, K) f32 -> (T, O) as llama.cpp AVX2/VNNI kernel"""
    T = x.shape[0]; O, nb = dw.shape
    _, d16, qx, s16 = quant_q8_1_exact(x)   # (T, nb), (T, nb, 32)
    out = np.empty((T, O), np.float32)
    for t in range(T):
        acc = np.zeros((O, 8), np.float64)   # held as f32 values
        summs = np.zeros(O, np.float64)
        lanes = (qw * qx[t][None]).reshape(O, nb, 8, 4).sum(-1).astype(np.float64)  # (O, nb, 8) exact ints
        for ib in range(nb):
            d0d1 = (dw[:, ib] * d16[t, ib]).astype(f32).astype(np.float64)  # f32 product
            acc = (d0d1[:, None] * lanes[:, ib] + acc).astype(f32).astype(np.float64)   # fma: one rounding (via f64)
            if fma_summs:
                summs = (mw[:, ib].astype(np.float64) * float(s16[t, ib]) + summs).astype(f32).astype(np.float64)
            else:
                summs = (f32(1) * (mw[:, ib] * s16[t, ib]).astype(f32) + summs.astype(f32)).astype(f32).astype(np.float64)
        a = acc.astype(f32)
        r = (a[:, 4:] + a[:, :4]).astype(f32)          # lanes i, i+4
        r2 = np.stack([r[:, 0] + r[:, 2], r[:, 1] + r[:, 3]], 1).astype(f32)
        h = (r2[:, 0] + r2[:, 1]).astype(f32)
        out[t] = (h + summs.astype(f32)).astype(f32)
    return out

def _fma(a, b, c):
    """float32 fma emulated via float64 (exact product; one rounding of the sum, rare double-rounding)"""
    return (np.asarray(a, np.float64) * np.asarray(b, np.float64) + np.asarray(c, np.float64)).astype(f32)
def _h(s): return f32(float.fromhex(s))
def v_expf(x):
    """ggml_v_expf, AVX512 variant"""
    x = np.asarray(x, f32)
    r = _h("0x1.8p23")
    z = _fma(x, _h("0x1.715476p+0"), r)
    n = (z - r).astype(f32)
    b = _fma(-n, _h("0x1.7f7d1cp-20"), _fma(-n, _h("0x1.62e4p-1"), x))
    u = (b * b).astype(f32)
    j = _fma(_fma(_fma(_h("0x1.0e4020p-7"), b, _h("0x1.573e2ep-5")), u, _fma(_h("0x1.555e66p-3"), b, _h("0x1.fffdb6p-2"))),
             u, _fma(_h("0x1.ffffecp-1"), b, f32(1.0)))
    with np.errstate(over="ignore", invalid="ignore"):
        res = np.ldexp(j, np.where(np.isfinite(n), n, 0).astype(np.int64)).astype(f32)   # scalef(j, n)
        big = np.abs(n) > 192
        alt = np.where(n <= 0, f32(0), f32(np.inf))
        res = np.where(big, alt, res).astype(f32)
    return res
def v_silu(x):
    x = np.asarray(x, f32)
    e = v_expf((f32(0) - x).astype(f32))
    return (x / (f32(1) + e).astype(f32)).astype(f32)

import ctypes, ctypes.util
_m = ctypes.CDLL(ctypes.util.find_library("m"))
for _n in ("cosf", "sinf", "powf"):
    getattr(_m, _n).restype = ctypes.c_float
_m.cosf.argtypes = [ctypes.c_float]; _m.sinf.argtypes = [ctypes.c_float]; _m.powf.argtypes = [ctypes.c_float, ctypes.c_float]
_rope_cache = {}
def rope_cache(pos, n_dims=64, base=100000.0):
    if pos in _rope_cache: return _rope_cache[pos]
    ts = f32(_m.powf(f32(base), f32(-2.0) / f32(n_dims)))
    th = f32(pos); c = np.empty(n_dims // 2, f32); s = np.empty(n_dims // 2, f32)
    for i in range(n_dims // 2):
        c[i] = _m.cosf(th); s[i] = _m.sinf(th)
        th = f32(th * ts)
    _rope_cache[pos] = (c, s); return c, s
def rope_exact(x, positions, variant=0):
    """x (T, nh, 64) f32, NORM mode (adjacent pairs)"""
    out = np.empty_like(x)
    for t, p in enumerate(positions):
        c, s = rope_cache(p)
        x0 = x[t, :, 0::2]; x1 = x[t, :, 1::2]
        if variant == 0:   # fma(x0, c, -(x1*s)), fma(x0, s, x1*c)
            out[t, :, 0::2] = _fma(x0, c, -(x1 * s).astype(f32)); out[t, :, 1::2] = _fma(x0, s, (x1 * c).astype(f32))
        elif variant == 1:  # fma(-x1, s, x0*c), fma(x1, c, x0*s)
            out[t, :, 0::2] = _fma(-x1, s, (x0 * c).astype(f32)); out[t, :, 1::2] = _fma(x1, c, (x0 * s).astype(f32))
        else:
            out[t, :, 0::2] = ((x0 * c).astype(f32) - (x1 * s).astype(f32)); out[t, :, 1::2] = ((x0 * s).astype(f32) + (x1 * c).astype(f32))
    return out

def reduce16(v):
    """GCC _mm512_reduce_add_ps over last axis (16)"""
    v = np.asarray(v, f32)
    t3 = (v[..., 8:] + v[..., :8]).astype(f32)
    t6 = (t3[..., 4:] + t3[..., :4]).astype(f32)
    t8a = (t6[..., 0] + t6[..., 2]).astype(f32); t8b = (t6[..., 1] + t6[..., 3]).astype(f32)
    return (t8a + t8b).astype(f32)
def dot_f16(a, b, order="tinyblas"):
    """a (..., K) f16-valued f32, b (..., K) broadcastable; returns (...) f32"""
    a = np.asarray(a, f32); b = np.asarray(b, f32)
    K = a.shape[-1] if a.shape[-1] == b.shape[-1] else None
    p = (a * b).astype(f32)   # exact
    if order == "tinyblas":
        pr = p.reshape(*p.shape[:-1], K // 16, 16)
        acc = np.zeros(pr.shape[:-2] + (16,), f32)
        for i in range(K // 16): acc = (acc + pr[..., i, :]).astype(f32)
        return reduce16(acc)
    else:  # ggml_vec_dot_f16, AVX512: 4 x 16 accumulators, step 64
        pr = p.reshape(*p.shape[:-1], K // 64, 4, 16)
        acc = np.zeros(pr.shape[:-3] + (4, 16), f32)
        for i in range(K // 64): acc = (acc + pr[..., i, :, :]).astype(f32)
        s0 = (acc[..., 0, :] + acc[..., 2, :]).astype(f32); s1 = (acc[..., 1, :] + acc[..., 3, :]).astype(f32)
        return reduce16((s0 + s1).astype(f32))
