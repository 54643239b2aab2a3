"""tiny-math: GSM8K-style word problems small enough for a laptop, with step-by-step solutions.

    story (the operations) x one phrasing per sentence slot (the template) x numbers
      -> {"query", "response", "answer", "template"}

    query:     "Mia owns 12 apples. Leo gives her 7 more apples. How many apples does Mia have in all?"
    response:  "Mia starts with 12 apples.\\nShe gets 7 more, so she has 12 + 7 = 19 apples.\\n
                The answer is: 19"

Two disjoint splits:
    template   "add:1.2.1" (story, phrasing of each slot): test when crc32(template) % 4 == 0
    numbers    (12, 7): test when crc32("12,7") % 5 == 0
A test problem has a test template AND a test number tuple, a train problem neither: the
held-out set asks every question with a sentence combination and numbers never trained on
(each single phrasing does occur in training; the test is compositional).
:func:`plain_text` writes a problem as plain prose (no instruction template, no "The answer
is:" line); ``scripts/pretrain_tiny.py`` pretrains the built-in base on it (train split only)
and on arithmetic facts (:func:`arithmetic_facts`).
"""

from __future__ import annotations

import itertools
import random
import zlib
from dataclasses import dataclass
from typing import Callable

SPLITS = ("train", "test")
HELDOUT_SEED = 20240915  # the held-out set is fixed: the same problems for every run
NAMES = {
    "Mia": "she", "Tom": "he", "Ava": "she", "Leo": "he", "Emma": "she", "Noah": "he",
    "Lily": "she", "Sam": "he", "Zoe": "she", "Ben": "he", "Nora": "she", "Jack": "he",
    "Ruby": "she", "Max": "he", "Ella": "she", "Owen": "he", "Ivy": "she", "Luke": "he",
    "Anna": "she", "Eli": "he", "Rosa": "she", "Omar": "he", "Maya": "she", "Ravi": "he",
}
ITEMS = ["apples", "pencils", "marbles", "cookies", "stickers", "books", "cards", "shells",
         "stamps", "balloons", "candies", "toys", "buttons", "rocks", "oranges", "eggs"]

START = ["{N} has {a} {items}.", "{N} owns {a} {items}.", "{N} keeps {a} {items} in a box.",
         "At first {N} has {a} {items}.", "{N} starts the day with {a} {items}."]
GAIN = ["{P} buys {b} more {items}.", "{P} finds {b} more.", "{M} gives {o} {b} more {items}.",
        "{P} gets {b} more {items} from {M}.", "Then {p} picks up {b} more."]
LOSE = ["{P} gives {x} of them to {M}.", "{P} loses {x} {items}.", "{P} sells {x} {items}.",
        "{M} takes {x} {items} away.", "Then {p} uses {x} of them."]
HAVE_NOW = ["How many {items} does {N} have now?", "How many {items} does {N} have in all?",
            "How many {items} does {N} end up with?", "What is the number of {items} {N} has now?"]
HAVE_LEFT = ["How many {items} does {N} have left?", "How many {items} are left?",
             "How many {items} does {N} end up with?", "How many {items} does {N} still have?"]
GROUPS = ["{N} has {a} bags with {b} {items} in each bag.", "{N} buys {a} boxes of {items}. Each box holds {b}.",
          "{N} puts {items} in {a} rows with {b} in each row.", "{N} fills {a} jars with {b} {items} each.",
          "{N} has {a} baskets and each basket has {b} {items}."]
TOTAL = ["How many {items} are there in total?", "How many {items} does {N} have in all?",
         "What is the total number of {items}?", "How many {items} is that?"]
PAIR = ["{N} has {a} {items} and {M} has {b} {items}.", "{N} collects {a} {items}. {M} collects {b} {items}.",
        "{N} brings {a} {items} and {M} brings {b}.", "{M} has {b} {items}. {N} has {a} {items}."]


@dataclass
class Story:
    name: str
    draw: Callable[[random.Random], tuple[int, ...]]
    slots: list[list[str]]
    solve: Callable[[dict], tuple[list[str], int]]  # context -> (solution steps, answer)

    def combos(self) -> list[tuple[int, ...]]:
        return list(itertools.product(*[range(len(s)) for s in self.slots]))


def _sub_pair(rng):  # a > b
    a = rng.randint(10, 99)
    return a, rng.randint(2, a - 1)


def _add_sub(rng):
    a, b = rng.randint(5, 60), rng.randint(2, 39)
    return a, b, rng.randint(1, a + b - 1)


def _save_spend(rng):
    a, b = rng.randint(2, 12), rng.randint(2, 9)
    return a, b, rng.randint(1, a * b - 1)


def _s_add(c):
    return [f"{c['N']} starts with {c['a']} {c['items']}.",
            f"{c['P']} gets {c['b']} more, so {c['p']} has {c['a']} + {c['b']} = {c['a'] + c['b']} {c['items']}."], \
        c["a"] + c["b"]


