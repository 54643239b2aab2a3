"""Answer extraction and normalisation (MetaMath / PiSSA protocol) on hard cases."""

import pytest

from flashbone import scoring


@pytest.mark.parametrize(
    "generation, expected",
    [
        ("The answer is: -3", -3),
        ("The answer is: 42 apples. Then 17 more were found.", 42),  # the first number
        ("so 6 * 7 = 42\nThe answer is: 42\n", 42),
        ("The answer is: +7.", 7),
        ("First The answer is: 5. Wait. The answer is: 6", 6),  # the last answer counts
        # PiSSA's/MetaMath's quirks, kept so that accuracies compare with the papers'
        ("The answer is: 12,345,678", 12345),  # the regex takes one separator
        ("He pays 1000.5.\nThe answer is: $1,000.50", 1000),
        ("The answer is: 3/4", 1),  # fraction evaluated, then rounded
        ("The answer is: \\frac{1}{2}", 1),  # LaTeX is not read: the first number is 1
        ("The answer is: 2.5", 2),  # round() (to even)
        ("The answer is: 3.6", 4),
        ("The answer is: 3/0", 3),  # a zero denominator gives the numerator
    ],
)
def test_extract_number_follows_the_protocol(generation, expected):
    assert scoring.extract_number(generation) == expected


@pytest.mark.parametrize(
    "generation",
    [
        "So the total is 42.",  # no answer line: MetaMath's protocol scores it wrong
        "The answer is 42",  # no colon: not the protocol's marker
        "The answer is: none of them",  # marker without a number
        "",
    ],
)
def test_extract_number_no_answer(generation):
    assert scoring.extract_number(generation) is None


def test_gsm8k_comparison_is_exact():
    """The issue's case: a 1e-6 relative tolerance let 1000001 and 999999 pass for 1000000."""
    gold = scoring.gsm8k_gold("so it is a million\n#### 1,000,000")
    assert gold == 1000000.0
    for wrong in ("1000001", "999999"):
        assert scoring.score("gsm8k", f"The answer is: {wrong}", gold) == (int(wrong), False)
    assert scoring.score("gsm8k", "The answer is: 1000000", gold) == (1000000, True)
    assert not scoring.numbers_equal(0.1 + 0.2, 0.3)


def test_gsm8k_gold_and_equality():
    assert scoring.gsm8k_gold("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72") == 72.0
    assert scoring.gsm8k_gold("#### 1,250") == 1250.0
    assert scoring.gsm8k_gold("steps\nThe answer is: 18") == 18.0
    assert scoring.gsm8k_gold(18) == 18.0 and scoring.gsm8k_gold("18") == 18.0
    assert scoring.gsm8k_gold("no number") is None
    assert scoring.numbers_equal(72, 72.0)
    assert not scoring.numbers_equal(72.0, 73.0)
    assert not scoring.numbers_equal(None, 72.0)
    _, ok = scoring.score("gsm8k", "x\nThe answer is: 72", 72.0)
    assert ok
    _, ok = scoring.score("tiny-math", "The answer is: 71", 72.0)
    assert not ok


def test_cut_at_stop():
    assert scoring.cut_at_stop("a\nThe answer is: 4\n<|EOT|>\n### Instruction", ["<|EOT|>"]) == "a\nThe answer is: 4\n"
    assert scoring.cut_at_stop("no stop here", ["<|EOT|>"]) == "no stop here"


@pytest.mark.parametrize(
    "a, b",
    [
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
        ("\\sqrt", "\\sqrt"),  # _fix_sqrt raises on a bare \\sqrt: raw equality
    ],
)
def test_math_equivalent(a, b):
    assert scoring.math_equal(a, b)


@pytest.mark.parametrize(
    "a, b",
    [
        ("\\frac{1}{3}", "\\frac{1}{2}"),
        ("2", "3"),
        ("x^2", "x^3"),
        (None, "1"),
        # the issue's cases: Hendrycks' strip_string does not do these, so neither do we
        ("$\\frac{1}{2}$", "\\frac{1}{2}"),  # a bare $ is not stripped (only \\$)
        ("5\\text{cm}", "5"),  # units are cut only after "\\text{ " with the space
        ("ab = 3", "3"),  # the left side "ab " is 3 characters before spaces go
        ("\\sqrt 2", "\\sqrt{2}"),  # the space is what gets braced: \\sqrt{}2
        ("10%", "10"),  # PiSSA's script removes \\% only
        ("x/2", "\\frac{x}{2}"),  # non-integer a/b: raw comparison
        ("0.75", "\\frac34"),
        ("\\sqrt8", "2\\sqrt2"),  # not equivalent under the protocol
    ],
)
def test_math_not_equivalent(a, b):
    assert not scoring.math_equal(a, b)


def test_strip_string_rules_in_order():
    assert scoring.strip_string("k = \\dfrac{1}{2}") == "\\frac{1}{2}"
    assert scoring.strip_string("\\sqrt 2") == "\\sqrt{}2"
    assert scoring.strip_string("3/4") == "\\frac{3}{4}"
    assert scoring.strip_string("") == ""
    with pytest.raises(ValueError):
        scoring.strip_string("a \\text{ b} c \\text{ d}")


@pytest.mark.parametrize(
    "task, generation, gold, ok",
    [
        ("math", "The answer is: 0.75", "\\frac34", True),
        ("math", "The answer is: \\sqrt8.", "2\\sqrt2", True),
        ("math", "The answer is: \\frac{1}{3}", "\\frac12", False),
        ("gsm8k", "The answer is: 1,000,000 dollars.", 1000000.0, True),
        ("gsm8k", "The answer is: 1000001", 1000000.0, False),
        ("gsm8k", "The answer is: 72 apples.", 72.0, True),
        ("gsm8k", "no marker 72", 72.0, False),
    ],
)
def test_math_verify_scorer(task, generation, gold, ok):
    assert scoring.score(task, generation, gold, scorer="math-verify")[1] is ok


def test_unknown_scorer():
    from flashbone.errors import BoneError

    with pytest.raises(BoneError, match="--scorer"):
        scoring.check_scorer("exact")


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
