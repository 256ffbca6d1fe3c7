"""Compile, for sm_90 (H100/H200) and without a GPU, every kernel specialisation the engine launches:
TTIR -> PTX -> cubin. The specialisations are the ones recorded from a run of the engine's GPU path
(tests/kernels/launches.json, written by tests/kernels/record_launches.py), not a hand-written list.

The interpreter does not type-check like the compiler (loop-carried types, constexpr globals, ...),
so CPU-only CI runs this in a subprocess with TRITON_INTERPRET unset. `python tests/kernels/sm90_compile.py -v`
also runs ptxas -v and fails on register spills.
"""
import importlib
import json
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

LAUNCHES = os.path.join(os.path.dirname(__file__), "launches.json")


def variants():
    """(name, kernel, signature with "constexpr" entries, constexprs, options) per recorded launch."""
    with open(LAUNCHES) as f:
        launches = json.load(f)
    for i, r in enumerate(launches):
        mod, _, fn = r["kernel"].rpartition(".")
        kernel = getattr(importlib.import_module(mod), fn)
        sig = {n: ("constexpr" if n in r["constexprs"] else r["signature"][n]) for n in kernel.arg_names}
        name = f"{fn.strip('_')}#{i} " + ",".join(f"{k}={v}" for k, v in r["constexprs"].items())
        yield name, kernel, sig, r["constexprs"], r["options"]


def main(verbose=False):
    target = GPUTarget("cuda", 90, 32)
    failures = []
    for name, kernel, sig, constexprs, opts in variants():
        sampler = name.startswith(("fused_sample", "fuse_logprobs"))
        try:
            k = triton.compile(ASTSource(kernel, sig, constexprs=constexprs), target=target, options=opts)
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
