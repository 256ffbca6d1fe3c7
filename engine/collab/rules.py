"""The tokenizer-level rules of a step: the SLM's prompt, where a step ends, its text, whether it
ends its path, and the seed of a node's sampling. Model-free, so a reference implementation
(gboost.bench.naive) writes exactly the steps the engine writes."""
from __future__ import annotations

import re
import zlib

from gboost.search.config import SearchConfig
from gboost.positions import fits
from gboost.search.answer import ends_path

SLM_SYSTEM = "Please reason step by step, separating steps with a blank line, and put your final answer within \\boxed{}."


def slm_prompt_ids(tok, question: str) -> list[int]:
    """The SLM's prompt for a question (the value head's `text` layout starts the same way)."""
    msgs = [{"role": "system", "content": SLM_SYSTEM}, {"role": "user", "content": question}]
    return tok.encode_chat(msgs) if tok.chat_template else tok.encode_prompt(question + "\n\n")


def node_seed(seed: int, key: tuple) -> int:
    """Seed of the sampling noise of the node at ``key`` (its path of (action, index) from the root)."""
    return zlib.crc32(repr((seed,) + key).encode())


def child_temperature(cfg: SearchConfig, i: int) -> float:
    """The sampling temperature of an expansion's ``i``-th child of an action: greedy for the first
    with ``greedy_first_child`` (the chain rsd would take stays among the siblings)."""
    return 0.0 if cfg.greedy_first_child and i == 0 else cfg.temperature


def at_position_limit(seq_len: int, max_positions: int) -> bool:
    """No room for another step token: a step ends with its last token pending, and that token
    and the one sampled after it must both still fit."""
    return not fits(seq_len + 2, max_positions)


def step_ends(tok, toks: list[int], seq_len: int, cfg: SearchConfig, eos, max_positions: int) -> bool:
    """Does the step whose tokens so far are ``toks`` end with its last token? EOS, the step's token
    cap, the model's last position (the sequence is ``seq_len`` long), or the step delimiter in the
    step's text once its leading whitespace is skipped (a step may open with a blank line)."""
    if toks[-1] in eos or len(toks) >= cfg.max_step_tokens:
        return True
    if at_position_limit(seq_len, max_positions):
        return True
    tail = tok.decode(toks[-8:])
    return cfg.step_delimiter in tail and cfg.step_delimiter in tok.decode(toks).lstrip()


def step_text(tok, toks: list[int], cfg: SearchConfig, eos) -> str:
    """A finished step's text: EOS and special tokens dropped, cut at the delimiter, stripped."""
    text = tok.decode([t for t in toks if t not in eos], skip_special_tokens=True)
    return text.split(cfg.step_delimiter)[0].strip()


def step_terminal(text: str, toks: list[int], depth: int, seq_len: int, cfg: SearchConfig, eos,
                  max_positions: int, answer_re: re.Pattern | None = None) -> bool:
    """Is a finished step at ``depth`` the last of its path? EOS or a sequence with no room for
    another token, else the search's own rule (a final answer, the depth cap)."""
    return (bool(toks) and toks[-1] in eos) or at_position_limit(seq_len, max_positions) \
        or ends_path(text, depth, cfg, answer_re)
