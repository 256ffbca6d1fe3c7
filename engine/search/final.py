"""The final choice: which node ends the answer a search returns."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .answer import answer_key
from .tree import Node, best_terminal, path_score

if TYPE_CHECKING:
    from .api import SearchContext

__all__ = ["choose_final"]


def choose_final(ctx: "SearchContext", root: Node) -> Node | None:
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
