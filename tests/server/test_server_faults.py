"""Fault injection of the app (latency, error answers, malformed bodies)."""

import json
import threading
import time

import httpx
import pytest

from gboost.server.faults import FaultConfig

pytestmark = pytest.mark.timeout(60)

BODY = {"prompt": "ab", "max_tokens": 1}


def test_error_fault_with_retry_after(make_server):
    srv = make_server(fault=FaultConfig(error_rate=1.0, status_code=429, retry_after=2))
    r = httpx.post(srv.url + "/v1/completions", json=BODY)
    assert r.status_code == 429 and r.headers["retry-after"] == "2"
    assert r.json()["error"]["type"] == "rate_limit_error"
    assert httpx.get(srv.url + "/health").status_code == 200  # only completions are faulted
    assert 'gboost_faults_injected_total{kind="http_429"} 1' in httpx.get(srv.url + "/metrics").text


def test_fail_first_then_success(make_server):
    srv = make_server(fault=FaultConfig(fail_first=2, status_code=503))
    codes = [httpx.post(srv.url + "/v1/completions", json=BODY).status_code for _ in range(3)]
    assert codes == [503, 503, 200]
    assert srv.app.state.faults.calls == 3
    assert "retry-after" not in httpx.post(srv.url + "/v1/completions", json=BODY).headers


def test_malformed_fault(make_server):
    srv = make_server(fault=FaultConfig(malformed_rate=1.0))
    r = httpx.post(srv.url + "/v1/completions", json=BODY)
    assert r.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.text)


def test_rates_are_seeded_and_live_reconfigurable(make_server):
    srv = make_server(fault=FaultConfig(error_rate=0.5, seed=42))
    first = [httpx.post(srv.url + "/v1/completions", json=BODY).status_code for _ in range(12)]
    assert set(first) == {200, 503}
    srv.app.state.faults.configure(FaultConfig(error_rate=0.5, seed=42))
    again = [httpx.post(srv.url + "/v1/completions", json=BODY).status_code for _ in range(12)]
    assert again == first
    srv.app.state.faults.configure(None)
    assert httpx.post(srv.url + "/v1/completions", json=BODY).status_code == 200


def test_latency_is_non_blocking(make_server):
    srv = make_server(fault=FaultConfig(latency_s=3.0))
    out = {}

    def slow():
        t0 = time.perf_counter()
        out["status"] = httpx.post(srv.url + "/v1/completions", json=BODY, timeout=10).status_code
        out["elapsed"] = time.perf_counter() - t0

    th = threading.Thread(target=slow)
    th.start()
    time.sleep(0.15)  # the completion is now sleeping in the injected latency
    # /health is answered while the completion still sleeps: an ordering, not a timing threshold
    assert httpx.get(srv.url + "/health").status_code == 200
    assert th.is_alive() and "status" not in out
    assert srv.app.state.metrics.in_flight == 1
    th.join(10)
    assert out["status"] == 200 and out["elapsed"] >= 3.0


def test_fault_config_validation():
    for bad in (dict(error_rate=1.5), dict(error_rate=0.7, malformed_rate=0.7), dict(status_code=200),
                dict(latency_s=-1), dict(retry_after=-1)):
        with pytest.raises(ValueError):
            FaultConfig(**bad)
