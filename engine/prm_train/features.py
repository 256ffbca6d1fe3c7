"""Stage 2 of `gboost train-prm`: hidden rows at each step's last token, from one resident model.

Each solution runs as one prefill (prompt and every step), and forward hooks keep the chosen
decoder layers' rows at the step ends, so several layers are read in one pass and the best one
can be picked on held-out questions. The token sequences are the ones the search scores at run
time (`engine/prm/value_scorer.py`): the SLM's own tokens, or the `text` layout of another model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from gboost.prm.value_scorer import text_root_ids, text_step_ids


@dataclass
class Solution:
    ids: list[int]    # the whole token sequence
    ends: list[int]   # position of each step's last token


def slm_solution(rec: dict) -> Solution:
    """The SLM's own tokens of a rollout record: prompt, then every generated step token."""
    ids, ends = list(rec["prompt_ids"]), []
    for s in rec["steps"]:
        ids += s["token_ids"]
        ends.append(len(ids) - 1)
    return Solution(ids, ends)


def text_solution(tok, rec: dict, final_eos: int | None = None) -> Solution:
    """The `text` layout of a solution: each step then the delimiter. With `final_eos`, the last step
    ends with that token instead, as the SLM's own final step does (it stops on its end-of-turn
    token): a head on the SLM's rows, scoring records that keep only step texts, then reads its
    last step at the token it was trained on."""
    ids, ends = text_root_ids(tok, rec["question"]), []
    for i, s in enumerate(rec["steps"]):
        if final_eos is not None and i == len(rec["steps"]) - 1:
            ids += tok.encode_piece(s["text"]) + [final_eos]
        else:
            ids += text_step_ids(tok, s["text"])
        ends.append(len(ids) - 1)
    return Solution(ids, ends)


class _Enough(Exception):
    """Raised by the hook on the deepest wanted layer: the layers above it are not computed."""


@torch.inference_mode()
def extract(resident, cache, sols: list[Solution], layers: list[int], batch_tokens: int = 1,
            progress: bool = False) -> dict[int, list[torch.Tensor]]:
    """layer -> per solution, its step-end rows [n_steps, H] (fp32, on the CPU). Every token is
    computed (no prefix-cache hit), as a from-scratch forward of the full sequence, up to the
    deepest wanted layer only (a head on layer 12 of 24 costs half a forward).

    Solutions are grouped up to `batch_tokens` tokens per forward (a solution longer than that goes
    alone). The default, one per forward, is the faster on a CPU: a ~300-token prefill already runs
    the linear layers at the matmul peak, and a batch pads the attention of every sequence to the
    longest (0.9 s vs 1.3 s per solution for the 0.5B model on 2 cores, 8 solutions)."""
    runner, blocks = resident.runner, resident.model.model.layers
    last = max(layers)
    out: dict[int, list[torch.Tensor]] = {l: [] for l in layers}
    groups, cur, n = [], [], 0
    for s in sols:
        if cur and n + len(s.ids) > batch_tokens:
            groups.append(cur)
            cur, n = [], 0
        cur.append(s)
        n += len(s.ids)
    if cur:
        groups.append(cur)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(sols), desc=f"features ({resident.key})", unit="solution", dynamic_ncols=True)
    for group in groups:
        seqs = [resident.new_sequence(cache, s.ids) for s in group]
        try:
            for q in seqs:
                cache.rewind(q, 0)
            batch = runner.prepare(seqs, ["none"] * len(seqs))
            cu = batch.cu_seqlens
            rows = [cu[i] + e for i, s in enumerate(group) for e in s.ends]
            got: dict[int, torch.Tensor] = {}

            def keep(_m, _i, h, l):
                got[l] = h[rows].float().cpu()
                if l == last:
                    raise _Enough

            hooks = [blocks[l - 1].register_forward_hook(lambda m, i, h, l=l: keep(m, i, h, l)) for l in layers]
            try:
                runner.compute(batch, ["none"] * len(seqs))
            except _Enough:
                # nothing is committed: the sequences are freed below, their K/V never read
                resident.model.captured = None  # compute() did not reach its own reset
            finally:
                for h in hooks:
                    h.remove()
        finally:
            for q in seqs:
                cache.free(q)
        for l in layers:
            out[l] += list(torch.split(got[l], [len(s.ends) for s in group]))
        if bar is not None:
            bar.update(len(group))
    if bar is not None:
        bar.close()
    return out
