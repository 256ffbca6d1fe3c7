"""Search configuration: every constant of G-Boost and the baselines, documented, validated.

The paper (arXiv 2503.10367) does not publish its constants; the defaults below
are sensible choices for a 0.5B-1.5B SLM / 7B-class LLM pair on GSM8K / MATH.

Load from a file with :meth:`SearchConfig.from_file` (``.json`` or ``.toml``;
keys at the top level or under a ``[search]`` table).  Unknown keys and bad
values raise :class:`ConfigError` with a message naming the key.

Adaptive action policy (``action_policy``)
------------------------------------------
How an MCTS expansion chooses between the SLM alone (``slm``) and SLM+LLM fused
decoding (``collab``):

``"both"`` (default)
    Every expansion samples ``slm_width`` SLM children **and** ``collab_width``
    collab children, concurrently (one ``asyncio.gather``, so the executor batches
    them).  The PRM scores all of them in one call and UCT decides which
    action's continuation the search follows; the chosen path is a per-step mix
    of the two modes.  This is the paper's formulation (the two inference modes
    are two kinds of branches in one tree, PRM values replace rollouts), it
    adds no extra constant to tune -- the choice is made by the same PRM values
    and UCT rule that drive the rest of the search -- and it keeps one model
    round-trip per expansion.  LLM spend is bounded by ``collab_width`` and the
    per-request budgets.
``"gate"``
    Sample the SLM children first; only if the best of them scores below
    ``gate_threshold`` sample collab children as well (a second round).  Uses the
    LLM only where the SLM is weak, at the price of an extra round-trip there.
    With ``gate_replaces`` the LLM's children replace the weak SLM children
    (reward-guided speculative decoding's rule, inside the tree).
``"arms"``
    Actions are UCT arms at each node: selection at a node compares its arms
    (value = mean of the values backed up through that arm; an untried arm
    counts as one visit of value ``arm_fpu``) and expands only the chosen arm's
    children.  Adaptive per node, but each arm costs its own round.

Delegated steps (``delegate_width``) are a third kind of child: the general LLM writes the whole
step alone -- through a chat request when it is a chat-only API (hosted), from its own next-token
distribution (action ``llm``) when it is resident or a completions endpoint. Every policy treats
them as it treats collab children (the LLM quota goes to collab first); the PRM values decide
between all three.

Defaults by PRM kind (``PRM_KIND_DEFAULTS``)
---------------------------------------------
A few defaults depend on what the PRM's values mean, and the entry points (CLI, server, C ABI)
start from those of the PRM kind they run (``SearchConfig.from_dict(d, prm_kind=...)``; a key
the user sets always wins). A value head is trained to predict its solution's final outcome from
each step, so its last step's value is already the path's value: ``prm_aggregation = "last"``
(GSM8K dev lines, benchmarks/RESULTS.md: the 1.5B head's held-out path AUROC 1.00 last, 0.94
mean, 0.91 min). A judge rates each step on its own, so a path keeps its weakest step (``min``).
A head's value is the chance that the solution ends right, so 0.5 is where it judges a step wrong:
the LLM is asked only there, and its step replaces the SLM's (``gate``, ``gate_threshold = 0.5``,
``gate_replaces``), written by the LLM alone (``delegate_width = 1``, no fused children); chosen
on GSM8K dev lines; ``uct_c``, more simulations, ``arms``, a gate at 0.7 and the other final choices
did not beat it there (benchmarks/RESULTS.md, sessions 14 and 15).

When the LLM budget of a request is spent (``max_llm_calls``,
``max_llm_tokens``, ``max_llm_faults``), every policy falls back to SLM-only
expansions.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import reprlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from gboost.seeds import check_seed

__all__ = ["SearchConfig", "ConfigError", "ACTIONS", "LLM_ACTIONS", "METHODS", "ACTION_POLICIES", "FINAL_CHOICES",
           "PRM_AGGREGATIONS", "FUSION_RULES", "PRM_KINDS", "PRM_KIND_DEFAULTS", "prm_kind_of", "check_stack_runs"]

#: How a step can be written; each name is one step function in engine/collab/executor.py's STEPS.
#: ``delegate``: the general LLM writes the whole step through a chat request (chat-only APIs)
ACTIONS = ("slm", "collab", "llm", "delegate")
#: the actions that ask the general LLM (the per-request LLM budgets count them)
LLM_ACTIONS = ("collab", "llm", "delegate")

METHODS = ("gboost", "slm", "llm", "fusion", "bon", "beam", "rsd")
ACTION_POLICIES = ("both", "gate", "arms")
FINAL_CHOICES = ("best_path", "weighted_vote")
PRM_AGGREGATIONS = ("last", "min", "prod", "mean")
FUSION_RULES = ("loglinear", "proxy")
#: PRM kinds: those a PRM model scores itself (engine/prm/scorer.py), and a trained value head
PRM_KINDS = ("judge", "token_pair", "two_class", "value_head")
#: defaults that differ from the dataclass's for a PRM kind (see the module docstring)
PRM_KIND_DEFAULTS: dict[str, dict[str, Any]] = {"value_head": {
    "prm_aggregation": "last", "action_policy": "gate", "gate_threshold": 0.5, "gate_replaces": True,
    "collab_width": 0, "delegate_width": 1}}
VALUE_HEAD_PREFIX = "value-head:"  # --prm value-head:DIR names a head from `gboost train-prm`


def prm_kind_of(prm: str | None, prm_kind: str = "judge") -> str:
    """The kind of PRM a stack built with these arguments scores with."""
    return "value_head" if isinstance(prm, str) and prm.startswith(VALUE_HEAD_PREFIX) else prm_kind


class ConfigError(ValueError):
    """A bad value or an unknown key in a :class:`SearchConfig`; ``key`` names it when known (a
    config file's error then points at the key's line)."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