def _s_sub(c):
    r = c["a"] - c["x"]
    return [f"{c['N']} starts with {c['a']} {c['items']}.",
            f"{c['P']} gives away {c['x']}, so {c['p']} has {c['a']} - {c['x']} = {r} {c['items']} left."], r


def _s_add_sub(c):
    s, r = c["a"] + c["b"], c["a"] + c["b"] - c["x"]
    return [f"After getting {c['b']} more, {c['N']} has {c['a']} + {c['b']} = {s} {c['items']}.",
            f"After giving away {c['x']}, {c['N']} has {s} - {c['x']} = {r} {c['items']}."], r


def _s_mul(c):
    r = c["a"] * c["b"]
    return [f"There are {c['a']} groups of {c['b']} {c['items']}.",
            f"So there are {c['a']} * {c['b']} = {r} {c['items']}."], r


def _s_mul_add(c):
    m, r = c["a"] * c["b"], c["a"] * c["b"] + c["c"]
    return [f"The {c['a']} groups hold {c['a']} * {c['b']} = {m} {c['items']}.",
            f"With the {c['c']} from before, {c['N']} has {m} + {c['c']} = {r} {c['items']}."], r


def _s_price(c):
    r = c["a"] * c["b"]
    return [f"Each box costs {c['a']} dollars and {c['N']} buys {c['b']} boxes.",
            f"So {c['N']} spends {c['b']} * {c['a']} = {r} dollars."], r


def _s_together(c):
    r = c["a"] + c["b"]
    return [f"{c['N']} has {c['a']} {c['items']} and {c['M']} has {c['b']} {c['items']}.",
            f"Together they have {c['a']} + {c['b']} = {r} {c['items']}."], r


def _s_diff(c):
    r = c["a"] - c["b"]
    return [f"{c['N']} has {c['a']} {c['items']} and {c['M']} has {c['b']} {c['items']}.",
            f"The difference is {c['a']} - {c['b']} = {r} {c['items']}."], r


def _s_sum3(c):
    s, r = c["a"] + c["b"], c["a"] + c["b"] + c["c"]
    return [f"First {c['a']} + {c['b']} = {s} {c['items']}.", f"Then {s} + {c['c']} = {r} {c['items']}."], r


def _s_save_spend(c):
    m, r = c["a"] * c["b"], c["a"] * c["b"] - c["c"]
    return [f"{c['N']} gets {c['a']} * {c['b']} = {m} dollars.",
            f"After spending {c['c']}, {c['N']} has {m} - {c['c']} = {r} dollars."], r


def _r3(lo, hi):
    return lambda rng: (rng.randint(lo, hi), rng.randint(lo, hi), rng.randint(lo, hi))


STORIES = [
    Story("add", lambda rng: (rng.randint(2, 99), rng.randint(2, 99)), [START, GAIN, HAVE_NOW], _s_add),
    Story("sub", lambda rng: _sub_pair(rng), [START, LOSE, HAVE_LEFT], _s_sub),
    Story("add_sub", _add_sub, [START, GAIN, LOSE, HAVE_NOW], _s_add_sub),
    Story("mul", lambda rng: (rng.randint(2, 9), rng.randint(2, 12)), [GROUPS, TOTAL], _s_mul),
    Story("mul_add", lambda rng: (rng.randint(2, 9), rng.randint(2, 12), rng.randint(2, 60)),
          [["{N} already has {c} {items}.", "{N} has {c} {items} at home.", "{N} starts with {c} {items}."],
           ["{P} buys {a} packs with {b} {items} in each pack.", "{P} gets {a} bags of {b} {items} each.",
            "{M} gives {o} {a} boxes with {b} {items} in each box."], HAVE_NOW], _s_mul_add),
    Story("price", lambda rng: (rng.randint(2, 12), rng.randint(2, 9)),
          [["One box of {items} costs {a} dollars.", "Each box of {items} costs {a} dollars.",
            "A box of {items} sells for {a} dollars."],
           ["{N} buys {b} boxes.", "{N} orders {b} boxes.", "{N} wants {b} boxes and pays for them."],
           ["How many dollars does {N} spend?", "How much does {N} pay in dollars?",
            "How many dollars do the boxes cost?"]], _s_price),
    Story("together", lambda rng: (rng.randint(2, 99), rng.randint(2, 99)),
          [PAIR, ["How many {items} do they have together?", "How many {items} do they have in all?",
                  "What is the total number of {items}?"]], _s_together),
    Story("diff", _sub_pair, [PAIR, ["How many more {items} does {N} have than {M}?",
                                     "How many fewer {items} does {M} have than {N}?",
                                     "What is the difference between their numbers of {items}?"]], _s_diff),
    Story("sum3", _r3(2, 60), [["{N} picks {a} {items} on Monday, {b} on Tuesday and {c} on Wednesday.",
                                "{N} finds {a} {items} in the garden, {b} in the house and {c} at school.",
                                "{N} sells {a} {items} in the morning, {b} at noon and {c} in the evening."],
                               ["How many {items} is that in total?", "How many {items} is that in all?",
                                "What is the total number of {items}?"]], _s_sum3),
    Story("save_spend", _save_spend,
          [["{N} saves {a} dollars each week for {b} weeks.", "{N} earns {a} dollars a day for {b} days.",
            "Every week for {b} weeks, {N} puts {a} dollars in a jar."],
           ["Then {p} spends {c} dollars.", "{P} buys a gift for {c} dollars.", "{P} gives {c} dollars to {M}."],
           ["How many dollars does {N} have left?", "How much money is left in dollars?",
            "How many dollars does {N} keep?"]], _s_save_spend),
]


