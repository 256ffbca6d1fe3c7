"""Soak: many clients against `gboost serve --solve` for minutes, the general LLM failing and slow.

    python benchmarks/soak.py --clients 32 --minutes 10 --error-rate 0.1 --latency 0.2   # RESULTS.md
    python benchmarks/soak.py --clients 2 --minutes 0.1                                 # a smoke run

Two servers run as the command line runs them, on tiny random checkpoints written to a temporary
directory (gboost.testing.write_tiny_checkpoint; one byte-level tokenizer, so they can fuse):
  * the general LLM: `gboost serve --model LLM --fault-error-rate E --fault-latency L` (every call
    waits L seconds; a share E is answered 503, which the solve server's client retries);
  * the stack under test: `gboost serve --solve --slm SLM --llm http://.../v1` (PRM on the SLM).
N clients loop until the time is up, each request drawn from a mix: /v1/solve with every method
(JSON, and streamed with random disconnects), /v1/completions (JSON, and streamed with random
disconnects), over-long questions, and invalid bodies (bad JSON, deep nesting, out-of-range seeds,
mistyped options, unknown methods). Then the clients stop, the server is left to go idle, and
the report says: requests completed; answers by status for each kind (and any that were not what
the kind expects); requests lost (no answer: timeout or broken connection); p50/p99 latency of
completed ones; KV blocks free at the end against the start; live sequences and refcount errors
(gboost_kv_refcount_errors, KVCache.check_refcounts' invariant) when idle; the server's RSS over
time (growth and the slope of the second half); the LLM's retries, errors and injected faults;
tracebacks in the server's log. Last, the server is stopped with SIGINT (exit 130 and one line).
Exit status 0 only if nothing was lost, no block leaked, no refcount error, no 5xx, no traceback.
"""
import argparse
import asyncio
import json
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx

import soak_report

METHODS = ("gboost", "slm", "llm", "fusion", "bon", "beam", "rsd")
# a small search: what one request may cost on 2 CPU cores; requests may lower it, never raise it
SEARCH = {"num_simulations": 4, "max_depth": 4, "max_step_tokens": 16, "slm_width": 2, "collab_width": 1,
          "beam_width": 2, "bon_n": 3, "temperature": 0.8, "top_p": 0.95}
MIX = {"solve": 30, "solve_stream": 15, "completion": 20, "completion_stream": 15, "overlong": 5, "invalid": 15}
EXPECT = {"solve": {200, 503}, "solve_stream": {200, 503}, "completion": {200}, "completion_stream": {200},
          "overlong": {400}, "invalid": {400}}
