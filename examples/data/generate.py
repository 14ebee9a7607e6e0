#!/usr/bin/env python3
"""Regenerates the bundled example datasets (standard library only, deterministic).

    python3 examples/data/generate.py

All text is produced by the templates below; nothing is copied from elsewhere.
"""
import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent

# ---- SFT: short instruction/answer pairs a 2-layer model can learn --------------------------------

CAPITALS = [
    ("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"),
    ("Japan", "Tokyo"), ("China", "Beijing"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"),
    ("Peru", "Lima"), ("Chile", "Santiago"), ("Canada", "Ottawa"), ("Norway", "Oslo"),
    ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Greece", "Athens"), ("Poland", "Warsaw"),
    ("Austria", "Vienna"), ("Portugal", "Lisbon"), ("Ireland", "Dublin"), ("Russia", "Moscow"),
    ("India", "New Delhi"), ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Cuba", "Havana"),
    ("Mexico", "Mexico City"), ("Argentina", "Buenos Aires"), ("Turkey", "Ankara"),
    ("Iran", "Tehran"), ("Denmark", "Copenhagen"), ("Hungary", "Budapest"),
]
WORDS = [
    "cat", "dog", "sun", "moon", "tree", "fish", "bird", "book", "lamp", "road", "rain", "star",
    "milk", "bread", "apple", "river", "stone", "cloud", "green", "house", "chair", "table",
    "water", "light", "paper", "music", "plant", "horse", "train", "glass", "clock", "smile",
    "ocean", "field", "tiger", "lemon", "honey", "candle", "garden", "window", "button", "pencil",
    "rocket", "forest", "silver", "winter", "summer", "yellow", "purple", "orange", "basket",
    "bridge", "castle", "dragon", "mirror", "pepper", "rabbit", "wallet", "ladder", "jacket",
]
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def prompt(question):
    # The built-in RWKV chat format: the model learns to answer after "Assistant:".
    return f"User: {question}\n\nAssistant:"


def sft_pairs(rng, n, split):
    """`split` picks disjoint operands/words where the task allows, so held-out means unseen."""
    words = [w for i, w in enumerate(WORDS) if (i % 5 == 0) == (split == "eval")]
    out = []
    seen = set()
    while len(out) < n:
        kind = rng.randrange(7)
        if kind == 0:
            a, b = rng.randrange(0, 20), rng.randrange(0, 20)
            if ((a + b) % 5 == 0) != (split == "eval"):
                continue
            q, ans = f"What is {a} + {b}?", str(a + b)
        elif kind == 1:
            a = rng.randrange(1, 20)
            b = rng.randrange(0, a + 1)
            if ((a * 3 + b) % 5 == 0) != (split == "eval"):
                continue
            q, ans = f"What is {a} - {b}?", str(a - b)
        elif kind == 2:
            country, city = rng.choice(CAPITALS)
            form = "What is the capital of {}?" if split == "train" else "Name the capital of {}."
            q, ans = form.format(country), f"The capital of {country} is {city}."
        elif kind == 3:
            w = rng.choice(words)
            q, ans = f"Reverse the word {w}.", w[::-1]
        elif kind == 4:
            start = rng.randrange(1, 15)
            length = rng.randrange(3, 7)
            if ((start + length) % 4 == 0) != (split == "eval"):
                continue
            q = f"Count from {start} to {start + length - 1}."
            ans = ", ".join(str(i) for i in range(start, start + length))
        elif kind == 5:
            w = rng.choice(words)
            q, ans = f"Write {w} in capital letters.", w.upper()
        else:
            i = rng.randrange(0, 25)
            if (i % 6 == 0) != (split == "eval"):
                continue
            q, ans = f"Which letter comes after {LETTERS[i]}?", LETTERS[i + 1]
        if q in seen:
            continue
        seen.add(q)
        out.append({"prompt": prompt(q), "completion": " " + ans})
    return out


def chat_sample(rng, n):
    """Multi-turn `messages` rows: the same tasks, two or three turns each."""
    rows = []
    for _ in range(n):
        pairs = sft_pairs(rng, rng.randrange(2, 4), "train")
        messages = [{"role": "system", "content": "You are a concise assistant."}]
        for p in pairs:
            question = p["prompt"][len("User: "):-len("\n\nAssistant:")]
            messages.append({"role": "user", "content": question})
            messages.append({"role": "assistant", "content": p["completion"].strip()})
        rows.append({"messages": messages})
    return rows


# ---- Pre-training: a procedurally generated story corpus ------------------------------------------

NAMES = ["Ada", "Ben", "Cleo", "Dan", "Eva", "Finn", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lena",
         "Milo", "Nora", "Omar", "Pia"]
ANIMALS = ["cat", "dog", "fox", "owl", "duck", "goat", "frog", "bear", "mouse", "horse"]
COLORS = ["red", "blue", "green", "yellow", "brown", "white", "black", "grey"]
PLACES = ["the park", "the garden", "the market", "the river", "the hill", "the school",
          "the forest", "the beach", "the farm", "the library"]
THINGS = ["ball", "kite", "hat", "box", "cup", "book", "map", "bell", "coat", "drum"]
FOODS = ["bread", "apples", "soup", "cheese", "rice", "cake", "plums", "eggs"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def story(rng):
    a, b = rng.sample(NAMES, 2)
    animal, color, place = rng.choice(ANIMALS), rng.choice(COLORS), rng.choice(PLACES)
    thing, food, day = rng.choice(THINGS), rng.choice(FOODS), rng.randrange(7)
    n = rng.randrange(2, 10)
    s = [
        f"On {DAYS[day]}, {a} went to {place} with {b}.",
        f"They saw a {color} {animal} near a {thing}.",
        f"The {animal} was hungry, so {a} gave it some {food}.",
        f"{b} counted {NUMBERS[n - 1]} birds in the sky: "
        + ", ".join(NUMBERS[:n]) + ".",
        f"The next day was {DAYS[(day + 1) % 7]}.",
        f"{a} said, \"I like the {color} {animal}.\" {b} said, \"So do I.\"",
        f"In the evening they went home, and the {animal} went back to {place}.",
    ]
    # Keep the first and last sentence, drop some in between, so documents vary in length.
    middle = [x for x in s[1:-1] if rng.random() < 0.8]
    return " ".join([s[0], *middle, s[-1]])


def fact(rng):
    kind = rng.randrange(4)
    if kind == 0:
        a, b = rng.randrange(0, 10), rng.randrange(0, 10)
        return f"{a} plus {b} is {a + b}. {b} plus {a} is also {a + b}."
    if kind == 1:
        start = rng.randrange(7)
        days = [DAYS[(start + i) % 7] for i in range(7)]
        return "The days of the week are " + ", ".join(days) + "."
    if kind == 2:
        i = rng.randrange(0, 20)
        return "The letters are " + " ".join(LETTERS[i:i + 7]) + "."
    country, city = rng.choice(CAPITALS)
    return f"{city} is the capital of {country}. People in {city} live in {country}."


def corpus(rng, n_docs):
    docs = []
    for _ in range(n_docs):
        parts = [story(rng) if rng.random() < 0.7 else fact(rng) for _ in range(rng.randrange(1, 4))]
        docs.append({"text": "\n".join(parts)})
    return docs


def grpo_prompts(rng, n):
    """Arithmetic questions of the SFT distribution with their answers, for GRPO with an
    exact-match reward (`ground_truth` is what the math-reward plugin compares with)."""
    rows = []
    for _ in range(n):
        if rng.random() < 0.5:
            a, b = rng.randrange(0, 20), rng.randrange(0, 20)
            q, ans = f"What is {a} + {b}?", a + b
        else:
            a = rng.randrange(1, 20)
            b = rng.randrange(0, a + 1)
            q, ans = f"What is {a} - {b}?", a - b
        rows.append({"prompt": prompt(q), "ground_truth": str(ans)})
    return rows


def write_jsonl(name, rows):
    with open(OUT / name, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main():
    write_jsonl("sft_train.jsonl", sft_pairs(random.Random(1), 320, "train"))
    write_jsonl("sft_eval.jsonl", sft_pairs(random.Random(2), 60, "eval"))
    write_jsonl("sft_chat.jsonl", chat_sample(random.Random(3), 40))
    write_jsonl("pretrain_train.jsonl", corpus(random.Random(4), 600))
    write_jsonl("pretrain_eval.jsonl", corpus(random.Random(5), 60))
    write_jsonl("grpo_arith.jsonl", grpo_prompts(random.Random(6), 64))


if __name__ == "__main__":
    main()
