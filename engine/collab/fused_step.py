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

from gboost.sampling import processed_probs

from .call import Fusion, StepCall
from .fusion import fuse_and_sample, fused_logp


async def gather_all(*aws):
    """Like asyncio.gather, but waits for every awaitable before raising: a failed LLM call must
    not leave an SLM forward of the same sequence in flight while the step is rolled back."""
    res = await asyncio.gather(*aws, return_exceptions=True)
    for r in res:
        if isinstance(r, BaseException):
            raise r
    return res


async def collab_step(call: StepCall) -> None:
    """Fusion at the request's ``fusion_rule`` and ``fusion_alpha``."""
    cfg = call.ex.cfg
    await _fused_step(call, Fusion(cfg.fusion_alpha, proxy=cfg.fusion_rule == "proxy"))


async def llm_step(call: StepCall) -> None:
    """The general LLM alone: log-linear fusion at weight 1."""
    await _fused_step(call, Fusion(1.0))


async def _fused_step(call: StepCall, mix: Fusion) -> None:
    step = exact_step if call.ex.opt.collab_mode == "exact" else speculative_step
    await step(call, mix)


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


async def exact_step(call: StepCall, mix: Fusion) -> None:
    """One LLM call per token, concurrent with the SLM's forward (and the base model's row)."""
    while True:
        await exact_token(call, mix)
        if call.ends():
            break


async def exact_token(call: StepCall, mix: Fusion) -> None:
    """One token of the fused distribution, appended to ``call.seq``."""
    ex, seq, gen = call.ex, call.seq, call.gen
    ids = list(seq.token_ids)
    slm_logits, row, base_rows = await gather_all(call.slm_forward(), call.llm_rows(ex.llm.next_logprobs(ids), 1),
                                                  ex.base_rows(ids, 1, mix.proxy))
    if slm_logits.is_cuda and row.full:
        t = fuse_and_sample(slm_logits, row, mix.alpha, base_rows, gen, call.temperature, ex.cfg.top_p)
    else:
        z = fused_logp(slm_logits[None], [row], mix.alpha, base_rows, ex.opt.topk_support)[0]
        t = call.sample(z)
    ex.engine.cache.append(seq, [t])


async def speculative_step(call: StepCall, mix: Fusion) -> None:
    """Draft, verify against the fused distribution, keep the accepted prefix, repeat."""
    from gboost.kernels.fused_sampling import make_noise
    from gboost.kernels.spec_verify import spec_verify
    ex, seq, gen = call.ex, call.seq, call.gen
    cache = ex.engine.cache
    T, top_p = call.temperature, ex.cfg.top_p
    k = first_draft(ex.opt)
    while True:
        if call.llm_tokens_left is not None:  # a draft of k costs the LLM k + 1 positions
            if call.llm_tokens_left < 2:
                await exact_token(call, mix)  # the share's last position: one fused token
                return
            k = min(k, call.llm_tokens_left - 1)
        draft_start = len(seq.token_ids)
        draft, slm_rows, ended = [], [], False
        while len(draft) < k:  # SLM drafts until the step ends or k tokens
            logits = await call.slm_forward()
            slm_rows.append(logits)
            t = call.sample(logits)
            draft.append(t)
            cache.append(seq, [t])
            if call.ends():
                ended = True
                break
        # SLM row after the draft (bonus position) and the LLM's rows, concurrently.
        bonus, llm_rows, base_rows = await gather_all(
            call.slm_forward(),
            call.llm_rows(ex.llm.score(seq.token_ids[:draft_start], draft), len(draft) + 1),
            ex.base_rows(list(seq.token_ids), len(draft) + 1, mix.proxy))
        # drafts come from the ids both models have (ex.sample): so do q and p
        n = ex.shared_width
        slm_all = torch.stack(slm_rows + [bonus])
        q = processed_probs(torch.stack(slm_rows)[..., :n], T, 0, top_p)
        p = processed_probs(fused_logp(slm_all, llm_rows, mix.alpha, base_rows, ex.opt.topk_support)[..., :n],
                          T, 0, top_p)
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
        if call.ends():
            return
        k = next_draft(ex.opt, k, K, n_acc)
