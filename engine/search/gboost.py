"""G-Boost: Monte Carlo tree search over reasoning steps, two generation actions, PRM values.

One simulation = select -> expand -> evaluate -> backpropagate:

select
    From the root, follow the child with the highest UCT
    (``Q + uct_c * sqrt(ln N_parent / N_child)``, ties broken by ``random.Random(seed)``)
    until an unexpanded node or a terminal node.  With ``leaf_parallelism > 1``
    several leaves are selected per round: virtual losses on the paths in flight
    steer later picks elsewhere, and a picked leaf (and any ancestor with nothing
    else to offer) is blocked for the rest of the round, so picks are distinct.
expand
    The leaf gets children from the two actions -- ``slm_width`` SLM samples and
    ``collab_width`` SLM+LLM fused samples -- as decided by ``action_policy``
    (see engine/search/config.py).  All expansion calls of a round run
    concurrently (``asyncio.gather``) so the backend batches the frontier.
    Children are terminal when the backend says so, when the step matches
    ``answer_pattern``, or at ``max_depth``.  Siblings with duplicate text are
    dropped (``dedup_children``).
evaluate
    One batched ``backend.score`` call for all new children of the round; the PRM
    reward of a step is the child's value (no rollouts).
backpropagate
    Each new child's reward is added as one visit to the child and all its
    ancestors (running means, see engine/search/tree.py).  Selecting a terminal
    node again backs its reward up once more (no backend call).

Budgets: before each round the request's LLM quota is computed from
``max_llm_calls`` / ``max_llm_tokens`` / ``max_llm_faults``; once it is spent only
SLM children are generated.  After the simulations, if no terminal node exists
and ``finish_unterminated`` is set, the best open leaf is completed greedily:
per step one SLM and (budget permitting) one collab sample, the PRM keeps the
better one.  The answer comes from the best terminal path
(``final_choice``/``prm_aggregation``).

:class:`SearchContext` (per-request state: backend calls, cost, state ledger)
is shared with the baselines.
"""
from __future__ import annotations

import inspect
import math
import random
import re
from typing import Any, Callable

from .answer import answer_key, extract_answer
from .backend import check_step_out, settle
from .config import SearchConfig
from .cost import CostRecord, count_step
from .tree import Node, best_terminal, path_score, select_child

__all__ = ["SearchContext", "run_gboost", "choose_final"]

_UNLIMITED = 1 << 40


