import pytest

from gboost.search.answer import (
    answer_key, extract_answer, extract_boxed, extract_gsm8k_gold, extract_gsm8k_pred,
    extract_math_gold, extract_math_pred, find_numbers, gsm8k_equal, math_equal, normalize_math,
    normalize_number,
)


# ------------------------------------------------------------------------------------ GSM8K
@pytest.mark.parametrize("solution,gold", [
    ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n#### 18", "18"),
    ("...\n#### 1,000", "1000"),
    ("#### -5", "-5"),
    ("#### 3.50", "3.5"),
    ("#### $70,000", "70000"),
    ("#### 18.", "18"),
    ("#### 0.25", "0.25"),
    ("#### 1,234,567", "1234567"),
    ("#### 5 dollars", "5"),
])
def test_gsm8k_gold(solution, gold):
    assert extract_gsm8k_gold(solution) == gold


def test_gsm8k_gold_errors():
    with pytest.raises(ValueError, match="####"):
        extract_gsm8k_gold("no marker 42")
    with pytest.raises(ValueError, match="no number"):
        extract_gsm8k_gold("#### none")


@pytest.mark.parametrize("text,pred", [
    ("She makes 9 * 2 = $18 every day.\nThe answer is 18.", "18"),
    ("The answer is $1,234.", "1234"),
    ("The answer is: 1,000 apples.", "1000"),
    ("The final answer is 42", "42"),
    ("5 + 3 = 8 so the answer is 5 + 3 = 8", "8"),
    ("Total: 12 + 6 = 18 eggs", "18"),
    ("It costs $3.50 per cup, so 2 cups cost $7.00.", "7"),
    ("The temperature dropped to -7 degrees.", "-7"),
    ("Thus \\boxed{120} minutes.", "120"),
    ("\\boxed{1,200}", "1200"),
    ("\\boxed{x = 15}", "15"),
    ("\\boxed{\\frac{3}{4}}", "0.75"),
    ("He has 3/4 of a pie left.", "0.75"),
    ("#### 72", "72"),
    ("Steps 1 and 2 give 30.\n#### 30", "30"),
    ("The answer is 16 - 3 = 13", "13"),
    ("there are 16-3 = 13 left", "13"),
    ("answer: .5", "0.5"),
    ("So 2.50 dollars.", "2.5"),
    ("no numbers here", None),
    ("", None),
])
def test_gsm8k_prediction(text, pred):
    assert extract_gsm8k_pred(text) == pred


@pytest.mark.parametrize("pred,gold,ok", [
    ("18", "18", True), ("18.00", "18", True), ("$18", "18", True), ("1,000", "1000", True),
    ("-5", "5", False), ("17", "18", False), ("0.5", "1/2", True), (None, "3", False), ("abc", "3", False),
])
def test_gsm8k_equal(pred, gold, ok):
    assert gsm8k_equal(pred, gold) is ok


def test_find_numbers():
    assert find_numbers("16 - 3 = 13, $1,234.50 and -5 or 3/4 of x2 and .5") == \
        ["16", "3", "13", "$1,234.50", "-5", "3/4", ".5"]
    assert normalize_number("$1,234.50.") == "1234.5"
    assert normalize_number("-0.0") == "0"
    assert normalize_number("10,\\!000") == "10000"
    assert normalize_number("\\frac{1}{8}") == "0.125"
    assert normalize_number("nothing") is None


# ------------------------------------------------------------------------------------- boxed
@pytest.mark.parametrize("text,box", [
    ("so $\\boxed{5}$.", "5"),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),
    ("first \\boxed{1} then \\boxed{2}", "2"),
    ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
    ("\\boxed {x^{2}+1}", "x^{2}+1"),
    ("\\boxed 7 is it", "7"),
    ("\\fbox{B}", "B"),
    ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
    ("unbalanced \\boxed{1 + {2}", None),
    ("nothing", None),
])
def test_extract_boxed(text, box):
    assert extract_boxed(text) == box


def test_math_extraction():
    sol = "We have $r = 3$.\n\nTherefore the answer is $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.$"
    assert extract_math_pred(sol) == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert extract_math_pred("So the final answer is $\\frac{1}{2}$. I hope.") == "\\frac{1}{2}"
    assert extract_math_pred("The answer is 14.") == "14"
    assert extract_math_pred("so we get 3 and then 12") == "12"
    assert extract_math_gold("  5 ", "irrelevant") == "5"
    assert extract_math_gold(None, "... so \\boxed{9}.") == "9"
    with pytest.raises(ValueError):
        extract_math_gold("", "no box")


