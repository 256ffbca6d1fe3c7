"""gboost.models.tokenizer.Tokenizer: encode/decode, chat templates rendered like transformers (sandboxed
jinja2, raise_exception, tojson), vocabulary comparison for SLM/LLM pairs."""

import pytest
from tokenizers import AddedToken

from gboost.models.loader import load_checkpoint
from gboost.models.tokenizer import ChatTemplateError, Tokenizer

transformers = pytest.importorskip("transformers")

from model_fixtures import CHATML_TEMPLATE, make_tiny_tokenizer  # noqa: E402

CHATS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "Ünïcödé 🙂 <tag> & \"quotes\""}],
    [{"role": "user", "content": ""}],
]


@pytest.fixture(scope="module")
def tok(tiny_qwen2):
    return load_checkpoint(tiny_qwen2[0]).get_tokenizer()


@pytest.fixture(scope="module")
def hf_tok(tiny_qwen2):
    return transformers.AutoTokenizer.from_pretrained(str(tiny_qwen2[0]))


def test_basics(tok):
    assert isinstance(tok, Tokenizer)
    assert tok.vocab_size == tok.backend.get_vocab_size(with_added_tokens=True) < 384
    assert tok.eos_token_ids == [2] and tok.eos_token_id == 2 and tok.is_eos(2) and not tok.is_eos(0)
    assert tok.token_to_id("<|im_end|>") == 2 and tok.id_to_token(2) == "<|im_end|>"
    assert tok.special_tokens["eos_token"] == "<|im_end|>"
    assert "chat_template=yes" in repr(tok)


@pytest.mark.parametrize("text", ["def f(x):\n    return x * 2\n", "Ünïcödé 中文 🙂", "  spaces  ", "1234", ""])
def test_encode_decode_roundtrip(tok, hf_tok, text):
    ids = tok.encode(text)
    assert all(isinstance(i, int) for i in ids)
    assert ids == hf_tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert tok.encode_batch([text, text]) == [ids, ids]


def test_special_tokens_and_skipping(tok):
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2
    assert tok.decode(ids) == "<|im_start|>user\nhi<|im_end|>"
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi"
    # user-defined added tokens stay whole but are not "special"
    tc = tok.encode("<tool_call>")
    assert len(tc) == 1 and tok.decode(tc, skip_special_tokens=True) == "<tool_call>"


@pytest.mark.parametrize("gen", [True, False])
@pytest.mark.parametrize("chat", CHATS, ids=["one", "multi", "empty"])
def test_chat_template_matches_transformers(tok, hf_tok, chat, gen):
    ours = tok.apply_chat_template(chat, add_generation_prompt=gen)
    assert ours == hf_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen)
    assert tok.encode_chat(chat, gen) == hf_tok.encode(ours, add_special_tokens=False)


def test_chat_template_tools_tojson_not_html_escaped(tok, hf_tok):
    tools = [{"name": "f", "description": "a <b> & c", "unicode": "ü"}]
    msgs = [{"role": "user", "content": "x"}]
    ours = tok.apply_chat_template(msgs, tools=tools)
    assert '"description": "a <b> & c"' in ours and '"unicode": "ü"' in ours
    assert ours == hf_tok.apply_chat_template(msgs, tools=tools, tokenize=False, add_generation_prompt=True)


def test_chat_template_raise_exception(tok):
    with pytest.raises(ChatTemplateError, match="bad role: robot"):
        tok.apply_chat_template([{"role": "robot", "content": "beep"}])
    with pytest.raises(ChatTemplateError, match="'role'"):
        tok.apply_chat_template([{"content": "no role"}])


def test_chat_template_is_sandboxed(tiny_tokenizer):
    t = Tokenizer(tiny_tokenizer, chat_template="{{ messages.__class__.__mro__ }}")
    with pytest.raises(ChatTemplateError):
        t.apply_chat_template([{"role": "user", "content": "x"}])
    t = Tokenizer(tiny_tokenizer, chat_template="{% set x = messages.append(1) %}{{ messages|length }}")
    with pytest.raises(ChatTemplateError):  # immutable sandbox: no mutation of the caller's list
        t.apply_chat_template([{"role": "user", "content": "x"}])


