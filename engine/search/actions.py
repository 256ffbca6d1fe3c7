"""The table of actions: how a step can be written, one record each, model-free.

Every list and check of actions derives from ``TABLE``: the config's action names, the LLM budget,
the widths an expansion asks for, what a stack must offer (``check_stack_runs``, the endpoint
probe's needs) and the stand-ins a chat-only or rows-only general LLM runs instead. A new action is
one entry here and one step function in ``STEPS`` (engine/collab/executor.py).
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Action", "TABLE", "ACTIONS", "LLM_ACTIONS", "EXPANSION_LLM_ACTIONS", "ROWS", "CHAT",
           "width", "runs_as", "actions_of", "first_unrunnable", "cannot_run"]

#: what an action needs from the general LLM: its next-token rows (a resident LLM, a completions
#: endpoint) or a chat writer (a chat endpoint); None for the SLM alone
ROWS, CHAT = "rows", "chat"


@dataclass(frozen=True)
class Action:
    name: str
    width_field: str | None   #: the SearchConfig field giving its children per gboost expansion
    asks_llm: bool            #: the per-request LLM budgets count it
    needs: str | None         #: ROWS, CHAT or None
    stand_in: str | None      #: the action run instead on a general LLM that lacks ``needs``
    what: str                 #: how errors name it


TABLE: tuple[Action, ...] = (
    Action("slm", "slm_width", False, None, None, "SLM steps"),
    Action("collab", "collab_width", True, ROWS, None, "fused steps"),
    # the llm baseline's steps: written by the LLM from its rows; on a chat-only API, through chat
    Action("llm", None, True, ROWS, "delegate", "LLM-written steps"),
    # the LLM writes the whole step: through chat where it can, else from its own rows
    Action("delegate", "delegate_width", True, CHAT, "llm", "delegated steps"),
)
BY_NAME = {a.name: a for a in TABLE}
ACTIONS = tuple(BY_NAME)
LLM_ACTIONS = tuple(a.name for a in TABLE if a.asks_llm)
#: the LLM actions a gboost expansion adds to its SLM children, in the order the LLM quota goes to them
EXPANSION_LLM_ACTIONS = tuple(a.name for a in TABLE if a.asks_llm and a.width_field)


def width(cfg, action: str) -> int:
    """Children a gboost expansion (``cfg``: a SearchConfig) asks of ``action`` (0 for an action without a width)."""
    f = BY_NAME[action].width_field
    return getattr(cfg, f) if f else 0


def runs_as(action: str, *, has_rows: bool, has_chat: bool) -> str | None:
    """The action a stack with these general-LLM kinds runs for ``action``: itself, its stand-in,
    or None when it cannot run it at all."""
    a = BY_NAME[action]
    have = {ROWS: has_rows, CHAT: has_chat}
    if a.needs is None or have[a.needs]:
        return action
    if a.stand_in is not None and have[BY_NAME[a.stand_in].needs]:
        return a.stand_in
    return None


#: the actions each method other than gboost writes its steps with
METHOD_ACTIONS = {"slm": ("slm",), "bon": ("slm",), "beam": ("slm",), "llm": ("llm",),
                  "fusion": ("collab",), "rsd": ("slm", "llm")}


def actions_of(cfg) -> tuple[str, ...]:
    """The actions ``cfg`` may ask for: its method's, or gboost's with a width above 0 (and the SLM,
    every policy's fallback)."""
    if cfg.method != "gboost":
        return METHOD_ACTIONS[cfg.method]
    return ("slm",) + tuple(a for a in EXPANSION_LLM_ACTIONS if width(cfg, a) > 0)


def first_unrunnable(cfg, *, has_rows: bool, has_chat: bool) -> Action | None:
    """The first action ``cfg`` may ask for that a stack with these general-LLM kinds cannot run."""
    for name in actions_of(cfg):
        if runs_as(name, has_rows=has_rows, has_chat=has_chat) is None:
            return BY_NAME[name]
    return None


_NEEDS = {ROWS: "a general LLM that gives next-token distributions", CHAT: "a general LLM that writes through chat"}
_LACKS = {ROWS: "this one is chat-only", CHAT: "this one offers no chat"}


def cannot_run(action: str, *, has_rows: bool, has_chat: bool) -> str:
    """Why a stack with these general-LLM kinds cannot run ``action`` (runs_as gave None)."""
    a = BY_NAME[action]
    if not (has_rows or has_chat):
        return f"action {action!r} needs a general LLM; none is configured"
    hint = f" (use {a.stand_in!r})" if a.stand_in else " (use 'delegate')" if a.needs == ROWS else ""
    return f"action {action!r} needs {_NEEDS[a.needs]}; {_LACKS[a.needs]}{hint}"
