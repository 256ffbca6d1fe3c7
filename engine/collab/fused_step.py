"""Actions ``collab`` and ``llm``: every token from the fusion of SLM and general-LLM rows.

``exact`` asks the LLM once per token. ``speculative`` lets the SLM draft the rest of the step
(up to ``max_draft`` tokens), scores the draft in one LLM call, and keeps the longest prefix
consistent with the fused distribution, resampling at the first rejection (kernels/spec_verify):
the same distribution as token-by-token fusion, in fewer LLM calls. ``llm`` is the same
machinery with fusion weight 1 (the LLM alone).
"""
from __future__ import annotations

import asyncio

import torch

from gboost.kv.cache import Sequence
from gboost.sampling import processed_probs

from .fusion import fuse_and_sample, fused_logp


async def gather_all(*aws):
    """Like asyncio.gather, but waits for every awaitable before raising: a failed LLM call must
    not leave an SLM forward of the same sequence in flight while the step is rolled back."""
    res = await asyncio.gather(*aws, return_exceptions=True)
    for r in res:
        if isinstance(r, BaseException):
            raise r
    return res


async def collab_step(ex, seq: Sequence, gen: torch.Generator) -> None:
    """Fusion at the request's ``fusion_rule`` and ``fusion_alpha``."""
    step = exact_step if ex.opt.collab_mode == "exact" else speculative_step
    await step(ex, seq, gen, None)


async def llm_step(ex, seq: Sequence, gen: torch.Generator) -> None:
    """The general LLM alone: log-linear fusion at weight 1."""
    step = exact_step if ex.opt.collab_mode == "exact" else speculative_step
    await step(ex, seq, gen, 1.0)


def first_draft(opt) -> int:
    return opt.max_draft if opt.draft_policy == "fixed" else min(4, opt.max_draft)


def next_draft(opt, k: int, drafted: int, accepted: int) -> int:
    """The next round's draft length. The LLM computes every drafted position, so a rejected tail
    is LLM work thrown away: adaptive drafting doubles k after a round whose whole draft was
    accepted, and after a rejection drafts one more token than were accepted (a rough estimate of
    the run the models agree on now). It depends on this step's past rounds only, so each round
    still samples the fused distribution exactly, and a seeded step stays reproducible."""
    if opt.draft_policy == "fixed":
        return k
    return min(opt.max_draft, 2 * k) if accepted == drafted else accepted + 1


def _fused(ex, slm_logits, llm_rows, alpha, base_rows):
    a = ex.cfg.fusion_alpha if alpha is None else alpha
    return fused_logp(slm_logits, llm_rows, a, base_rows, ex.opt.topk_support)


async def exact_step(ex, seq: Sequence, gen: torch.Generator, alpha: float | None) -> None:
    """One LLM call per token, concurrent with the SLM's forward (and the base model's row)."""
    cache, start = ex.engine.cache, len(seq.token_ids)
    proxy = ex.uses_base(alpha)
    while True:
        ids = list(seq.token_ids)
        slm_logits, row, base_rows = await gather_all(ex.slm_forward(seq),
                                                      ex.llm_rows(ex.llm.next_logprobs(ids), 1),
                                                      ex.base_rows(ids, 1, proxy))
        if slm_logits.is_cuda and row.full:
            a = ex.cfg.fusion_alpha if alpha is None else alpha
            t = fuse_and_sample(slm_logits, row, a, base_rows, gen, ex.cfg.temperature, ex.cfg.top_p)
        else:
            z = _fused(ex, slm_logits[None], [row], alpha, base_rows)[0]
            t = ex.sample(z, gen)
        cache.append(seq, [t])
        if ex.ends(seq, start):
            break


async def speculative_step(ex, seq: Sequence, gen: torch.Generator, alpha: float | None) -> None:
    """Draft, verify against the fused distribution, keep the accepted prefix, repeat."""
    from gboost.kernels.fused_sampling import make_noise
    from gboost.kernels.spec_verify import spec_verify
    cache, start = ex.engine.cache, len(seq.token_ids)
    T, top_p = ex.cfg.temperature, ex.cfg.top_p
    proxy = ex.uses_base(alpha)
    k = first_draft(ex.opt)
    while True:
        draft_start = len(seq.token_ids)
        draft, slm_rows, ended = [], [], False
        while len(draft) < k:  # SLM drafts until the step ends or k tokens
            logits = await ex.slm_forward(seq)
            slm_rows.append(logits)
            t = ex.sample(logits, gen)
            draft.append(t)
            cache.append(seq, [t])
            if ex.ends(seq, start):
                ended = True
                break
        # SLM row after the draft (bonus position) and the LLM's rows, concurrently.
        bonus, llm_rows, base_rows = await gather_all(
            ex.slm_forward(seq),
            ex.llm_rows(ex.llm.score(seq.token_ids[:draft_start], draft), len(draft) + 1),
            ex.base_rows(list(seq.token_ids), len(draft) + 1, proxy))
        # drafts come from the ids both models have (ex.sample): so do q and p
        n = ex.shared_width
        slm_all = torch.stack(slm_rows + [bonus])
        q = processed_probs(torch.stack(slm_rows)[..., :n], T, 0, top_p)
        p = processed_probs(_fused(ex, slm_all, llm_rows, alpha, base_rows)[..., :n], T, 0, top_p)
        K, V, dev = len(draft), q.shape[-1], p.device
        acc_noise = torch.rand(1, K, generator=gen, device=gen.device).to(dev)
        res_noise = make_noise(1, V, gen, dev)
        # every kernel argument on the logits' device: a Triton launch refuses CPU pointers among CUDA ones
        n_acc, out = spec_verify(torch.tensor([draft], device=dev), torch.tensor([K], dtype=torch.int32, device=dev),
                                 q[None], p[None], acc_noise, res_noise)
        n_acc, out = n_acc.tolist()[0], out[0].tolist()  # two small copies back, once per round
        ex.counts.draft_proposed += K
        ex.counts.draft_accepted += n_acc
        # Only the last draft token can end the step: if it was accepted, the step is done
        # exactly as token-by-token sampling would have stopped there (no bonus token).
        if n_acc == K and ended:
            return
        cache.truncate(seq, draft_start + n_acc)  # keep the accepted tokens' K/V
        cache.append(seq, [out[n_acc]])
        if ex.ends(seq, start):
            return
        k = next_draft(ex.opt, k, K, n_acc)
