"""The tiny-math generator: solutions are right, and the splits share no template or numbers."""

import random
import re

from flashbone import tinymath


def _check(p):
    # every equation in the solution is true, and the last line gives the answer
    for a, op, b, c in re.findall(r"(\d+) ([+\-*]) (\d+) = (\d+)", p.response):
        assert eval(f"{a} {op} {b}") == int(c), p.response
    assert p.response.endswith(f"The answer is: {p.answer}")
    assert p.answer >= 0


def test_solutions_are_correct_and_deterministic():
    probs = tinymath.generate_problems("train", 300, seed=1)
    for p in probs:
        _check(p)
    assert len({p.query for p in probs}) == 300
    assert [p.query for p in tinymath.generate_problems("train", 50, seed=1)] == [p.query for p in probs[:50]]
    held = tinymath.generate_problems("test", 100)
    for p in held:
        _check(p)
    assert [p.query for p in tinymath.generate_problems("test", 100)] == [p.query for p in held]  # fixed set


def test_splits_are_disjoint_in_templates_and_numbers():
    train = tinymath.generate_problems("train", 2000, seed=0)
    test = tinymath.generate_problems("test", 500)
    assert not {p.template for p in train} & {p.template for p in test}
    assert not {p.numbers for p in train} & {p.numbers for p in test}
    assert not {p.query for p in train} & {p.query for p in test}
    assert all(tinymath.split_of_template(p.template) == "test" for p in test)
    assert all(tinymath.split_of_numbers(p.numbers) == "train" for p in train)
    # every story is asked in the held-out split, and each held-out phrasing is trained somewhere
    assert {p.template.split(":")[0] for p in test} == {s.name for s in tinymath.STORIES}
    for story in tinymath.STORIES:
        train_combos = [c for s, c in tinymath.templates("train") if s is story]
        for i, slot in enumerate(story.slots):
            assert {c[i] for c in train_combos} == set(range(len(slot)))


def test_plain_text_and_facts():
    p = tinymath.generate_problems("train", 1, seed=3)[0]
    text = tinymath.plain_text(p)
    assert text.startswith(p.query) and "The answer is" not in text and text.endswith(f"{p.answer}.")
    for line in tinymath.arithmetic_facts(random.Random(0), 200):
        lhs, rhs = line.split(" = ")
        assert eval(lhs) == int(rhs)


def test_dict_form():
    d = tinymath.generate("test", 1)[0]
    assert set(d) == {"query", "response", "answer", "template"}
    assert d["response"].endswith("The answer is: " + d["answer"])
