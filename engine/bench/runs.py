"""The timed runs of ``gboost bench``: end to end, per action and decode, engine against naive."""
from __future__ import annotations

import asyncio
import copy
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .checkpoints import QUICK_PAIR, write_pair
from .report import ForwardClock, Row, _computed, _key, _ms, _pct, _x, print_table

QUESTIONS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
    "How much did she earn?",
    "Betty is saving money for a new wallet which costs $100. Betty has only half of the money she needs. "
    "Her parents give her $15, and her grandparents twice as much. How much more money does she need?",
    "James writes a 3-page letter to 2 different friends twice a week. How many pages does he write a year?",
    "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts in total does it take?",
    "Toulouse has twice as many sheep as Charleston. Charleston has 4 times as many sheep as Seattle. "
    "How many sheep do Toulouse, Charleston, and Seattle have together if Seattle has 20 sheep?",
    "Janet's ducks lay 16 eggs per day. She eats three for breakfast and bakes muffins with four. "
    "She sells the rest for $2 each. How much does she make every day?",
    "Albert buys 2 large pizzas and 2 small pizzas. A large pizza has 16 slices and a small pizza has 8. "
    "How many slices does he eat if he eats all of it?",
]
# steps of these are timed one by one (not seen by the end-to-end runs: no cached prompts)
ACTION_QUESTIONS = [
    "Mark has a garden with flowers. He planted 10 yellow ones and 80% more purple ones. How many flowers?",
    "Ken made a care package with 2 pounds of jelly beans and tripled the weight with brownies. What weight?",
    "Alexis spent $30 on a shirt, $46 on pants and $38 on a coat from a $200 budget. What is left?",
    "Tina makes $18.00 an hour. She works 10 hours every day for 5 days. How much does she make?",
]
DECODE_PROMPT = "Write a Python function that checks whether a number is prime.\n"


@dataclass
class Setup:
    slm: str
    llm: str
    cfgs: dict                       # method -> SearchConfig of the end-to-end runs
    questions: list[str]
    inflight: list[int]
    dtype: str = "float32"
    device: str = "cpu"
    kv_memory_gb: float = 2.0
    decode_tokens: int = 32
    action_questions: list[str] = field(default_factory=lambda: list(ACTION_QUESTIONS))


def quick_setup(root: Path) -> Setup:
    from gboost.search.config import SearchConfig
    slm, llm = write_pair(root, **QUICK_PAIR)
    base = dict(temperature=0.0, top_p=1.0, seed=0, max_step_tokens=12, max_depth=3)
    # sized to finish in about two minutes on two busy CPU cores
    return Setup(str(slm), str(llm), {"fusion": SearchConfig(method="fusion", **base),
                                      "gboost": SearchConfig(method="gboost", num_simulations=5, **base)},
                 list(QUESTIONS), [8], kv_memory_gb=0.25, decode_tokens=24,
                 action_questions=ACTION_QUESTIONS[:3])


def demo_setup(args) -> Setup:
    from gboost.search.config import SearchConfig
    from gboost.stack import DEFAULT_LLM, DEFAULT_SLM
    base = SearchConfig.from_file(args.config) if args.config else SearchConfig()
    base = base.replace(temperature=0.0, top_p=1.0)  # greedy: both implementations must agree
    if args.simulations:
        base = base.replace(num_simulations=args.simulations)
    cfgs = {m: base.replace(method=m) for m in ("fusion", "gboost")}
    n = args.questions or len(QUESTIONS)
    qs = [QUESTIONS[i % len(QUESTIONS)] for i in range(n)]
    return Setup(args.slm or DEFAULT_SLM, args.llm or DEFAULT_LLM, cfgs, qs, args.inflight or [8, 32],
                 dtype=args.dtype, device=args.device, kv_memory_gb=args.kv_memory_gb)


def forget_cached_prefixes(cache) -> None:
    """Empty the engine's prefix cache (call with no request in flight): a run that repeats earlier
    questions must compute them again, not find every step's blocks already cached."""
    cache.blocks.drop_cached()


async def _solve_all(executor, cfg, questions: list[str], inflight: int):
    from gboost.search.api import solve
    sem = asyncio.Semaphore(inflight)

    async def one(q):
        async with sem:
            return await solve(q, executor, cfg)
    t = time.perf_counter()
    res = await asyncio.gather(*(one(q) for q in questions))
    return time.perf_counter() - t, res


