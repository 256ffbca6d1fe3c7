"""bf16 linears on CPU: the plain `F.linear` (the baseline) against UpcastLinear, which copies the
weight into an fp32 scratch and multiplies in fp32 from UPCAST_MIN_ROWS rows on, in one process.
pack_linears picks UpcastLinear only where oneDNN has no bf16 kernels (AVX2-only CPUs); on others
this shows what it would cost there. The shape is the 1.5B demo model's MLP down projection.

    python -m pytest benchmarks/test_cpu_linear.py --benchmark-only
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python -m pytest ...   # an AVX2 CPU, emulated
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gboost.models.cpu_linear import UpcastLinear

N_OUT, N_IN = 1536, 8960


@pytest.fixture(scope="module")
def layer():
    lin = nn.Linear(N_IN, N_OUT, bias=False).to(torch.bfloat16)
    return lin, UpcastLinear([lin])


@pytest.mark.parametrize("rows", [1, 16, 64, 512])
@pytest.mark.parametrize("impl", ["plain", "upcast"])
def test_bf16_linear(benchmark, layer, impl, rows):
    lin, up = layer
    x = torch.randn(rows, N_IN).to(torch.bfloat16)
    fn = (lambda: F.linear(x, lin.weight)) if impl == "plain" else (lambda: up(x))
    with torch.no_grad():
        benchmark.pedantic(fn, rounds=5, warmup_rounds=1, iterations=1)
    med = benchmark.stats.stats.median
    benchmark.extra_info["ms"] = round(med * 1e3, 2)
    benchmark.extra_info["GFLOP/s"] = round(2 * rows * N_IN * N_OUT / med / 1e9, 1)
