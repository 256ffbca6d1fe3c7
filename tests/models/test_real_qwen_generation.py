"""The real Qwen2.5-Coder-0.5B-Instruct demo GGUF through our engine vs transformers on the same file."""
import torch

from gboost.engine import Engine, ResidentModel
from gboost.models.qwen2_llama import build_model
from gboost.models.tokenizer import Tokenizer
from gboost.sampling import SamplingParams


def test_greedy_32_tokens_identical_to_transformers(demo_05b, hf_gguf_05b):
    ck = demo_05b["second"]
    assert ck.from_cache
    hf_model, hf_tok = hf_gguf_05b
    tok = Tokenizer(ck.tokenizer, chat_template=ck.chat_template, eos_token_ids=ck.eos_token_ids)
    model = build_model(ck.config, ck.state_dict, torch.float32)
    eng = Engine([ResidentModel("qwen", ck.config, model, tok, ck.chat_template, list(ck.eos_token_ids))],
                 {"slm": "qwen"}, num_blocks=64, dtype=torch.float32)
    prompts = [
        tok.encode_chat([{"role": "user", "content": "Natalia sold clips to 48 of her friends in April, and then "
                          "she sold half as many clips in May. How many clips did she sell altogether?"}]),
        tok.encode("def quicksort(arr):\n"),
    ]
    outs = eng.generate(prompts, SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True))
    for p, o in zip(prompts, outs):
        with torch.no_grad():
            ref = hf_model.generate(torch.tensor([p]), max_new_tokens=32, min_new_tokens=32, do_sample=False,
                                    pad_token_id=hf_tok.eos_token_id)[0, len(p):].tolist()
        assert o.token_ids == ref, (tok.decode(o.token_ids), tok.decode(ref))
    # and the logits themselves, after prefill, agree to float32 precision
    s = eng.cache.new_sequence("qwen", prompts[1])
    ours = eng.role("slm").runner.run([s], "all")[0]
    eng.cache.free(s)
    with torch.no_grad():
        theirs = hf_model(torch.tensor([prompts[1]])).logits[0].float()
    assert (ours - theirs).abs().max() <= 1e-4 * theirs.abs().max()