async def _end_to_end(st: Setup, be, naive, clock: ForwardClock, rows: list[Row], log) -> dict:
    """Both implementations on the same questions, one request at a time, taking turns question by
    question (a shared CPU's load drifts: both sides see the same); then the engine with N in flight
    (questions repeated up to N if needed, answers compared per question)."""
    from gboost.search.api import solve
    info = {}
    for method, cfg in st.cfgs.items():
        warm = cfg.replace(max_depth=1, num_simulations=1)
        await _solve_all(be, warm, st.questions[:1], 1)
        await _solve_all(naive, warm, st.questions[:1], 1)
        forget_cached_prefixes(be.engine.cache)  # nothing left from the warm-up or the other method
        wall, fwd, res = [0.0, 0.0], [0.0, 0.0], ([], [])   # engine, naive
        for q in st.questions:
            for side, impl in enumerate((be, naive)):
                f0, t0 = clock.seconds, time.perf_counter()
                res[side].append(await solve(q, impl, cfg))
                wall[side] += time.perf_counter() - t0
                fwd[side] += clock.seconds - f0
        (t_en, t_nv), (f_en, f_nv), (r_en, r_nv) = wall, fwd, res
        log(f"{method}: engine {t_en:.1f} s, naive {t_nv:.1f} s for {len(st.questions)} requests one at a time")
        want = {q: _key(r) for q, r in zip(st.questions, r_nv)}
        n = len(st.questions)
        same = sum(_key(a) == want[q] for q, a in zip(st.questions, r_en))
        rows.append(Row(f"{method}: s/request, 1 at a time", _ms(t_en / n), _ms(t_nv / n), _x(t_nv, t_en),
                        f"{same}/{n}"))
        for k in st.inflight:
            qs = [st.questions[i % n] for i in range(max(k, n))]
            forget_cached_prefixes(be.engine.cache)
            t_k, r_k = await _solve_all(be, cfg, qs, k)
            same_k = sum(_key(a) == want[q] for q, a in zip(qs, r_k))
            log(f"{method}: engine {t_k:.1f} s, {k} in flight")
            rows.append(Row(f"{method}: s/request, {k} in flight (naive: 1 at a time)", _ms(t_k / len(qs)),
                            _ms(t_nv / n), _x(t_nv / n, t_k / len(qs)), f"{same_k}/{len(qs)}"))
        tok_en, tok_nv = sum(map(_computed, r_en)) / n, sum(map(_computed, r_nv)) / n
        rows.append(Row(f"{method}: tokens computed/request", f"{tok_en:.0f}", f"{tok_nv:.0f}", _x(tok_nv, tok_en)))
        rows.append(Row(f"{method}: wall time outside forward passes", _pct(1 - f_en / t_en), _pct(1 - f_nv / t_nv)))
        info[method] = (r_en, r_nv)
    return info


def _bookkeeping(results) -> tuple[float, float]:
    """Seconds per request the search spends outside executor calls, and its share of the request."""
    spent = total = 0.0
    for r in results:
        w = r.cost.wall_s
        spent += w.get("total", 0.0) - w.get("root", 0.0) - w.get("expand", 0.0) - w.get("score", 0.0)
        total += w.get("total", 0.0)
    return spent / len(results), (spent / total if total else 0.0)


