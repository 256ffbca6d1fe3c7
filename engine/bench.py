"""``gboost bench``: does the engine pay for itself? (issue 12)

In one process, the engine against the obvious implementation on plain transformers
(benchmarks/naive: fresh HF caches per tree node from its full prefix, two separate models per
fused token, the judge re-reading its whole prompt for every step, requests one after another),
both driven by the same search code, and one table:

  end to end  fusion and gboost: seconds per request one at a time, and with N requests in flight
              for the engine; tokens computed per request; whether both chose the same steps and
              answers; the share of a request's wall time outside model forward passes
  decode      greedy tokens/s of the SLM at batch 1 and 8, the engine against transformers' generate
  per action  one SLM step, collaborative step (exact, speculative), LLM step and PRM score: latency
              and share of it outside forward passes; the search's own bookkeeping per request; the
              speculative step's LLM calls, tokens per call and draft acceptance

``--quick`` writes two tiny random Qwen2 checkpoints (HF directories, one tokenizer) and runs on
them; without it, the demo pair (0.5B SLM, 1.5B LLM and judge PRM). Everything runs greedy
(temperature 0) in float32 unless told otherwise, so the two implementations must agree.
Ratios are engine speedups: naive seconds / engine seconds, engine tok/s / transformers tok/s.
"""
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

# the quick pair: a tiny random Qwen2 SLM, and an LLM (also the judge) three times as deep that
# starts with the SLM's layers and perturbs them (see deepened): related models agree on most
# greedy tokens, as a 1.5B agrees with the 0.5B of its family, so speculative drafts get accepted
QUICK_PAIR = dict(hidden=128, layers=4, heads=4, kv_heads=2, extra_layers=8, scale=0.1)
QUICK_CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
              "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


# ------------------------------------------------------------------------------ checkpoints
def _tokenizer():
    """Byte-level: one token per byte, ``<|endoftext|>`` (EOS), and "Yes" one token for the judge."""
    from gboost.testing import byte_tokenizer
    tok = byte_tokenizer().backend
    tok.add_tokens(["Yes"])
    return tok


def tiny_qwen2(*, hidden: int, layers: int, heads: int, kv_heads: int, seed: int, max_positions: int = 2048):
    """A random transformers Qwen2 model over the bench tokenizer, drawn like
    gboost.testing.tiny_model: unit norms, scaled normals, a sharpened lm_head."""
    import transformers
    vocab = _tokenizer().get_vocab_size(with_added_tokens=True)
    torch.manual_seed(seed)
    cfg = transformers.Qwen2Config(vocab_size=vocab + (-vocab % 8), hidden_size=hidden,
                                   intermediate_size=3 * hidden, num_hidden_layers=layers,
                                   num_attention_heads=heads, num_key_value_heads=kv_heads,
                                   max_position_embeddings=max_positions, rms_norm_eps=1e-6, rope_theta=10000.0,
                                   tie_word_embeddings=False, bos_token_id=256, eos_token_id=256)
    model = transformers.Qwen2ForCausalLM(cfg).float()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0, 0.5 / p.shape[-1] ** 0.5 if p.dim() > 1 else 0.02)
        model.lm_head.weight.mul_(8.0)  # peaky distributions: fewer near-ties, more varied text
    return model.eval()


def deepened(model, extra_layers: int, scale: float, seed: int):
    """``model`` with ``extra_layers`` random decoder layers appended, their output projections
    scaled by ``scale``: the residual stream is nudged, not replaced, so the deeper model's greedy
    tokens mostly agree with the shallow one's (about 70% of the SLM's own greedy tokens at 8 layers
    and 0.1, as the 1.5B demo LLM agrees with the 0.5B on about half of its sampled drafts)."""
    import transformers
    n = model.config.num_hidden_layers
    d = model.config.to_dict()
    d.pop("layer_types", None)  # one entry per layer: derived again for the new depth
    cfg = transformers.Qwen2Config(**{**d, "num_hidden_layers": n + extra_layers})
    torch.manual_seed(seed)
    deep = transformers.Qwen2ForCausalLM(cfg).float()
    sd = deep.state_dict()
    with torch.no_grad():
        for name, p in sd.items():
            p.copy_(torch.ones_like(p) if name.endswith("norm.weight")
                    else torch.randn_like(p) * (0.5 / p.shape[-1] ** 0.5 if p.dim() > 1 else 0.02))
        for i in range(n, n + extra_layers):
            sd[f"model.layers.{i}.self_attn.o_proj.weight"].mul_(scale)
            sd[f"model.layers.{i}.mlp.down_proj.weight"].mul_(scale)
        for name, p in model.state_dict().items():  # the shallow model's layers, embeddings and head
            sd[name].copy_(p)
    deep.load_state_dict(sd)
    return deep.eval()