@dataclass
class SearchConfig:
    # ---- what to run ---------------------------------------------------------------------
    #: gboost (MCTS over slm/collab steps) | slm | llm | fusion (collab every step) |
    #: bon (best-of-N SLM solutions) | beam (step-level PRM beam search) | rsd (reward-guided
    #: speculative decoding: SLM step kept if PRM >= rsd_threshold, else regenerated by the LLM)
    method: str = "gboost"

    # ---- MCTS (method=gboost) --------------------------------------------------------------
    #: simulations (select -> expand -> evaluate -> backpropagate) per request
    num_simulations: int = 16
    #: UCT exploration constant c in Q + c*sqrt(ln N_parent / N_child).  Rewards are in [0,1]
    #: and good/bad steps differ by ~0.2-0.4 in PRM reward, while with ~16 simulations the
    #: bonus sqrt(ln N / n) of a fresh node is ~1.7: c must be small for values to matter, or
    #: the search stays breadth-first and rarely reaches a terminal step (the classic sqrt(2)
    #: assumes rollouts to the end, which G-Boost does not do)
    uct_c: float = 0.2
    #: leaves selected per round (virtual loss keeps them distinct); >1 gives the executor a
    #: bigger batch per round at the price of slightly staler statistics
    leaf_parallelism: int = 1
    #: SLM children per expansion (also: children per beam in method=beam)
    slm_width: int = 2
    #: collab (SLM+LLM fused) children per expansion
    collab_width: int = 1
    #: delegated children per expansion: the general LLM writes the whole step alone -- through a
    #: chat request on a chat-only API (engine/collab/delegated_step.py), else from its own rows
    delegate_width: int = 0
    #: maximum reasoning steps; a step at this depth is terminal
    max_depth: int = 12
    #: how an expansion picks slm vs collab: both | gate | arms (see module docstring)
    action_policy: str = "both"
    #: gate: sample collab children when the best SLM child's PRM reward is below this
    gate_threshold: float = 0.7
    #: gate: the LLM's children replace the weak SLM children (rsd's rule inside the tree: the PRM
    #: asked for help there, so the steps it judged weak are not followed again) instead of
    #: joining them; the SLM children stay where the LLM returns nothing
    gate_replaces: bool = False
    #: arms: value assumed for an untried action arm (first-play urgency)
    arm_fpu: float = 0.5
    #: drop sibling children whose text duplicates an earlier sibling (not scored, released)
    dedup_children: bool = True
    #: if no terminal node exists when the simulations are spent, complete the best leaf
    #: greedily (per step: one SLM and, budget permitting, one collab sample; the PRM keeps the
    #: better) until it terminates, so a request always yields an answer
    finish_unterminated: bool = True
    #: stop the search early once a terminal path's aggregated PRM reaches this (None: never)
    early_stop_reward: float | None = None

    # ---- steps and answers -----------------------------------------------------------------
    #: tokens per step at most (read by the executor)
    max_step_tokens: int = 256
    #: separator between reasoning steps (read by the executor; used to join the solution)
    step_delimiter: str = "\n\n"
    #: regex: a step matching it states the final answer and is terminal
    answer_pattern: str = r"\\boxed\s*\{|[Tt]he (?:final )?answer is"

    # ---- final answer ----------------------------------------------------------------------
    #: best_path: terminal path with the best aggregated PRM | weighted_vote: PRM-weighted
    #: majority over the answers of all terminal paths (the best path of the winner is returned)
    final_choice: str = "best_path"
    #: how a path's step rewards are aggregated: last | min | prod | mean
    prm_aggregation: str = "min"

    # ---- per-request LLM budgets (None = unlimited) ----------------------------------------
    #: LLM tokens after which only SLM steps are generated (checked before each round, so the
    #: round in flight may overshoot it by its own tokens): what the LLM computed for this
    #: request as its executor charged it (engine/cost.py) -- context prefill and verified
    #: drafts included, not just the tokens of the steps it helped write; for delegated steps
    #: the prompt and completion tokens the API billed (its ``usage``)
    max_llm_tokens: int | None = None
    #: LLM-involving step generations (one per collab/llm/delegate child) allowed per request
    max_llm_calls: int | None = None
    #: after this many LLM faults (timeouts...) in a request, stop asking the LLM
    max_llm_faults: int | None = 3

    # ---- baselines ---------------------------------------------------------------------------
    #: beam: beams kept per step
    beam_width: int = 4
    #: bon: number of full SLM solutions
    bon_n: int = 8
    #: rsd: SLM step accepted when its PRM reward >= this, else regenerated with the LLM
    rsd_threshold: float = 0.7
    #: slm/llm/fusion: also PRM-score each step (for reporting/trace; costs PRM compute)
    score_baselines: bool = True

    # ---- generation (read by the executor, see sampling()) ------------------------------------
    #: collab fusion: loglinear = softmax((1-alpha)*log p_slm + alpha*log p_llm) |
    #: proxy = softmax(llm_logits + alpha*(slm_logits - base_logits)), proxy tuning with the SLM's
    #: untuned base model (the stack must load one: --base); an "llm" step is the LLM alone either way
    fusion_rule: str = "loglinear"
    #: weight of the LLM in the fusion
    fusion_alpha: float = 0.5
    #: sampling temperature (0 = greedy)
    temperature: float = 0.7
    #: nucleus sampling mass
    top_p: float = 0.95
    #: seed for the search's tie-breaking and for the executor's sampling: an integer in
    #: [-2**63, 2**64 - 1], the seeds torch.Generator accepts (gboost.seeds.check_seed)
    seed: int = 0

    # ------------------------------------------------------------------------------ checks
    def __post_init__(self) -> None:
        self.validate()

    def fuses(self) -> bool:
        """Whether this config samples from a fusion of SLM and LLM (collab steps)."""
        return self.method == "fusion" or (self.method == "gboost" and self.collab_width > 0)

    def delegates(self) -> bool:
        """Whether this config asks for delegated steps by name (gboost with delegate_width > 0)."""
        return self.method == "gboost" and self.delegate_width > 0

    def validate(self) -> None:
        for f in fields(self):
            v = _check_type(f.name, getattr(self, f.name), f.type)
            if v is not getattr(self, f.name):
                setattr(self, f.name, v)  # int given for a float field -> float

        def need(ok: bool, key: str, msg: str) -> None:
            if not ok:
                raise ConfigError(f"{key}={_show(getattr(self, key))}: {msg}", key)

        for key, allowed in (("method", METHODS), ("action_policy", ACTION_POLICIES),
                             ("final_choice", FINAL_CHOICES), ("prm_aggregation", PRM_AGGREGATIONS),
                             ("fusion_rule", FUSION_RULES)):
            need(getattr(self, key) in allowed, key, f"must be one of {', '.join(allowed)}")
        need(self.num_simulations >= 1, "num_simulations", "must be >= 1")
        need(math.isfinite(self.uct_c) and self.uct_c >= 0, "uct_c", "must be a finite number >= 0")
        need(self.leaf_parallelism >= 1, "leaf_parallelism", "must be >= 1")
        need(self.slm_width >= 0, "slm_width", "must be >= 0")
        need(self.collab_width >= 0, "collab_width", "must be >= 0")
        need(self.delegate_width >= 0, "delegate_width", "must be >= 0")
        if self.method == "gboost":
            need(self.slm_width + self.collab_width + self.delegate_width >= 1, "slm_width",
                 "slm_width + collab_width + delegate_width must be >= 1 for method=gboost")
        if self.method == "beam":
            need(self.slm_width >= 1, "slm_width", "must be >= 1 for method=beam (children per beam)")
        need(self.max_depth >= 1, "max_depth", "must be >= 1")
        need(0.0 <= self.gate_threshold <= 1.0, "gate_threshold", "must be in [0, 1]")
        need(0.0 <= self.arm_fpu <= 1.0, "arm_fpu", "must be in [0, 1]")
        if self.early_stop_reward is not None:
            need(0.0 <= self.early_stop_reward <= 1.0, "early_stop_reward", "must be in [0, 1] or None")
        need(self.max_step_tokens >= 1, "max_step_tokens", "must be >= 1")
        need(self.step_delimiter != "", "step_delimiter", "must not be empty")
        try:
            re.compile(self.answer_pattern)
        except re.error as e:
            raise ConfigError(f"answer_pattern={_show(self.answer_pattern)}: not a valid regex ({e})",
                              "answer_pattern") from None
        for key in ("max_llm_tokens", "max_llm_calls", "max_llm_faults"):
            v = getattr(self, key)
            need(v is None or v >= 0, key, "must be >= 0 or None (unlimited)")
        need(self.beam_width >= 1, "beam_width", "must be >= 1")
        need(self.bon_n >= 1, "bon_n", "must be >= 1")
        need(0.0 <= self.rsd_threshold <= 1.0, "rsd_threshold", "must be in [0, 1]")
        need(0.0 <= self.fusion_alpha <= 1.0, "fusion_alpha", "must be in [0, 1]")
        need(math.isfinite(self.temperature) and self.temperature >= 0, "temperature", "must be >= 0")
        need(0.0 < self.top_p <= 1.0, "top_p", "must be in (0, 1]")
        try:
            check_seed(self.seed)
        except ValueError as e:
            raise ConfigError(str(e), "seed") from None

    # -------------------------------------------------------------------------- convert
    @classmethod
    def from_dict(cls, d: dict[str, Any], prm_kind: str | None = None) -> "SearchConfig":
        """The config of `d`'s keys; the others take the defaults of `prm_kind` (PRM_KIND_DEFAULTS),
        else the dataclass's."""
        if not isinstance(d, dict):
            raise ConfigError(f"search config must be a mapping, got {type(d).__name__}")
        names = [f.name for f in fields(cls)]
        unknown = [k for k in d if k not in names]
        if unknown:
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(str(k), names, n=1)
                hints.append(_show(k) + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ConfigError(f"unknown search config key(s): {', '.join(hints)}; "
                              f"valid keys: {', '.join(names)}", str(unknown[0]))
        if prm_kind is not None and prm_kind not in PRM_KINDS:
            raise ConfigError(f"prm_kind={_show(prm_kind)}: must be one of {', '.join(PRM_KINDS)}")
        return cls(**{**PRM_KIND_DEFAULTS.get(prm_kind, {}), **d})

    @classmethod
    def from_file(cls, path: str | Path, prm_kind: str | None = None) -> "SearchConfig":
        """Read a ``.json`` or ``.toml`` file (keys at top level or under ``search``). Errors are
        one line, ``FILE:LINE: what`` where a line applies (syntax, a bad or unknown key).
        ``extends = "base.toml"`` (a path relative to the file) starts from another config file's
        keys, which this file's own keys override; bases may extend further bases."""
        chain: list[tuple[Path, str, str]] = []  # (file, text, suffix), the file itself first
        data = _read_chain(Path(path), chain)
        try:
            return cls.from_dict(data, prm_kind)
        except ConfigError as e:
            for p, text, suffix in chain:  # the key's line in the first file of the chain that sets it
                line = _key_line(text, e.key, suffix) if e.key else None
                if line is not None:
                    raise ConfigError(f"{p}:{line}: {e}", e.key) from None
            raise ConfigError(f"{chain[0][0]}: {e}", e.key) from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "SearchConfig":
        """A validated copy with some fields changed (unknown names raise ConfigError)."""
        return type(self).from_dict({**self.to_dict(), **changes})

    def sampling(self) -> dict[str, Any]:
        """The settings an executor needs to generate and fuse steps."""
        return {
            "temperature": self.temperature, "top_p": self.top_p, "seed": self.seed,
            "fusion_rule": self.fusion_rule, "fusion_alpha": self.fusion_alpha,
            "max_step_tokens": self.max_step_tokens, "step_delimiter": self.step_delimiter,
            "answer_pattern": self.answer_pattern, "max_depth": self.max_depth,
        }


def check_stack_runs(cfg: SearchConfig, *, has_llm: bool, has_base: bool, has_writer: bool = False) -> None:
    """Raise ConfigError if a stack cannot run ``cfg`` -- callable before any model is loaded.
    ``has_llm``: a general LLM that gives next-token distributions (resident, or a completions
    endpoint): fused steps. ``has_writer``: one that writes steps through chat: delegated steps.
    The ``llm`` and ``rsd`` baselines take either (delegated steps where there is no fusion)."""
    what = f"method={cfg.method}"
    if cfg.method in ("llm", "rsd") and not (has_llm or has_writer):
        raise ConfigError(f"{what} needs a general LLM, and this stack has none")
    if cfg.fuses() and not has_llm:
        what += " with collab_width > 0" if cfg.method == "gboost" else ""
        if has_writer:
            raise ConfigError(f"{what} needs fused steps, and this stack's general LLM is chat-only (it writes "
                              "text, it gives no next-token distributions): use delegated steps instead "
                              "(collab_width=0, delegate_width=1)", "collab_width")
        raise ConfigError(f"{what} needs a general LLM, and this stack has none")
    if cfg.delegates() and not (has_writer or has_llm):
        raise ConfigError(f"{what} with delegate_width > 0 needs a general LLM, and this stack has none",
                          "delegate_width")
    if cfg.fusion_rule == "proxy" and cfg.fuses() and not has_base:
        raise ConfigError("fusion_rule='proxy' needs the SLM's base model, which this stack does not "
                          "load (pass --base / base=...); or use 'loglinear'")


def _read_file(p: Path) -> tuple[dict, str, str]:
    """The keys of one config file (its ``[search]`` table, if that is all it has), its text, suffix."""
    if p.is_dir():
        raise ConfigError(f"{p}: is a directory, not a config file")
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    suffix = p.suffix.lower()
    if suffix not in (".json", ".toml"):
        raise ConfigError(f"{p}: unsupported config format {suffix!r} (use .json or .toml)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        if suffix == ".json":
            data = json.loads(text)
        else:
            import tomllib
            data = tomllib.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p}:{e.lineno}: cannot parse JSON: {e.msg} (column {e.colno})") from None
    except (ValueError, RecursionError) as e:  # tomllib.TOMLDecodeError is a ValueError
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        where = f"{p}:{m.group(1)}" if m else str(p)
        if "(at end of document)" in str(e):  # the file ends inside a value: its last line
            where = f"{p}:{max(1, len(text.splitlines()))}"
        msg = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", str(e)) or type(e).__name__
        raise ConfigError(f"{where}: cannot parse {suffix[1:].upper()}: {msg}"
                          + (f" (column {m.group(2)})" if m else "")) from None
    if isinstance(data, dict) and set(data) == {"search"} and isinstance(data["search"], dict):
        data = data["search"]
    return data, text, suffix


def _read_chain(p: Path, chain: list[tuple[Path, str, str]]) -> Any:
    """The keys of ``p`` over those of the files it ``extends`` (appended to ``chain``, ``p`` first)."""
    if any(p.resolve() == q.resolve() for q, _, _ in chain):
        raise ConfigError(f"{chain[0][0]}: 'extends' goes round in a circle: "
                          + " -> ".join(str(q) for q, _, _ in chain) + f" -> {p}", "extends")
    data, text, suffix = _read_file(p)
    chain.append((p, text, suffix))
    if not isinstance(data, dict) or "extends" not in data:
        return data
    data = dict(data)
    base = data.pop("extends")
    if not isinstance(base, str) or not base:
        line = _key_line(text, "extends", suffix)
        raise ConfigError(f"{p}{'' if line is None else f':{line}'}: extends must be the path of a config "
                          f"file (relative to this one), got {base!r}", "extends")
    base_data = _read_chain(p.parent / base, chain)
    if not isinstance(base_data, dict):
        return base_data  # from_dict says what is wrong with it
    return {**base_data, **data}


def _key_line(text: str, key: str, suffix: str) -> int | None:
    """1-based line where a JSON or TOML config file sets ``key`` (its first mention)."""
    pat = rf'"{re.escape(key)}"\s*:' if suffix == ".json" else rf'^\s*"?{re.escape(key)}"?\s*='
    for i, line in enumerate(text.splitlines(), 1):
        if re.search(pat, line):
            return i
    return None


_SHOW = reprlib.Repr()
_SHOW.maxstring = _SHOW.maxother = 80
_SHOW.maxlevel, _SHOW.maxlist, _SHOW.maxdict = 3, 6, 6


def _show(value: Any) -> str:
    """repr for error messages, cut short: a config may come from a client (a megabyte string or a
    deeply nested list must not come back whole in the 400, nor recurse without bound)."""
    return _SHOW.repr(value)


def _check_type(name: str, value: Any, annotation: Any) -> Any:
    ann = str(annotation)
    optional = "None" in ann
    if value is None:
        if optional:
            return value
        raise ConfigError(f"{name}: must not be None", name)
    if ann.startswith("int"):
        if isinstance(value, float) and value.is_integer():  # JSON's 4.0 is the integer 4
            value = int(value)
        ok = isinstance(value, int) and not isinstance(value, bool)
        want = "an integer"
    elif ann.startswith("float"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        want = "a number"
    elif ann.startswith("bool"):
        ok = isinstance(value, bool)
        want = "true or false"
    elif ann.startswith("str"):
        ok = isinstance(value, str)
        want = "a string"
    else:  # pragma: no cover - every field has one of the annotations above
        return value
    if not ok:
        raise ConfigError(f"{name}={_show(value)}: must be {want}" + (" or None" if optional else ""), name)
    if ann.startswith("float") and not isinstance(value, float):
        return float(value)
    return value
