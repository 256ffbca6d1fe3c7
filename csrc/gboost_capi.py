"""Python side of the gboost C ABI (csrc/gboost.h).

libgboost.so embeds this file at build time (csrc/embed_py.py turns it into a C byte array) and
runs it as the module ``_gboost_capi``; nothing is read from disk at run time. It can also be
imported on its own (tests/csrc does) because it only uses the engine's public Python API.

One :class:`EngineHandle` per ``gboost_engine*``. It owns the serving stack of
:func:`gboost.stack.build_stack` (engine, scheduler, general LLM, PRM, step executor) and ONE
asyncio event loop running in a dedicated daemon thread. Every C call (from any host thread, GIL
taken by the C side) submits a coroutine to that loop with ``run_coroutine_threadsafe`` and
waits for it; the wait releases the GIL. Concurrent ``generate`` and ``solve`` calls on one handle
therefore go through the same scheduler, which batches their forward passes together, and the
KV cache is only ever touched from the loop thread and the scheduler's forward thread (never
from host threads).

Every entry point takes and returns ``str`` (JSON); errors are Python exceptions, which the C
side turns into ``error_message(exc)``: the message only (no traceback), with anything that
looks like a credential redacted.
"""
from __future__ import annotations

import asyncio
import json
import math
import os
import re
import threading
import time

__all__ = ["EngineHandle", "create_engine", "error_message", "check_environment", "setup_logging", "ABI_VERSION"]

ABI_VERSION = 1

#: keys of the engine config JSON (gboost_engine_create) -> meaning
CONFIG_KEYS = {
    "slm": "SLM: demo name, HF directory, .gguf file or Hub id (required)",
    "llm": "general LLM: model name/path (resident), http(s) URL (OpenAI-compatible) or null",
    "prm": "PRM model (null: the local LLM, else the SLM)",
    "prm_kind": "judge | token_pair | two_class | value_head (prm: value-head:DIR from gboost train-prm, or value-head:NAME of a shipped head)",
    "base": "the SLM's untuned base model, for search fusion_rule 'proxy' (null: none)",
    "slm_adapter": "a peft LoRA adapter directory for the SLM (null: none)",
    "slm_adapter_mode": "auto | merge | unmerged (auto: unmerged when base is the SLM's own checkpoint)",
    "lora_modules": "{name: peft adapter dir}: adapters unmerged on the SLM's resident model, named per call by 'adapter'",
    "dtype": "bfloat16 | float16 | float32",
    "weights": "bf16 | int8 | int4: the format of every resident model's linear weights",
    "device": "cpu | cuda | cuda:N",
    "kv_memory_gb": "KV pool size in GiB",
    "block_size": "KV block size in tokens",
    "search": "SearchConfig fields (engine/search/config.py)",
    "collab_mode": "speculative | exact",
    "max_draft": "speculative: SLM tokens drafted per round (at most, if adaptive)",
    "draft_policy": "speculative: fixed | adaptive (engine/collab/fused_step.py next_draft)",
    "on_llm_fault": "fallback | fail",
    "topk_support": "SLM top-k entering the support when LLM rows are top-k only",
    "llm_timeout_s": "remote LLM: request timeout",
    "llm_top_logprobs": "remote LLM: top logprobs per position",
    "llm_kind": "remote LLM: auto | completions | chat (what the URL offers; auto probes it)",
    "llm_model": "remote LLM: the model name at the URL (null: the first it lists)",
}
_OPTION_KEYS = ("collab_mode", "max_draft", "draft_policy", "on_llm_fault", "topk_support")
_STACK_KEYS = ("prm_kind", "base", "slm_adapter", "slm_adapter_mode", "dtype", "weights", "device", "kv_memory_gb", "block_size", "llm_timeout_s", "llm_top_logprobs",
               "llm_kind", "llm_model")

#: keys of gboost_generate's params JSON besides the SamplingParams fields
GENERATE_EXTRA_KEYS = ("role", "chat", "adapter")
#: keys of gboost_solve's overrides JSON besides the SearchConfig fields
SOLVE_EXTRA_KEYS = ("include_tree", "adapter")


# ---------------------------------------------------------------------------------- errors
_SECRET_ENV = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.I)
_SECRET_PATTERNS = [
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}"), r"\1 ***"),
    (re.compile(r"(?i)((?:api[_-]?key|access[_-]?token|token|secret|password)[\"']?\s*[:=]\s*[\"']?)[^\s\"'&,;]+"),
     r"\1***"),
    (re.compile(r"\b(sk|hf|pk|rk)[-_][A-Za-z0-9_-]{8,}"), r"\1-***"),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@"), r"\1***@"),
]


def redact(text: str) -> str:
    """Remove credentials from an error message: values of secret-looking environment variables
    (GBOOST_LLM_API_KEY, HF_TOKEN...), bearer tokens, key=value secrets, URL user:password@."""
    for name, value in os.environ.items():
        if value and len(value) >= 6 and _SECRET_ENV.search(name):
            text = text.replace(value, "***")
    for pat, rep in _SECRET_PATTERNS:
        text = pat.sub(rep, text)
    return text