class SearchContext:
    """Everything one request needs: backend access, cost, ledger of held states, rng, stats."""

    def __init__(self, backend: Any, cfg: SearchConfig, question: str,
                 on_step: Callable[[dict], Any] | None = None) -> None:
        self.backend = backend
        self.cfg = cfg
        self.question = question
        self.on_step = on_step
        self.cost = CostRecord()
        self.measured: CostRecord | None = None  # live per-request counts of a measuring backend
        self.rng = random.Random(cfg.seed)
        self.answer_re = re.compile(cfg.answer_pattern)
        self.root: Node | None = None
        self.streamed = False  # a method that emitted its steps while deciding them
        self.emitted = 0
        self._held: dict[int, Any] = {}
        self._answers: dict[int, tuple[str | None, str | None]] = {}
        self.stats: dict[str, Any] = {
            "simulations": 0, "rounds": 0, "terminal_revisits": 0, "dedup_dropped": 0,
            "expansions": {"slm": 0, "collab": 0, "llm": 0}, "stop_reason": None,
        }

    # ----------------------------------------------------------------- ledger
    def hold(self, state: Any) -> None:
        self._held[id(state)] = state

    def release(self, state: Any) -> None:
        """Release one state now (idempotent: a state is released at most once)."""
        st = self._held.pop(id(state), None)
        if st is not None:
            self.backend.release(st)

    @property
    def n_held(self) -> int:
        return len(self._held)

    def release_all(self, raise_errors: bool = True) -> None:
        """Release every state still held, newest first (children before parents)."""
        errors: list[BaseException] = []
        for key in reversed(list(self._held)):
            st = self._held.pop(key)
            try:
                self.backend.release(st)
            except Exception as e:  # keep releasing the others
                errors.append(e)
        if self.root is not None:
            for node in self.root.iter_nodes():
                node.state = None
        if errors and raise_errors:
            raise errors[0]

    # ----------------------------------------------------------------- budget
    def llm_quota(self) -> int:
        """How many more LLM-involving steps this request may generate now."""
        c = self.cfg
        llm_tokens = max(self.cost.llm_tokens, self.measured.llm_tokens if self.measured else 0)
        if c.max_llm_tokens is not None and llm_tokens >= c.max_llm_tokens:
            return 0
        if c.max_llm_faults is not None and self.cost.total_faults >= c.max_llm_faults:
            return 0
        if c.max_llm_calls is None:
            return _UNLIMITED
        return max(0, c.max_llm_calls - self.cost.llm_calls)

    # ---------------------------------------------------------------- backend
    async def make_root(self) -> Node:
        with self.cost.timed("root"):
            state = await self.backend.root(self.question)
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
        backend is put in the ledger before any error is raised, so none leaks.
        """
        dedup = self.cfg.dedup_children if dedup is None else dedup
        live = [(i, r) for i, r in enumerate(requests) if r[2] > 0]
        for _, (node, _a, _n) in live:
            if node.state is None:
                raise RuntimeError(f"expanding node {node.id} whose state was released")
        with self.cost.timed("expand"):
            results = await settle(
                [self.backend.expand(node.state, action, n) for _, (node, action, n) in live],
                on_orphan=self._hold_all)
        first_exc: BaseException | None = None
        for res in results:
            if isinstance(res, BaseException):
                first_exc = first_exc or res
                continue
            if not isinstance(res, (list, tuple)):
                first_exc = first_exc or TypeError(
                    f"backend.expand must return a list of StepOut, got {type(res).__name__}")
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
                raise ValueError(f"backend.expand(n={n}) returned {len(res)} children")
            node.expanded_actions.add(action)
            self.stats["expansions"][action] += 1
            seen = {c.text.strip() for c in node.children if not c.pruned} if dedup else set()
            for out in res:
                check_step_out(out, action)
                count_step(self.cost, out.action, len(out.token_ids), out.fault)
                key = out.text.strip()
                if dedup and key in seen:
                    self.stats["dedup_dropped"] += 1
                    self.release(out.state)
                    continue
                seen.add(key)
                depth = node.depth + 1
                terminal = bool(out.terminal) or depth >= self.cfg.max_depth or bool(self.answer_re.search(out.text))
                child = node.add_child(out.text, out.token_ids, out.action, state=out.state,
                                       terminal=terminal, fault=out.fault)
                out_lists[i].append(child)
        return out_lists

    async def score(self, nodes: list[Node]) -> None:
        """One batched PRM call; sets ``node.reward`` (NaN -> 0, clipped to [0, 1])."""
        if not nodes:
            return
        with self.cost.timed("score"):
            rewards = list(await self.backend.score([n.state for n in nodes]))
        if len(rewards) != len(nodes):
            raise ValueError(f"backend.score returned {len(rewards)} rewards for {len(nodes)} states")
        for node, r in zip(nodes, rewards):
            r = float(r)
            node.reward = 0.0 if math.isnan(r) else min(1.0, max(0.0, r))
            self.cost.prm_tokens += len(node.token_ids)

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


# --------------------------------------------------------------------------- final choice
def choose_final(ctx: SearchContext, root: Node) -> Node | None:
    """The node ending the chosen solution, per ``final_choice`` and ``prm_aggregation``."""
    how = ctx.cfg.prm_aggregation
    if ctx.cfg.final_choice == "weighted_vote":
        terms = [n for n in root.iter_nodes()
                 if n.terminal and not n.is_root and not n.pruned and ctx.has_answer(n)]
        if terms:
            groups: dict[str, list[Node]] = {}
            for n in terms:
                key = answer_key(ctx.answers(n)[0])
                groups.setdefault(key if key is not None else "", []).append(n)
            def group_rank(members: list[Node]) -> tuple:
                scores = [path_score(m, how) for m in members]
                return (sum(scores), max(scores), -min(m.id for m in members))
            winner = max(groups.values(), key=group_rank)
            return max(winner, key=lambda n: (path_score(n, how), n.visits, -n.id))
    return best_terminal(root, how, has_answer=ctx.has_answer)


# --------------------------------------------------------------------------------- MCTS
def _arm_stats(node: Node, action: str) -> tuple[int, float, list[Node]]:
    kids = [c for c in node.children if c.action == action and not c.pruned]
    return sum(k.visits + k.vloss for k in kids), sum(k.value_sum for k in kids), kids


def _select(ctx: SearchContext, root: Node, quota: int,
            blocked: set[int]) -> tuple[Node, str | None] | None:
    """Descend by UCT, avoiding ``blocked`` nodes (picked earlier in this round).

    Returns (node, arm) -- ``arm`` is the action to expand for policy 'arms' -- or
    None when every candidate is blocked.
    """
    cfg = ctx.cfg
    node = root
    while True:
        if node.id in blocked:
            return None
        if node.terminal:
            return node, None
        if cfg.action_policy != "arms":
            if not node.children:
                return node, None
            free = [ch for ch in node.children if ch.id not in blocked]
            if not free:
                return None
            node = select_child(node, cfg.uct_c, ctx.rng, among=free)
            continue
        # actions as UCT arms
        explore = math.log(max(1, node.visits + node.vloss))
        cands: list[tuple[float, int, str, list[Node]]] = []
        for rank, action in enumerate(("slm", "collab")):
            n_a, w_a, kids = _arm_stats(node, action)
            if action in node.expanded_actions:
                free = [k for k in kids if k.id not in blocked]
                if free and n_a > 0:
                    cands.append((w_a / n_a + cfg.uct_c * math.sqrt(explore / n_a), -rank, action, free))
            elif _arm_width(cfg, action, quota) > 0:
                cands.append((cfg.arm_fpu + cfg.uct_c * math.sqrt(explore), -rank, action, []))
        if not cands:
            return None if node.children else (node, "slm")
        _, _, arm, free = max(cands, key=lambda t: (t[0], t[1]))  # ties: the cheaper action first
        if arm not in node.expanded_actions:
            return node, arm
        node = select_child(node, cfg.uct_c, ctx.rng, among=free)


def _block(ctx: SearchContext, leaf: Node, blocked: set[int], quota: int) -> None:
    """Block a picked leaf, and every ancestor that has nothing unblocked left to offer."""
    blocked.add(leaf.id)
    node = leaf.parent
    while node is not None:
        if any(ch.id not in blocked for ch in node.children if not ch.pruned):
            return
        if ctx.cfg.action_policy == "arms" and any(
                a not in node.expanded_actions and _arm_width(ctx.cfg, a, quota) > 0 for a in ("slm", "collab")):
            return
        blocked.add(node.id)
        node = node.parent


def _arm_width(cfg: SearchConfig, action: str, quota: int) -> int:
    """Children an expansion of this arm would request now (0: arm unavailable)."""
    if action == "collab":
        return min(cfg.collab_width, quota)
    if cfg.slm_width > 0:
        return cfg.slm_width
    return 1 if min(cfg.collab_width, quota) == 0 else 0  # SLM is the fallback when collab is off


def _plan_both(cfg: SearchConfig, leaf: Node, quota: int) -> list[tuple[Node, str, int]]:
    n_collab = min(cfg.collab_width, quota)
    n_slm = cfg.slm_width if (cfg.slm_width > 0 or n_collab > 0) else 1
    return [(leaf, "slm", n_slm), (leaf, "collab", n_collab)]


async def run_gboost(ctx: SearchContext) -> Node | None:
    cfg = ctx.cfg
    root = await ctx.make_root()
    done = 0
    while done < cfg.num_simulations:
        ctx.stats["rounds"] += 1
        k = min(cfg.leaf_parallelism, cfg.num_simulations - done)
        quota = ctx.llm_quota()
        # ---- select (virtual loss keeps parallel picks apart)
        picks: list[tuple[Node, str | None]] = []
        blocked: set[int] = set()
        with ctx.cost.timed("select"):
            for _ in range(k):
                got = _select(ctx, root, quota, blocked)
                if got is None:
                    break
                leaf, arm = got
                picks.append((leaf, arm))
                node: Node | None = leaf
                while node is not None:
                    node.vloss += 1
                    node = node.parent
                if arm == "collab":
                    quota -= min(cfg.collab_width, quota)
                _block(ctx, leaf, blocked, quota)
            for n in root.iter_nodes():
                n.vloss = 0
        done += len(picks)
        ctx.stats["simulations"] += len(picks)
        # ---- terminal revisits: back the reward up again
        expand_leaves: list[tuple[Node, str | None]] = []
        for leaf, arm in picks:
            if leaf.terminal:
                ctx.stats["terminal_revisits"] += 1
                leaf.backpropagate(leaf.reward if leaf.reward is not None else 0.0)
            else:
                expand_leaves.append((leaf, arm))
        if not expand_leaves:
            if root.terminal:
                ctx.stats["stop_reason"] = "root_exhausted"
                break
            continue
        new_children = await _expand_round(ctx, expand_leaves)
        # ---- backpropagate, in creation order
        for child in new_children:
            child.backpropagate(child.reward if child.reward is not None else 0.0)
        for leaf, _ in expand_leaves:
            if not leaf.children:  # expansion produced nothing: a dead end
                leaf.exhausted = leaf.terminal = True
                if not leaf.is_root:
                    leaf.backpropagate(leaf.reward if leaf.reward is not None else 0.0)
        if cfg.early_stop_reward is not None and any(
                c.terminal and ctx.has_answer(c) and path_score(c, cfg.prm_aggregation) >= cfg.early_stop_reward
                for c in new_children):
            ctx.stats["stop_reason"] = "early_stop"
            break
    if ctx.stats["stop_reason"] is None:
        ctx.stats["stop_reason"] = "simulations"
    if cfg.finish_unterminated:
        await _finish(ctx, root)
    with ctx.cost.timed("final"):
        return choose_final(ctx, root)


async def _expand_round(ctx: SearchContext, leaves: list[tuple[Node, str | None]]) -> list[Node]:
    """Expand the selected leaves per the action policy; score all new children (batched)."""
    cfg = ctx.cfg
    quota = ctx.llm_quota()
    policy = cfg.action_policy
    if policy == "arms":
        reqs = []
        for leaf, arm in leaves:
            arm = arm or "slm"
            if arm == "collab":
                n = min(cfg.collab_width, quota)
                quota -= n
                if n == 0:  # quota vanished since selection: fall back to the SLM
                    arm, n = "slm", max(1, cfg.slm_width)
            else:
                n = _arm_width(cfg, "slm", quota) or 1
            reqs.append((leaf, arm, n))
        new = [c for kids in await ctx.expand(reqs) for c in kids]
        await ctx.score(new)
        return new
    if policy == "both":
        reqs = []
        for leaf, _ in leaves:
            plan = _plan_both(cfg, leaf, quota)
            quota -= plan[1][2]
            reqs.extend(plan)
        new = [c for kids in await ctx.expand(reqs) for c in kids]
        await ctx.score(new)
        return new
    # gate: SLM first, collab only where the best SLM child is weak
    first: list[Node] = []
    slm_kids: list[list[Node]] = [[] for _ in leaves]
    if cfg.slm_width > 0:
        slm_kids = await ctx.expand([(leaf, "slm", cfg.slm_width) for leaf, _ in leaves])
        first = [c for kids in slm_kids for c in kids]
        await ctx.score(first)
    reqs = []
    for (leaf, _), kids in zip(leaves, slm_kids):
        best = max((c.reward or 0.0 for c in kids), default=-1.0)
        if best < cfg.gate_threshold:
            n = min(cfg.collab_width, quota)
            quota -= n
            if n == 0 and not kids:
                reqs.append((leaf, "slm", 1))
            elif n > 0:
                reqs.append((leaf, "collab", n))
    second = [c for kids in await ctx.expand(reqs) for c in kids] if reqs else []
    await ctx.score(second)
    return first + second


async def _finish(ctx: SearchContext, root: Node) -> None:
    """No terminal node yet: complete the best open leaf greedily, one step at a time.

    Each completion step samples one SLM child and -- if ``collab_width > 0`` and the LLM
    budget allows -- one collab child, concurrently; the PRM picks the better (ties: SLM).
    """
    if any(n.terminal and not n.is_root and not n.pruned for n in root.iter_nodes()):
        return
    how = ctx.cfg.prm_aggregation
    leaves = [n for n in root.iter_nodes() if not n.is_root and n.is_leaf and not n.terminal and not n.pruned]
    if not leaves:
        return
    node = max(leaves, key=lambda n: (path_score(n, how), n.depth, -n.id))
    ctx.stats["finished_from"] = node.id
    with ctx.cost.timed("finish"):
        while not node.terminal:
            reqs = [(node, "slm", 1)]
            if ctx.cfg.collab_width > 0 and ctx.llm_quota() > 0:
                reqs.append((node, "collab", 1))
            kids = [c for cs in await ctx.expand(reqs) for c in cs]
            if not kids:
                node.exhausted = node.terminal = True
                break
            await ctx.score(kids)
            for c in kids:
                c.backpropagate(c.reward or 0.0)
            node = max(kids, key=lambda c: (c.reward or 0.0, -c.id))
