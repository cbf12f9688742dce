"""Arithmetic word problems in GSM8K's schema and format, seeded, for small models (stdlib only).

    python -m premem_kit.tasks.wordproblems --out data/arith      # the committed data/arith, byte for byte

Rows are {"question", "answer", "family", "steps"}; the answer is GSM8K-style: one line per step with a
`<<expression=result>>` annotation, then "#### N" (N = the last result), so `task: gsm8k` grades it.

Families (1-4 steps each): shopping (costs, totals, change), sharing (pool, give away, share equally),
rates (wages or travel: rate x time, sums, what is left), ages (older/younger, times as old, sums),
groups (groups of things, extras, losses). Number ranges are the fields of `Knobs`.

Why the wording varies. Target perplexity averages over every target token, so a templated solution
reaches perplexity ~1 as soon as the template is learned, memorized or not. Here every line of a
solution draws, independently of the question, a lead-in, a sentence pattern, a description of the
quantity, a subject (name or pronoun), an operand order and a way of showing the calculation; independent
steps come in random order. A model that has learned the distribution still pays the entropy of those
choices on every example (measured: see data/arith/README.md); only memorizing an example's own choices
brings its target perplexity near 1.

Split (disjoint by construction): an example is a test example iff its final answer falls in the test
bucket (sha256 of the number, 1 in 3), so no test answer is ever a train answer and no test problem's
numbers (within a family) occur in train. The first phrasing of every question sentence is held out:
train questions never use it, test questions draw it as often as any other.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

SEED, N_TRAIN, N_TEST = 0, 512, 256


@dataclass(frozen=True)
class Knobs:
    max_steps: int = 4    # steps per problem, uniform in 1..max_steps
    max_count: int = 9    # how many: items, groups, hours, people (from 2)
    max_size: int = 9     # how much each: prices, group sizes, rates, shares (from 2)
    max_extra: int = 15   # amounts added or taken away (from 1)
    max_age: int = 15     # the youngest person's age (from 3)


PEOPLE = [("Mia", "she"), ("Liam", "he"), ("Ava", "she"), ("Noah", "he"), ("Zoe", "she"), ("Omar", "he"),
          ("Lena", "she"), ("Jack", "he"), ("Rosa", "she"), ("Ben", "he"), ("Nina", "she"), ("Leo", "he"),
          ("Ivy", "she"), ("Sam", "he"), ("Maya", "she"), ("Eli", "he"), ("Tara", "she"), ("Raj", "he"),
          ("Kim", "she"), ("Tom", "he"), ("Gwen", "she"), ("Hugo", "he"), ("Anya", "she"), ("Carl", "he")]
ITEMS = ["pens", "notebooks", "apples", "candles", "stickers", "mugs", "cupcakes", "toy cars", "plants",
         "books", "socks", "bottles of juice", "rulers", "oranges", "kites", "bracelets"]
THINGS = ["marbles", "crayons", "cookies", "eggs", "buttons", "shells", "stamps", "beads", "cards",
          "pencils", "grapes", "muffins", "coins", "seeds"]
HOLDERS = ["boxes", "bags", "jars", "crates", "trays", "baskets", "packs", "bowls"]
CREWS = ["friends", "cousins", "classmates", "teammates", "neighbors", "children"]
JOBS = ["walking dogs", "tutoring", "washing cars", "babysitting", "gardening", "at the bakery"]
MOVES = [("drives", "km"), ("bikes", "km"), ("walks", "km"), ("drives", "miles"), ("rides", "miles")]
ALL = ["the count of all the {o}", "the total number of {o}"]
OPWORD = {"+": "plus", "-": "minus", "*": "times", "/": "divided by"}
OPSIGN = {"+": "+", "-": "-", "*": "x", "/": "/"}  # GSM8K writes products with "x" too

# Solution grammar. {L} lead-in, {S} subject, {C} step clause, {D} description, {Q} quantity.
LEAD_FIRST = ["", "First, ", "To start, ", "First of all, ", "We begin with this: ", "Step one: ", "To begin, ",
              "Let us start: ", "Start here: "]
LEAD_MID = ["", "Then ", "So ", "Next, ", "Now ", "After that, ", "This means ", "Then, ", "Also, ", "Now, ",
            "Next up, ", "After this, "]
LEAD_LAST = ["", "So ", "Therefore, ", "Finally, ", "In the end, ", "That means ", "Thus ", "Last, ", "So, ",
             "All in all, ", "Hence "]
PATTERNS = ["{L}{S} {C}.", "{L}{S} {C}.", "{L}{D} {V} {Q}.", "{L}{D} {V} {Q}.", "{L}{D} {V} {Q}.",
            "{L}{D} {V} {Q}.", "{D}: {Q}.", "{Q} is {D}.", "{L}for {D} we get {Q}.", "{L}we find {D}: {Q}."]
VERBS = ["is", "comes to", "works out to", "equals", "amounts to", "is then", "must be", "will be"]


def is_test_answer(answer: int) -> bool:
    """The split rule: final answers whose sha256 bucket is 0 (of 3) belong to test."""
    return int(hashlib.sha256(f"arith:{answer}".encode()).hexdigest(), 16) % 3 == 0


class Problem:
    """Question sentences (variant lists, first variant test-only), steps, and the names they use."""

    def __init__(self, r: random.Random, people: int = 1):
        self.r, self.facts, self.steps = r, [], []
        chosen = r.sample(PEOPLE, people)
        self.ctx = {key: name for key, (name, _) in zip("NAB", chosen)}
        self.who = dict(chosen)

    def fact(self, *variants: str):
        self.facts.append(list(variants))

    def step(self, op, args, unit, descs, clauses, who=None, deps=()):
        a, b = args
        assert op != "/" or a % b == 0, args
        val = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
        self.steps.append({"op": op, "args": list(args), "val": val, "unit": unit,
                           "descs": descs, "clauses": clauses, "who": who or self.ctx["N"], "deps": list(deps)})
        return self.steps[-1]["val"]


# ----------------------------------------------------------------------------- families

def shopping(p: Problem, k: int, kn: Knobs):
    r, c = p.r, p.ctx
    o1, o2 = r.sample(ITEMS, 2)
    n1, p1, n2, p2 = (r.randint(2, kn.max_count), r.randint(2, kn.max_size), r.randint(2, kn.max_count),
                      r.randint(2, kn.max_size))
    c.update(o1=o1, o2=o2, n1=n1, p1=p1, n2=n2, p2=p2, O1=o1.capitalize())
    p.fact("At the market, {N} picks up {n1} {o1} priced at ${p1} apiece.", "{N} buys {n1} {o1} for ${p1} each.",
           "{N} buys {n1} {o1}. Each one costs ${p1}.", "{O1} cost ${p1} each, and {N} buys {n1} of them.")
    cost = p.step("*", [n1, p1], "$", ["the cost of the {o1}", "the price of the {n1} {o1}", "what the {o1} cost"],
                  ["spends {Q} on the {o1}", "pays {Q} for the {o1}", "needs {Q} for the {o1}"])
    if k >= 3 or (k == 2 and r.random() < 0.5):
        if k >= 3:
            p.fact("{N} also picks up {n2} {o2} at ${p2} apiece.", "{N} also buys {n2} {o2} for ${p2} each.",
                   "Then {N} buys {n2} {o2} that cost ${p2} each.", "{N} adds {n2} {o2} at ${p2} each.")
            other = p.step("*", [n2, p2], "$", ["the cost of the {o2}", "the price of the {n2} {o2}"],
                           ["spends {Q} on the {o2}", "pays {Q} for the {o2}"])
        else:
            other = p2 * 3
            c["x"] = other
            p.fact("{N} also picks up a lamp priced at ${x}.", "{N} also buys a lamp for ${x}.",
                   "A lamp costs ${x}, and {N} buys one too.")
        cost = p.step("+", [cost, other], "$", ["the total cost", "the whole bill", "the total", "{P} total"],
                      ["spends {Q} in total", "pays {Q} altogether", "spends {Q} in all"], deps=range(len(p.steps)))
    if k in (2, 4) and len(p.steps) < k:
        c["b"] = bill = min([b for b in (10, 20, 50, 100, 200, 500) if b > cost] or [cost // 1000 * 1000 + 1000])
        p.fact("The cashier gets a ${b} bill from {N}.", "{N} pays with a ${b} bill.", "{N} pays with ${b}.",
               "{N} hands the cashier ${b}.")
        p.step("-", [bill, cost], "$", ["the change", "{P} change", "the money {N} gets back"],
               ["gets {Q} back", "gets {Q} in change", "receives {Q} in change"], deps=[len(p.steps) - 1])
        return ["What amount of change comes back to {N}?", "How much change does {N} get?",
                "How many dollars of change does {N} receive?"]
    return ["What is the bill for {N}, in dollars?", "How much does {N} spend?", "How much money does {N} spend?",
            "How many dollars does {N} spend in all?"]


def sharing(p: Problem, k: int, kn: Knobs):
    r, c = p.r, p.ctx
    while True:
        g, each, e = r.randint(2, kn.max_count), r.randint(2, kn.max_size), r.randint(1, kn.max_extra)
        x, y = r.randint(2, kn.max_count), r.randint(2, kn.max_size)
        total = g * each
        pre = total + (e if k >= 3 else 0)
        base = x * y if k == 4 else r.randint(1, max(1, pre - 1))
        if k == 1 or pre - base >= 1:
            break
    c.update(o=r.choice(THINGS), crew=r.choice(CREWS), g=g, e=e, x=x, y=y, h=r.choice(HOLDERS), a=base,
             b=pre - base, t=total)
    if k == 1:
        p.fact("There are {t} {o} in {N}'s collection.", "{N} has {t} {o}.", "{N} collects {t} {o}.")
    else:
        if k == 4:
            p.fact("There are {x} {h} of {o} at {N}'s place, {y} in each.", "{N} has {x} {h} with {y} {o} in each.",
                   "{N} owns {x} {h} of {o}, and each holds {y}.")
            p.step("*", [x, y], "{o}", ["the count of {o} in the {h}", "the number of {o} in the {h}"],
                   ["has {Q} in the {h}", "starts with {Q}"])
        else:
            p.fact("There are {a} {o} in {N}'s collection.", "{N} has {a} {o}.", "{N} collects {a} {o}.")
        p.fact("A friend hands {N} {b} extra {o}.", "{N} gets {b} more {o}.", "Then {N} finds {b} more {o}.")
        p.step("+", [base, pre - base], "{o}", ["the number of {o} {N} has now", "{P} count now",
                                                 "the new number of {o}"],
               ["has {Q} now", "has {Q} in all"], deps=range(len(p.steps)))
        if k >= 3:
            p.fact("{N} loses {e} of them.", "{N} gives {e} of them away.", "Then {e} of them break.")
            p.step("-", [pre, e], "{o}", ["the number of {o} left", "what is left", "the count {N} keeps"],
                   ["has {Q} left", "keeps {Q}"], deps=[len(p.steps) - 1])
    p.step("/", [total, g], "{o}", ["each share", "each person's share", "the share of each of the {crew}"],
           ["gives each of the {crew} {Q}", "hands out {Q} to each person"], deps=range(len(p.steps)))
    return ["If {N} splits them evenly among {g} {crew}, how big is each share?",
            "{N} shares them equally among {g} {crew}. How many {o} does each get?",
            "The {o} are split equally among {g} {crew}. How many does each get?"]


def rates(p: Problem, k: int, kn: Knobs):
    r, c = p.r, p.ctx
    h1, h2, rate = r.randint(2, kn.max_count), r.randint(2, kn.max_count), r.randint(2, kn.max_size)
    wage = r.random() < 0.5
    move, unit = r.choice(MOVES)
    c.update(h1=h1, h2=h2, r=rate, job=r.choice(JOBS), mv=move, u=unit)
    if wage:
        p.fact("{N} is paid ${r} an hour for {job}.", "{N} earns ${r} per hour {job}.", "{N} makes ${r} an hour {job}.")
        U, d, cl = "$", ["{P} pay", "the money earned", "{P} income"], ["earns {Q}", "makes {Q}"]
    else:
        p.fact("{N} {mv} at a speed of {r} {u} an hour.", "{N} {mv} {r} {u} per hour.", "{N} {mv} {r} {u} each hour.")
        U, d, cl = "{u}", ["the distance", "how far {N} goes"], ["covers {Q}", "{mv} {Q}", "goes {Q}"]
    two = k >= 3 or (k == 2 and r.random() < 0.5)
    if two:
        p.fact("On Monday that lasts {h1} hours, and on Tuesday {h2} hours.", "{N} does this {h1} hours on Monday "
               "and {h2} hours on Tuesday.", "On Monday it is {h1} hours, on Tuesday {h2} hours.")
    else:
        p.fact("It lasts {h1} hours one day.", "{N} does this for {h1} hours.", "One day {N} does it for {h1} hours.")
    if two and (k == 2 or (k == 3 and r.random() < 0.5)):
        p.step("+", [h1, h2], "hours", ["the number of hours", "the total time", "the time on both days"],
               ["spends {Q} on it", "works {Q} in all"])
        val = p.step("*", [h1 + h2, rate], U, d, cl, deps=[0])
    elif two:
        p.step("*", [h1, rate], U, [x + " on Monday" for x in d], [x + " on Monday" for x in cl])
        p.step("*", [h2, rate], U, [x + " on Tuesday" for x in d], [x + " on Tuesday" for x in cl])
        val = p.step("+", [h1 * rate, h2 * rate], U, [x + " on both days" for x in d], [x + " in all" for x in cl],
                     deps=[0, 1])
    else:
        val = p.step("*", [h1, rate], U, d, cl)
    if len(p.steps) < k:
        c["s"] = s = r.randint(1, val - 1)
        if wage:
            p.fact("Out of that pay, ${s} goes on lunch.", "{N} spends ${s} of it on lunch.", "Lunch costs {N} ${s}.")
            p.step("-", [val, s], "$", ["the money left", "what {N} keeps"], ["has {Q} left", "keeps {Q}"],
                   deps=[len(p.steps) - 1])
            return ["What sum remains for {N}?", "How much money does {N} have left?", "How many dollars are left?"]
        c["D"] = D = val + s
        p.fact("The whole route measures {D} {u}.", "The trip is {D} {u} long.", "{N} plans a trip of {D} {u}.")
        p.step("-", [D, val], "{u}", ["the distance left", "what is left of the trip"], ["still has {Q} to go"],
               deps=[len(p.steps) - 1])
        return ["What part of the route, in {u}, is still ahead?", "How many {u} are left?",
                "How far does {N} still have to go?"]
    if wage:
        return ["What is {N} paid in total?", "How much does {N} earn?", "How many dollars does {N} make?"]
    return ["What distance does {N} cover, in {u}?", "How far does {N} go?", "How many {u} does {N} travel?"]


def ages(p: Problem, k: int, kn: Knobs):
    r, c = p.r, p.ctx
    b, d, y, m = r.randint(3, kn.max_age), r.randint(2, kn.max_extra // 2), r.randint(2, 10), r.randint(2, 3)
    c.update(b=b, d=d, y=y, m=m, mt=["", "", "twice", "three times"][m])
    p.fact("The age of {B} is {b}.", "{B} is {b} years old.", "{B} is {b}.")
    p.fact("{N} was born {d} years before {B}.", "{N} is {d} years older than {B}.", "{N} is {d} years older.")
    A = p.step("+", [b, d], "years", ["{P} age", "the age of {N}"], ["is {Q} old"])
    if k == 2 and r.random() < 0.5:
        p.step("+", [A, y], "years", ["{P} age in {y} years", "the age of {N} then"],
               ["will be {Q} old", "will be {Q} old then"], deps=[0])
        return ["What age will {N} reach {y} years from now?", "How old will {N} be in {y} years?"]
    if k == 2:
        p.step("+", [b, A], "years", ["the sum of their ages", "their combined age", "the total"],
               ["and {B} are {Q} old together"], deps=[0])
        return ["What do the two ages add up to?", "What is the sum of their ages?", "How old are they together?"]
    if k >= 3:
        p.fact("The age of {A} is {mt} {B}'s.", "{A} is {mt} as old as {B}.", "{A} is {mt} {B}'s age.")
        C = p.step("*", [b, m], "years", ["{P} age", "the age of {A}"], ["is {Q} old"], who=c["A"])
        tot = p.step("+", [A, C], "years", ["the sum of their ages", "the combined age of {N} and {A}"],
                     ["and {A} are {Q} old together"], deps=[0, 1])
        if k == 4:
            p.step("+", [tot, b], "years", ["the sum of all three ages", "the total of the three ages"],
                   ["and the other two are {Q} old together"], deps=[2])
            return ["Add all three ages: what total do you get?", "What is the sum of the three ages?"]
        return ["Add the ages of {N} and {A}: what total do you get?", "How old are {N} and {A} together?"]
    return ["What is {N}'s age?", "How old is {N}?", "How many years old is {N}?"]


def groups(p: Problem, k: int, kn: Knobs):
    r, c = p.r, p.ctx
    g1, n1, g2, n2 = (r.randint(2, kn.max_count), r.randint(2, kn.max_size), r.randint(2, kn.max_count),
                      r.randint(2, kn.max_size))
    h1, h2 = r.sample(HOLDERS, 2)
    c.update(o=r.choice(THINGS), g1=g1, n1=n1, g2=g2, n2=n2, h1=h1, h2=h2, H1=h1.capitalize())
    p.fact("{N} stacks up {g1} {h1}, each filled with {n1} {o}.", "{N} has {g1} {h1} with {n1} {o} in each.",
           "{H1} of {o} hold {n1} each, and {N} has {g1} of them.", "{N} fills {g1} {h1} with {n1} {o} each.")
    val = p.step("*", [g1, n1], "{o}", ["the count of {o} in the {h1}", "the number of {o} in the {h1}"],
                 ["has {Q} in the {h1}", "puts {Q} in the {h1}"])
    if k >= 3:
        p.fact("Next to them sit {g2} {h2} of {n2} {o} each.", "{N} also has {g2} {h2} with {n2} {o} in each.",
               "There are also {g2} {h2} holding {n2} {o} each.")
        other = p.step("*", [g2, n2], "{o}", ["the count of {o} in the {h2}", "the number of {o} in the {h2}"],
                       ["has {Q} in the {h2}", "puts {Q} in the {h2}"])
        val = p.step("+", [val, other], "{o}", ALL + ["{P} total"],
                     ["has {Q} in all", "has {Q} altogether"], deps=[0, 1])
    if k in (2, 4):
        c["e"] = e = r.randint(1, min(kn.max_extra, val - 1))
        if r.random() < 0.5 or k == 4:
            p.fact("Sadly, {e} of the {o} get lost.", "{N} loses {e} of the {o}.", "Then {e} of the {o} break.")
            p.step("-", [val, e], "{o}", ["the number of {o} left", "what is left", "the count {N} still has"],
                   ["has {Q} left", "still has {Q}"], deps=[len(p.steps) - 1])
            return ["What number of {o} remain?", "How many {o} are left?", "How many {o} does {N} still have?"]
        p.fact("Beside the {h1} lie {e} loose {o}.", "{N} also has {e} loose {o}.",
               "There are {e} more {o} on the table.")
        p.step("+", [val, e], "{o}", ALL, ["has {Q} in all"], deps=[0])
    return ["Counting everything, what number of {o} is there?", "How many {o} are there in all?",
            "How many {o} does {N} have?"]


FAMILIES = {"shopping": (shopping, 1), "sharing": (sharing, 1), "rates": (rates, 1), "ages": (ages, 3),
            "groups": (groups, 1)}


# ----------------------------------------------------------------------------- rendering

def _fill(template: str, p: Problem, who: str, capital: bool = False, **extra) -> str:
    r, he = p.r, p.who[who]
    named = list(p.who.values()).count(he) > 1  # a pronoun two people share would be ambiguous
    s = who if r.random() < 0.5 or named else he
    poss = f"{who}'s" if r.random() < 0.5 or named else {"she": "her", "he": "his"}[he]
    text = template.format(**p.ctx, **extra, S=s, P=poss)
    return text[0].upper() + text[1:] if capital else text


def _quantity(p: Problem, st: dict) -> str:
    r, args, op = p.r, list(st["args"]), st["op"]
    if op in "+*" and r.random() < 0.5:
        args.reverse()
    expr, nums = op.join(map(str, args)), list(map(str, args))
    shown = r.choice([expr, f" {op} ".join(nums), "", f" {OPWORD[op]} ".join(nums), f" {OPSIGN[op]} ".join(nums)])
    shown += " = " if shown else ""
    ann, v, unit = f"<<{expr}={st['val']}>>", st["val"], st["unit"].format(**p.ctx)
    if unit == "$":  # the unit: "$56", "56 dollars" or none ("56"), drawn per line
        return r.choice([f"{shown}${ann}{v}", f"{shown}{ann}{v} dollars", f"{shown}{ann}{v}"])
    return r.choice([f"{shown}{ann}{v} {unit}", f"{shown}{ann}{v}"])


def _order(p: Problem) -> list[int]:
    """A random order of the steps that respects their dependencies; the last step stays last."""
    done, out, n = set(), [], len(p.steps)
    while len(out) < n - 1:
        ready = [i for i in range(n - 1) if i not in done and set(p.steps[i]["deps"]) <= done]
        i = p.r.choice(ready)
        done.add(i)
        out.append(i)
    return out + [n - 1]


def solution(p: Problem) -> str:
    r, lines = p.r, []
    order = _order(p)
    for pos, i in enumerate(order):
        st = p.steps[i]
        leads = LEAD_FIRST if pos == 0 else LEAD_LAST if pos == len(order) - 1 else LEAD_MID
        pats = PATTERNS if st["clauses"] else [x for x in PATTERNS if "{C}" not in x]
        pat = r.choice(pats).replace("{L}", r.choice(leads)).replace("{V}", r.choice(VERBS))
        q = _quantity(p, st)
        d = _fill(r.choice(st["descs"]), p, st["who"])
        c = _fill(r.choice(st["clauses"]), p, st["who"], Q=q) if "{C}" in pat else ""
        lines.append(_fill(pat.replace("{C}", c).replace("{D}", d).replace("{Q}", q), p, st["who"], True))
    return "\n".join(lines + [f"#### {p.steps[-1]['val']}"])


def question(p: Problem, ask: list[str], test: bool) -> str:
    pick = (lambda vs: p.r.choice(vs)) if test else (lambda vs: p.r.choice(vs[1:]))
    return " ".join(_fill(pick(vs), p, p.ctx["N"], True) for vs in p.facts + [ask])


def make_problem(r: random.Random, kn: Knobs) -> tuple[str, Problem, list[str]]:
    """A random problem: (family, Problem with its steps and question sentences, the ask variants)."""
    fam, k = r.choice(sorted(FAMILIES)), r.randint(1, kn.max_steps)
    p = Problem(r, FAMILIES[fam][1])
    return fam, p, FAMILIES[fam][0](p, k, kn)


def generate(seed: int = SEED, n_train: int = N_TRAIN, n_test: int = N_TEST, knobs: Knobs = Knobs()) -> dict:
    """{"train": rows, "test": rows}; rows {"question", "answer", "family", "steps"}; deterministic in
    (seed, sizes, knobs). Questions are unique across both splits; the split is the answer's bucket."""
    if not (1 <= knobs.max_steps <= 4 and min(knobs.max_count, knobs.max_size) >= 3 and knobs.max_extra >= 4
            and knobs.max_age >= 4):
        raise ValueError(f"knobs out of range (max_steps 1-4, max_count/max_size >= 3, max_extra/max_age >= 4): {knobs}")
    r = random.Random(seed)
    out, want, seen = {"train": [], "test": []}, {"train": n_train, "test": n_test}, set()
    for _ in range(100 * (n_train + n_test) + 1000):
        if len(out["train"]) >= n_train and len(out["test"]) >= n_test:
            return out
        fam, p, ask = make_problem(r, knobs)
        split = "test" if is_test_answer(p.steps[-1]["val"]) else "train"
        if len(out[split]) >= want[split]:
            continue
        q = question(p, ask, split == "test")
        if q in seen:
            continue
        seen.add(q)
        out[split].append({"question": q, "answer": solution(p), "family": fam, "steps": len(p.steps)})
    raise ValueError(f"could not find {n_train} + {n_test} distinct problems with {knobs}: raise the knobs")


