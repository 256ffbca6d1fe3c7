"""A real two-class PRM checkpoint, written by transformers, loaded by path through the engine's own
loading path (load_checkpoint -> Engine.from_pretrained -> PRMScorer): its rewards must equal
softmax(score logits)[..., 1] that transformers computes at each step's separator token."""
import asyncio

import pytest
import torch

transformers = pytest.importorskip("transformers")

from gboost.engine import Engine  # noqa: E402
from gboost.prm.heads import TwoClassPRM  # noqa: E402
from gboost.prm.scorer import PRMScorer, PRMSpec  # noqa: E402
from gboost.scheduler import Scheduler  # noqa: E402
from gboost.testing import byte_tokenizer, write_tiny_checkpoint  # noqa: E402

STEPS = ["First, 2 + 2 = 4.", "So the answer is 4.", "Check: 4 - 2 = 2."]


def _write(d, layout: str):
    """Qwen2ForTokenClassification(num_labels=2) saved with safetensors; `mlp` swaps its head for
    Qwen2.5-Math-PRM's Linear -> ReLU -> Linear (score.0 / score.2), as that checkpoint holds it."""
    tok = byte_tokenizer()
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(vocab_size=264, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                   rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
                                   eos_token_id=256, num_labels=2)
    model = transformers.Qwen2ForTokenClassification(cfg).float()
    h = cfg.hidden_size
    if layout == "mlp":
        model.score = torch.nn.Sequential(torch.nn.Linear(h, h), torch.nn.ReLU(), torch.nn.Linear(h, 2))
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = 0.1 if name.startswith("score.") else 0.3  # a small head: rewards away from 0 and 1
            p.copy_(torch.ones_like(p) if name.endswith("norm.weight") else torch.randn_like(p) * std)
    model.eval()
    model.save_pretrained(str(d), safe_serialization=True)
    tok.backend.save(str(d / "tokenizer.json"))
    return model, tok


@pytest.mark.parametrize("layout", ["linear", "mlp"])
def test_two_class_checkpoint_rewards_equal_transformers(tmp_path, layout):
    hf, tok = _write(tmp_path / "prm", layout)
    keys = {k for k in hf.state_dict() if k.startswith("score.")}
    assert keys == ({"score.weight", "score.bias"} if layout == "linear" else
                    {"score.0.weight", "score.0.bias", "score.2.weight", "score.2.bias"})
    slm = write_tiny_checkpoint(tmp_path / "slm", seed=1)  # the same byte-level tokenizer
    eng = Engine.from_pretrained(str(slm), prm=str(tmp_path / "prm"), dtype="float32", num_blocks=64)
    assert isinstance(eng.role("prm").model, TwoClassPRM)
    sched = Scheduler(eng)
    scorer = PRMScorer(eng, sched, PRMSpec(kind="two_class"))
    question = "What is 2 + 2?"

    async def engine_rewards():
        ids = scorer.root_ids(question)
        seq = eng.cache.new_sequence(scorer.model.key, ids)
        out = []
        for i, step in enumerate(STEPS):
            eng.cache.append(seq, scorer.step_ids(step, first=i == 0))
            out += await scorer.score([seq])
        eng.cache.free(seq)
        return out
    got = asyncio.run(engine_rewards())
    sched.close()
    eng.cache.check_refcounts()

    ids = scorer.root_ids(question)
    for i, step in enumerate(STEPS):
        ids += scorer.step_ids(step, first=i == 0)
    assert ids.count(scorer.sep_id) == len(STEPS)
    with torch.no_grad():
        logits = hf(torch.tensor([ids])).logits[0]
    want = torch.softmax(logits.float(), -1)[torch.tensor(ids) == scorer.sep_id, 1]
    assert torch.allclose(torch.tensor(got), want, atol=1e-5), (got, want)
    assert len(set(round(r, 4) for r in got)) == len(STEPS)  # distinct rewards: a real comparison


def test_a_score_head_of_the_wrong_width_is_refused(tmp_path):
    from gboost.models.loader import load_checkpoint
    from gboost.prm.heads import build_resident
    _write(tmp_path / "prm", "linear")
    ck = load_checkpoint(str(tmp_path / "prm"), dtype="float32")
    sd = dict(ck.state_dict)
    sd["score.weight"] = torch.zeros(3, ck.config.hidden_size)
    sd.pop("score.bias")
    with pytest.raises(RuntimeError, match="score|size mismatch"):
        build_resident(ck.config, sd, torch.float32)


def test_a_two_class_checkpoint_is_only_a_two_class_prm(tmp_path):
    _write(tmp_path / "prm", "linear")
    d = str(tmp_path / "prm")
    with pytest.raises(ValueError, match="two-class PRM .* can only be the PRM"):
        Engine.from_pretrained(d, dtype="float32", num_blocks=16)            # as the SLM
    slm = str(write_tiny_checkpoint(tmp_path / "slm", seed=1))
    eng = Engine.from_pretrained(slm, prm=d, dtype="float32", num_blocks=16)
    with pytest.raises(ValueError, match="use prm_kind='two_class', not 'judge'"):
        PRMScorer(eng, None, PRMSpec(kind="judge", yes_token="Y"))
