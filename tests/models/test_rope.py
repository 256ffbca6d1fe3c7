"""RoPE scaling rules against transformers' own (inverse frequencies and the cos/sin factor)."""
import pytest
import torch

from gboost.models.config import ModelConfig
from gboost.models.rope import rope_inv_freq

transformers = pytest.importorskip("transformers")
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402

SCALINGS = [
    {"rope_type": "linear", "factor": 2.5},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 64},
    {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 2.0, "high_freq_factor": 8.0,
     "original_max_position_embeddings": 8192},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128},
    {"rope_type": "yarn", "factor": 4.0},   # original length defaults to max_position_embeddings
    {"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 4096, "beta_fast": 16,
     "beta_slow": 2, "mscale": 0.707, "mscale_all_dim": 1.0, "truncate": False},
    {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 256, "attention_factor": 0.9},
    {"rope_type": "yarn", "factor": None, "original_max_position_embeddings": 256},  # factor = 1024 / 256
]


@pytest.mark.parametrize("heads,hidden", [(6, 96), (4, 192), (3, 144)], ids=["d16", "d48", "d48b"])
@pytest.mark.parametrize("scaling", SCALINGS, ids=lambda s: s["rope_type"])
def test_inverse_frequencies_and_factor_match_transformers(scaling, heads, hidden):
    hf = transformers.LlamaConfig(vocab_size=100, hidden_size=hidden, intermediate_size=160, num_hidden_layers=1,
                                  num_attention_heads=heads, max_position_embeddings=1024,
                                  rope_parameters={"rope_theta": 50000.0, **scaling})
    want_inv, want_att = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](hf, "cpu")
    cfg = ModelConfig.from_hf_dict(hf.to_dict())
    inv, att = rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling, cfg.max_position_embeddings)
    torch.testing.assert_close(inv, want_inv.float(), rtol=1e-6, atol=0)
    assert att == pytest.approx(want_att, rel=1e-9)
    plain, _ = rope_inv_freq(cfg.head_dim, cfg.rope_theta, None)
    assert not torch.equal(inv, plain) or att != 1.0  # the rule changed something


@pytest.mark.parametrize("scaling, needle", [
    ({"rope_type": "dynamic", "factor": 2.0}, "'dynamic' is not supported"),
    ({"rope_type": "longrope", "factor": 2.0}, "'longrope' is not supported"),
    ({"type": "su"}, "'su' is not supported"),
    ({"rope_type": "llama3", "factor": 8.0}, "needs low_freq_factor, high_freq_factor"),
    ({"rope_type": "linear"}, "needs factor"),
    ({"rope_type": "linear", "factor": 0}, "factor must be > 0"),
])
def test_unsupported_or_incomplete_scaling_is_refused_at_load(scaling, needle):
    with pytest.raises(ValueError, match=needle):
        ModelConfig("llama", 100, 64, 128, 1, num_attention_heads=4, rope_scaling=scaling)


def test_plain_rope_spellings():
    for s in (None, {}, {"rope_type": "default"}, {"type": "none"}):
        inv, att = rope_inv_freq(16, 10000.0, s)
        assert att == 1.0 and torch.equal(inv, rope_inv_freq(16, 10000.0, None)[0])
