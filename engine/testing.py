"""Tiny random checkpoints and a byte-level tokenizer, for tests, dry runs and benchmarks."""
from __future__ import annotations

import torch
from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

from gboost.engine import Engine, ResidentModel
from gboost.models.config import ModelConfig
from gboost.models.qwen2_llama import build_model
from gboost.models.tokenizer import Tokenizer

SPECIALS = ["<|endoftext|>", "<extra_0>"]
EXTRA = ["\u043a\u0438"]  # Math-Shepherd's step tag, one token


#: a minimal chat template for tiny models (role: content lines, then the assistant's turn)
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant: {% endif %}")


def byte_tokenizer(chat_template: str | None = None) -> Tokenizer:
    """One token per byte (ids 0..255) plus <|endoftext|> (256), <extra_0> (257), 'ки' (258)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = HFTokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    tok.add_tokens(EXTRA)
    return Tokenizer(tok, chat_template=chat_template, eos_token_ids=[256])


def tiny_config(arch: str = "qwen2", vocab: int = 260, layers: int = 2, hidden: int = 64, heads: int = 4,
                kv_heads: int = 2, **kw) -> ModelConfig:
    return ModelConfig(architecture=arch, vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                       max_position_embeddings=kw.pop("max_positions", 1024), eos_token_ids=[256], **kw)


def draw_weights_(model, init: str = "scaled", scale: float = 1.0):
    """Random weights in place, from the current torch seed, for the engine's or transformers' model.
    scaled  unit norms, normals of std 0.5/sqrt(fan-in) (vectors 0.02), lm_head sharpened 8x: peaky
            enough distributions to be interesting, as a trained model's are
    spread  every tensor (norms and biases too) normal(0, 0.5): each distinctive, so a loader that
            drops or swaps one is caught"""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if init == "spread":
                p.normal_(0, 0.5)
            elif name.endswith("norm.weight") or "layernorm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0, scale * 0.5 / p.shape[-1] ** 0.5 if p.dim() > 1 else 0.02)
        if init == "scaled":
            model.lm_head.weight.mul_(8.0)
    return model


def tiny_model(cfg: ModelConfig, seed: int, dtype=torch.float32, scale: float = 1.0):
    """The engine's own model of ``cfg``, random (no transformers needed)."""
    torch.manual_seed(seed)
    return draw_weights_(build_model(cfg, None, dtype), "scaled", scale)


def tiny_hf_model(arch: str = "qwen2", seed: int = 0, *, init: str = "scaled", **config):
    """A random transformers Qwen2/Llama causal LM: the one factory of tiny transformers models
    (gboost bench's pair, the loader tests' checkpoints); ``config`` is the transformers config."""
    import transformers
    torch.manual_seed(seed)
    cls, cfg_cls = ((transformers.Qwen2ForCausalLM, transformers.Qwen2Config) if arch == "qwen2" else
                    (transformers.LlamaForCausalLM, transformers.LlamaConfig))
    model = cls(cfg_cls(**config)).float()
    return draw_weights_(model, init).eval()


def tiny_engine(roles: dict[str, int], *, num_blocks: int = 512, block_size: int = 16,
                configs: dict[str, ModelConfig] | None = None, dtype=torch.float32,
                device: str | torch.device = "cpu", chat_template: str | None = None) -> Engine:
    """roles: role -> seed; roles with the same seed share one model (like the 1.5B LLM+PRM).
    The weights are drawn on the CPU (the same model on every device), then moved to ``device``."""
    tok = byte_tokenizer(chat_template)
    by_seed: dict[int, ResidentModel] = {}
    for role, seed in roles.items():
        if seed not in by_seed:
            cfg = (configs or {}).get(role) or tiny_config()
            model = tiny_model(cfg, seed, dtype)
            if next(model.parameters()).device.type != torch.device(device).type:
                model = model.to(device)
            by_seed[seed] = ResidentModel(f"tiny-{seed}", cfg, model, tok, None, [256])
    return Engine(list(by_seed.values()), {r: f"tiny-{s}" for r, s in roles.items()},
                  block_size=block_size, num_blocks=num_blocks, dtype=dtype, device=device)