def test_extract_answer_auto_and_strict():
    assert extract_answer("a\n\nThe answer is 7.") == "7"
    assert extract_answer("x \\boxed{3} and The answer is 4") == "3"
    assert extract_answer("#### 12") == "12"
    assert extract_answer("we get 5 then 6") == "6"
    assert extract_answer("we get 5 then 6", strict=True) is None
    assert extract_answer("We get 5 then 6", "gsm8k") == "6"
    with pytest.raises(ValueError):
        extract_answer("1", "chem", strict=True)


# ------------------------------------------------------------------------------ normalisation
@pytest.mark.parametrize("raw,norm", [
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
    ("\\dfrac{17}{50}", "\\frac{17}{50}"),
    ("\\tfrac12", "\\frac{1}{2}"),
    ("\\frac 34", "\\frac{3}{4}"),
    ("\\frac9{19}", "\\frac{9}{19}"),
    ("\\frac{270}7\\text{ degrees}", "\\frac{270}{7}"),
    ("10,\\!080", "10080"),
    ("11,\\! 111,\\! 111,\\! 100", "11111111100"),
    ("\\$32,\\!348", "32348"),
    ("5.4 \\text{ cents}", "5.4"),
    ("15\\mbox{ cm}^2", "15"),
    ("90^\\circ", "90"),
    ("90^{\\circ}", "90"),
    ("30 degrees", "30"),
    ("\\text{(B)}", "B"),
    ("\\text{Evelyn}", "Evelyn"),
    ("x \\in [-2,7]", "[-2,7]"),
    ("x = 5", "5"),
    ("y = -2x", "-2x"),
    ("5x - 7y + 11z + 4 = 0", "5x-7y+11z+4=0"),
    ("11\\sqrt2", "11\\sqrt{2}"),
    ("4210_{5}", "4210_5"),
    ("x^{2} + 1", "x^2+1"),
    (".0000672", "0.0000672"),
    ("18.50", "18.5"),
    ("3.0", "3"),
    ("50\\%", "50"),
    ("1.5.", "1.5"),
    ("\\{1\\pm\\sqrt{5},-2\\}", "1\\pm\\sqrt{5},-2"),
    ("\\boxed{7}", "7"),
    ("$\\frac{1}{2}$", "\\frac{1}{2}"),
    ("\\displaystyle \\frac{a}{b}", "\\frac{a}{b}"),
])
def test_normalize_math(raw, norm):
    assert normalize_math(raw) == norm


@pytest.mark.parametrize("pred,gold", [
    ("0.5", "\\frac12"), ("\\frac{1}{2}", "1/2"), ("\\dfrac{17}{50}", "0.34"), ("-\\frac{3}{8}", "-0.375"),
    ("137.5", "137 \\frac{1}{2}"), ("1.8", "1\\frac{4}{5}"), ("10080", "10,\\!080"), ("18.9", "\\$18.90"),
    ("5.4", "5.4 \\text{ cents}"), ("106", "106^\\circ"), ("B", "\\text{(B)}"), ("(B)", "B"),
    ("east", "\\text{east}"), ("East", "\\text{east}"), ("5", "x=5"), ("[-2,7]", "x \\in [-2,7]"),
    ("(3,\\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)"), ("(3, \\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("(1.5, -13)", "\\left( \\frac{3}{2}, -13 \\right)"), ("-2,1", "1,-2"), ("3,5,7", "3, 5, 7"),
    ("a^2", "a^{2}"), ("2x+3", "y = 2x + 3"), ("\\frac{270}{7}", "\\frac{270}7\\text{ degrees}"),
    ("\\sqrt{2}", "\\sqrt2"), ("0.0000672", ".0000672"), ("\\pi", "\\pi"), ("8\\pi", "8 \\pi"),
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
    ("\\begin{pmatrix} -\\frac{1}{3} \\\\ \\frac23 \\end{pmatrix}", "\\begin{pmatrix} -1/3 \\\\ 2/3 \\end{pmatrix}"),
])
def test_math_equal_positive(pred, gold):
    assert math_equal(pred, gold)


@pytest.mark.parametrize("pred,gold", [
    ("2", "3"), ("\\frac{1}{2}", "\\frac{1}{3}"), ("(3,4]", "(3,4)"), ("[3,4]", "(3,4)"),
    ("(1,2)", "(2,1)"), ("1,2", "1,2,3"), ("-5", "5"), ("\\sqrt{3}", "\\sqrt{2}"), ("A", "B"),
    (None, "1"), ("", "1"), ("x", "y"), ("0.33", "\\frac13"),
])
def test_math_equal_negative(pred, gold):
    assert not math_equal(pred, gold)


def test_answer_key_groups_equivalent_answers():
    assert answer_key("0.5") == answer_key("\\frac{1}{2}") == answer_key("1/2") == "0.5"
    assert answer_key("18") == answer_key("18.0") == "18"
    assert answer_key("x = 3") == "3"
    assert answer_key("\\left(1,2\\right)") == "(1,2)"
    assert answer_key(None) is None
