"""SearchContext: what one request's search decides with -- executor calls, this request's cost
record (budgets read it), the ledger of held states, the rng, stats, answers and the step stream."""
from __future__ import annotations

import asyncio
import inspect
import math
import random
import re
from typing import Any, Awaitable, Callable

from gboost.cost import CostRecord

from .answer import ends_path, extract_answer
from .actions import ACTIONS
from .config import SearchConfig
from .protocol import check_step_out
from .tree import Node

__all__ = ["SearchContext", "settle", "OnStep"]

OnStep = Callable[[dict], "Awaitable[Any] | Any"]
_UNLIMITED = 1 << 40


class SearchContext:
    """Everything one request needs: executor access, cost, ledger of held states, rng, stats."""

    def __init__(self, executor: Any, cfg: SearchConfig, question: str,
                 on_step: Callable[[dict], Any] | None = None) -> None:
        self.executor = executor
        self.cfg = cfg
        self.question = question
        self.on_step = on_step
        self.cost = CostRecord()  # this request's record: solve() charges the executor's work here
        self.rng = random.Random(cfg.seed)
        self.answer_re = re.compile(cfg.answer_pattern)
        self.root: Node | None = None
        self.streamed = False  # a method that emitted its steps while deciding them
        self.emitted = 0
        self._held: dict[int, Any] = {}
        self._answers: dict[int, tuple[str | None, str | None]] = {}
        self._llm_reserved = 0  # LLM tokens granted to steps in flight (max_llm_tokens)
        self.stats: dict[str, Any] = {
            "simulations": 0, "rounds": 0, "terminal_revisits": 0, "dedup_dropped": 0,
            "expansions": dict.fromkeys(ACTIONS, 0), "stop_reason": None,
        }

    # ----------------------------------------------------------------- ledger
    def hold(self, state: Any) -> None:
        self._held[id(state)] = state

    def release(self, state: Any) -> None:
        """Release one state now (idempotent: a state is released at most once)."""
        st = self._held.pop(id(state), None)
        if st is not None:
            self.executor.release(st)

    def prune(self, node: Node) -> None:
        """Discard a scored node that another step replaces (rsd, gate_replaces): it keeps its own
        evaluation for the trace, is never backed up or followed, and its KV is released now."""
        node.pruned = True
        node.visits, node.value_sum = 1, node.step_reward
        self.release(node.state)

    @property
    def n_held(self) -> int:
        return len(self._held)

    def release_all(self, raise_errors: bool = True) -> None:
        """Release every state still held, newest first (children before parents)."""
        errors: list[BaseException] = []
        for key in reversed(list(self._held)):
            st = self._held.pop(key)
            try:
                self.executor.release(st)
            except Exception as e:  # keep releasing the others
                errors.append(e)
        if self.root is not None:
            for node in self.root.iter_nodes():
                node.state = None
        if errors and raise_errors:
            raise errors[0]

    # ----------------------------------------------------------------- budget
    def llm_quota(self) -> int:
        """How many more LLM-involving steps this request may generate now. Under a token budget,
        one a ``max_step_tokens`` of what is left (rounded up): ``expand`` then splits the tokens
        left among the steps it writes, so the budget holds whatever the steps turn out to cost."""
        c = self.cfg
        if c.max_llm_faults is not None and self.cost.total_faults >= c.max_llm_faults:
            return 0
        quota = _UNLIMITED if c.max_llm_calls is None else max(0, c.max_llm_calls - self.cost.llm_calls)
        if c.max_llm_tokens is not None:
            quota = min(quota, -(-self.llm_tokens_left() // c.max_step_tokens))
        return quota

    def llm_tokens_left(self) -> int:
        """``max_llm_tokens`` less what the LLM generated and what steps in flight were granted
        (their spending so far counts twice: a conservative bound, exact once they finish)."""
        return max(0, self.cfg.max_llm_tokens - self.cost.llm_generated_tokens - self._llm_reserved)

    def _llm_shares(self, requests: list[tuple[Node, str, int]]) -> tuple[list[tuple[Node, str, int]], int | None]:
        """The requests cut to the LLM tokens left, and each LLM step's share of them (None: no
        token budget). The shares sum to at most what is left, so the budget holds exactly."""
        n_llm = sum(n for _, a, n in requests if a != "slm")
        if self.cfg.max_llm_tokens is None or n_llm == 0:
            return requests, None
        left = self.llm_tokens_left()
        if n_llm > left:  # more steps than tokens: one token each, for as many as there are
            cut, room = [], left
            for node, a, n in requests:
                k = n if a == "slm" else min(n, room)
                room -= 0 if a == "slm" else k
                cut.append((node, a, k))
            return cut, 1
        return requests, left // n_llm

    # ---------------------------------------------------------------- executor
    async def make_root(self) -> Node:
        with self.cost.timed("root"):
            state = await self.executor.root(self.question)
        self.hold(state)
        self.root = Node.new_root(state)
        return self.root

    def _hold_all(self, outs: Any) -> None:
        for out in outs if isinstance(outs, (list, tuple)) else ():
            if getattr(out, "state", None) is not None:
                self.hold(out.state)

    async def expand(self, requests: list[tuple[Node, str, int]], *, dedup: bool | None = None) -> list[list[Node]]:
        """Run the expansions concurrently and attach the new children.

        Returns, for each request, the children created (duplicates of existing
        siblings dropped and released when ``dedup``).  Every state returned by the
        executor is put in the ledger before any error is raised, so none leaks.
        """
        dedup = self.cfg.dedup_children if dedup is None else dedup
        requests, share = self._llm_shares(requests)
        live = [(i, r) for i, r in enumerate(requests) if r[2] > 0]
        for _, (node, _a, _n) in live:
            if node.state is None:
                raise RuntimeError(f"expanding node {node.id} whose state was released")

        def call(node: Node, action: str, n: int):
            kw = {} if share is None or action == "slm" else {"max_llm_tokens": share}
            return self.executor.expand(node.state, action, n, first=node.drawn.get(action, 0), **kw)
        granted = 0 if share is None else share * sum(n for _, (_, a, n) in live if a != "slm")
        self._llm_reserved += granted
        try:
            with self.cost.timed("expand"):
                results = await settle([call(*r) for _, r in live], on_orphan=self._hold_all)
        finally:
            self._llm_reserved -= granted
        first_exc: BaseException | None = None
        for res in results:
            if isinstance(res, BaseException):
                first_exc = first_exc or res
                continue
            if not isinstance(res, (list, tuple)):
                first_exc = first_exc or TypeError(
                    f"executor.expand must return a list of StepOut, got {type(res).__name__}")
                continue
            for out in res:
                st = getattr(out, "state", None)
                if st is not None:
                    self.hold(st)
        if first_exc is not None:
            raise first_exc
        out_lists: list[list[Node]] = [[] for _ in requests]
        for (i, (node, action, n)), res in zip(live, results):
            if len(res) > n:
                raise ValueError(f"executor.expand(n={n}) returned {len(res)} children")
            node.expanded_actions.add(action)
            node.drawn[action] = node.drawn.get(action, 0) + n
            self.stats["expansions"][action] += 1
            seen = {c.text.strip() for c in node.children if not c.pruned} if dedup else set()
            for out in res:
                check_step_out(out, action)
                key = out.text.strip()
                if dedup and key in seen:
                    self.stats["dedup_dropped"] += 1
                    self.release(out.state)
                    continue
                seen.add(key)
                depth = node.depth + 1
                terminal = bool(out.terminal) or ends_path(out.text, depth, self.cfg, self.answer_re)
                child = node.add_child(out.text, out.token_ids, out.action, state=out.state,
                                       terminal=terminal, fault=out.fault)
                out_lists[i].append(child)
        return out_lists

    async def score(self, nodes: list[Node]) -> None:
        """One batched PRM call; sets ``node.reward`` (NaN -> 0, clipped to [0, 1])."""
        if not nodes:
            return
        with self.cost.timed("score"):
            rewards = list(await self.executor.score([n.state for n in nodes]))
        if len(rewards) != len(nodes):
            raise ValueError(f"executor.score returned {len(rewards)} rewards for {len(nodes)} states")
        for node, r in zip(nodes, rewards):
            r = float(r)
            node.reward = 0.0 if math.isnan(r) else min(1.0, max(0.0, r))

    # ---------------------------------------------------------------- answers
    def answers(self, node: Node) -> tuple[str | None, str | None]:
        """(strict answer, answer with last-number fallback) of the path ending at ``node``."""
        got = self._answers.get(node.id)
        if got is None:
            text = node.solution_text(self.cfg.step_delimiter)
            got = (extract_answer(text, "auto", strict=True), extract_answer(text, "auto"))
            self._answers[node.id] = got
        return got

    def has_answer(self, node: Node) -> bool:
        return self.answers(node)[0] is not None

    # ---------------------------------------------------------------- stream
    def step_dict(self, node: Node, index: int) -> dict[str, Any]:
        return {"index": index, "text": node.text, "action": node.action, "reward": node.reward}

    async def emit(self, node: Node) -> None:
        """Report one decided step to ``on_step`` (sync or async callback)."""
        self.streamed = True
        if self.on_step is None:
            self.emitted += 1
            return
        r = self.on_step(self.step_dict(node, self.emitted))
        self.emitted += 1
        if inspect.isawaitable(r):
            await r


async def settle(aws, on_orphan: Callable[[Any], None]) -> list:
    """``gather(*aws, return_exceptions=True)`` that loses nothing on cancellation.

    If the caller is cancelled while waiting, the pending awaitables are cancelled too, every one
    is waited for, each result that did arrive is handed to ``on_orphan`` (so states created by an
    ``expand`` that finished just in time are released, not leaked), and the cancellation goes on.
    A second cancellation during that wait (a server cancelling at shutdown what its handlers are
    already cancelling) does not cut it short: the results would be lost with their KV blocks.
    """
    tasks = list(map(asyncio.ensure_future, aws))
    try:
        return await asyncio.gather(*tasks, return_exceptions=True)
    except asyncio.CancelledError:
        for t in tasks:
            t.cancel()
        # test for done first: a caller cancelled on every loop turn (anyio re-delivers a cancelled
        # scope's cancellation) would otherwise never get past the await below
        while not all(t.done() for t in tasks):
            try:
                await asyncio.wait(tasks)
            except asyncio.CancelledError:
                pass  # already cancelling: keep waiting for the orphans, then re-raise below
        for t in tasks:
            if not t.cancelled() and t.exception() is None:
                on_orphan(t.result())
        raise