async def _per_action(st: Setup, be, naive, clock: ForwardClock, rows: list[Row]) -> None:
    """One step of each action, and one PRM score of it: latency and share outside forwards. The
    steps start from a depth-1 node whose prefix the engine's SLM, LLM and PRM already hold, as for
    most nodes of a search (a root's first children each prefill the prompt: forks of a sequence
    that never ran are not matched against the prefix cache, so that repeats compute alike)."""
    from gboost.collab.executor import CollabOptions
    cfg = st.cfgs["gboost"]
    be, naive = be.with_config(cfg), naive.with_config(cfg)
    exact = copy.copy(be)
    exact.opt = CollabOptions(**{**asdict(be.opt), "collab_mode": "exact"})
    spec = copy.copy(be)
    spec.opt = CollabOptions(**{**asdict(be.opt), "collab_mode": "speculative"})
    kinds = [("SLM step", "slm", be), ("collab step, exact", "collab", exact),
             ("collab step, speculative", "collab", spec), ("LLM step (speculative, SLM drafts)", "llm", spec)]
    # per label: [engine walls], [engine forward s], [naive walls], [naive forward s], same, n
    acc = {k: [[], [], [], [], 0, 0] for k, _, _ in kinds}
    score = [[], [], [], [], 0, 0]
    spec_stats = [0, 0, 0, 0, 0]  # rounds, proposed, accepted, step tokens, steps
    for q in st.action_questions:
        roots = (await be.root(q), await naive.root(q))
        nodes = ((await be.expand(roots[0], "slm", 1))[0], (await naive.expand(roots[1], "slm", 1))[0])
        await be.score([nodes[0].state])              # the PRM holds the node's prefix
        warm = await spec.expand(nodes[0].state, "collab", 1)
        be.release(warm[0].state)                     # ... and so does the LLM (its session)
        for label, action, eng in kinds:
            a = acc[label]
            before = (eng.counts.llm_rounds, eng.counts.draft_proposed, eng.counts.draft_accepted)
            outs = []
            for side, impl in enumerate((eng, naive)):
                f0, t0 = clock.seconds, time.perf_counter()
                outs.append((await impl.expand(nodes[side].state, action, 1))[0])
                a[2 * side].append(time.perf_counter() - t0)
                a[2 * side + 1].append(clock.seconds - f0)
            if label == "collab step, speculative":
                spec_stats[0] += eng.counts.llm_rounds - before[0]
                spec_stats[1] += eng.counts.draft_proposed - before[1]
                spec_stats[2] += eng.counts.draft_accepted - before[2]
                spec_stats[3] += len(outs[0].token_ids)
                spec_stats[4] += 1
            a[4] += outs[0].text == outs[1].text and outs[0].token_ids == outs[1].token_ids
            a[5] += 1
            rewards = []
            for side, impl in enumerate((be, naive)):
                f0, t0 = clock.seconds, time.perf_counter()
                rewards += await impl.score([outs[side].state])
                score[2 * side].append(time.perf_counter() - t0)
                score[2 * side + 1].append(clock.seconds - f0)
            score[4] += abs(rewards[0] - rewards[1]) < 1e-3
            score[5] += 1
            be.release(outs[0].state)
            naive.release(outs[1].state)
        for side, impl in enumerate((be, naive)):
            impl.release(nodes[side].state)
            impl.release(roots[side])
    for label, _, _ in kinds + [("PRM score of one step", None, None)]:
        a = acc.get(label, score)
        en, nv = statistics.median(a[0]), statistics.median(a[2])  # medians: one slow outlier on a shared CPU
        rows.append(Row(f"{label}: latency (median)", _ms(en), _ms(nv), _x(nv, en), f"{a[4]}/{a[5]}"))
        rows.append(Row(f"{label}: outside forward passes", _pct(1 - sum(a[1]) / sum(a[0])),
                        _pct(1 - sum(a[3]) / sum(a[2]))))
    rounds, prop, accd, toks, steps = spec_stats
    rows.append(Row("speculative collab step: LLM calls/step", f"{rounds / steps:.2f}", f"{toks / steps:.2f}",
                    _x(toks, rounds)))
    rows.append(Row("speculative collab step: step tokens/LLM call", f"{toks / max(rounds, 1):.2f}", "1.00"))
    rows.append(Row("speculative collab step: drafts accepted",
                    f"{_pct(accd / prop)} ({accd}/{prop})" if prop else "-"))


def _decode(st: Setup, eng, hf_slm, naive, rows: list[Row]) -> None:
    """Greedy decode tokens/s of the SLM: (time for n+4 new tokens - time for 4) / n per step, so
    the prompt's prefill cancels out; batch b = b distinct prompts of one length."""
    from gboost.sampling import SamplingParams
    tok = eng.role("slm").tokenizer
    ids = tok.encode(DECODE_PROMPT * 4)
    n = st.decode_tokens
    for b in (1, 8):
        prompts = [ids + [i] for i in range(b)]

        def engine_run(k):
            return [o.token_ids for o in eng.generate(prompts, SamplingParams(temperature=0.0, max_tokens=k,
                                                                              ignore_eos=True))]

        def hf_run(k):
            return naive.hf_greedy(hf_slm, prompts, k)
        runs = (("engine", engine_run), ("hf", hf_run))
        for _, fn in runs:
            fn(4)  # warm-up (and the engine's prefix cache, for both timed lengths alike)
        best, outs = {}, {}
        for _ in range(3):  # best of three, the two implementations taking turns: the CPU may be shared
            for k in (4, n + 4):
                for name, fn in runs:
                    t = time.perf_counter()
                    outs[name] = fn(k)
                    best[name, k] = min(best.get((name, k), float("inf")), time.perf_counter() - t)
        step = {name: max(1e-9, (best[name, n + 4] - best[name, 4]) / n) for name, _ in runs}
        same = "yes" if outs["engine"] == outs["hf"] else "no"
        rows.append(Row(f"SLM greedy decode, batch {b}: tok/s", f"{b / step['engine']:.0f}",
                        f"{b / step['hf']:.0f}", _x(step["hf"], step["engine"]), f"same tokens: {same}"))