def error_message(exc: BaseException) -> str:
    """'ExceptionType: message' (no traceback), credentials redacted; what the C caller gets."""
    try:
        msg = str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not hide the error
        msg = ""
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        msg = exc.args[0]  # str(KeyError) adds quotes
    name = type(exc).__name__
    return redact(f"{name}: {msg}" if msg else name)


class _RedactingFormatter:
    """logging.Formatter wrapper that passes every formatted record through redact()."""

    def __init__(self, fmt: str):
        import logging

        self._inner = logging.Formatter(fmt)

    def format(self, record) -> str:
        return redact(self._inner.format(record))

    def __getattr__(self, name):
        return getattr(self._inner, name)


def setup_logging() -> None:
    """Called by gboost_init only when gboost started the interpreter (the host has no Python
    logging of its own): WARNING and above to stderr, credentials redacted."""
    import logging

    root = logging.getLogger()
    if root.handlers:
        return
    h = logging.StreamHandler()
    h.setFormatter(_RedactingFormatter("gboost %(levelname)s %(name)s: %(message)s"))
    root.addHandler(h)
    root.setLevel(logging.WARNING)


def check_environment() -> None:
    """Fail early (gboost_init) when the engine package cannot be found in this interpreter."""
    import importlib.util
    import sys

    if importlib.util.find_spec("gboost") is None or importlib.util.find_spec("gboost.stack") is None:
        raise ImportError(f"the gboost Python package (module 'gboost') is not importable from Python "
                          f"{sys.version.split()[0]} at {sys.prefix}; install gboost into that Python, or "
                          f"point gboost_init at the right one (python home or interpreter path) / set PYTHONPATH")


# ---------------------------------------------------------------------------------- JSON in/out
def _parse_object(text: str | None, what: str) -> dict:
    if text is None or text.strip() == "":
        return {}
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what}: invalid JSON ({e})") from None
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ValueError(f"{what}: must be a JSON object, got {type(d).__name__}")
    return d


def _adapter_key(d: dict, what: str) -> str | None:
    """Pop a call's "adapter" (a name from the engine config's lora_modules, or null)."""
    adapter = d.pop("adapter", None)
    if adapter is not None and (not isinstance(adapter, str) or not adapter):
        raise ValueError(f"{what}: 'adapter' must be a name from lora_modules or null")
    return adapter


def _check_keys(d: dict, allowed, what: str) -> None:
    unknown = sorted(str(k) for k in d if k not in allowed)
    if unknown:
        raise ValueError(f"{what}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(allowed))}")


