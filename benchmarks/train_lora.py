"""LoRA-tune the demo SLM on GSM8K dev lines into a private SLM (issue 33), with peft on the CPU.

    python benchmarks/train_lora.py --data ../shared/data/gsm8k_test.jsonl --lines 201-1000 \
        --out runs/lora-0.5b [--base qwen2.5-coder-0.5b] [--max-steps N]

Each reference solution is rewritten in the engine's step format -- the gold lines as steps
separated by a blank line, calculator marks (<<48/2=24>>) removed, then "The final answer is
\\boxed{N}." -- after the engine's own SLM prompt (collab/rules.py), and only its tokens carry
loss. Fixed seed (the example order and the LoRA init); every --save-every optimizer steps OUT/
holds the adapter, the AdamW state and the loss log, all in safetensors/JSON, so a rerun of the
same command continues where it stopped and ends with the same adapter as an unbroken run.
At the end OUT/adapter/ is a peft adapter directory (`gboost solve --slm-adapter OUT/adapter`)
with a card, and OUT/loss.png the loss curve (matplotlib: the bench extra).
"""
from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from gsm8k_suite import refuse_reserved  # noqa: E402  (the reserved GSM8K lines: one rule)

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
_CALC = re.compile(r"<<[^>]*>>")


def solution_steps(answer: str) -> str:
    """A GSM8K reference answer in the engine's step format."""
    body, _, final = answer.rpartition("####")
    steps = [_CALC.sub("", line).strip() for line in body.strip().splitlines()]
    steps = [s for s in steps if s]
    final = final.strip().replace(",", "")
    return "\n\n".join(steps + [f"The final answer is \\boxed{{{final}}}."])


def examples(tok, eos: int, data: Path, lines: tuple[int, int]) -> list[tuple[list[int], int]]:
    """(token ids, prompt length) of each dev line: the SLM's prompt, then its solution and EOS."""
    from gboost.collab.rules import slm_prompt_ids
    rows = [json.loads(x) for x in data.read_text(encoding="utf-8").splitlines() if x.strip()]
    if lines[1] > len(rows):
        raise SystemExit(f"--lines {lines[0]}-{lines[1]}: {data} has {len(rows)} rows")
    out = []
    for r in rows[lines[0] - 1:lines[1]]:
        prompt = slm_prompt_ids(tok, r["question"])
        target = tok.encode_piece(solution_steps(r["answer"])) + [eos]
        out.append((prompt + target, len(prompt)))
    return out


# -- the resumable state: adapter (peft's safetensors), AdamW moments (safetensors), log (JSON) ------
def save_state(out: Path, model, opt, log: dict) -> None:
    from safetensors.torch import save_file
    ck = out / "checkpoint"
    model.save_pretrained(str(ck), safe_serialization=True)
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    moments = {}
    for p, st in opt.state.items():
        for k in ("exp_avg", "exp_avg_sq", "step"):
            moments[f"{names[id(p)]}::{k}"] = st[k].detach().clone().reshape(-1) if k == "step" else st[k]
    save_file(moments, str(ck / "optimizer.safetensors"))
    tmp = ck / "log.json.tmp"
    tmp.write_text(json.dumps(log))
    tmp.replace(ck / "log.json")  # last: a checkpoint counts only once its log names its step


def load_state(out: Path, model, opt) -> dict | None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    ck = out / "checkpoint"
    if not (ck / "log.json").exists():
        return None
    set_peft_model_state_dict(model, load_file(str(ck / "adapter_model.safetensors")))
    moments = load_file(str(ck / "optimizer.safetensors"))
    for n, p in model.named_parameters():
        if p.requires_grad and f"{n}::exp_avg" in moments:
            opt.state[p] = {"exp_avg": moments[f"{n}::exp_avg"], "exp_avg_sq": moments[f"{n}::exp_avg_sq"],
                            "step": moments[f"{n}::step"].reshape(())}
    return json.loads((ck / "log.json").read_text())


