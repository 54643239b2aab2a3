"""tiny-math: GSM8K-style word problems small enough for a laptop, with step-by-step solutions.

    story (the operations) x one phrasing per sentence slot x names, objects, numbers
      -> {"query", "response", "answer", "template"}

    query:     "Mia owns 12 apples. Later she finds 7 more. How many apples does Mia have now?"
    response:  "Mia starts with 12 apples.\\nShe gets 7 more, so she has 12 + 7 = 19 apples.\\n
                The answer is: 19"

Each slot's phrasings come from a small grammar (:mod:`flashbone.tinygrammar`): ``[a|b]``
alternatives expand to hundreds of sentences per slot. Four splits, disjoint in problems:
    train    trained phrasings, names and objects; a train sentence combination; train numbers
    test     trained phrasings, names and objects, recombined: a held-out sentence combination
             (crc32(template) % 4 == 0) AND held-out numbers (crc32("12,7") % 5 == 0)
    unseen   wording never trained or pretrained on: every problem has at least one held-out
             phrasing (a held-out verb, adverb or sentence frame, or a whole held-out story
             wording), names and objects from held-out lists, and held-out numbers
    valid    trained phrasings and combinations with held-out numbers (for choosing settings,
             e.g. the learning rate in ``flashbone study``; never the test or unseen sets)
:func:`plain_text` writes a problem as plain prose (no instruction template, no "The answer
is:" line); ``scripts/pretrain_tiny.py`` pretrains the built-in base on it (train split only),
on arithmetic facts (:func:`arithmetic_facts`) and on numberless everyday sentences that use
every word, the held-out ones included (:func:`everyday_text`): the base knows the words, no
problem ever worded with them.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

from .tinygrammar import SEEN_ITEMS, SEEN_NAMES, STORIES, UNSEEN_ITEMS, UNSEEN_NAMES, Story, everyday_text

SPLITS = ("train", "test", "unseen", "valid")
HELDOUT_SEED = 20240915  # the held-out sets are fixed: the same problems for every run
_SPLIT_SEED = {"test": HELDOUT_SEED, "unseen": HELDOUT_SEED + 1, "valid": HELDOUT_SEED + 2}


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
        return {"query": self.query, "response": self.response, "answer": str(self.answer), "template": self.template}


def _split(key: str, mod: int) -> str:
    return "test" if zlib.crc32(key.encode()) % mod == 0 else "train"


def split_of_numbers(numbers: tuple[int, ...]) -> str:
    """``"test"`` for one number tuple in five (a fixed hash), ``"train"`` for the rest."""
    return _split(",".join(map(str, numbers)), 5)


def split_of_template(template: str) -> str:
    """``"test"`` for one sentence combination in four (a fixed hash), ``"train"`` for the rest."""
    return _split(template, 4)


def _context(rng: random.Random, nums: tuple[int, ...], names: dict, items: list[str]) -> dict:
    name, other = rng.sample(sorted(names), 2)
    p = names[name]
    ctx = {
        "N": name,
        "M": other,
        "p": p,
        "P": p.capitalize(),
        "o": "her" if p == "she" else "him",
        "items": rng.choice(items),
    }
    ctx.update(zip("abc", nums))
    ctx["x"] = nums[-1]
    return ctx


def _capitalize(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


def _draw_wording(rng: random.Random, split: str) -> tuple[Story, tuple[int, ...]] | None:
    """A story and one phrasing index per slot for ``split``, or None (rejected: draw again)."""
    if split == "unseen":
        story = rng.choice(STORIES)
        combo = tuple(rng.randrange(len(slot.all)) for slot in story.slots)
        if story.unseen_only or any(slot.is_unseen(k) for slot, k in zip(story.slots, combo)):
            return story, combo
        return None
    story = rng.choice([s for s in STORIES if not s.unseen_only])
    combo = tuple(rng.choice(slot.seen) for slot in story.slots)
    want = "test" if split == "test" else "train"  # valid: trained combinations, new numbers
    return (story, combo) if split_of_template(story.key(combo)) == want else None


def generate_problems(split: str, n: int, seed: int | None = None) -> list[Problem]:
    """``n`` distinct problems of ``split`` (see the module doc); the held-out splits default to a
    fixed seed, so every run scores the same problems. Every story is equally likely."""
    if split not in SPLITS:
        raise ValueError(f"tiny-math split must be one of {SPLITS}, got {split!r}")
    rng = random.Random(_SPLIT_SEED.get(split, 0) if seed is None else seed)
    names, items = (UNSEEN_NAMES, UNSEEN_ITEMS) if split == "unseen" else (SEEN_NAMES, SEEN_ITEMS)
    want_numbers = "train" if split == "train" else "test"
    seen: set[str] = set()
    out: list[Problem] = []
    while len(out) < n:
        drawn = _draw_wording(rng, split)
        if drawn is None:
            continue
        story, combo = drawn
        nums = story.draw(rng)
        if split_of_numbers(nums) != want_numbers:
            continue
        ctx = _context(rng, nums, names, items)
        query = " ".join(_capitalize(slot.all[k].format(**ctx)) for slot, k in zip(story.slots, combo))
        if query in seen:
            continue
        seen.add(query)
        steps, answer = story.solve(ctx)
        out.append(Problem(query, steps, answer, story.key(combo), nums))
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


__all__ = [
    "HELDOUT_SEED",
    "SPLITS",
    "STORIES",
    "Problem",
    "arithmetic_facts",
    "everyday_text",
    "generate",
    "generate_problems",
    "plain_text",
    "split_of_numbers",
    "split_of_template",
]