QUESTIONS = ["What is 17 * 23?", "Natalia sold 48 clips in April and half as many in May. How many in total?",
             "A train goes 60 km in 45 minutes. What is its speed in km/h?", "What is 2 + 2?"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    """`gboost ARGS --port P` in a subprocess (stderr to log); returns it and its URL once /health answers."""
    port = free_port()
    f = open(log, "w")
    proc = subprocess.Popen([sys.executable, "-m", "gboost.cli", *args, "--port", str(port)],
                            stdout=f, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        if proc.poll() is not None:
            raise RuntimeError(f"{' '.join(args[:2])} exited at start-up:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{' '.join(args[:2])} did not answer /health")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def metrics(url: str) -> dict[str, float]:
    out = {}
    for line in httpx.get(url + "/metrics", timeout=60).text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


# -- requests ------------------------------------------------------------------------------------
def invalid_body(rng: random.Random) -> tuple[str, bytes]:
    route = rng.choice(["/v1/solve", "/v1/completions"])
    base = {"question": "2+2?"} if route == "/v1/solve" else {"prompt": "hi", "max_tokens": 2}
    kind = rng.choice(["syntax", "deep", "digits", "seed", "type", "method", "empty", "nan", "not_object"])
    if kind == "syntax":
        return route, json.dumps(base).encode()[:-3]
    if kind == "deep":
        n = rng.choice([40, 1000, 100_000])
        return route, json.dumps(base).encode()[:-1] + b', "stop": ' + b"[" * n + b"]" * n + b"}"
    if kind == "digits":
        return route, json.dumps(base).encode()[:-1] + b', "seed": ' + b"7" * 5000 + b"}"
    if kind == "seed":
        return route, json.dumps({**base, "seed": 2**70}).encode()
    if kind == "type":
        bad = {"stream": True, "stream_options": {"include_usage": "yes"}} if route == "/v1/completions" \
            else {"config": {"num_simulations": "many"}}
        return route, json.dumps({**base, **bad}).encode()
    if kind == "method":
        return "/v1/solve", json.dumps({"question": "2+2?", "method": "oracle"}).encode()
    if kind == "empty":
        return route, json.dumps({**base, "question": ""} if route == "/v1/solve" else {**base, "prompt": []}).encode()
    if kind == "nan":
        return route, json.dumps(base).encode()[:-1] + b', "temperature": NaN}'
    return route, b'["a", "list"]'


async def stream(c: httpx.AsyncClient, path: str, body: dict, rng: random.Random, p_disconnect: float) -> str:
    """A streamed request; with probability p_disconnect the client goes after a few events."""
    leave_after = rng.randint(1, 3) if rng.random() < p_disconnect else None
    async with c.stream("POST", path, json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return str(r.status_code)
        events = 0
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                events += 1
                if line == "data: [DONE]":
                    return "200"
                if '"error"' in line[:20]:
                    return "200-error-event"
                if leave_after is not None and events >= leave_after:
                    return "disconnected"   # leaving the block closes the connection mid-stream
        return "200-truncated"               # the server ended the stream without [DONE]


async def one_request(c: httpx.AsyncClient, kind: str, rng: random.Random, p_disconnect: float) -> str:
    if kind in ("solve", "solve_stream"):
        body = {"question": rng.choice(QUESTIONS), "method": rng.choice(METHODS), "seed": rng.randrange(2**32)}
        if kind == "solve":
            return str((await c.post("/v1/solve", json=body)).status_code)
        return await stream(c, "/v1/solve", {**body, "stream": True}, rng, p_disconnect)
    if kind in ("completion", "completion_stream"):
        body = {"prompt": rng.choice(QUESTIONS), "max_tokens": rng.randint(1, 48), "n": rng.randint(1, 3),
                "temperature": rng.choice([0.0, 0.7, 1.0]), "seed": rng.randrange(2**32)}
        if rng.random() < 0.3:
            body["logprobs"] = rng.randint(0, 5)
        if kind == "completion":
            return str((await c.post("/v1/completions", json=body)).status_code)
        body["stream_options"] = {"include_usage": rng.random() < 0.5}
        return await stream(c, "/v1/completions", {**body, "stream": True}, rng, p_disconnect)
    if kind == "overlong":
        return str((await c.post("/v1/solve", json={"question": "x " * rng.randint(600, 3000)})).status_code)
    route, raw = invalid_body(rng)
    return str((await c.post(route, content=raw, headers={"content-type": "application/json"})).status_code)


async def run_clients(url: str, n: int, seconds: float, seed: int, p_disconnect: float, timeout_s: float,
                      t_start: float) -> list:
    records: list[tuple[str, str, float, float]] = []   # (kind, outcome, seconds, when it ended after t_start)
    deadline = t_start + seconds
    kinds, weights = list(MIX), list(MIX.values())

    async def client(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(timeout_s)) as c:
            while time.monotonic() < deadline:
                kind = rng.choices(kinds, weights)[0]
                t0 = time.perf_counter()
                try:
                    outcome = await one_request(c, kind, rng, p_disconnect)
                except (httpx.TimeoutException, httpx.TransportError) as e:
                    outcome = f"lost:{type(e).__name__}"
                records.append((kind, outcome, time.perf_counter() - t0, time.monotonic() - t_start))
                await asyncio.sleep(rng.random() * 0.05)

    await asyncio.gather(*(client(i) for i in range(n)))
    return records


# -- the run -------------------------------------------------------------------------------------
def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


BIG_QUESTION_BYTES = 1 << 20


def big_questions(url: str, pid: int, n: int) -> dict:
    """``n`` 1 MB questions, one at a time, each of which must be a 400 question_too_long; the
    server's RSS before them, after them, and after a pause in which its heap trim (every 30 s) runs."""
    before = rss_mb(pid)
    body = json.dumps({"question": "x" * BIG_QUESTION_BYTES}).encode()
    statuses = []
    with httpx.Client(base_url=url, timeout=120) as c:
        for _ in range(n):
            r = c.post("/v1/solve", content=body, headers={"content-type": "application/json"})
            ok = r.status_code == 400 and r.json()["error"]["code"] == "question_too_long"
            statuses.append(str(r.status_code) if ok else f"{r.status_code}-{r.text[:80]}")
    after = rss_mb(pid)
    time.sleep(31 if n else 0)
    return {"n": n, "rss_before_mb": round(before, 1), "rss_after_mb": round(after, 1),
            "rss_after_trim_mb": round(rss_mb(pid), 1), "statuses": dict(Counter(statuses))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--error-rate", type=float, default=0.1, help="share of general-LLM calls answered 503")
    ap.add_argument("--latency", type=float, default=0.2, help="seconds added to every general-LLM call")
    ap.add_argument("--disconnect", type=float, default=0.3, help="share of streams the client leaves early")
    ap.add_argument("--kv-memory-gb", type=float, default=0.25, help="the solve server's KV pool")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds after which a request counts as lost")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the summary here")
    ap.add_argument("--out-dir", default=None, help="write the raw samples, summary and RSS plot here")
    ap.add_argument("--name", default="soak", help="file names in --out-dir start with this")
    ap.add_argument("--warmup-minutes", type=float, default=2.0, help="RSS slope from here on")
    ap.add_argument("--big-questions", type=int, default=50, help="1 MB questions sent first, one at a time")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="gboost-soak-"))
    from gboost.testing import write_tiny_checkpoint
    slm, llm = write_tiny_checkpoint(work / "slm", seed=1), write_tiny_checkpoint(work / "llm", seed=2)
    (work / "search.json").write_text(json.dumps(SEARCH))
    common = ["--dtype", "float32"]
    llm_proc, llm_url = start(["serve", "--model", str(llm), *common, "--fault-error-rate", str(args.error_rate),
                               "--fault-latency", str(args.latency)], work / "llm.log")
    srv, url = start(["serve", "--solve", "--slm", str(slm), "--llm", llm_url + "/v1", "--prm-kind", "token_pair",
                      "--config", str(work / "search.json"), "--kv-memory-gb", str(args.kv_memory_gb), *common],
                     work / "solve.log")
    seconds = args.minutes * 60
    rss: list[tuple[float, float]] = []
    cached: list[tuple[float, int]] = []   # free blocks holding a cached prefix: their bookkeeping is memory too
    try:
        big = big_questions(url, srv.pid, args.big_questions)
        m0 = metrics(url)
        rss.append((0.0, rss_mb(srv.pid)))
        t_start = time.monotonic()

        async def sample():
            async with httpx.AsyncClient(timeout=60) as c:
                while True:
                    await asyncio.sleep(min(10.0, max(1.0, seconds / 60)))
                    t = time.monotonic() - t_start
                    rss.append((t, rss_mb(srv.pid)))
                    text = (await c.get(url + "/metrics")).text
                    n = re.search(r"^gboost_kv_blocks_cached (\S+)$", text, re.M)
                    cached.append((t, int(float(n.group(1))) if n else -1))

        async def go():
            sampler = asyncio.create_task(sample())
            try:
                return await run_clients(url, args.clients, seconds, args.seed, args.disconnect, args.timeout,
                                         t_start)
            finally:
                sampler.cancel()

        records = asyncio.run(go())
        wall = time.monotonic() - t_start
        # idle: every search and stream the clients left is cancelled and has given its blocks back
        for _ in range(600):
            m1 = metrics(url)
            if not (m1.get("gboost_solves_in_flight", 0) or m1.get("gboost_requests_in_flight", 0)
                    or m1.get("gboost_kv_sequences_live", 0)):
                break
            time.sleep(0.1)
        rss.append((time.monotonic() - t_start, rss_mb(srv.pid)))
        llm_m = metrics(llm_url)
    finally:
        srv.send_signal(signal.SIGINT)
        try:
            rc = srv.wait(60)
        except subprocess.TimeoutExpired:
            srv.kill()
            rc = None
        llm_proc.terminate()
        llm_proc.wait(60)
    log = (work / "solve.log").read_text()

    by_kind: dict[str, Counter] = defaultdict(Counter)
    lat: dict[str, list[float]] = defaultdict(list)
    for kind, outcome, s, _ in records:
        by_kind[kind][outcome] += 1
        if outcome == "200":
            lat[kind.split("_")[0]].append(s)
            lat["all"].append(s)
    lost = sum(n for c in by_kind.values() for o, n in c.items() if o.startswith("lost"))
    completed = sum(c["200"] for c in by_kind.values())
    statuses = Counter(o for c in by_kind.values() for o in c.elements() if o.isdigit())
    unexpected = {k: {o: n for o, n in c.items() if not (o.isdigit() and int(o) in EXPECT[k]) and o != "disconnected"}
                  for k, c in by_kind.items()}
    unexpected = {k: v for k, v in unexpected.items() if v}
    slope = soak_report.slope_mb_per_min(rss[:-1], seconds / 2)  # the last sample is the idle one
    warm_slope = soak_report.slope_mb_per_min(rss[:-1], args.warmup_minutes * 60)
    warm = next((r for t, r in rss if t >= min(60.0, seconds / 5)), rss[-1][1])
    stop_line = next((ln for ln in reversed(log.splitlines()) if ln.startswith("gboost serve: stopped")), None)
    summary = {
        "clients": args.clients, "minutes": args.minutes, "wall_s": round(wall, 1),
        "error_rate": args.error_rate, "llm_latency_s": args.latency, "disconnect": args.disconnect,
        "requests": len(records), "completed": completed, "lost": lost,
        "by_status": dict(sorted(statuses.items())),
        "disconnected_by_client": sum(c["disconnected"] for c in by_kind.values()),
        "by_kind": {k: dict(sorted(c.items())) for k, c in sorted(by_kind.items())},
        "unexpected": unexpected,
        "latency_s": {k: {"n": len(v), "p50": round(pct(v, 0.5), 3), "p99": round(pct(v, 0.99), 3)}
                      for k, v in sorted(lat.items())},
        "kv_blocks": {"total": int(m1["gboost_kv_blocks_total"]), "free_start": int(m0["gboost_kv_blocks_free"]),
                      "free_end": int(m1["gboost_kv_blocks_free"]),
                      "sequences_live_end": int(m1.get("gboost_kv_sequences_live", -1)),
                      "refcount_errors_end": int(m1.get("gboost_kv_refcount_errors", -1)),
                      "cached_end": int(m1.get("gboost_kv_blocks_cached", -1)),
                      "preemptions": int(m1.get("gboost_kv_preemptions_total", 0))},
        "rss_mb": {"start": round(rss[0][1], 1), "after_warmup": round(warm, 1), "end": round(rss[-1][1], 1),
                   "max": round(max(r for _, r in rss), 1), "second_half_slope_mb_per_min": round(slope, 3),
                   "warmup_minutes": args.warmup_minutes, "post_warmup_slope_mb_per_min": round(warm_slope, 3),
                   "series": [[round(t), round(r, 1)] for t, r in rss]},
        "kv_blocks_cached_series": [[round(t), n] for t, n in cached],
        "llm": {"requests": int(m1.get("gboost_llm_requests_total", 0)),
                "retries": {k[len('gboost_llm_retries_total{kind="'):-2]: int(v) for k, v in m1.items()
                            if k.startswith("gboost_llm_retries_total") and v},
                "errors": {k[len('gboost_llm_errors_total{kind="'):-2]: int(v) for k, v in m1.items()
                           if k.startswith("gboost_llm_errors_total") and v},
                "fallbacks": int(sum(v for k, v in m1.items() if k.startswith("gboost_llm_fallbacks_total"))),
                "faults_injected": {k[len('gboost_faults_injected_total{kind="'):-2]: int(v)
                                    for k, v in llm_m.items() if k.startswith("gboost_faults_injected_total")}},
        "big_questions": big,
        "server_tracebacks": log.count("Traceback"),
        "server_5xx_logged": len(re.findall(r"solve failed|completion failed|unhandled error", log)),
        "sigint": {"exit": rc, "line": stop_line},
    }
    ok = (lost == 0 and summary["kv_blocks"]["free_end"] == summary["kv_blocks"]["total"]
          and summary["kv_blocks"]["sequences_live_end"] == 0 and summary["kv_blocks"]["refcount_errors_end"] == 0
          and not any(int(s) >= 500 for s in statuses) and not summary["server_tracebacks"] and rc == 130
          and completed > 0 and all(s == "400" for s in big["statuses"]))
    summary["ok"] = ok
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    if args.out_dir:
        for path in soak_report.write(args.out_dir, args.name, summary, records, rss[:-1], cached, EXPECT,
                                      args.warmup_minutes * 60):
            print(f"soak: wrote {path}", file=sys.stderr)
    if not ok:
        print(f"soak: targets not met (logs in {work})", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