def plot(out: Path, log: dict) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing (pip install .[bench]): no loss.png", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(log["loss"]) + 1), log["loss"])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (mean per solution token)")
    ax.set_title(f"LoRA r={log['rank']} on GSM8K lines {log['lines']}")
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--lines", default="201-1000")
    ap.add_argument("--base", default="qwen2.5-coder-0.5b", help="demo name, .gguf or HF directory")
    ap.add_argument("--out", required=True)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32.0)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--batch", type=int, default=8, help="solutions per optimizer step")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps in all")
    ap.add_argument("--save-every", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                    help="dtype of the final adapter's tensors (training is fp32 either way)")
    args = ap.parse_args(argv)
    from gboost.evals.datasets import parse_lines
    lines = parse_lines(args.lines)
    refuse_reserved(ap, args.data, lines, "--lines")

    import peft
    from tqdm import tqdm

    from gboost.bench.naive import load_hf
    from gboost.engine import Engine
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slm = Engine.from_pretrained(args.base, dtype="bfloat16", num_blocks=1).role("slm")
    data = examples(slm.tokenizer, slm.eos_token_ids[0], Path(args.data), lines)
    del slm
    torch.manual_seed(args.seed)
    base = load_hf(args.base, dtype=torch.float32)
    cfg = peft.LoraConfig(r=args.rank, lora_alpha=args.alpha, target_modules=TARGETS, lora_dropout=0.0,
                          bias="none", task_type="CAUSAL_LM")
    model = peft.get_peft_model(base, cfg)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    order = [i for e in range(args.epochs) for i in random.Random(args.seed + e).sample(range(len(data)), len(data))]
    total = -(-len(order) // args.batch)
    if args.max_steps is not None:
        total = min(total, args.max_steps)
    log = load_state(out, model, opt) or {"step": 0, "loss": [], "lines": args.lines, "rank": args.rank,
                                          "alpha": args.alpha, "lr": args.lr, "batch": args.batch,
                                          "seed": args.seed, "base": args.base}
    model.train()
    bar = tqdm(total=total, initial=log["step"], desc="lora", unit="step", dynamic_ncols=True)
    while log["step"] < total:
        s = log["step"]
        batch = [data[i] for i in order[s * args.batch:(s + 1) * args.batch]]
        n_tok = sum(len(ids) - p for ids, p in batch)
        opt.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for ids, p in batch:  # one solution a forward: no padding, the same sums at any batch size
            x = torch.tensor([ids])
            logits = model(input_ids=x).logits[0, p - 1:-1].float()
            loss = torch.nn.functional.cross_entropy(logits, x[0, p:], reduction="sum") / n_tok
            loss.backward()
            loss_sum += float(loss.detach())
        opt.step()
        log["step"] += 1
        log["loss"].append(loss_sum)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum:.3f}")
        if log["step"] % args.save_every == 0 or log["step"] == total:
            save_state(out, model, opt, log)
    bar.close()
    model.save_pretrained(str(out / "adapter"), safe_serialization=True)
    conf = out / "adapter" / "adapter_config.json"  # the base by the name it was given, not the cache path
    conf.write_text(json.dumps({**json.loads(conf.read_text()), "base_model_name_or_path": args.base}, indent=2) + "\n")
    if args.save_dtype != "float32":  # peft saves the fp32 training copy; a shipped adapter is halved
        from safetensors.torch import load_file, save_file
        w = out / "adapter" / "adapter_model.safetensors"
        save_file({k: t.to(getattr(torch, args.save_dtype)).contiguous() for k, t in load_file(str(w)).items()},
                  str(w), metadata={"format": "pt"})
    card = {"base": args.base, "data": Path(args.data).name, "lines": args.lines, "solutions_seen": min(
        len(order), log["step"] * args.batch), "steps": log["step"], "rank": args.rank, "alpha": args.alpha,
        "lr": args.lr, "batch": args.batch, "seed": args.seed, "dtype": args.save_dtype, "final_loss": log["loss"][-1] if log["loss"] else None}
    (out / "adapter" / "gboost_card.json").write_text(json.dumps(card, indent=1))
    plot(out, log)
    print(json.dumps(card))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
