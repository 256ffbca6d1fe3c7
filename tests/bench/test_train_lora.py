"""benchmarks/train_lora.py on a tiny Qwen2 and made-up GSM8K-shaped lines: the step format, a
run stopped and rerun ends with the adapter of an unbroken run, and the adapter loads in the
engine with the logits peft gives it."""
import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests" / "models"))

import train_lora  # noqa: E402
from model_fixtures import make_tiny_hf, make_tiny_tokenizer, save_tiny_hf  # noqa: E402

ANSWER = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nShe sold 48+24 = <<48+24=72>>72 clips.\n#### 1,072"


def test_a_reference_answer_in_the_step_format():
    assert train_lora.solution_steps(ANSWER) == ("Natalia sold 48/2 = 24 clips in May.\n\nShe sold 48+24 = 72 clips."
                                                 "\n\nThe final answer is \\boxed{1072}.")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("trainlora")
    base = save_tiny_hf(d / "base", make_tiny_hf("qwen2", seed=3), make_tiny_tokenizer())
    data = d / "gsm8k_like.jsonl"
    rows = [{"question": f"Tom has {i} apples and eats {i % 3}. How many are left?",
             "answer": f"He has {i} - {i % 3} = <<{i}-{i % 3}={i - i % 3}>>{i - i % 3} left.\n#### {i - i % 3}"}
            for i in range(12)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return base, data, d


def _run(base, data, out, *extra):
    return train_lora.main(["--data", str(data), "--lines", "2-11", "--base", str(base), "--out", str(out),
                            "--rank", "2", "--alpha", "5", "--batch", "3", "--save-every", "1", "--lr", "1e-2",
                            *extra])


def test_a_stopped_run_resumes_to_the_unbroken_runs_adapter(setup, tmp_path):
    from safetensors.torch import load_file
    base, data, _ = setup
    assert _run(base, data, tmp_path / "whole") == 0
    assert _run(base, data, tmp_path / "parts", "--max-steps", "2") == 0
    assert json.loads((tmp_path / "parts" / "checkpoint" / "log.json").read_text())["step"] == 2
    assert _run(base, data, tmp_path / "parts") == 0
    whole, parts = (load_file(str(tmp_path / r / "adapter" / "adapter_model.safetensors")) for r in ("whole", "parts"))
    assert whole.keys() == parts.keys() and all(torch.equal(whole[k], parts[k]) for k in whole)
    log = json.loads((tmp_path / "whole" / "checkpoint" / "log.json").read_text())
    assert log["step"] == 4 and log["loss"][-1] < log["loss"][0]   # 10 lines, 3 a step; it learns
    card = json.loads((tmp_path / "whole" / "adapter" / "gboost_card.json").read_text())
    assert card["solutions_seen"] == 10 and card["lines"] == "2-11"


def test_the_trained_adapter_loads_in_the_engine_as_peft_reads_it(setup, tmp_path):
    import peft
    from gboost.engine import Engine
    base, data, _ = setup
    _run(base, data, tmp_path / "o", "--max-steps", "2")
    ad = tmp_path / "o" / "adapter"
    eng = Engine.from_pretrained(str(base), slm_adapter=str(ad), dtype="float32", num_blocks=32)
    ref = peft.PeftModel.from_pretrained(make_tiny_hf("qwen2", seed=3), str(ad)).merge_and_unload().eval()
    ids = [5, 17, 3, 99, 41, 8]
    seq = eng.role("slm").new_sequence(eng.cache, ids)
    got = eng.role("slm").runner.run([seq], "all")[0].float()
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0].float()
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()


def test_reserved_lines_are_refused(setup, tmp_path):
    base, _, d = setup
    fake = d / "gsm8k_test.jsonl"
    fake.write_text("")
    with pytest.raises(SystemExit):
        train_lora.main(["--data", str(fake), "--lines", "990-1010", "--base", str(base), "--out", str(tmp_path)])
