"""Device placement of the GPU path, checked without a GPU (tests/fake_cuda.py).

The engine runs on a stand-in CUDA device: every tensor op enforces CUDA's one-device rule, every
kernel launch asserts that its tensor arguments share one device (then runs under Triton's
interpreter on the CPU data), and host reads (syncs), pinned buffers and host -> device copies are
counted. On real hardware the same code paths run (tests marked gpu)."""
import asyncio

import pytest
import torch

import gboost.testing as testing
import gboost.kernels.fused_sampling as fs
from gboost.llm.local import LocalLLM
from gboost.models.qwen2_llama import Rotary
from gboost.scheduler import Scheduler
from gboost.collab.executor import CollabOptions
from gboost.search.config import SearchConfig
from fake_cuda import checked_launch, fake_cuda, kernel_launchers, to_fake_cuda
from fp_bounds import U32, assert_within, logsoftmax_bound

TINY_MODEL = testing.tiny_model
@pytest.fixture
def fake_gpu(monkeypatch):
    """(state, launches): the fake device is open; tiny models are built on it."""
    if torch.cuda.is_available():  # launches run under Triton's interpreter, which is off where CUDA is
        pytest.skip("a real GPU is here: the gpu-marked tests run this path on it")
    launches = []
    for mod, name in kernel_launchers():
        monkeypatch.setattr(mod, name, checked_launch(getattr(mod, name), name, launches))
    make = testing.tiny_model
    monkeypatch.setattr(testing, "tiny_model", lambda *a, **k: to_fake_cuda(make(*a, **k)))
    with fake_cuda() as state:
        yield state, launches


def _vocab_moves(state, V=260):
    return [m for m in state.moves if V in m[1]]


@pytest.mark.parametrize("mode", ["speculative", "exact"])
def test_collaborative_steps_keep_every_tensor_on_the_device(fake_gpu, mode):
    state, launches = fake_gpu
    cfg = SearchConfig(max_step_tokens=6, max_depth=2, num_simulations=2, temperature=0.8, top_p=0.9)
    stack = testing.tiny_stack(cfg, device="cuda", options=CollabOptions(collab_mode=mode, max_draft=3))
    be = stack.executor
    assert stack.engine.cache.pool.is_cuda and isinstance(be.llm, LocalLLM)

    async def go():
        root = await be.root("2+3?")
        kids = await be.expand(root, "collab", 1) + await be.expand(root, "slm", 1)
        await be.score([k.state for k in kids])
        for s in [root] + [k.state for k in kids]:
            be.release(s)
        stack.scheduler.close()
    asyncio.run(go())
    names = {n for n, _ in launches}
    # the collaborative step's own kernel ran, with every argument on the logits' device
    assert ("spec_verify_triton" if mode == "speculative" else "fused_sample_triton") in names
    assert {"store_kv_triton", "paged_attention_triton", "step_rewards_triton"} <= names
    assert all(d == {"cuda:0"} for _, d in launches), [x for x in launches if x[1] != {"cuda:0"}]
    # the local LLM's rows never went to the host and back: no vocabulary-sized host -> device copy
    assert _vocab_moves(state) == []
    stack.engine.cache.check_refcounts()


def test_local_llm_rows_stay_on_the_device_and_read_nothing_back(fake_gpu):
    state, _ = fake_gpu
    eng = testing.tiny_engine({"slm": 1, "llm": 2}, device="cuda")
    sched = Scheduler(eng)
    llm = LocalLLM(eng, sched)

    async def go():
        before = state.syncs
        rows = await llm.score(list(range(1, 40)), [5, 6, 7])
        syncs = state.syncs - before
        llm.release_sessions()
        sched.close()
        return rows, syncs
    rows, syncs = asyncio.run(go())
    assert len(rows) == 4 and all(r.full for r in rows)
    assert all(r.logprobs.is_cuda and r.ids.is_cuda for r in rows)
    assert syncs == 0  # metadata, forward and log-softmax all stay on the device


