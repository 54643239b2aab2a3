"""Answer extraction and normalisation (MetaMath / PiSSA protocol) on hard cases."""

import pytest

from flashbone import scoring


@pytest.mark.parametrize("generation, expected", [
    ("He pays 1000.5 dollars.\nThe answer is: $1,000.50", 1000.5),
    ("The answer is: -3", -3.0),
    ("The answer is: 3/4", 0.75),
    ("The answer is: \\frac{1}{2}", 0.5),
    ("The answer is: \\dfrac{3}{4} of a cup", 0.75),
    ("The answer is: 42 apples. Then 17 more were found.", 42.0),
    ("so 6 * 7 = 42\nThe answer is: 42\n", 42.0),
    ("The answer is: 12,345,678", 12345678.0),
    ("The answer is: +7.", 7.0),
    ("First The answer is: 5. Wait. The answer is: 6", 6.0),  # the last answer counts
])
def test_extract_number_hard_cases(generation, expected):
    assert scoring.extract_number(generation) == pytest.approx(expected)


@pytest.mark.parametrize("generation", [
    "So the total is 42.",           # no answer line: MetaMath's protocol scores it wrong
    "The answer is 42",              # no colon: not the protocol's marker
    "The answer is: none of them",   # marker without a number
    "",
    "The answer is: 3/0",            # division by zero is no answer
])
def test_extract_number_no_answer(generation):
    assert scoring.extract_number(generation) is None


def test_gsm8k_gold_and_equality():
    assert scoring.gsm8k_gold("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72") == 72.0
    assert scoring.gsm8k_gold("#### 1,250") == 1250.0
    assert scoring.gsm8k_gold("steps\nThe answer is: 18") == 18.0
    assert scoring.numbers_equal(72.0, 72.0)
    assert scoring.numbers_equal(0.1 + 0.2, 0.3)
    assert not scoring.numbers_equal(72.0, 73.0)
    assert not scoring.numbers_equal(None, 72.0)
    _, ok = scoring.score("gsm8k", "x\nThe answer is: 72", 72.0)
    assert ok
    _, ok = scoring.score("tiny-math", "The answer is: 71", 72.0)
    assert not ok


def test_cut_at_stop():
    assert scoring.cut_at_stop("a\nThe answer is: 4\n<|EOT|>\n### Instruction", ["<|EOT|>"]) == "a\nThe answer is: 4\n"
    assert scoring.cut_at_stop("no stop here", ["<|EOT|>"]) == "no stop here"


@pytest.mark.parametrize("a, b", [
    ("\\frac{1}{2}", "0.5"),
    ("\\frac12", "\\frac{1}{2}"),
    ("\\dfrac{3}{4}", "3/4"),
    ("\\left( 1, 2 \\right)", "(1,2)"),
    ("90^\\circ", "90"),
    ("\\$5", "5"),
    ("x = 3", "3"),
    ("\\sqrt2", "\\sqrt{2}"),
    ("10\\%", "10"),
    (".5", "0.5"),
    ("5 \\text{ cm}", "5"),
    ("\\tfrac{1}{3}", "\\frac{1}{3}"),
])
def test_math_equivalent(a, b):
    assert scoring.math_equal(a, b)


@pytest.mark.parametrize("a, b", [("\\frac{1}{3}", "\\frac{1}{2}"), ("2", "3"), ("x^2", "x^3"), (None, "1")])
def test_math_not_equivalent(a, b):
    assert not scoring.math_equal(a, b)


def test_math_answer_and_boxed():
    assert scoring.math_answer("so it is 4.\nThe answer is: \\frac{1}{2}.") == "\\frac{1}{2}"
    assert scoring.math_answer("The answer is: 5.\nMore text") == "5"
    assert scoring.math_answer("no marker") is None
    sol = "We get $\\boxed{\\frac{1}{2}}$ first, then $\\boxed{\\dfrac{\\sqrt{3}}{2}}$."
    assert scoring.last_boxed(sol) == "\\dfrac{\\sqrt{3}}{2}"
    assert scoring.last_boxed("no box") is None
    assert scoring.math_gold(None, "Thus $\\boxed{7}$.") == "7"
    assert scoring.math_gold("\\frac{2}{3}") == "\\frac{2}{3}"
    pred, ok = scoring.score("math", "...\nThe answer is: \\dfrac{1}{2}", scoring.math_gold(None, "$\\boxed{0.5}$"))
    assert ok and pred == "\\dfrac{1}{2}"