def test_chat_template_globals_and_special_tokens(tiny_tokenizer):
    tpl = ("{{ bos_token }}{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
           "{{ m.content }}{% endfor %}{{ eos_token }}|{{ strftime_now('%Y') | length }}|{{ extra }}")
    t = Tokenizer(tiny_tokenizer, chat_template=tpl, special_tokens={"bos_token": "<s>", "eos_token": "</s>"})
    out = t.apply_chat_template([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
                                extra="kw")
    assert out == "<s>a</s>|4|kw"


def test_no_or_broken_template(tiny_tokenizer):
    with pytest.raises(ChatTemplateError, match="no chat template"):
        Tokenizer(tiny_tokenizer).apply_chat_template([{"role": "user", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="does not compile"):
        Tokenizer(tiny_tokenizer, chat_template="{% for %}").apply_chat_template([{"role": "user", "content": "x"}])


def test_same_vocab(tiny_tokenizer, tok):
    a = Tokenizer(tiny_tokenizer, chat_template=CHATML_TEMPLATE)
    b = Tokenizer(make_tiny_tokenizer())  # rebuilt from scratch: same vocabulary
    assert a.same_vocab(b) and b.same_vocab(a) and a.same_vocab(a) and tok.same_vocab(a)
    c_backend = make_tiny_tokenizer()
    c_backend.add_tokens([AddedToken("<extra>", special=True)])  # one more token
    assert not a.same_vocab(Tokenizer(c_backend))
    extra = c_backend.token_to_id("<extra>")
    assert a.vocab_difference(b) is None
    assert a.vocab_difference(Tokenizer(c_backend)) == ("<extra>", None, extra)
    assert Tokenizer(c_backend).vocab_difference(a) == ("<extra>", extra, None)
    from tokenizers import Tokenizer as HFTokenizer
    swapped = HFTokenizer.from_str(tiny_tokenizer.to_str())
    vocab = tiny_tokenizer.get_vocab()
    t1, t2 = vocab["<|im_start|>"], vocab["<|im_end|>"]
    import json
    j = json.loads(swapped.to_str())
    for at in j["added_tokens"]:
        if at["id"] in (t1, t2):
            at["id"] = t2 if at["id"] == t1 else t1
    j["model"]["vocab"]["<|im_start|>"], j["model"]["vocab"]["<|im_end|>"] = t2, t1
    swapped = HFTokenizer.from_str(json.dumps(j))  # same size, two ids exchanged
    assert swapped.get_vocab_size() == tiny_tokenizer.get_vocab_size()
    assert not a.same_vocab(Tokenizer(swapped))
    assert a.vocab_difference(Tokenizer(swapped)) == ("<|im_start|>", t1, t2)  # the lower id first


def test_encode_piece_is_encode_for_byte_level_bpe(tok):
    assert tok._piece_backend() is tok.backend  # nothing to strip: the same tokenizer
    for s in ("\n\nStep 2: 5 * 4 = 20.", " Yes", "<|im_end|>"):
        assert tok.encode_piece(s) == tok.encode(s)


def test_encode_piece_drops_a_legacy_prepend_normalizer():
    """Llama-2-style tokenizer.json: the dummy "▁" comes from a Prepend normalizer."""
    from tokenizers import Tokenizer as HF, decoders, normalizers
    from tokenizers.models import BPE

    vocab = {"<unk>": 0, "\u2581": 1, "a": 2, "b": 3, "\u2581a": 4}
    hf = HF(BPE(vocab=vocab, merges=[("\u2581", "a")], unk_token="<unk>"))
    hf.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    hf.decoder = decoders.Replace("\u2581", " ")
    t = Tokenizer(hf)
    assert t.encode("ab") == [4, 3]          # "▁a" "b": the whole text gets the dummy prefix
    assert t.encode_piece("ab") == [2, 3]    # a continuation does not
    assert t.encode_piece(" ab") == [4, 3]   # a real space still merges
    assert t.encode("ab") == [4, 3]          # the original tokenizer is untouched