async def run(st: Setup, log=print) -> list[Row]:
    from gboost.search.api import solve  # noqa: F401  (import cost outside the timings)
    from gboost.stack import build_stack
    import gboost.bench.naive as naive_mod
    torch.manual_seed(0)
    cfg0 = st.cfgs["gboost"]
    log(f"loading the engine stack: SLM {st.slm}, LLM and judge {st.llm} ({st.dtype}, {st.device})")
    stack = await build_stack(cfg0, slm=st.slm, llm=st.llm, dtype=st.dtype, device=st.device,
                              kv_memory_gb=st.kv_memory_gb, offload=False)  # one caller, as `gboost solve`
    try:
        log("loading the same checkpoints into transformers")
        hf_slm = naive_mod.load_hf(st.slm, st.dtype, st.device)
        hf_llm = naive_mod.load_hf(st.llm, st.dtype, st.device)
        tok = stack.engine.role("slm").tokenizer
        naive = naive_mod.NaiveExecutor(tok, cfg0, hf_slm, llm=hf_llm, prm=hf_llm,
                                       prm_spec=stack.executor.prm.spec, eos=stack.engine.role("slm").eos_token_ids)
        clock = ForwardClock(st.device)
        for m in stack.engine.models.values():
            clock.wrap_runner(m.runner)
        for m in (hf_slm, hf_llm):
            clock.hook(m)
        rows: list[Row] = []
        info = await _end_to_end(st, stack.executor, naive, clock, rows, log)
        spent_en, share_en = _bookkeeping(info["gboost"][0])
        spent_nv, share_nv = _bookkeeping(info["gboost"][1])
        rows.append(Row("gboost: search bookkeeping/request", f"{_ms(spent_en)} ({_pct(share_en)})",
                        f"{_ms(spent_nv)} ({_pct(share_nv)})"))
        log("per-action steps")
        await _per_action(st, stack.executor, naive, clock, rows)
        log("decode")
        _decode(st, stack.engine, hf_slm, naive_mod, rows)
        stack.engine.cache.check_refcounts()
    finally:
        await stack.aclose()
    return rows


def main(args) -> int:
    try:
        import transformers
    except ImportError:
        raise ValueError("gboost bench compares the engine with transformers, which is not installed "
                         "(pip install -e '.[test]')") from None
    transformers.utils.logging.disable_progress_bar()
    if args.quick:
        tmp = tempfile.TemporaryDirectory(prefix="gboost-bench-")
        st = quick_setup(Path(tmp.name))
        if args.questions:
            st.questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.questions)]
        if args.inflight:
            st.inflight = args.inflight
        st.dtype, st.device = args.dtype, args.device
    else:
        st = demo_setup(args)
    t0, cpu0 = time.perf_counter(), time.process_time()
    log = (lambda *a: None) if args.json else (lambda msg: print(f"[bench {time.perf_counter() - t0:6.1f}s] {msg}",
                                                                  file=sys.stderr, flush=True))
    rows = asyncio.run(run(st, log))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if args.json:
        print(json.dumps({"rows": [asdict(r) for r in rows], "seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
                          "slm": st.slm if not args.quick else "tiny-slm", "llm": st.llm if not args.quick else "tiny-llm"}))
    else:
        print_table(rows)
        print(f"\n{'quick (tiny random models)' if args.quick else f'{st.slm} + {st.llm}'}, {st.dtype}, "
              f"{st.device}, greedy; {len(st.questions)} questions; {wall:.0f} s in all, {cpu:.0f} s of CPU time "
              f"({torch.get_num_threads()} torch threads)")
    return 0
