import json

import pytest

from gboost.evals.datasets import DatasetError, EvalRow, detect_kind, load_rows, rows_from_dicts
from gboost.evals.grading import extract_pred, grade, is_correct

GSM = [
    {"question": "Tom has 3 apples and buys 4 more. How many apples?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
    {"question": "A shirt costs $1,250 and a hat $50. Total?", "answer": "1250 + 50 = 1300\n#### 1,300"},
]
MATH = [
    {"problem": "Compute $\\frac{1}{2} + \\frac{1}{4}$.", "solution": "It is $\\boxed{\\frac34}$.",
     "answer": "\\frac34", "subject": "Algebra", "level": 1, "unique_id": "test/algebra/1.json"},
    {"problem": "What is $2^3$?", "solution": "We get $\\boxed{8}$."},
]


def write_jsonl(path, rows, blank=False):
    lines = [json.dumps(r) for r in rows]
    if blank:
        lines.insert(1, "")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_load_gsm8k(tmp_path):
    rows = load_rows(write_jsonl(tmp_path / "g.jsonl", GSM, blank=True))
    assert [r.kind for r in rows] == ["gsm8k", "gsm8k"]
    assert [r.gold for r in rows] == ["7", "1300"]
    assert rows[1].question.startswith("A shirt") and rows[1].idx == 1


def test_load_math_and_json_array(tmp_path):
    p = tmp_path / "m.json"
    p.write_text(json.dumps(MATH))
    rows = load_rows(p)
    assert [(r.kind, r.gold) for r in rows] == [("math", "\\frac34"), ("math", "8")]
    assert rows[0].id == "test/algebra/1.json" and rows[0].meta == {"level": 1, "subject": "Algebra"}
    assert load_rows(p, limit=1) == rows[:1]


@pytest.mark.parametrize("content,msg", [
    ("", "file is empty"),
    ('{"question": "q", "answer": "#### 1"}\n{oops\n', r"g\.jsonl:2: invalid JSON"),
    ('{"text": "hello"}\n', r"g\.jsonl:1: unknown row format with keys \['text'\]"),
    ('{"question": "q", "answer": "#### x"}\n', r"g\.jsonl:1: GSM8K row: GSM8K answer: no number after '####'"),
    ('{"question": "q", "answer": "  "}\n', r"g\.jsonl:1: 'answer' must be a GSM8K solution .* or a plain answer"),
    ('{"question": "q"}\n', r"g\.jsonl:1: unknown row format"),
    ('{"question": "", "answer": "#### 1"}\n', "'question' must be a non-empty string"),
    ('{"question": "q", "answer": "#### 1"}\n{"problem": "p", "answer": "2"}\n', r"g\.jsonl:2: looks like math"),
    ('{"problem": "p", "solution": "no box"}\n', "MATH row has no 'answer'"),
    ('[1, 2]', "row 1: row is a int"),
])
def test_clear_errors(tmp_path, content, msg):
    p = tmp_path / "g.jsonl"
    p.write_text(content)
    with pytest.raises(DatasetError, match=msg):
        load_rows(p)


def test_plain_question_answer_rows(tmp_path):
    p = tmp_path / "plain.jsonl"
    p.write_text('{"question": "q1", "answer": "1,200"}\n{"question": "q2", "answer": 7}\n'
                 '{"question": "q3", "answer": "\\\\frac{1}{2}"}\n{"question": "q4", "answer": "x^2 + 1"}\n')
    rows = load_rows(p)
    assert [(r.kind, r.gold) for r in rows] == [("gsm8k", "1200"), ("gsm8k", "7"), ("math", "\\frac{1}{2}"), ("math", "x^2 + 1")]


def test_missing_file_and_bad_kind(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset not found"):
        load_rows(tmp_path / "nope.jsonl")
    with pytest.raises(DatasetError, match="directory"):
        load_rows(tmp_path)
    with pytest.raises(DatasetError, match="unknown dataset kind"):
        rows_from_dicts(GSM, kind="aime")
    assert detect_kind(MATH[0]) == "math" and detect_kind(GSM[0]) == "gsm8k"


def test_forced_kind():
    rows = rows_from_dicts(GSM, kind="gsm8k")
    assert isinstance(rows[0], EvalRow)
    with pytest.raises(DatasetError, match="mixed formats"):
        rows_from_dicts(MATH, kind="gsm8k")


def test_grading():
    assert grade("3 + 4 = 7\nThe answer is 7.", "7", "gsm8k") == ("7", True)
    assert grade("so \\boxed{1,300} dollars", "1300", "gsm8k") == ("1300", True)
    assert grade("The answer is 8", "7", "gsm8k") == ("8", False)
    assert grade("we get $\\boxed{0.75}$", "\\frac34", "math") == ("0.75", True)
    assert grade("we get $\\boxed{\\dfrac{3}{4}}$", "\\frac34", "math")[1] is True
    assert grade("", "1", "math") == (None, False)
    assert extract_pred("The answer is $x=2$.", "math") == "x=2" and is_correct("x=2", "2", "math")
    with pytest.raises(ValueError):
        grade("1", "1", "aime")


def test_shared_data_files_parse_if_present():
    # the real evaluation files live outside the repo; parse them when they are there
    import os
    for name, n, kind in (("gsm8k_test.jsonl", 1319, "gsm8k"), ("math500_test.jsonl", 500, "math")):
        path = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", name)
        if not os.path.exists(path):
            pytest.skip("shared data not available")
        rows = load_rows(path)
        assert len(rows) == n and all(r.kind == kind for r in rows)


@pytest.mark.parametrize("content, msg", [
    # the line, not the row: blank lines before it count
    ('{"question": "q", "answer": "#### 1"}\n\n\n{"question": "q2"}\n', r"g\.jsonl:4: unknown row format"),
    ('\n{"answer": "#### 1"}\n', r"g\.jsonl:2: unknown row format"),
    ('{"question": "q", "answer": "#### 1"}\n{"question": 5, "answer": "#### 1"}\n',
     r"g\.jsonl:2: GSM8K row: 'question' must be a non-empty string"),
    ('{"question": "q", "answer": "#### 1"}\n' + "[" * 100_000 + "]" * 100_000 + "\n",
     r"g\.jsonl:2: invalid JSON \(nested too deeply\)"),
    ('{"question": "q", "answer": ' + "9" * 5000 + "}\n", r"g\.jsonl:1: invalid JSON \(an integer literal is too long\)"),
    ("\n\n  \n", r"g\.jsonl: file is empty"),
    ('[\n  {"question": "q", "answer": "#### 1"},\n  oops\n]', r"g\.jsonl:3: invalid JSON array"),
])
def test_bad_data_files_name_the_file_and_line(tmp_path, content, msg):
    p = tmp_path / "g.jsonl"
    p.write_text(content)
    with pytest.raises(DatasetError, match=msg) as e:
        load_rows(p)
    assert "\n" not in str(e.value)


def test_data_file_that_is_not_utf8_names_its_line(tmp_path):
    p = tmp_path / "g.jsonl"
    p.write_bytes(b'{"question": "q", "answer": "#### 1"}\n{"question": "\xff", "answer": "#### 2"}\n')
    with pytest.raises(DatasetError, match=r"g\.jsonl:2: not UTF-8 text"):
        load_rows(p)
    with pytest.raises(FileNotFoundError, match="dataset not found"):
        load_rows(tmp_path / "missing.jsonl")
