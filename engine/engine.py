"""The resident models (SLM, LLM, PRM, and the SLM's base for proxy fusion) on one shared paged
KV cache, and plain generation.

Roles map to models: when two roles name the same checkpoint (the 1.5B demo model is both the
general LLM and the judge PRM) they share one set of weights, one runner and one KV namespace,
so prefix blocks are shared between them too.
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import torch

from gboost.kv.cache import KVCache, ModelSpec, Sequence
from gboost.malloc import tune_malloc
from gboost.models.qwen2_llama import CausalLM
from gboost.positions import fits
from gboost.prm.heads import TwoClassPRM, build_resident
from gboost.sampling import SamplingParams, sample_rows
from gboost.scheduler import ModelRunner, Scheduler

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def quantize_resident(model, ck, weights: str, exact_ok: bool = True) -> None:
    """Put ``model``'s linears in ``weights`` format; a GGUF's 4-bit tensors go to int4 exactly,
    from the file's blocks (not where an adapter was merged into them: ``exact_ok`` False)."""
    from gboost.models.quant import quantize_linears
    if weights == "bf16":
        return
    exact = {}
    if weights == "int4" and exact_ok and str(ck.source).endswith(".gguf"):
        from gboost.models.gguf_loader import gguf_int4_codes
        exact = gguf_int4_codes(ck.source, ck.config)
    counts = quantize_linears(model, weights, exact)
    log.info("%s: %d linears in %s (%d parts exact from the file, %d requantized)", ck.name, counts["layers"],
             weights, counts["exact_parts"], counts["requantized_parts"])


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[dtype]


@dataclass
class ResidentModel:
    key: str
    config: object
    model: CausalLM
    tokenizer: object
    chat_template: str | None
    eos_token_ids: list[int]
    runner: ModelRunner | None = None
    #: the LoRA adapter this role runs the model with (models/lora.py), None for its own weights;
    #: a role with an adapter is a view sharing ``model`` and ``runner`` with the base's entry
    adapter: str | None = None

    def new_sequence(self, cache: KVCache, token_ids: list[int]) -> Sequence:
        """A sequence of this model, run with this role's adapter."""
        return cache.new_sequence(self.key, token_ids, adapter=self.adapter)


@dataclass
class GenerationOutput:
    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "length"
    text: str = ""


