"""benchmarks/soak.py end to end, briefly (2 clients, a few seconds, a fast general LLM): it starts
both servers, drives every kind of request, and ends with nothing lost, every KV block free, no
refcount error, no 5xx and no traceback, and a SIGINT stop (exit 130). The real run is in RESULTS.md.
Before the clients, fifty 1 MB questions (each a 400) must leave the server's RSS where it was."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: RSS growth allowed over fifty 1 MB questions: one request's transient copies (the body's chunks,
#: the joined body, the decoded str, the validated one: about 4 MB) kept by a fragmented heap a few
#: times over. Before the byte pre-check each question was tokenized and ~14 MB of each was kept
#: (690 MB over fifty, issue 37), so even two requests' worth of retention fails this.
BIG_QUESTIONS_RSS_MB = 16


@pytest.mark.timeout(600)
def test_soak_smoke(tmp_path):
    out = tmp_path / "soak.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--clients", "2", "--minutes", "0.1",
                        "--latency", "0.01", "--error-rate", "0.2", "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=580)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    s = json.loads(out.read_text())
    assert s["ok"] and s["lost"] == 0 and s["completed"] > 0 and not s["unexpected"]
    kv = s["kv_blocks"]
    assert kv["free_end"] == kv["total"] == kv["free_start"] and kv["sequences_live_end"] == 0
    assert kv["refcount_errors_end"] == 0 and s["server_tracebacks"] == 0
    big = s["big_questions"]
    assert big["n"] == 50 and big["statuses"] == {"400": 50}
    assert big["rss_after_trim_mb"] - big["rss_before_mb"] < BIG_QUESTIONS_RSS_MB, big
    assert s["sigint"]["exit"] == 130 and s["sigint"]["line"].endswith("0 sequences live")
