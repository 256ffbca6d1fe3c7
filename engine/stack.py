"""Builds the serving stack for a request stream: engine (SLM, local LLM, PRM on one KV pool),
scheduler, general LLM (local or remote), PRM scorer and the step executor."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

from gboost.engine import Engine
from gboost.scheduler import Scheduler
from gboost.collab.executor import CollabOptions, EngineExecutor
from gboost.search.actions import CHAT, ROWS, first_unrunnable
from gboost.search.config import VALUE_HEAD_PREFIX as VALUE_HEAD, SearchConfig, prm_kind_of
from gboost.prm.scorer import PRMScorer, PRMSpec

DEFAULT_SLM = "qwen2.5-coder-0.5b"
DEFAULT_LLM = "qwen2.5-coder-1.5b"


def is_url(s: str | None) -> bool:
    return bool(s) and s.startswith(("http://", "https://"))


@dataclass
class Stack:
    engine: Engine
    scheduler: Scheduler
    executor: EngineExecutor
    llm: object | None
    writer: object | None = None  # a chat endpoint's client (delegated steps), when there is one

    async def aclose(self) -> None:
        try:
            for client in (self.llm, self.writer):
                if client is not None:
                    await client.aclose()
        finally:
            try:
                if self.executor.base is not None:
                    await self.executor.base.aclose()
            finally:
                self.scheduler.close()


async def build_stack(cfg: SearchConfig, *, slm: str = DEFAULT_SLM, llm: str | None = DEFAULT_LLM,
                      prm: str | None = None, prm_kind: str = "judge", base: str | None = None,
                      slm_adapter: str | None = None, slm_adapter_mode: str = "auto", dtype: str = "bfloat16",
                      weights: str = "bf16",
                      device: str = "cpu", kv_memory_gb: float = 2.0, block_size: int = 16,
                      options: CollabOptions | None = None, llm_timeout_s: float = 60.0,
                      llm_top_logprobs: int = 20, llm_kind: str = "auto", llm_model: str | None = None,
                      llm_prompt: str = "auto", offload: bool = True) -> Stack:
    """`llm` is a model name/path (resident, shares the pool) or an http(s) URL of an
    OpenAI-compatible endpoint, whose kinds (`llm_kind`: auto | completions | chat, see
    engine/llm/endpoints.py) are probed at start-up; `llm_model` names the endpoint's model (else
    the first it lists); `llm_prompt` (auto | ids | text) how its completions prompts are sent
    (engine/llm/textprompt.py). The PRM defaults to the local LLM (judge), else the SLM;
    `prm="value-head:DIR"` scores with a trained value head on the resident model it was trained on.
    `base`: the SLM's untuned base model (resident, same tokenizer), needed by fusion_rule="proxy".
    `slm_adapter`: a peft LoRA adapter directory for the SLM, `slm_adapter_mode` auto | merge |
    unmerged (Engine.from_pretrained: merged at load, or one resident base and the delta on the
    SLM's rows only; auto: unmerged when `base` is the SLM's own checkpoint).
    `weights`: bf16 | int8 | int4, the format of every resident model's linears (models/quant.py).
    `offload`: forwards in a worker thread (see Scheduler); False suits a process with one caller."""
    remote = is_url(llm)
    if is_url(base):
        raise ValueError(f"base={base!r}: the proxy-tuning base model must be a local checkpoint, not a URL")
    head_dir = None
    if prm_kind_of(prm, prm_kind) == "value_head":
        if not prm:
            raise ValueError("prm_kind='value_head' needs the head's directory as the PRM (value-head:DIR)")
        head_dir = prm.removeprefix(VALUE_HEAD)
    if head_dir is not None:
        from gboost.prm.value_head import load_head
        load_head(head_dir)  # a missing or broken head fails before any model loads
        prm = None           # the head reads a resident model's rows: no PRM model of its own
    elif prm == "none":  # no step scoring (chain methods, `gboost train-prm` rollouts)
        prm = None
    elif prm is None:
        prm = llm if (llm and not remote) else slm
    engine = await asyncio.to_thread(
        Engine.from_pretrained, slm, None if remote else llm, prm, base=base, dtype=dtype, device=device,
        block_size=block_size, kv_memory_bytes=int(kv_memory_gb * (1 << 30)), slm_adapter=slm_adapter,
        adapter_mode=slm_adapter_mode, weights=weights)
    sched = Scheduler(engine, offload=offload)
    general = writer = None
    if llm and remote:
        from gboost.llm.endpoints import open_endpoint
        slm_m = engine.role("slm")
        try:
            # the endpoint must share the SLM's tokenizer (its size, not the SLM's padded logit
            # width); its rows are fused at the SLM's width, ids past it being padding
            ep = await open_endpoint(llm, llm_kind, tokenizer=slm_m.tokenizer, model=llm_model,
                                     timeout_s=llm_timeout_s,
                                     completions_kw={"top_logprobs": llm_top_logprobs, "prompt": llm_prompt,
                                                     "vocab_size": slm_m.config.vocab_size})
        except BaseException:  # nothing half-built outlives a failed start-up check
            sched.close()
            raise
        try:
            _check_endpoint_runs(cfg, ep)
        except BaseException:
            await ep.aclose()
            sched.close()
            raise
        general, writer = ep.scorer, ep.writer
    elif llm:
        from gboost.llm.local import LocalLLM
        general = LocalLLM(engine, sched)
    if head_dir is not None:
        from gboost.prm.value_scorer import ValueHeadScorer
        scorer = ValueHeadScorer(engine, sched, head_dir)
    else:
        scorer = PRMScorer(engine, sched, PRMSpec(kind=prm_kind)) if prm else None
    base_lm = None
    if base:
        from gboost.llm.local import LocalLLM
        base_lm = LocalLLM(engine, sched, role="base", charge_as="base_tokens")
    executor = EngineExecutor(engine, sched, cfg, llm=general, prm=scorer, base=base_lm, writer=writer,
                              options=options)
    return Stack(engine, sched, executor, general, writer)


def _check_endpoint_runs(cfg: SearchConfig, ep) -> None:
    """The server's config needs endpoint kinds ``ep`` offers; the error says which and why not
    (what each action needs, and its stand-in, is the table of actions)."""
    a = first_unrunnable(cfg, has_rows="completions" in ep.kinds, has_chat="chat" in ep.kinds)
    if a is None:
        return
    kind = {ROWS: "completions", CHAT: "chat"}[a.needs]
    what = f"{a.what} (method={cfg.method}" + (f", {a.width_field} > 0)" if cfg.method == "gboost" else ")")
    try:
        ep.need(kind, what)
    except ValueError as e:
        hint = "; on a chat-only endpoint use delegated steps: collab_width=0, delegate_width=1" \
            if cfg.method == "gboost" and a.needs == ROWS else ""
        raise type(e)(f"{e}{hint}") from None