def _json_default(o):
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def _clean_floats(o):
    """JSON has no NaN/Infinity: map them to null so any C++ JSON parser accepts the output."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _clean_floats(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean_floats(v) for v in o]
    return o


def _dumps(d: dict) -> str:
    return json.dumps(_clean_floats(json.loads(json.dumps(d, default=_json_default))),
                      ensure_ascii=False, allow_nan=False)


# ---------------------------------------------------------------------------------- the handle
class EngineHandle:
    """The serving stack and its event-loop thread behind one ``gboost_engine*``."""

    def __init__(self, config_json: str):
        cfg = _parse_object(config_json, "config_json")
        _check_keys(cfg, CONFIG_KEYS, "config_json")
        slm = cfg.get("slm")
        if not isinstance(slm, str) or not slm:
            raise ValueError("config_json: 'slm' (model name or path) is required")
        llm = cfg.get("llm")
        if llm in ("", "none"):
            llm = None
        for key in ("llm", "prm", "base", "slm_adapter"):
            v = llm if key == "llm" else cfg.get(key)
            if v is not None and not isinstance(v, str):
                raise ValueError(f"config_json: '{key}' must be a string or null")
        lora = cfg.get("lora_modules") or {}
        if not isinstance(lora, dict) or not all(isinstance(k, str) and k and isinstance(v, str) for k, v in lora.items()):
            raise ValueError("config_json: 'lora_modules' must be an object of adapter name -> directory")
        search = cfg.get("search") or {}
        if not isinstance(search, dict):
            raise ValueError("config_json: 'search' must be an object of SearchConfig fields")

        from gboost.collab.executor import CollabOptions
        from gboost.search.config import SearchConfig, prm_kind_of

        self.cfg = SearchConfig.from_dict(search, prm_kind_of(cfg.get("prm"), cfg.get("prm_kind", "judge")))
        options = CollabOptions(**{k: cfg[k] for k in _OPTION_KEYS if k in cfg})
        stack_kw = {k: cfg[k] for k in _STACK_KEYS if k in cfg}
        self.config = {"slm": slm, "llm": llm, "prm": cfg.get("prm"), **stack_kw}

        self._lock = threading.Condition()
        self._inflight = 0
        self._closed = False
        self.stack = None
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="gboost-capi-loop", daemon=True)
        self._thread.start()
        try:
            from gboost.stack import build_stack
            self.stack = self._call(build_stack(self.cfg, slm=slm, llm=llm, prm=cfg.get("prm"),
                                                options=options, **stack_kw))
            for name, path in lora.items():
                self.stack.engine.add_adapter(name, path, model=self.stack.engine.roles["slm"])
        except BaseException:
            if self.stack is not None:
                self._call(self.stack.aclose())
            self._stop_loop()
            raise

    # -- loop thread ----------------------------------------------------------------
    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def _call(self, coro):
        """Run coro on the handle's loop and wait (the wait releases the GIL)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def _enter(self) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("engine handle is closed")
            self._inflight += 1

    def _leave(self) -> None:
        with self._lock:
            self._inflight -= 1
            self._lock.notify_all()

    # -- generate ----------------------------------------------------------------------
    def generate(self, prompt: str, params_json: str | None = None) -> str:
        from gboost.sampling import SamplingParams

        p = _parse_object(params_json, "params_json")
        fields = set(SamplingParams.__dataclass_fields__)
        _check_keys(p, fields | set(GENERATE_EXTRA_KEYS), "params_json")
        role = p.pop("role", "slm")
        chat = p.pop("chat", False)
        adapter = _adapter_key(p, "params_json")
        if not isinstance(role, str) or not isinstance(chat, bool):
            raise ValueError("params_json: 'role' must be a string and 'chat' true or false")
        params = SamplingParams(**p)
        self._enter()
        try:
            t0 = time.perf_counter()
            m = self.stack.engine.role(role, adapter)
            tok = m.tokenizer
            if chat:
                if not tok.chat_template:
                    raise ValueError(f"model {m.key!r} has no chat template; drop 'chat'")
                ids = tok.encode_chat([{"role": "user", "content": prompt}])
            else:
                ids = tok.encode_prompt(prompt)
            if not ids:
                raise ValueError("prompt is empty (encodes to no tokens)")
            out, finish = self._call(self._generate(role, ids, params, adapter))
            text = tok.decode(out, skip_special_tokens=True)
            return _dumps({"text": text, "token_ids": out, "seconds": round(time.perf_counter() - t0, 6),
                           "finish_reason": finish, "prompt_tokens": len(ids)})
        finally:
            self._leave()

    async def _generate(self, role: str, ids: list[int], params, adapter: str | None) -> tuple[list[int], str]:
        """Engine.agenerate: the forwards go through the handle's shared scheduler (batched with
        every other call), with Engine.generate's stopping rules and seeded sampling."""
        o = await self.stack.engine.agenerate(self.stack.scheduler, list(ids), params, role=role, adapter=adapter)
        return o.token_ids, o.finish_reason

    # -- solve ---------------------------------------------------------------------------
    def solve(self, question: str, overrides_json: str | None = None) -> str:
        from gboost.search.api import solve

        o = _parse_object(overrides_json, "overrides_json")
        include_tree = o.pop("include_tree", False)
        adapter = _adapter_key(o, "overrides_json")
        if not isinstance(include_tree, bool):
            raise ValueError("overrides_json: 'include_tree' must be true or false")
        cfg = self.cfg.replace(**o) if o else self.cfg
        self._enter()
        try:
            ex = self.stack.executor if adapter is None else self.stack.executor.with_adapter(adapter)
            # solve() gives the shared executor this call's settings (EngineExecutor.with_config)
            res = self._call(solve(question, ex, cfg))
            return _dumps(res.to_dict(include_tree=include_tree))
        finally:
            self._leave()

    # -- info / close ----------------------------------------------------------------------
    def info(self) -> str:
        import sys

        self._enter()
        try:
            eng, sched = self.stack.engine, self.stack.scheduler
            return _dumps({"abi_version": ABI_VERSION, "config": self.config, "search": self.cfg.to_dict(),
                           "roles": dict(eng.roles), "kv_free_blocks": eng.cache.blocks.num_free(),
                           "scheduler_batches": sched.batches,
                           "scheduler_max_batch": max(sched.batch_sizes, default=0),
                           "backend_cost": self.stack.executor.cost.to_dict(),
                           "python": {"version": sys.version.split()[0], "executable": sys.executable,
                                      "prefix": sys.prefix}})
        finally:
            self._leave()

    def close(self) -> None:
        """Wait for in-flight calls, close the stack, stop and join the loop thread. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            while self._inflight:
                self._lock.wait()
        try:
            if self.stack is not None and not self.loop.is_closed():
                self._call(self.stack.aclose())
        finally:
            self.stack = None
            self._stop_loop()
            import gc

            gc.collect()  # free the models and the KV pool now, not at some later collection

    def _stop_loop(self) -> None:
        loop = self.loop
        if loop.is_closed():
            return

        async def drain():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await loop.shutdown_asyncgens()
            await loop.shutdown_default_executor()

        try:
            if self._thread.is_alive():
                asyncio.run_coroutine_threadsafe(drain(), loop).result(timeout=60)
        except Exception:  # noqa: BLE001 - closing must not fail the caller
            pass
        finally:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(timeout=60)
            if not self._thread.is_alive():
                loop.close()


def create_engine(config_json: str) -> EngineHandle:
    return EngineHandle(config_json)