def save_checkpoint(d: Path, model) -> Path:
    """A Hugging Face directory, written by transformers, with the bench tokenizer and chat template."""
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(d), safe_serialization=True)
    _tokenizer().save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "chat_template": QUICK_CHAT}, indent=1))
    return d


def write_pair(root: Path, *, hidden: int, layers: int, heads: int, kv_heads: int, extra_layers: int,
               scale: float, max_positions: int = 2048) -> tuple[Path, Path]:
    """An SLM and its deepened LLM as two checkpoint directories under ``root``."""
    slm = tiny_qwen2(hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, seed=1,
                     max_positions=max_positions)
    llm = deepened(slm, extra_layers, scale, seed=2)
    return save_checkpoint(Path(root) / "slm", slm), save_checkpoint(Path(root) / "llm", llm)


def load_naive():
    """benchmarks.naive, from the source checkout this engine package sits in."""
    try:
        from benchmarks import naive
        return naive
    except ImportError:
        pass
    root = Path(__file__).resolve().parents[1]
    if not (root / "benchmarks" / "naive" / "__init__.py").is_file():
        raise ValueError("gboost bench needs benchmarks/naive from the source checkout "
                         "(pip install -e . from the repository)")
    sys.path.insert(0, str(root))
    from benchmarks import naive
    return naive


# ------------------------------------------------------------------------------- measuring
class ForwardClock:
    """Seconds spent in model forward passes: the engine runners' ``compute`` (one batch, in the
    scheduler's worker thread) and transformers models' top-level ``forward`` (hooks)."""

    def __init__(self, device: str = "cpu"):
        self.seconds = 0.0
        # on a GPU a forward returns once its kernels are queued: wait for them, or the time
        # spent computing would be counted as time outside forward passes
        self.sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)

    def wrap_runner(self, runner) -> None:
        inner = runner.compute

        def compute(*a, **kw):
            t = time.perf_counter()
            try:
                out = inner(*a, **kw)
                self.sync()
                return out
            finally:
                self.seconds += time.perf_counter() - t
        runner.compute = compute

    def hook(self, module: torch.nn.Module) -> None:
        starts: list[float] = []

        def done(m, a, o):
            self.sync()
            self.seconds += time.perf_counter() - starts.pop()
        module.register_forward_pre_hook(lambda m, a: starts.append(time.perf_counter()))
        module.register_forward_hook(done)


@dataclass
class Row:
    what: str
    engine: str
    other: str = "-"
    ratio: str = "-"
    same: str = "-"


def _x(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "-"


def _ms(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s < 10 else f"{s:.1f} s"


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _key(res) -> tuple:
    """What must be equal: every chosen step (text, action) and the answer."""
    return tuple((s["text"], s["action"]) for s in res.steps), res.answer


def _computed(res) -> int:
    c = res.cost
    return c.slm_tokens + c.llm_tokens + c.prm_tokens + c.base_tokens


def print_table(rows: list[Row], out=None) -> None:
    out = out or sys.stdout
    head = Row("what", "engine", "naive / transformers", "ratio", "same answers")
    cols = [max(len(getattr(r, f)) for r in [head] + rows) for f in ("what", "engine", "other", "ratio", "same")]
    for i, r in enumerate([head] + rows):
        cells = [getattr(r, f).ljust(w) for f, w in zip(("what", "engine", "other", "ratio", "same"), cols)]
        print("| " + " | ".join(cells) + " |", file=out)
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in cols) + "|", file=out)


# ------------------------------------------------------------------------------- the runs
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
    pool = cache.blocks
    while pool.lru:
        b, _ = pool.lru.popitem(last=False)
        pool._drop_hash(b)
        pool.free_ids.append(b)


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
    naive_mod = load_naive()
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
