"""Bit-level emulation (torch, CPU) of llama.cpp's CPU forward for a Q4_1 GGUF (llama arch, Q8_0 token embd tied)."""
import numpy as np, torch, sys
sys.path.insert(0, __import__("os").path.dirname(__file__))
from kern import q41, q80, T as GT
from exact import rope_cache
torch.set_num_threads(2)
F32, F64 = torch.float32, torch.float64
def f16(t): return t.to(torch.float16).to(F32)
def div(a, b): return (torch.as_tensor(a).to(F64) / torch.as_tensor(b).to(F64)).to(F32)   # correctly rounded f32 division
def fma(a, b, c): return (a.to(F64) * b.to(F64) + c.to(F64)).to(F32)   # exact product, one rounding (double-rounding rare)

def quant_q8_1(x):
    """llama.cpp quantize_row_q8_1 (AVX2 path): x (N, K) f32 -> q (N, nb, 32) int-valued f32, d16 (N, nb), s16 (N, nb)"""
    b = x.reshape(x.shape[0], -1, 32)
    amax = b.abs().amax(-1)
    d = div(amax, 127.0)
    idd = torch.where(amax != 0, div(127.0, torch.where(amax != 0, amax, torch.ones_like(amax))), torch.zeros_like(amax))
    q = torch.round(b * idd[..., None])              # RNE, like _mm256_round_ps(_MM_ROUND_NEAREST)
    s = f16(d * q.sum(-1))                           # s = fp16(d * sum(q)), d NOT rounded first
    return q, f16(d), s

class Q41:
    def __init__(self, name):
        d, m, q = q41(name)
        self.d = torch.from_numpy(d); self.m = torch.from_numpy(m)        # (O, nb) f16 values
        self.q = torch.from_numpy(q.astype(np.float32))                    # (O, nb, 32) 0..15
        O, nb, _ = self.q.shape
        self.qg = self.q.reshape(O, nb * 8, 4).permute(1, 2, 0).contiguous()   # (G, 4, O)
    def __call__(self, x):
        """ggml_vec_dot_q4_1_q8_1, AVX2/VNNI: acc[8 lanes] = fma(d_w*d_x, lane_isum, acc) per block; hsum_float_8(acc) + summs"""
        N = x.shape[0]; O, nb, _ = self.q.shape
        qx, dx, sx = quant_q8_1(x)
        lanes = torch.bmm(qx.reshape(N, nb * 8, 4).transpose(0, 1), self.qg)   # (G, N, O) exact ints
        lanes = lanes.reshape(nb, 8, N, O)
        acc = torch.zeros(8, N, O, dtype=F32); summs = torch.zeros(N, O, dtype=F32)
        for ib in range(nb):
            d0d1 = (self.d[None, :, ib] * dx[:, ib, None])                      # (N, O) f32 product
            acc = fma(d0d1[None], lanes[ib], acc)
            summs = fma(self.m[None, :, ib], sx[:, ib, None], summs)           # gcc contracts summs += m*s
        r = acc[4:] + acc[:4]
        h = (r[0] + r[2]) + (r[1] + r[3])
        return h + summs

def reduce16(v):  # GCC _mm512_reduce_add_ps over the last axis
    t3 = v[..., 8:] + v[..., :8]; t6 = t3[..., 4:] + t3[..., :4]
    return (t6[..., 0] + t6[..., 2]) + (t6[..., 1] + t6[..., 3])
