"""The tiny-math generator: solutions are right, and the splits share no problems; the unseen
split's wording (phrasings, names, objects) never occurs in training or pretraining text."""

import random
import re

from flashbone import tinygrammar, tinymath


def _check(p):
    # every equation in the solution is true, and the last line gives the answer
    for a, op, b, c in re.findall(r"(\d+) ([+\-*]) (\d+) = (\d+)", p.response):
        assert eval(f"{a} {op} {b}") == int(c), p.response
    assert p.response.endswith(f"The answer is: {p.answer}")
    assert p.answer >= 0
    assert "{" not in p.query and p.query[0].isupper()
    assert not re.search(r"\w (He|She) ", p.query), p.query  # pronouns are capitalised only first


def test_solutions_are_correct_and_deterministic():
    probs = tinymath.generate_problems("train", 300, seed=1)
    for p in probs:
        _check(p)
    assert len({p.query for p in probs}) == 300
    assert [p.query for p in tinymath.generate_problems("train", 50, seed=1)] == [p.query for p in probs[:50]]
    for split in ("test", "unseen", "valid"):
        held = tinymath.generate_problems(split, 100)
        for p in held:
            _check(p)
        assert [p.query for p in tinymath.generate_problems(split, 100)] == [p.query for p in held]  # fixed set


def test_splits_are_disjoint_in_templates_and_numbers():
    train = tinymath.generate_problems("train", 2000, seed=0)
    test = tinymath.generate_problems("test", 500)
    valid = tinymath.generate_problems("valid", 500)
    assert not {p.template for p in train} & {p.template for p in test}
    assert not {p.numbers for p in train} & ({p.numbers for p in test} | {p.numbers for p in valid})
    assert not {p.query for p in train} & ({p.query for p in test} | {p.query for p in valid})
    assert all(tinymath.split_of_template(p.template) == "test" for p in test)
    assert all(tinymath.split_of_template(p.template) == "train" for p in valid)
    assert all(tinymath.split_of_numbers(p.numbers) == "train" for p in train)
    trained = {s.name for s in tinymath.STORIES if not s.unseen_only}
    assert {p.template.split(":")[0] for p in test} == trained


def _phrasings(problems):
    out = set()
    for p in problems:
        story = next(s for s in tinymath.STORIES if s.name == p.template.split(":")[0])
        combo = map(int, p.template.split(":")[1].split("."))
        out |= {(id(slot), k) for slot, k in zip(story.slots, combo)}
    return out


def test_unseen_split_uses_wording_never_trained():
    train = tinymath.generate_problems("train", 3000, seed=0)
    unseen = tinymath.generate_problems("unseen", 300)
    trained = _phrasings(train)
    names = set(tinygrammar.UNSEEN_NAMES)
    for p in unseen:
        _check(p)
        story = next(s for s in tinymath.STORIES if s.name == p.template.split(":")[0])
        combo = tuple(map(int, p.template.split(":")[1].split(".")))
        assert story.unseen_only or any(slot.is_unseen(k) for slot, k in zip(story.slots, combo))
        assert story.unseen_only or not {(id(s), k) for s, k in zip(story.slots, combo)} <= trained
        assert set(re.findall(r"[A-Z][a-z]+", p.query)) & names
        assert any(item in p.query for item in tinygrammar.UNSEEN_ITEMS) or "dollars" in p.query
    # the train split never shows a held-out phrasing, name or object
    for p in train[:500]:
        assert not set(re.findall(r"[A-Z][a-z]+", p.query)) & names
        assert not any(re.search(rf"\b{i}\b", p.query) for i in tinygrammar.UNSEEN_ITEMS)
    assert {p.template.split(":")[0] for p in unseen} == {s.name for s in tinymath.STORIES}


def test_grammar_expansion_marks_held_out_parts():
    got = tinygrammar.expand("[|Then ]{p} [buys|*receives] {b} more.")
    assert got == [
        ("{p} buys {b} more.", False),
        ("{p} receives {b} more.", True),
        ("Then {p} buys {b} more.", False),
        ("Then {p} receives {b} more.", True),
    ]
    assert all(held for _, held in tinygrammar.expand("*{N} began with [{a}|some] {items}."))


def test_plain_text_facts_and_everyday_text():
    p = tinymath.generate_problems("train", 1, seed=3)[0]
    text = tinymath.plain_text(p)
    assert text.startswith(p.query) and "The answer is" not in text and text.endswith(f"{p.answer}.")
    for line in tinymath.arithmetic_facts(random.Random(0), 200):
        lhs, rhs = line.split(" = ")
        assert eval(lhs) == int(rhs)
    prose = tinymath.everyday_text(random.Random(0), 400)
    assert not re.search(r"\d", prose) and "receives" in prose and "Hana" in prose


def test_dict_form():
    d = tinymath.generate("test", 1)[0]
    assert set(d) == {"query", "response", "answer", "template"}
    assert d["response"].endswith("The answer is: " + d["answer"])
