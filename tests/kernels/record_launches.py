"""Record the kernel launches the engine makes on a GPU, from a CPU run, into tests/kernels/launches.json
(the specialisations tests/kernels/sm90_compile.py compiles for sm_90).

The engine runs on the stand-in CUDA device of tests/fake_cuda.py, so every GPU branch is taken
(Triton sampler, fused exact-collab sampling, speculative verification, both fusion rules, judge and
token-pair PRMs, split-KV decoding with an H100/H200's 132 SMs); the launches run under Triton's interpreter on the
CPU data and are recorded as a compiled launch makes them (kernels/_common.launch). The models have
the demo pair's attention geometry and vocabulary (0.5B: 14 query / 2 KV heads of 64; 1.5B: 12 / 2
of 128; 151,936 tokens) with one narrow layer, in bf16 (the GPU default), plus one fp32 generate.

Run after changing a kernel or its launch parameters:  python tests/kernels/record_launches.py
"""
import asyncio
import json
import os
import sys
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parents[1])]

import torch  # noqa: E402

import gboost.testing as testing  # noqa: E402
import gboost.kernels.paged_attention as pa  # noqa: E402
from gboost.sampling import SamplingParams  # noqa: E402
from gboost.collab.executor import CollabOptions  # noqa: E402
from gboost.search.api import solve  # noqa: E402
from gboost.search.config import SearchConfig  # noqa: E402
from gboost.prm.scorer import PRMScorer, PRMSpec  # noqa: E402
from fake_cuda import checked_launch, fake_cuda, kernel_launchers, to_fake_cuda  # noqa: E402
from gboost.kernels._common import record_launches  # noqa: E402

OUT = HERE / "launches.json"
VOCAB = 151936
SLM = dict(vocab=VOCAB, hidden=64, heads=14, kv_heads=2, head_dim=64, layers=1, max_positions=2048)  # 0.5B geometry
LLM = dict(vocab=VOCAB, hidden=64, heads=12, kv_heads=2, head_dim=128, layers=1, max_positions=2048)  # 1.5B geometry
def _patch():
    for mod, name in kernel_launchers():
        setattr(mod, name, checked_launch(getattr(mod, name), name))
    make = testing.tiny_model
    testing.tiny_model = lambda *a, **k: to_fake_cuda(make(*a, **k))
    pa._num_sms = lambda device: 132  # an H100/H200: decode batches of long contexts split their keys


def _configs():
    return {"slm": testing.tiny_config(**SLM), "llm": testing.tiny_config(**LLM), "prm": testing.tiny_config(**LLM)}


async def _proxy_steps():
    # fusion_rule = "proxy" (with the SLM's base model resident): one collaborative step per mode
    from gboost.llm.local import LocalLLM
    from gboost.scheduler import Scheduler
    from gboost.collab.executor import EngineExecutor
    cfg = SearchConfig(max_step_tokens=2, max_depth=2, num_simulations=1, temperature=0.7, top_p=0.95, seed=1,
                       fusion_rule="proxy")
    c = _configs()
    eng = testing.tiny_engine({"slm": 1, "llm": 2, "base": 4}, configs={**c, "base": c["slm"]}, device="cuda")
    sched = Scheduler(eng)
    for mode in ("speculative", "exact"):
        be = EngineExecutor(eng, sched, cfg, llm=LocalLLM(eng, sched),
                           base=LocalLLM(eng, sched, role="base", charge_as="base_tokens"),
                           options=CollabOptions(collab_mode=mode, max_draft=2))
        root = await be.root("2 + 3?")
        for kid in await be.expand(root, "collab", 1):
            be.release(kid.state)
        be.release(root)
    sched.close()


async def _solves():
    for mode, kind in (("speculative", "judge"), ("exact", "token_pair")):
        cfg = SearchConfig(max_step_tokens=3, max_depth=2, num_simulations=2, temperature=0.7, top_p=0.95, seed=1)
        stack = testing.tiny_stack(cfg, device="cuda", configs=_configs(), prm_kind="token_pair",
                                   options=CollabOptions(collab_mode=mode, max_draft=3))
        if kind == "judge":  # the demo's PRM: the 1.5B asked Yes/No (one byte-level token "Y")
            stack.executor.prm = PRMScorer(stack.engine, stack.scheduler, PRMSpec(kind="judge", yes_token="Y"))
            stack.executor.prm.cost = stack.executor.cost
        await solve("What is 2 + 3?", stack.executor, cfg)
        stack.scheduler.close()


def _generates():
    eng = testing.tiny_engine({"slm": 1}, configs={"slm": testing.tiny_config(**SLM)}, dtype=torch.bfloat16,
                              device="cuda", num_blocks=160)
    prompts = [list(range(1, 1100)), [5, 6, 7]]  # a long context: split-KV decoding and its merge
    eng.generate(prompts, [SamplingParams(temperature=0.0, max_tokens=2), SamplingParams(temperature=0.8, top_k=40,
                                                                                          top_p=0.9, max_tokens=2)])
    eng32 = testing.tiny_engine({"slm": 1}, configs={"slm": testing.tiny_config(**SLM)}, device="cuda")
    eng32.generate([[1, 2, 3]], SamplingParams(temperature=0.0, max_tokens=2))  # --dtype float32
    from gboost.models.quant import quantize_linears
    for fmt in ("int4", "int8"):  # --weights: a prefill of 42 rows, then decode rows
        engq = testing.tiny_engine({"slm": 1}, configs={"slm": testing.tiny_config(**SLM)}, dtype=torch.bfloat16,
                                   device="cuda", num_blocks=64)
        for m in engq.models.values():
            quantize_linears(m.model, fmt)
        engq.generate([[1, 2, 3], list(range(1, 40))], SamplingParams(temperature=0.0, max_tokens=2))


def main():
    _patch()
    tiny_engine = testing.tiny_engine
    testing.tiny_engine = lambda *a, **k: tiny_engine(*a, **{"dtype": torch.bfloat16, **k})
    with fake_cuda(), record_launches() as seen:
        asyncio.run(_solves())
        asyncio.run(_proxy_steps())
        testing.tiny_engine = tiny_engine
        _generates()
    launches = sorted(seen.values(), key=lambda r: json.dumps(r, sort_keys=True))
    OUT.write_text(json.dumps(launches, indent=1, sort_keys=True) + "\n")
    print(f"{len(launches)} distinct launches -> {OUT}")
    for r in launches:
        print(" ", r["kernel"].rsplit(".", 1)[1], r["constexprs"], r["options"])


if __name__ == "__main__":
    main()