def write(out_dir, seed: int = SEED, n_train: int = N_TRAIN, n_test: int = N_TEST, knobs: Knobs = Knobs()) -> dict:
    """Write OUT/train.jsonl and OUT/test.jsonl; returns {path: number of rows}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = {}
    for split, rows in generate(seed, n_train, n_test, knobs).items():
        path = out_dir / f"{split}.jsonl"
        path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows), encoding="utf-8")
        done[str(path)] = len(rows)
    return done


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m premem_kit.tasks.wordproblems", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data/arith", help="folder for train.jsonl and test.jsonl")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--train", type=int, default=N_TRAIN, help="train examples")
    ap.add_argument("--test", type=int, default=N_TEST, help="test examples")
    for key, val in asdict(Knobs()).items():
        ap.add_argument("--" + key.replace("_", "-"), type=int, default=val)
    a = ap.parse_args(argv)
    kn = Knobs(**{k: getattr(a, k) for k in asdict(Knobs())})
    for path, n in write(a.out, a.seed, a.train, a.test, kn).items():
        print(f"wrote {path}: {n} examples, {Path(path).stat().st_size} bytes, sha256 "
              f"{hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]}")
    print(f"seed {a.seed}, knobs {asdict(kn)}")


if __name__ == "__main__":
    main()
