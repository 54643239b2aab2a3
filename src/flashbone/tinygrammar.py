"""The grammar of tiny-math's wording (see :mod:`flashbone.tinymath` for the splits).

A phrasing pattern expands its ``[a|b|c]`` groups into every combination:

    "[|Then ]{p} [buys|finds|*receives] {b} more."  -> 6 sentences, 2 of them held out

An alternative marked ``*`` is held out, and so is a whole pattern that starts with ``*`` (a
sentence frame never trained on). A :class:`Story` flagged ``unseen_only`` is a whole story
wording that only the ``unseen`` split asks. Names and objects have held-out lists too.
:func:`everyday_text` writes numberless sentences with every word of the grammar (held-out
ones included) for pretraining, so the base knows what "receives" or "misplaces" mean.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

SEEN_NAMES = {
    "Mia": "she",
    "Tom": "he",
    "Ava": "she",
    "Leo": "he",
    "Emma": "she",
    "Noah": "he",
    "Lily": "she",
    "Sam": "he",
    "Zoe": "she",
    "Ben": "he",
    "Nora": "she",
    "Jack": "he",
    "Ruby": "she",
    "Max": "he",
    "Ella": "she",
    "Owen": "he",
    "Ivy": "she",
    "Luke": "he",
    "Anna": "she",
    "Eli": "he",
    "Rosa": "she",
    "Omar": "he",
    "Maya": "she",
    "Ravi": "he",
}
UNSEEN_NAMES = {
    "Hana": "she",
    "Felix": "he",
    "Iris": "she",
    "Theo": "he",
    "Clara": "she",
    "Hugo": "he",
    "Lena": "she",
    "Oscar": "he",
    "Vera": "she",
    "Milo": "he",
    "Aria": "she",
    "Jonah": "he",
}
SEEN_ITEMS = [
    "apples",
    "pencils",
    "marbles",
    "cookies",
    "stickers",
    "books",
    "cards",
    "shells",
    "stamps",
    "balloons",
    "candies",
    "toys",
    "buttons",
    "rocks",
    "oranges",
    "eggs",
]
UNSEEN_ITEMS = ["coins", "beads", "peaches", "crayons", "tickets", "flowers", "nuts", "blocks"]

_GROUP = re.compile(r"\[([^\[\]]*)\]")


def expand(pattern: str) -> list[tuple[str, bool]]:
    """Every sentence of ``pattern`` with its held-out flag."""
    frame_out = pattern.startswith("*")
    pattern = pattern.lstrip("*")
    parts = _GROUP.split(pattern)  # text, group, text, group, ..., text
    choices = [[(a.lstrip("*"), a.startswith("*")) for a in g.split("|")] for g in parts[1::2]]
    out = []
    for pick in itertools.product(*choices):
        text = parts[0] + "".join(alt + parts[2 * i + 2] for i, (alt, _) in enumerate(pick))
        out.append((text, frame_out or any(held for _, held in pick)))
    return out


@dataclass
class Slot:
    """One sentence position of a story: every phrasing, and which of them are held out."""

    patterns: list[str]
    all: list[str] = field(init=False)
    held_out: list[bool] = field(init=False)

    def __post_init__(self):
        pairs = [x for p in self.patterns for x in expand(p)]
        self.all = [t for t, _ in pairs]
        self.held_out = [h for _, h in pairs]
        self.seen = [i for i, h in enumerate(self.held_out) if not h]

    def is_unseen(self, k: int) -> bool:
        return self.held_out[k]


@dataclass
class Story:
    name: str
    draw: Callable[[random.Random], tuple[int, ...]]
    slots: list[Slot]
    solve: Callable[[dict], tuple[list[str], int]]  # context -> (solution steps, answer)
    unseen_only: bool = False  # a whole story wording that only the unseen split asks

    def key(self, combo: tuple[int, ...]) -> str:
        return f"{self.name}:{'.'.join(map(str, combo))}"


# -- phrasings ------------------------------------------------------------------------------------
START = Slot(
    [
        (
            "[|At first |In the morning |On Monday |To begin with |*At the start of the week ]{N} "
            "[has|owns|keeps|holds|*possesses|*is holding] {a} {items}[| in a box| at home| in a bag|*on a shelf]."
        ),
        "{N} starts [the day|the week|*the morning] with {a} {items}.",
        "There are {a} {items} in {N}'s [box|bag|room|*drawer].",
        "*{N}'s collection [has|holds] {a} {items}.",
        "*{N} began with {a} {items}.",
    ]
)
GAIN = Slot(
    [
        "[|Then |Later |After lunch |*Soon after, ]{p} [buys|finds|gets|wins|picks up|*receives|*earns] {b} more[| {items}].",
        "{M} [gives|brings|*hands] {o} {b} more {items}[| as a gift].",
        "{P} gets {b} more {items} from {M}.",
        "*{M} adds {b} more {items} to {N}'s pile.",
        "*Another {b} {items} are given to {N}.",
    ]
)
LOSE = Slot(
    [
        "[|Then |Later |*Afterwards ]{p} [gives|sells|trades|*donates] {x} of them to {M}.",
        "[|Then |Later ]{p} [loses|eats|uses|breaks|*drops|*misplaces] {x} [of them|{items}].",
        "{M} takes {x} {items} away.",
        "*{M} borrows {x} of the {items} and keeps them.",
        "*{x} of the {items} get lost.",
    ]
)
HAVE_NOW = Slot(
    [
        "How many {items} does {N} have [now|in all|at the end|*after that]?",
        "What is the number of {items} {N} has now?",
        "How many {items} does {N} end up with?",
        "*Now how many {items} belong to {N}?",
        "*Find how many {items} {N} has now.",
    ]
)
HAVE_LEFT = Slot(
    [
        "How many {items} does {N} have left?",
        "How many {items} are left[| now]?",
        "How many {items} does {N} [still have|*keep in the end]?",
        "*How many {items} remain with {N}?",
        "*What number of {items} stays with {N}?",
    ]
)
GROUPS = Slot(
    [
        "{N} [has|buys|gets|*carries] {a} [bags|boxes|jars|*crates] with {b} {items} in each[| one].",
        "{N} puts {items} in {a} rows with {b} in each row.",
        "{N} fills {a} jars with {b} {items} each.",
        "{N} has {a} baskets and each basket [has|holds|*contains] {b} {items}.",
        "*There are {a} bags and every bag has {b} {items}.",
    ]
)
TOTAL = Slot(
    [
        "How many {items} are there in [total|all]?",
        "How many {items} does {N} have in all?",
        "What is the total number of {items}?",
        "How many {items} is that[| altogether]?",
        "*Find the total number of {items}.",
        "*Altogether, how many {items} are there?",
    ]
)
PAIR = [
    "{N} has {a} {items} and {M} has {b}[| {items}].",
    "{N} [collects|brings|finds|*gathers] {a} {items}. {M} [collects|brings|finds] {b} {items}.",
    "{M} has {b} {items}. {N} has {a} {items}.",
    "*{N} owns {a} {items} while {M} owns {b}.",
]


# -- solutions (one format, whatever the wording) --------------------------------------------------
def _s_add(c):
    return [
        f"{c['N']} starts with {c['a']} {c['items']}.",
        f"{c['P']} gets {c['b']} more, so {c['p']} has {c['a']} + {c['b']} = {c['a'] + c['b']} {c['items']}.",
    ], c["a"] + c["b"]


def _s_sub(c):
    r = c["a"] - c["x"]
    return [
        f"{c['N']} starts with {c['a']} {c['items']}.",
        f"{c['P']} gives away {c['x']}, so {c['p']} has {c['a']} - {c['x']} = {r} {c['items']} left.",
    ], r


def _s_add_sub(c):
    s, r = c["a"] + c["b"], c["a"] + c["b"] - c["x"]
    return [
        f"After getting {c['b']} more, {c['N']} has {c['a']} + {c['b']} = {s} {c['items']}.",
        f"After giving away {c['x']}, {c['N']} has {s} - {c['x']} = {r} {c['items']}.",
    ], r


def _s_mul(c):
    r = c["a"] * c["b"]
    return [
        f"There are {c['a']} groups of {c['b']} {c['items']}.",
        f"So there are {c['a']} * {c['b']} = {r} {c['items']}.",
    ], r


def _s_mul_add(c):
    m, r = c["a"] * c["b"], c["a"] * c["b"] + c["c"]
    return [
        f"The {c['a']} groups hold {c['a']} * {c['b']} = {m} {c['items']}.",
        f"With the {c['c']} from before, {c['N']} has {m} + {c['c']} = {r} {c['items']}.",
    ], r


def _s_price(c):
    r = c["a"] * c["b"]
    return [
        f"Each box costs {c['a']} dollars and {c['N']} buys {c['b']} boxes.",
        f"So {c['N']} spends {c['b']} * {c['a']} = {r} dollars.",
    ], r


def _s_together(c):
    r = c["a"] + c["b"]
    return [
        f"{c['N']} has {c['a']} {c['items']} and {c['M']} has {c['b']} {c['items']}.",
        f"Together they have {c['a']} + {c['b']} = {r} {c['items']}.",
    ], r


def _s_diff(c):
    r = c["a"] - c["b"]
    return [
        f"{c['N']} has {c['a']} {c['items']} and {c['M']} has {c['b']} {c['items']}.",
        f"The difference is {c['a']} - {c['b']} = {r} {c['items']}.",
    ], r


def _s_sum3(c):
    s, r = c["a"] + c["b"], c["a"] + c["b"] + c["c"]
    return [f"First {c['a']} + {c['b']} = {s} {c['items']}.", f"Then {s} + {c['c']} = {r} {c['items']}."], r


def _s_save_spend(c):
    m, r = c["a"] * c["b"], c["a"] * c["b"] - c["c"]
    return [
        f"{c['N']} gets {c['a']} * {c['b']} = {m} dollars.",
        f"After spending {c['c']}, {c['N']} has {m} - {c['c']} = {r} dollars.",
    ], r


# -- numbers -------------------------------------------------------------------------------------
def _sub_pair(rng):  # a > b
    a = rng.randint(10, 99)
    return a, rng.randint(2, a - 1)


def _add_sub(rng):
    a, b = rng.randint(5, 60), rng.randint(2, 39)
    return a, b, rng.randint(1, a + b - 1)


def _save_spend(rng):
    a, b = rng.randint(2, 12), rng.randint(2, 9)
    return a, b, rng.randint(1, a * b - 1)


def _r3(lo, hi):
    return lambda rng: (rng.randint(lo, hi), rng.randint(lo, hi), rng.randint(lo, hi))


def _two(rng):
    return rng.randint(2, 99), rng.randint(2, 99)


def _groups(rng):
    return rng.randint(2, 9), rng.randint(2, 12)


def _groups_plus(rng):
    return rng.randint(2, 9), rng.randint(2, 12), rng.randint(2, 60)


def _price(rng):
    return rng.randint(2, 12), rng.randint(2, 9)


# -- stories -------------------------------------------------------------------------------------
STORIES = [
    Story("add", _two, [START, GAIN, HAVE_NOW], _s_add),
    Story("sub", _sub_pair, [START, LOSE, HAVE_LEFT], _s_sub),
    Story("add_sub", _add_sub, [START, GAIN, LOSE, HAVE_NOW], _s_add_sub),
    Story("mul", _groups, [GROUPS, TOTAL], _s_mul),
    Story(
        "mul_add",
        _groups_plus,
        [
            Slot(["[|*Before that, ]{N} [already has|has|starts with|*is already holding] {c} {items}[| at home]."]),
            Slot(
                [
                    (
                        "{P} [buys|gets|*orders] {a} [packs|bags|boxes|*crates] [with {b} {items} in each|of {b} {items} each"
                        "|*holding {b} {items} each]."
                    ),
                    "{M} gives {o} {a} boxes with {b} {items} in each box.",
                ]
            ),
            HAVE_NOW,
        ],
        _s_mul_add,
    ),
    Story(
        "price",
        _price,
        [
            Slot(
                [
                    "[One|Each|A] box of {items} [costs|sells for|*is priced at] {a} dollars.",
                    "*The price of a box of {items} is {a} dollars.",
                ]
            ),
            Slot(["{N} [buys|orders|*purchases] {b} boxes.", "{N} wants {b} boxes and pays for them."]),
            Slot(
                [
                    "How many dollars does {N} [spend|pay|*need]?",
                    "How much does {N} pay in dollars?",
                    "How many dollars do the boxes cost[| in all]?",
                    "*What does {N} spend in dollars?",
                ]
            ),
        ],
        _s_price,
    ),
    Story(
        "together",
        _two,
        [
            Slot(PAIR),
            Slot(
                [
                    "How many {items} do they have [together|in all|*combined]?",
                    "What is the total number of {items}?",
                    "*How many {items} do the two of them have?",
                ]
            ),
        ],
        _s_together,
    ),
    Story(
        "diff",
        _sub_pair,
        [
            Slot(PAIR),
            Slot(
                [
                    "How many more {items} does {N} have than {M}?",
                    "How many fewer {items} does {M} have than {N}?",
                    "What is the difference between their numbers of {items}?",
                    "*How many {items} does {M} need to match {N}?",
                ]
            ),
        ],
        _s_diff,
    ),
    Story(
        "sum3",
        _r3(2, 60),
        [
            Slot(
                [
                    "{N} [picks|finds|sells|*bakes] {a} {items} on Monday, {b} on Tuesday and {c} on [Wednesday|*Friday].",
                    "{N} finds {a} {items} in the garden, {b} in the house and {c} at school.",
                    "{N} sells {a} {items} in the morning, {b} at noon and {c} in the evening.",
                    "*On three days {N} gets {a}, {b} and {c} {items}.",
                ]
            ),
            Slot(
                [
                    "How many {items} is that in [total|all]?",
                    "What is the total number of {items}?",
                    "*How many {items} does {N} have after the three days?",
                ]
            ),
        ],
        _s_sum3,
    ),
    Story(
        "save_spend",
        _save_spend,
        [
            Slot(
                [
                    "{N} [saves|earns|*puts away] {a} dollars [each week|every week|a week] for {b} weeks.",
                    "{N} earns {a} dollars a day for {b} days.",
                    "Every week for {b} weeks, {N} puts {a} dollars in a jar.",
                    "*For {b} weeks {N} gets {a} dollars each week.",
                ]
            ),
            Slot(
                [
                    "Then {p} spends {c} dollars.",
                    "{P} buys a [gift|book|*ticket] for {c} dollars.",
                    "{P} gives {c} dollars to {M}.",
                    "*{P} pays {c} dollars for lunch.",
                ]
            ),
            Slot(
                [
                    "How many dollars does {N} have left?",
                    "How much money is left in dollars?",
                    "How many dollars does {N} keep?",
                    "*How many dollars remain?",
                ]
            ),
        ],
        _s_save_spend,
    ),
    # whole story wordings that only the unseen split asks
    Story(
        "add_past",
        _two,
        [Slot(["{N} had {a} {items}[| yesterday] and [found|got|bought] {b} more today."]), HAVE_NOW],
        _s_add,
        unseen_only=True,
    ),
    Story(
        "sub_past",
        _sub_pair,
        [Slot(["{N} had {a} {items} but [lost|gave away|used] {x} of them."]), HAVE_LEFT],
        _s_sub,
        unseen_only=True,
    ),
    Story(
        "mul_each",
        _groups,
        [Slot(["Each of {N}'s {a} [boxes|bags] holds {b} {items}."]), TOTAL],
        _s_mul,
        unseen_only=True,
    ),
    Story(
        "together_if",
        _two,
        [Slot([("If {N} has {a} {items} and {M} has {b}, how many {items} do they have [together|in all]?")])],
        _s_together,
        unseen_only=True,
    ),
    Story(
        "diff_if",
        _sub_pair,
        [Slot(["If {N} has {a} {items} and {M} has {b}, how many more does {N} have?"])],
        _s_diff,
        unseen_only=True,
    ),
]


# -- everyday prose for pretraining: every word, no numbers, no problems ---------------------------
_EVERYDAY = [
    "{N} [has|owns|keeps|holds|possesses|is holding] some {items}[| at home| in a box| on a shelf| in a drawer].",
    (
        "{N} [buys|finds|gets|wins|picks up|receives|earns|collects|gathers|orders|purchases] some {items}, "
        "so now {p} has more {items}."
    ),
    "{M} [gives|brings|hands] {N} some {items}, so {N} has more {items} than before.",
    (
        "{N} [gives away|sells|trades|donates|loses|eats|uses|breaks|drops|misplaces] some {items}, "
        "so now {p} has fewer {items}."
    ),
    "{M} [takes|borrows] some {items} from {N} and keeps them, so {N} has fewer {items}.",
    "To [receive|earn|collect|gather|purchase] {items} is to get more {items}.",
    "To [donate|misplace|drop] {items} is to have fewer {items}.",
    "The {items} that [remain|stay] with {N} are the {items} {p} still has.",
    "The {items} [belong to|are kept by] {N}.",
    "[Altogether|Combined|In total|In all] means everything added up.",
    "[A crate|A box|A bag|A jar|A basket|A drawer|A shelf] can [hold|contain|carry] {items}.",
    "[The price of|What {N} pays for] a [box|ticket|gift|book] is how much it costs.",
    "[Soon after|Afterwards|Before that|At the start of the week|Later] {N} [had|began with|found|lost] {items}.",
    "{N} and {M} [bake|bring|count|share] {items} on [Monday|Tuesday|Wednesday|Thursday|Friday].",
    "If {N} has {items} and {M} has {items} too, the two of them have {items} together.",
    "{N} puts away money each week and pays for lunch on Friday.",
]
_EVERYDAY_SLOT = Slot(_EVERYDAY)


def everyday_text(rng: random.Random, n_sentences: int) -> str:
    """``n_sentences`` numberless sentences over every name, object and verb (held-out ones too)."""
    names = {**SEEN_NAMES, **UNSEEN_NAMES}
    items = SEEN_ITEMS + UNSEEN_ITEMS
    out = []
    for _ in range(n_sentences):
        name, other = rng.sample(sorted(names), 2)
        p = names[name]
        out.append(rng.choice(_EVERYDAY_SLOT.all).format(N=name, M=other, p=p, items=rng.choice(items)))
    return " ".join(out)


__all__ = [
    "SEEN_ITEMS",
    "SEEN_NAMES",
    "STORIES",
    "UNSEEN_ITEMS",
    "UNSEEN_NAMES",
    "Slot",
    "Story",
    "everyday_text",
    "expand",
]