@dataclass
class Problem:
    query: str
    steps: list[str]  # solution sentences, one per line
    answer: int
    template: str
    numbers: tuple[int, ...]

    @property
    def response(self) -> str:
        return "\n".join(self.steps) + f"\nThe answer is: {self.answer}"

    def to_dict(self) -> dict:
        return {"query": self.query, "response": self.response, "answer": str(self.answer),
                "template": self.template}


def _split(key: str, mod: int) -> str:
    return "test" if zlib.crc32(key.encode()) % mod == 0 else "train"


def split_of_numbers(numbers: tuple[int, ...]) -> str:
    """``"test"`` for one number tuple in five (a fixed hash), ``"train"`` for the rest."""
    return _split(",".join(map(str, numbers)), 5)


def split_of_template(template: str) -> str:
    """``"test"`` for one sentence combination in four (a fixed hash), ``"train"`` for the rest."""
    return _split(template, 4)


def templates(split: str) -> list[tuple[Story, tuple[int, ...]]]:
    """Every (story, phrasing choice) of ``split``."""
    return [(s, c) for s in STORIES for c in s.combos()
            if split_of_template(f"{s.name}:{'.'.join(map(str, c))}") == split]


def _context(rng: random.Random, nums: tuple[int, ...]) -> dict:
    name, other = rng.sample(sorted(NAMES), 2)
    p = NAMES[name]
    ctx = {"N": name, "M": other, "p": p, "P": p.capitalize(), "o": "her" if p == "she" else "him",
           "items": rng.choice(ITEMS)}
    ctx.update(zip("abc", nums))
    if len(nums) == 2:
        ctx["x"] = nums[1]
    if len(nums) == 3:
        ctx["x"] = nums[2]
    return ctx


def generate_problems(split: str, n: int, seed: int | None = None) -> list[Problem]:
    """``n`` distinct problems of ``split`` (``train`` or ``test``); the test split defaults to a
    fixed seed, so every run scores the same held-out problems."""
    if split not in SPLITS:
        raise ValueError(f"tiny-math split must be one of {SPLITS}, got {split!r}")
    rng = random.Random(HELDOUT_SEED if seed is None and split == "test" else (seed or 0))
    by_story: dict[str, list] = {}
    for story, combo in templates(split):  # every story equally often, whatever its phrasings count
        by_story.setdefault(story.name, []).append((story, combo))
    pools = list(by_story.values())
    seen: set[str] = set()
    out: list[Problem] = []
    while len(out) < n:
        story, combo = rng.choice(rng.choice(pools))
        nums = story.draw(rng)
        if split_of_numbers(nums) != split:
            continue
        ctx = _context(rng, nums)
        query = " ".join(story.slots[i][k].format(**ctx) for i, k in enumerate(combo))
        if query in seen:
            continue
        seen.add(query)
        steps, answer = story.solve(ctx)
        out.append(Problem(query, steps, answer, f"{story.name}:{'.'.join(map(str, combo))}", nums))
    return out


def generate(split: str, n: int, seed: int | None = None) -> list[dict]:
    """Like :func:`generate_problems`, as dicts with ``query``, ``response``, ``answer``, ``template``."""
    return [p.to_dict() for p in generate_problems(split, n, seed)]


def plain_text(p: Problem) -> str:
    """A problem as plain prose for pretraining: the question, then the solution steps."""
    return p.query + "\n" + " ".join(p.steps) + f" So the result is {p.answer}."


def arithmetic_facts(rng: random.Random, n: int) -> list[str]:
    """``n`` lines such as ``"37 + 45 = 82"`` covering every operation the problems use."""
    out = []
    for _ in range(n):
        op = rng.random()
        if op < 0.4:
            a, b = rng.randint(0, 199), rng.randint(0, 99)
            out.append(f"{a} + {b} = {a + b}")
        elif op < 0.75:
            a = rng.randint(0, 199)
            b = rng.randint(0, a)
            out.append(f"{a} - {b} = {a - b}")
        else:
            a, b = rng.randint(0, 12), rng.randint(0, 12)
            out.append(f"{a} * {b} = {a * b}")
    return out


__all__ = ["generate", "generate_problems", "plain_text", "arithmetic_facts", "split_of_numbers",
           "split_of_template", "templates", "STORIES", "Problem", "HELDOUT_SEED", "SPLITS"]
