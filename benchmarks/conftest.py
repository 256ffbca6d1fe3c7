"""Benchmark helpers: CUDA-synchronised timing, bytes-moved -> GB/s, a summary table at the end.

GPU benchmarks skip without CUDA (no `gpu` marker, so `pytest benchmarks/` runs them on a GPU box);
the CPU subset times the PyTorch references so `pytest benchmarks/` does something anywhere.
"""
import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
cuda_only = pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA (compiled Triton kernels)")
_ROWS = []


@pytest.fixture
def bench(benchmark, request):
    """bench(fn, bytes_moved) -> seconds per call. On CUDA also times with triton.testing.do_bench
    (CUDA events, L2 flushed between reps) and reports GB/s = bytes_moved / that time."""

    def run(fn, bytes_moved, inner=None):
        if HAS_CUDA and torch.cuda.is_initialized():
            import triton.testing

            fn()
            torch.cuda.synchronize()
            ms = triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")
            inner = inner or max(1, min(50, int(2.0 / max(ms, 1e-3))))

            def target():
                for _ in range(inner):
                    fn()
                torch.cuda.synchronize()

            benchmark.pedantic(target, rounds=10, warmup_rounds=2, iterations=1)
            sec = ms / 1e3
            benchmark.extra_info["wall_per_call_us"] = round(benchmark.stats.stats.median / inner * 1e6, 2)
        else:
            benchmark.pedantic(fn, rounds=3, warmup_rounds=1, iterations=1)
            sec = benchmark.stats.stats.median
        gbps = bytes_moved / sec / 1e9
        benchmark.extra_info["us"] = round(sec * 1e6, 2)
        benchmark.extra_info["GB/s"] = round(gbps, 1)
        benchmark.extra_info["bytes"] = int(bytes_moved)
        _ROWS.append((request.node.name, sec * 1e6, gbps))
        return sec

    return run


def pytest_terminal_summary(terminalreporter):
    if not _ROWS:
        return
    copy = next((g for n, _, g in _ROWS if n == "test_device_copy"), None)
    terminalreporter.write_sep("-", "kernel timings (median; GB/s = bytes moved / time"
                               + ("; % of the measured device copy)" if copy else ")"))
    for name, us, gbps in _ROWS:
        share = f" {100 * gbps / copy:>6.1f}% of copy" if copy else ""
        terminalreporter.write_line(f"{name:<90} {us:>12.1f} us {gbps:>9.1f} GB/s{share}")
