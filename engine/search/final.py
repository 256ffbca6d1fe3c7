"""The final choice: which terminal path a search returns.

The rule works on plain ``Candidate`` records so that a finished run's recorded candidates
(benchmarks/gsm8k_choice.py) are re-chosen by the very code the search used.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Sequence

from .answer import answer_key, extract_answer
from .tree import Node, aggregate

if TYPE_CHECKING:
    from .context import SearchContext

__all__ = ["Candidate", "candidates", "choose_final", "pick_final", "terminals"]


@dataclass(frozen=True)
class Candidate:
    """One terminal path: what the final choice may look at."""
    id: int                       #: creation order (ties go to the earlier)
    rewards: tuple[float, ...]    #: step rewards, first step first
    visits: int
    has_answer: bool              #: the path states an answer (strict extraction)
    key: str | None               #: its answer_key: the group of weighted_vote


def pick_final(cands: Sequence[Candidate], final_choice: str, how: str) -> Candidate | None:
    """best_path: the highest aggregated PRM; weighted_vote: the answer whose paths' scores sum
    highest, then its best path. Paths that state an answer beat those that only hit a limit."""
    with_answer = [c for c in cands if c.has_answer]
    terms = with_answer or list(cands)
    if not terms:
        return None
    best = lambda c: (aggregate(c.rewards, how), c.visits, -c.id)  # noqa: E731
    if final_choice == "weighted_vote" and with_answer:
        groups: dict[str, list[Candidate]] = {}
        for c in with_answer:
            groups.setdefault(c.key if c.key is not None else "", []).append(c)
        def group_rank(members: list[Candidate]) -> tuple:
            scores = [aggregate(m.rewards, how) for m in members]
            return (sum(scores), max(scores), -min(m.id for m in members))
        terms = max(groups.values(), key=group_rank)
    return max(terms, key=best)


def terminals(root: Node) -> Iterable[Node]:
    """The nodes a final choice may end at: terminal, not the root, not pruned."""
    return (n for n in root.iter_nodes() if n.terminal and not n.is_root and not n.pruned)


def candidates(root: Node, delimiter: str, answers=None) -> list[tuple[Candidate, Node]]:
    """Every live terminal path of a tree as (Candidate, node); ``answers(node)`` gives its
    (strict, loose) answers (default: extracted from the path's text)."""
    out = []
    for n in terminals(root):
        strict = answers(n)[0] if answers is not None else \
            extract_answer(n.solution_text(delimiter), "auto", strict=True)
        out.append((Candidate(n.id, tuple(n.rewards()), n.visits, strict is not None, answer_key(strict)), n))
    return out


def choose_final(ctx: "SearchContext", root: Node) -> Node | None:
    """The node ending the chosen solution, per ``final_choice`` and ``prm_aggregation``."""
    pairs = candidates(root, ctx.cfg.step_delimiter, ctx.answers)
    got = pick_final([c for c, _ in pairs], ctx.cfg.final_choice, ctx.cfg.prm_aggregation)
    return None if got is None else next(n for c, n in pairs if c is got)
