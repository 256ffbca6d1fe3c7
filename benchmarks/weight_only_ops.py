"""Torch's CPU weight-only matmuls (_weight_int8pack_mm per channel, _weight_int4pack_mm_for_cpu in
groups of 32) against the engine's bf16 linear (oneDNN-packed, or upcast on AVX2-only CPUs) on the
demo 0.5B's shapes, 1 and 8 rows; err4: the int4 product against a float64 product of the same
dequantized weight. Issue 35's first measurement: python benchmarks/weight_only_ops.py"""
import time

import torch
from torch import nn

from gboost.models.cpu_linear import PackedLinear, UpcastLinear, can_pack

torch.manual_seed(0)


def t(f, n=50):
    """Mean milliseconds of f() over n calls after 5 warm-ups."""
    for _ in range(5): f()
    t0=time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter()-t0)/n*1e3


for (N,K) in [(4864,896),(896,4864),(1152,896),(151936,896)]:
    lin=nn.Linear(K,N,bias=False).to(torch.bfloat16)
    w=lin.weight.detach()
    for M in (1,8):
        x=torch.randn(M,K,dtype=torch.bfloat16)
        pk=PackedLinear([lin]) if can_pack(w) else UpcastLinear([lin])
        tb=t(lambda: pk(x))
        # int8 per channel
        s=(w.float().abs().amax(1)/127).clamp_min(1e-8)
        q=(w.float()/s[:,None]).round().clamp(-128,127).to(torch.int8)
        t8=t(lambda: torch._weight_int8pack_mm(x,q,s.to(torch.bfloat16)))
        # int4 g32
        g=32
        wf=w.float().view(N,K//g,g); mn=wf.amin(-1); mx=wf.amax(-1)
        sc=((mx-mn)/15).clamp_min(1e-8); qq=((wf-mn[...,None])/sc[...,None]).round().clamp(0,15).to(torch.int32).view(N,K)
        zero=mn+8*sc
        sz=torch.stack([sc,zero],-1).transpose(0,1).contiguous().to(torch.bfloat16)  # [K/g, N, 2]
        packed=torch._convert_weight_to_int4pack_for_cpu(qq,1)
        t4=t(lambda: torch._weight_int4pack_mm_for_cpu(x,packed,g,sz))
        ref=(x.double()@w.double().T)
        y4=torch._weight_int4pack_mm_for_cpu(x,packed,g,sz).double()
        deq=((qq.view(N,K//g,g).float()-8)*sc[...,None]+zero[...,None]).view(N,K)
        ref4=x.double()@deq.double().T
        print(N,K,M,f"bf16 {tb:.3f}ms int8 {t8:.3f}ms int4 {t4:.3f}ms  err4 {(y4-ref4).abs().max():.3g} scale {ref.abs().max():.3g}")