def tiny_stack(cfg=None, *, num_blocks: int = 512, llm: bool = True, prm_kind: str = "token_pair",
               configs: dict[str, ModelConfig] | None = None, options=None, device: str | torch.device = "cpu"):
    """A whole serving stack on tiny random models: SLM (seed 1), a resident general LLM (seed 2,
    unless ``llm=False``) and a PRM (seed 3) on one KV pool, wired as ``gboost.stack.build_stack``
    wires real checkpoints. For in-process servers in tests, fuzzing and benchmarks."""
    from gboost.llm.local import LocalLLM
    from gboost.scheduler import Scheduler
    from gboost.collab.executor import CollabOptions, EngineExecutor
    from gboost.search.config import SearchConfig
    from gboost.prm.scorer import PRMScorer, PRMSpec
    from gboost.stack import Stack
    cfg = cfg or SearchConfig(max_step_tokens=6, max_depth=3, num_simulations=3)
    eng = tiny_engine({"slm": 1, **({"llm": 2} if llm else {}), "prm": 3}, num_blocks=num_blocks,
                      configs=configs, device=device)
    sched = Scheduler(eng)
    general = LocalLLM(eng, sched) if llm else None
    prm = PRMScorer(eng, sched, PRMSpec(kind=prm_kind, yes_token="Y"))
    executor = EngineExecutor(eng, sched, cfg, llm=general, prm=prm, options=options or CollabOptions(max_draft=4))
    return Stack(eng, sched, executor, general)


def random_adapter(cfg: ModelConfig, seed: int, rank: int = 2, alpha: float = 6.0,
                   targets: tuple[str, ...] = ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")):
    """A LoRA adapter (models/adapter.py's LoraAdapter, in memory) of random A and B on every layer's
    ``targets``: big enough (B not zero) that greedy tokens change."""
    from pathlib import Path

    from gboost.models.adapter import LoraAdapter
    g = torch.Generator().manual_seed(seed)
    sizes = {"self_attn.q_proj": (cfg.num_attention_heads * cfg.head_dim, cfg.hidden_size),
             "self_attn.k_proj": (cfg.num_key_value_heads * cfg.head_dim, cfg.hidden_size),
             "self_attn.v_proj": (cfg.num_key_value_heads * cfg.head_dim, cfg.hidden_size),
             "self_attn.o_proj": (cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim),
             "mlp.gate_proj": (cfg.intermediate_size, cfg.hidden_size),
             "mlp.up_proj": (cfg.intermediate_size, cfg.hidden_size),
             "mlp.down_proj": (cfg.hidden_size, cfg.intermediate_size)}
    pairs = {}
    for i in range(cfg.num_hidden_layers):
        for t in targets:
            out, inp = sizes[t]
            pairs[f"model.layers.{i}.{t}"] = (torch.randn(rank, inp, generator=g), torch.randn(out, rank, generator=g))
    return LoraAdapter(Path(f"<random adapter {seed}>"), rank, alpha / rank, pairs)


def tiny_app(stack, **create_app_kw):
    """``gboost serve --solve`` on a :func:`tiny_stack`: /v1/solve and the SLM's /v1/completions."""
    from gboost.server.app import create_app
    from gboost.server.engine_backend import EngineCompletionBackend
    from gboost.server.solve import Solver
    backend = EngineCompletionBackend(stack.engine, stack.scheduler, model_name="tiny")
    return create_app(backend, solver=Solver(stack.executor, stack.executor.cfg), **create_app_kw)


def write_tiny_checkpoint(d, seed: int = 1, cfg: ModelConfig | None = None):
    """A Hugging Face style directory (config.json, model.safetensors, tokenizer.json) holding
    tiny_model(cfg, seed), for tests that load checkpoints by path as users do."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    cfg = cfg or tiny_config()
    model = tiny_model(cfg, seed=seed)
    hf_cfg = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": cfg.vocab_size,
              "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
              "num_hidden_layers": cfg.num_hidden_layers, "num_attention_heads": cfg.num_attention_heads,
              "num_key_value_heads": cfg.num_key_value_heads, "max_position_embeddings": 1024,
              "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_theta, "tie_word_embeddings": False,
              "eos_token_id": 256, "hidden_act": "silu", "torch_dtype": "float32"}
    (d / "config.json").write_text(json.dumps(hf_cfg))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "model.safetensors"))
    byte_tokenizer().backend.save(str(d / "tokenizer.json"))
    return d


def run_cli(*args, check: bool = True, timeout: float = 300):
    """`python -m gboost.cli ARGS` as a user runs it (a fresh process); with ``check`` it must exit 0."""
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-m", "gboost.cli", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout)
    if check:
        assert p.returncode == 0, p.stderr
    return p