class Engine:
    def __init__(self, models: list[ResidentModel], roles: dict[str, str], *, block_size: int = 16,
                 kv_memory_bytes: int = 2 << 30, num_blocks: int | None = None,
                 dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu"):
        if torch.device(device).type == "cpu":
            tune_malloc()
        self.models = {m.key: m for m in models}
        for role, key in roles.items():
            if key not in self.models:
                raise ValueError(f"role {role!r} names unknown model {key!r}")
        self.roles = dict(roles)
        self.role_adapters: dict[str, str] = {}   # role -> the unmerged adapter it runs with
        specs = [ModelSpec(m.key, m.config.num_hidden_layers, m.config.num_key_value_heads, m.config.head_dim)
                 for m in models]
        self.cache = KVCache(specs, block_size=block_size, num_blocks=num_blocks,
                             memory_bytes=None if num_blocks else kv_memory_bytes, dtype=dtype, device=device)
        for m in models:
            m.runner = ModelRunner(m.key, m.model, self.cache)

    # -- construction ---------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, slm: str, llm: str | None = None, prm: str | None = None, *,
                        base: str | None = None, dtype: str | torch.dtype = "bfloat16", device: str = "cpu", block_size: int = 16,
                        kv_memory_bytes: int = 2 << 30, num_blocks: int | None = None,
                        cache_dir: str | None = None, slm_adapter: str | None = None,
                        adapter_mode: str = "auto", weights: str = "bf16") -> "Engine":
        """``slm_adapter``: a peft LoRA adapter directory for the SLM. ``adapter_mode`` ``merge``
        merges it into a copy of the SLM's weights at load (the fast path for one private SLM);
        ``unmerged`` keeps one resident base and applies the delta to the SLM's rows only
        (models/lora.py); ``auto`` is unmerged when ``base`` is the SLM's own checkpoint (proxy
        tuning from one copy), else merged. ``weights``: the format every resident model's linears
        run in (models/quant.py): ``bf16`` (the model dtype), ``int8`` or ``int4``."""
        from gboost.models.adapter import merge_adapter, read_adapter
        from gboost.models.loader import load_checkpoint
        from gboost.models.tokenizer import Tokenizer
        from gboost.models.quant import check_format
        dt = parse_dtype(dtype)
        check_format(weights)
        if adapter_mode not in ("auto", "merge", "unmerged"):
            raise ValueError(f"adapter_mode={adapter_mode!r}: choose auto, merge or unmerged")
        adapter = read_adapter(slm_adapter) if slm_adapter else None  # a bad adapter fails before any load
        roles = {r: src for r, src in (("slm", slm), ("llm", llm), ("prm", prm), ("base", base)) if src}
        unmerged = adapter is not None and (adapter_mode == "unmerged" or (adapter_mode == "auto" and base == slm))
        if adapter is not None and not unmerged:
            roles["slm"] = f"{slm} + LoRA {adapter.path}"
        models = []
        for key in dict.fromkeys(roles.values()):  # one copy of each checkpoint, in role order
            tuned = adapter is not None and not unmerged and key == roles["slm"]
            ck = load_checkpoint(slm if tuned else key, dtype=dt, cache_dir=cache_dir)
            state = merge_adapter(ck.state_dict, adapter) if tuned else ck.state_dict
            tok = Tokenizer.from_checkpoint(ck)  # special tokens too: chat templates read bos_token
            model = build_resident(ck.config, state, dt, device)
            del state
            quantize_resident(model, ck, weights, exact_ok=not tuned)
            if isinstance(model, TwoClassPRM) and {r for r, s in roles.items() if s == key} != {"prm"}:
                raise ValueError(f"{key} is a two-class PRM (a score head, no LM head): it can only be the PRM")
            models.append(ResidentModel(key, ck.config, model, tok, ck.chat_template, list(ck.eos_token_ids)))
        eng = cls(models, roles, block_size=block_size, kv_memory_bytes=kv_memory_bytes,
                  num_blocks=num_blocks, dtype=dt, device=device)
        eng.check_vocabularies()
        if unmerged:
            eng.add_adapter(str(adapter.path), adapter, role="slm")
        return eng

    @property
    def weight_formats(self) -> dict[str, str]:
        """The format each resident model's linears run in (int4, int8, bf16...), by model key."""
        from gboost.models.quant import weight_format
        return {k: weight_format(m.model) for k, m in self.models.items()}

    def add_adapter(self, name: str, adapter, role: str | None = None, model: str | None = None) -> None:
        """Install a LoRA adapter (a LoraAdapter, or its directory) unmerged on a resident model --
        ``role``'s, which then runs with it, or the model keyed ``model`` -- so that requests can
        name it (``role(..., adapter=name)``). A bad adapter raises and changes nothing."""
        from gboost.models.adapter import read_adapter
        from gboost.models.lora import install_adapter
        if isinstance(adapter, str):
            adapter = read_adapter(adapter)
        m = self.models[self.roles[role]] if role is not None else self.models[model]
        install_adapter(m.model, name, adapter)
        if role is not None:
            self.role_adapters[role] = name

    def check_vocabularies(self) -> None:
        """Fusion needs one tokenizer: refuse an LLM or base model whose vocabulary is not the SLM's."""
        for role, what in (("llm", "LLM"), ("base", "base model")):
            if "slm" in self.roles and role in self.roles:
                a, b = self.role("slm"), self.role(role)
                diff = None if a is b else a.tokenizer.vocab_difference(b.tokenizer)
                if diff is not None:
                    token, i, j = diff
                    raise ValueError(f"SLM {a.key!r} and {what} {b.key!r} use different vocabularies: token {token!r} "
                                     f"is {_id(i)} in the SLM's and {_id(j)} in the {what}'s; "
                                     "token-level fusion needs one tokenizer (logit widths may differ)")
                if role == "base" and a.config.vocab_size != b.config.vocab_size:  # rows are fused as-is
                    raise ValueError(f"SLM {a.key!r} has {a.config.vocab_size} logits, its base model "
                                     f"{b.key!r} {b.config.vocab_size}; proxy fusion needs the same")

    def role(self, role: str, adapter: str | None = None) -> ResidentModel:
        """The resident model of ``role``, run with the role's adapter, or with ``adapter`` (one
        installed on the same model) when given."""
        if role not in self.roles:
            raise KeyError(f"no model for role {role!r}; configured roles: {sorted(self.roles)}")
        m = self.models[self.roles[role]]
        name = adapter if adapter is not None else self.role_adapters.get(role)
        if name is None:
            return m
        from gboost.models.lora import adapters_of
        if name not in adapters_of(m.model):
            raise KeyError(f"no LoRA adapter {name!r} on the {role}'s model (loaded: "
                           f"{', '.join(sorted(adapters_of(m.model))) or 'none'})")
        return replace(m, adapter=name)

    # -- plain generation ----------------------------------------------------------------
    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams],
                 role: str = "slm", adapter: str | None = None) -> list[GenerationOutput]:
        """Sample continuations of several prompts (blocking): `agenerate` for each, concurrently
        on a scheduler of its own, so they share forward batches; every KV block is released when
        it returns."""
        params = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        if len(params) != len(prompts):
            raise ValueError("one SamplingParams per prompt")

        async def run_all() -> list[GenerationOutput]:
            scheduler = Scheduler(self, offload=False)  # a loop of its own: nothing else to keep responsive
            try:
                return list(await asyncio.gather(*[self.agenerate(scheduler, p, sp, role, adapter=adapter)
                                                   for p, sp in zip(prompts, params)]))
            finally:
                scheduler.close()

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(run_all())
        # called from a coroutine (blocking it, as a synchronous call does): a loop of its own
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gboost-generate") as pool:
            return pool.submit(asyncio.run, run_all()).result()

    async def agenerate(self, scheduler, ids: list[int], params: SamplingParams, role: str = "slm",
                        on_token=None, adapter: str | None = None) -> GenerationOutput:
        """Sample a continuation of one prompt with the forwards going through `scheduler`, so
        concurrent callers (HTTP requests, C ABI threads) share batches. Each prompt samples with
        its own seeded generator, so its tokens do not depend on its batch mates. `on_token(logits,
        token)` sees every step. ``adapter``: a LoRA adapter on the role's model to run with."""
        m = self.role(role, adapter)
        out = GenerationOutput(list(ids))
        seq = m.new_sequence(self.cache, list(ids))
        try:
            m.runner.check_fits(seq)
            gen = params.generator(self.cache.pool.device)
            while len(out.token_ids) < params.max_tokens:
                logits = await scheduler.forward(seq)
                t = sample_rows(logits[None], [params], [gen])[0]
                if on_token is not None:
                    on_token(logits, t)
                out.token_ids.append(t)
                self.cache.append(seq, [t])
                reason = self._stop_reason(m, params, out, seq, t)
                if reason:
                    out.finish_reason = reason
                    break
        finally:
            self.cache.free(seq)
        out.text = m.tokenizer.decode(out.token_ids, skip_special_tokens=True) if m.tokenizer else ""
        return out

    @staticmethod
    def _stop_reason(m: ResidentModel, p: SamplingParams, out: GenerationOutput, seq: Sequence, t: int) -> str | None:
        if (t in m.eos_token_ids and not p.ignore_eos) or t in p.stop_token_ids:
            return "stop"
        # stop when the sequence fills the model's positions: the next token would have none
        if len(out.token_ids) >= p.max_tokens or not fits(len(seq.token_ids) + 1, m.model.max_positions):
            return "length"
        return None


def _id(i: int | None) -> str:
    return "absent" if i is None else f"id {i}"
