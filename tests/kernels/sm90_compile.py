"""Compile every kernel specialisation we launch for sm_90 (H100) without a GPU: TTIR -> PTX -> cubin.

The interpreter does not type-check like the compiler (loop-carried types, constexpr globals, ...),
so CPU-only CI runs this in a subprocess with TRITON_INTERPRET unset. `python tests/kernels/sm90_compile.py -v`
also runs ptxas -v and fails on register spills.
"""
import os
import re
import subprocess
import sys
import tempfile

assert os.environ.get("TRITON_INTERPRET", "0") != "1", "run without TRITON_INTERPRET"
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from kernels import fused_sampling, kv_write, paged_attention, spec_verify, step_scoring  # noqa: E402


def _sig(kernel, types, constexprs):
    sig = {}
    for n in kernel.arg_names:
        if n in constexprs:
            sig[n] = "constexpr"
        elif n in types:
            sig[n] = types[n]
        elif n.endswith("_ptr"):
            sig[n] = "*fp32"
        else:
            sig[n] = "i32"  # strides, sizes
    return sig


def variants():
    bf = "*bf16"
    yield "store_kv", kv_write._store_kv_kernel, {"k_ptr": bf, "v_ptr": bf, "kc_ptr": bf, "vc_ptr": bf, "slot_ptr": "*i64"}, \
        dict(BLOCK_H=2, BLOCK_D=64), 1
    pa = {"q_ptr": bf, "kc_ptr": bf, "vc_ptr": bf, "o_ptr": bf, "bt_ptr": "*i32", "sl_ptr": "*i32", "cu_ptr": "*i32",
          "qk_scale": "fp32", "lse_ptr": "*fp32"}
    for name, c in [("decode_0.5b", dict(GROUP=7, GROUP_PAD=8, BLOCK_Q=2, BLOCK_M=16, BLOCK_N=64, BLOCK_D=64)),
                    ("decode_1.5b", dict(GROUP=6, GROUP_PAD=8, BLOCK_Q=2, BLOCK_M=16, BLOCK_N=32, BLOCK_D=128)),
                    ("extend_0.5b", dict(GROUP=7, GROUP_PAD=8, BLOCK_Q=8, BLOCK_M=64, BLOCK_N=64, BLOCK_D=64)),
                    ("extend_1.5b", dict(GROUP=6, GROUP_PAD=8, BLOCK_Q=8, BLOCK_M=64, BLOCK_N=32, BLOCK_D=128)),
                    ("decode_mha", dict(GROUP=1, GROUP_PAD=1, BLOCK_Q=16, BLOCK_M=16, BLOCK_N=64, BLOCK_D=64))]:
        yield f"paged_attention_{name}", paged_attention._paged_attn_kernel, pa, dict(c, UPCAST=False, DOT_PREC="tf32"), 8
    casc = dict(GROUP=7, GROUP_PAD=8, BLOCK_Q=8, BLOCK_M=64, BLOCK_N=64, BLOCK_D=64, UPCAST=False, DOT_PREC="tf32")
    yield "paged_attention_split_decode", paged_attention._paged_attn_kernel, dict(pa, o_ptr="*fp32"), \
        dict(casc, BLOCK_Q=2, BLOCK_M=16, WRITE_LSE=True), 8
    yield "merge_splits", paged_attention._merge_splits_kernel, {"out_ptr": bf}, dict(BLOCK_S=64, BLOCK_D=128), 4
    f32 = {k: ("*fp32" if v == bf else v) for k, v in pa.items()}
    yield "paged_attention_fp32", paged_attention._paged_attn_kernel, f32, dict(
        GROUP=2, GROUP_PAD=2, BLOCK_Q=8, BLOCK_M=16, BLOCK_N=64, BLOCK_D=64, UPCAST=False, DOT_PREC="ieee"), 8
    for judge in (False, True):
        yield f"step_rewards_judge={judge}", step_scoring._step_rewards_kernel, {"s_ptr": bf, "rows_ptr": "*i64"}, \
            dict(JUDGE=judge, BLOCK_V=4096), 4
    fs = {"slm_ptr": bf, "llm_ptr": bf, "base_ptr": bf, "topk_ptr": "*i32", "out_ptr": "*i64"}
    for rule in range(3):
        yield f"fused_sample_rule{rule}", fused_sampling._fused_sample_kernel, fs, dict(RULE=rule, HAS_NOISE=True, BLOCK_V=1024, NB=16), 8
        if rule:
            yield f"fuse_logprobs_rule{rule}", fused_sampling._fuse_logprobs_kernel, fs, dict(RULE=rule, BLOCK_V=1024), 8
    yield "fused_sample_nonoise", fused_sampling._fused_sample_kernel, fs, dict(RULE=0, HAS_NOISE=False, BLOCK_V=1024, NB=16), 8
    yield "spec_verify", spec_verify._spec_verify_kernel, {"draft_ptr": "*i64", "lens_ptr": "*i32", "out_ptr": "*i64",
                                                           "acc_len_ptr": "*i32"}, dict(BLOCK_K=4, BLOCK_V=2048), 4


def main(verbose=False):
    target = GPUTarget("cuda", 90, 32)
    failures = []
    for name, kernel, types, constexprs, warps in variants():
        sampler = name.startswith(("fused_sample", "fuse_logprobs"))
        opts = {"num_warps": warps, "enable_fp_fusion": False} if sampler else {"num_warps": warps}
        try:
            k = triton.compile(ASTSource(kernel, _sig(kernel, types, constexprs), constexprs=constexprs),
                               target=target, options=opts)
        except Exception as e:  # report all, fail at the end
            failures.append(name)
            print(f"FAIL {name}: {type(e).__name__}: {str(e)[:2000]}")
            continue
        line = f"ok   {name}"
        if sampler and ("fma.rn.f32" in k.asm["ptx"] or "div.full.f32" in k.asm["ptx"]):
            # Bit-identical tokens vs torch need plain IEEE mul/add/div (launch_opts disables fusion).
            failures.append(name)
            line = f"FAIL (fma/approx div in PTX) {name}"
        if verbose:
            ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas-blackwell")  # newest PTX ISA
            with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
                f.write(k.asm["ptx"])
            info = subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", f.name, "-o", os.devnull],
                                  capture_output=True, text=True).stderr
            regs = re.findall(r"Used (\d+) registers", info)
            spill = re.findall(r"(\d+) bytes spill stores", info)
            line += f"  regs={regs} spill_stores={spill} smem={k.metadata.shared}"
            if any(int(x) > 0 for x in spill):  # launched configs are chosen to fit in registers
                failures.append(name)
                line = "FAIL (spills)" + line[4:]
        print(line, flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(verbose="-v" in sys.argv))