def dot_f16_tinyblas(a, b):
    """llamafile tinyBLAS f16 (AVX512): a (..., M, K), b (..., N, K) f16-valued -> (..., M, N); lane l sums k = l mod 16 in order"""
    K = a.shape[-1]
    acc = None
    for i in range(K // 16):
        p = a[..., None, :, i*16:(i+1)*16] * b[..., :, None, i*16:(i+1)*16]   # (..., N, M, 16) exact products
        acc = p if acc is None else acc + p
    return reduce16(acc).transpose(-1, -2)
def dot_f16_vecdot(a, b):
    """ggml_vec_dot_f16 (AVX512: 4 x 16-lane accumulators, step 64; reduce sum[0]+sum[2], sum[1]+sum[3], then +, then reduce_add)"""
    K = a.shape[-1]; assert K % 64 == 0
    acc = None
    for i in range(K // 64):
        p = a[..., None, :, i*64:(i+1)*64] * b[..., :, None, i*64:(i+1)*64]
        acc = p if acc is None else acc + p
    acc = acc.reshape(*acc.shape[:-1], 4, 16)
    s = (acc[..., 0, :] + acc[..., 2, :]) + (acc[..., 1, :] + acc[..., 3, :])
    return reduce16(s).transpose(-1, -2)
def v_expf(x):
    r = torch.tensor(float.fromhex("0x1.8p23"), dtype=F32)
    C = lambda s: torch.tensor(float.fromhex(s), dtype=F32)
    z = fma(x, C("0x1.715476p+0"), r); n = z - r
    b = fma(-n, C("0x1.7f7d1cp-20"), fma(-n, C("0x1.62e4p-1"), x))
    u = b * b
    j = fma(fma(fma(C("0x1.0e4020p-7"), b, C("0x1.573e2ep-5")), u, fma(C("0x1.555e66p-3"), b, C("0x1.fffdb6p-2"))),
            u, fma(C("0x1.ffffecp-1"), b, torch.tensor(1.0)))
    nn_ = torch.where(torch.isfinite(n), n, torch.zeros_like(n))
    res = torch.ldexp(j.to(F64), nn_.to(F64)).to(F32)
    big = n.abs() > 192
    return torch.where(big, torch.where(n <= 0, torch.zeros_like(n), torch.full_like(n, float("inf"))), res)
def v_silu(x): return div(x, 1 + v_expf(0 - x))
def rms(x, w, eps=1e-5):
    s = (x * x).to(F64).sum(-1, keepdim=True)
    mean = (s / x.shape[-1]).to(F32)
    scale = div(1.0, torch.sqrt((mean + torch.tensor(eps, dtype=F32)).to(F64)).to(F32))
    return (x * scale) * w
def rope(x, positions):  # x (T, nh, 64), NORM mode; gcc-contracted: fma(x0,c,-(x1*s)), fma(x0,s,x1*c)
    cs = [rope_cache(int(p)) for p in positions]
    c = torch.from_numpy(np.stack([a for a, _ in cs]))[:, None]; s = torch.from_numpy(np.stack([b for _, b in cs]))[:, None]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = fma(x0, c, -(x1 * s)); out[..., 1::2] = fma(x0, s, x1 * c)
    return out

NL, NH, NKV, HS = 30, 9, 3, 64
class LlamaCppEmu:
    def __init__(self):
        d, q = q80("token_embd.weight")
        self.emb = torch.from_numpy((d[..., None] * q).reshape(d.shape[0], -1).astype(np.float32))
        W = lambda n: torch.from_numpy(np.asarray(GT[n].data, np.float32).copy())
        self.L = [{k: Q41(f"blk.{i}.{k}.weight") for k in ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]}
                  | {"attn_norm": W(f"blk.{i}.attn_norm.weight"), "ffn_norm": W(f"blk.{i}.ffn_norm.weight")} for i in range(NL)]
        self.norm = W("output_norm.weight")
        self.reset()
    def reset(self):
        self.k = [torch.zeros(0, NKV, HS) for _ in range(NL)]; self.v = [torch.zeros(0, NKV, HS) for _ in range(NL)]; self.pos = 0
    def output(self, x):
        """Q8_0 x Q8_0 (activation quantized to Q8_0 per 32, d stored f16); summation order not emulated (no feedback)"""
        b = x.reshape(x.shape[0], -1, 32); amax = b.abs().amax(-1)
        idd = torch.where(amax != 0, div(127.0, torch.where(amax != 0, amax, torch.ones_like(amax))), torch.zeros_like(amax))
        xq = (torch.round(b * idd[..., None]) * f16(div(amax, 127.0))[..., None]).reshape(x.shape)
        return (xq.double() @ self.emb.double().T).float()
    @torch.inference_mode()
    def forward(self, ids, ref=None):
        def chk2(n, t, S):
            if ref is None or n not in ref: return
            r = torch.from_numpy(ref[n]).reshape(NH, t.shape[1], -1)[..., :S]; tt = t[..., :S]
            print(f'{n}: mismatch {int((tt != r).sum())}/{tt.numel()} maxdiff {float((tt - r).abs().max()):.3g}')
        chk = (lambda n, t: print(f'{n}: mismatch {int((t.reshape(-1) != torch.from_numpy(ref[n].reshape(-1))).sum())}/{t.numel()} maxdiff {float((t.reshape(-1) - torch.from_numpy(ref[n].reshape(-1))).abs().max()):.3g}') if ref is not None and n in ref and ref[n].size == t.numel() else None)
        T = len(ids); pos = range(self.pos, self.pos + T)
        x = self.emb[torch.tensor(ids)]
        S = self.pos + T; SP = (S + 63) // 64 * 64
        dot = dot_f16_tinyblas if T > 1 else dot_f16_vecdot
        mask = torch.full((T, SP), float("-inf"))
        for t in range(T): mask[t, : self.pos + t + 1] = 0
        for li, W in enumerate(self.L):
            h = rms(x, W["attn_norm"]); chk(f'attn_norm-{li}', h)
            q = rope(W["attn_q"](h).view(T, NH, HS), pos); k = rope(W["attn_k"](h).view(T, NKV, HS), pos); v = W["attn_v"](h).view(T, NKV, HS)
            self.k[li] = torch.cat([self.k[li], f16(k)]); self.v[li] = torch.cat([self.v[li], f16(v)])   # f16 KV cache
            K = torch.zeros(SP, NKV, HS); K[:S] = self.k[li]; V = torch.zeros(SP, NKV, HS); V[:S] = self.v[li]
            qh = f16(q).transpose(0, 1)                                            # (NH, T, 64): src1 converted to f16
            Kh = K.transpose(0, 1).repeat_interleave(NH // NKV, 0)                 # (NH, SP, 64)
            kq = dot(qh, Kh)                                          # (NH, T, SP)
            w = kq * 0.125 + mask                                                  # soft_max_ext(scale=1/8, f16 mask)
            e = v_expf(w - w.amax(-1, keepdim=True))
            ssum = reduce16(e.reshape(NH, T, SP // 16, 16)).to(F64).sum(-1, keepdim=True)   # double accumulation over 16-chunks
            p = e * (1.0 / ssum).to(F32)
            Vh = V.permute(1, 2, 0).repeat_interleave(NH // NKV, 0)               # (NH, 64, SP) transposed V cache
            o = dot(f16(p), Vh)                                       # (NH, T, 64)
            o = o.transpose(0, 1).reshape(T, NH * HS); chk2(f'kq-{li}', kq, S); chk2(f'kq_soft_max-{li}', p, S); chk(f'kqv_out-{li}', o)
            x = x + W["attn_output"](o)
            h = rms(x, W["ffn_norm"])
            x = x + W["ffn_down"](v_silu(W["ffn_gate"](h)) * W["ffn_up"](h))
        self.pos += T
        return self.output(rms(x, self.norm))