def test_runner_copies_batch_metadata_once_pinned_and_forward_never_syncs(fake_gpu, monkeypatch):
    state, _ = fake_gpu
    eng = testing.tiny_engine({"slm": 1}, device="cuda", block_size=4)
    runner, cache = eng.role("slm").runner, eng.cache
    seqs = [cache.new_sequence("tiny-1", list(range(1, n))) for n in (3, 20, 9)]
    moves, pinned = len(state.moves), state.pinned
    batch = runner.prepare(seqs, ["last"] * 3)
    # the batch's metadata: two host buffers (int64, int32), each pinned and copied once
    assert state.pinned - pinned == 2 and len(state.moves) - moves == 2
    input_ids, positions, ctx, cu = batch
    for t in (input_ids, positions, ctx.slot_mapping, ctx.block_tables, ctx.seq_lens, ctx.cu_seqlens_q):
        assert t.is_cuda
    assert ctx.block_tables.tolist() == [s.block_table + [0] * (ctx.block_tables.shape[1] - len(s.block_table))
                                         for s in seqs]
    assert ctx.seq_lens.tolist() == [2, 19, 8] and ctx.cu_seqlens_q.tolist() == cu == [0, 2, 21, 29]
    assert positions.tolist() == list(range(2)) + list(range(19)) + list(range(8))
    syncs = state.syncs
    out = runner.compute(batch, ["last"] * 3)
    assert state.syncs == syncs  # no host read in a forward (RoPE's bound comes from the metadata)
    runner.finish(seqs, cu)
    # the same logits as the CPU engine (interpreted Triton kernels here, torch's CPU attention there)
    monkeypatch.setattr(testing, "tiny_model", TINY_MODEL)
    ref = testing.tiny_engine({"slm": 1}, block_size=4)
    ref_seqs = [ref.cache.new_sequence("tiny-1", list(range(1, n))) for n in (3, 20, 9)]
    for a, b in zip(out, ref.role("slm").runner.run(ref_seqs, "last")):
        torch.testing.assert_close(a.cpu(), b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fmt", ["int4", "int8"])
def test_quantized_linears_run_the_weight_only_kernel_on_the_device(fake_gpu, monkeypatch, fmt):
    """--weights on CUDA: every quantized linear is a wo_matmul launch on the device, and the logits
    are the CPU engine's (torch's packed CPU ops) on the same quantized weights."""
    from gboost.models.quant import quantize_linears
    state, launches = fake_gpu
    eng = testing.tiny_engine({"slm": 1}, device="cuda")
    assert quantize_linears(eng.role("slm").runner.model, fmt)["layers"] > 0
    seqs = [eng.cache.new_sequence("tiny-1", list(range(1, n))) for n in (3, 40)]  # decode and prefill rows
    out = eng.role("slm").runner.run(seqs, "last")
    assert "wo_matmul_triton" in {n for n, _ in launches}
    assert all(d == {"cuda:0"} for _, d in launches)
    monkeypatch.setattr(testing, "tiny_model", TINY_MODEL)
    ref = testing.tiny_engine({"slm": 1})
    assert quantize_linears(ref.role("slm").runner.model, fmt)["layers"] > 0
    ref_out = ref.role("slm").runner.run([ref.cache.new_sequence("tiny-1", list(range(1, n))) for n in (3, 40)], "last")
    for a, b in zip(out, ref_out):
        torch.testing.assert_close(a.cpu(), b, atol=1e-4, rtol=1e-4)


def test_runner_on_cpu_pins_nothing():
    with fake_cuda() as state:
        eng = testing.tiny_engine({"slm": 1})
        eng.role("slm").runner.run([eng.cache.new_sequence("tiny-1", [1, 2, 3])], "last")
    assert state.pinned == 0 and state.moves == []


def test_rotary_bound_comes_from_the_host():
    rot = Rotary(8, 10000.0, 16)
    x = torch.randn(3, 2, 8)
    pos = torch.tensor([0, 7, 15])
    torch.testing.assert_close(rot(pos, x, 16)[..., :4], x[..., :4] * rot.cos[pos, None] - x[..., 4:] * rot.sin[pos, None])
    with pytest.raises(ValueError, match="17 tokens exceeds the model's 16 positions"):
        rot(pos, x, 17)


@pytest.mark.parametrize("rule", ["loglinear", "proxy"])
def test_fusing_raw_slm_logits_gives_the_fused_log_prob_distribution(rule):
    # fuse_and_sample (GPU exact collab) fuses raw SLM logits; fused_logp fuses its log-softmax
    g = torch.Generator().manual_seed(0)
    slm, base = torch.randn(3, 50, generator=g) * 3, torch.randn(3, 50, generator=g) * 3
    llm = torch.log_softmax(torch.randn(3, 50, generator=g) * 3, -1)
    a = fs.fuse_logprobs_ref(slm, llm, 0.4, rule, base)
    ls, lb = torch.log_softmax(slm.double(), -1), torch.log_softmax(base.double(), -1)
    z64 = (0.6 * ls + 0.4 * llm.double()) if rule == "loglinear" else llm.double() + 0.4 * (ls - lb)
    want = torch.log_softmax(z64, -1)
    # the fp32 inputs' own rounding (log_softmax of slm/base, 50 terms) and the fusion's, then one log-softmax
    dz = 8 * U32 * (slm.double().abs() + base.double().abs() + llm.double().abs() + 50)
    assert_within(a, want, logsoftmax_bound(z64, dz, 49), rule)
