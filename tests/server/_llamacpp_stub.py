"""A stand-in for llama-cpp-python's ``/v1/completions`` (0.3.36), in front of a gboost app.

What it copies, as the real server answers (checked against it, benchmarks/RESULTS.md):

* a token-id prompt is refused with HTTP 500 and pydantic's validation errors
  (``'loc': ('body', 'prompt', 'str'), 'msg': 'Input should be a valid string'``);
* a text prompt is tokenised (no BOS: the Qwen GGUFs add none) and answered by the wrapped app;
* ``top_logprobs`` are keyed by token text, bytes decoded with errors *ignored*, in a dict (two
  tokens of one spelling keep one entry), plus the position's own token (``.update``);
* with ``echo`` the rows sit one position late (entry ``i`` is the distribution of token ``i+1``),
  entry 0 is null, and the generated token has no entry;
* there is no ``/health`` (404).
"""
from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import JSONResponse

LLAMA_500 = ("{n} validation errors:\n  {{'type': 'string_type', 'loc': ('body', 'prompt', 'str'), "
             "'msg': 'Input should be a valid string', 'input': {ids}}}\n")


class LlamaCppLike:
    def __init__(self, app, tokenizer) -> None:
        self.app, self.tok = app, tokenizer
        self.calls = {"ids_refused": 0, "completions": 0}
        raw = [self._bytes(i) for i in range(tokenizer.vocab_size)]
        self.spell = [b.decode("utf-8", "ignore") for b in raw]

    def _bytes(self, i: int) -> bytes:
        from gboost.llm.tokstrings import token_bytes
        if not hasattr(self, "_all"):
            self._all = token_bytes(self.tok)
        return self._all[i]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/") != "/v1/completions":
            if scope["type"] == "http" and scope["path"] == "/health":
                return await JSONResponse({"detail": "Not Found"}, status_code=404)(scope, receive, send)
            return await self.app(scope, receive, send)
        body = json.loads(await Request(scope, receive).body())
        if not isinstance(body.get("prompt"), str):
            self.calls["ids_refused"] += 1
            msg = LLAMA_500.format(n=len(body["prompt"]) + 1, ids=body["prompt"])
            return await JSONResponse({"error": {"message": msg, "type": "internal_server_error", "param": None,
                                                 "code": None}}, status_code=500)(scope, receive, send)
        self.calls["completions"] += 1
        ids = self.tok.encode(body["prompt"])
        inner = {**body, "prompt": ids, "return_tokens_as_token_ids": True}
        inner.pop("model", None)
        out = await self._inner(scope, inner)
        await JSONResponse(self._as_llama(out, bool(body.get("echo")), len(ids)))(scope, receive, send)

    async def _inner(self, scope, body: dict) -> dict:
        import httpx
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://in") as c:
            r = await c.post("/v1/completions", json=body)
        r.raise_for_status()
        return r.json()

    def _as_llama(self, data: dict, echo: bool, n_prompt: int) -> dict:
        lp = data["choices"][0]["logprobs"]
        ids = [int(t.split(":", 1)[1]) for t in lp["tokens"]]
        rows = lp["top_logprobs"]
        if echo:  # llama-cpp-python: entry i holds row i + 1; no entry for the generated token
            ids, rows, tlp = ids[:n_prompt], rows[1: n_prompt + 1], lp["token_logprobs"][1: n_prompt + 1]
        else:
            tlp = lp["token_logprobs"]
        tops, own = [], []
        for i, row in enumerate(rows):
            d = {self.spell[int(k.split(":", 1)[1])]: v for k, v in row.items()}
            # the entry of the position's own token, at its log-prob in this row (as .update does)
            tid = ids[i]
            got = {int(k.split(":", 1)[1]): v for k, v in row.items()}
            if tid in got:
                d[self.spell[tid]] = got[tid]
                own.append(got[tid])
            else:
                own.append(tlp[i] if not echo else None)
            tops.append(d)
        if echo and tops:
            tops[0], own[0] = None, None
        data["choices"][0]["logprobs"] = {"tokens": [self.spell[t] for t in ids], "token_logprobs": own,
                                          "top_logprobs": tops, "text_offset": list(range(len(ids)))}
        return data
