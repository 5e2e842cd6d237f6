"""Write the bundled synthetic preference set `aot/resources/sample/` (fixed seed, committed).

    python scripts/make_sample_data.py

Chosen answers are on-topic, correct and courteous; rejected answers are refusals, wrong facts
or off-topic chatter. A tiny model can learn the difference, so a short AOT run visibly moves
the reward distributions. Views:
- paired_{train,test}.jsonl: {"prompt", "chosen", "rejected"}
- unpaired_{train,test}.jsonl: {"prompt", "completion", "label"}, one row per prompt (never
  both answers of a prompt), about 60% chosen, so chosen and rejected rows share no prompt and
  come in unequal numbers.
- long_{train,test}.jsonl: 64 / 32 pairs whose answers string 18 of the pairs' answers together
  (about 200 tokens for the tiny model): completion log-prob sums past 256 nats, where bf16 can
  no longer hold a sum to a nat. For precision tests and GPU checks (`data.view=long`).

It also writes the bundled lm-eval task's questions (evaluation/tasks/aot_tiny/aot_tiny_qa.jsonl):
one multiple-choice question per fact, four choices, for quick offline evaluation of tiny runs.
"""

import json
import random
from pathlib import Path

SEED = 1234
REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "aot" / "resources" / "sample"
TASK = REPO / "evaluation" / "tasks" / "aot_tiny" / "aot_tiny_qa.jsonl"
N_TRAIN, N_TEST = 1200, 200

FACTS = {
    "color": {
        "sky": "blue",
        "grass": "green",
        "snow": "white",
        "coal": "black",
        "a lemon": "yellow",
        "a tomato": "red",
        "an orange": "orange",
        "a plum": "purple",
    },
    "sound": {
        "a dog": "barks",
        "a cat": "meows",
        "a cow": "moos",
        "a duck": "quacks",
        "a lion": "roars",
        "a bee": "buzzes",
        "a horse": "neighs",
        "a sheep": "bleats",
    },
    "place": {
        "fish": "water",
        "birds": "nests",
        "bees": "hives",
        "rabbits": "burrows",
        "bats": "caves",
        "ants": "colonies",
        "foxes": "dens",
        "spiders": "webs",
    },
}
QUESTIONS = {
    "color": ["What color is {x}?", "Tell me the color of {x}.", "Which color does {x} have?"],
    "sound": ["What sound does {x} make?", "How does {x} sound?", "Which noise does {x} make?"],
    "place": ["Where do {x} live?", "What is the home of {x}?", "Where can you find {x}?"],
}
GOOD = {
    "color": [
        "Sure! {X} is {y}. Hope this helps!",
        "Good question. {X} is {y}.",
        "{X} is {y}, happy to help.",
    ],
    "sound": ["Sure! {X} {y}. Hope this helps!", "Good question. {X} {y}.", "{X} {y}, happy to help."],
    "place": [
        "Sure! {X} live in {y}. Hope this helps!",
        "Good question. {X} live in {y}.",
        "{X} live in {y}, happy to help.",
    ],
}
BAD = [
    "I will not answer that.",
    "whatever, ask someone else.",
    "no no no no.",
    "{X} is {z}. obviously.",
    "I like trains more than {x}.",
    "idk lol",
]


def pair(rng: random.Random) -> dict:
    kind = rng.choice(sorted(FACTS))
    x, y = rng.choice(sorted(FACTS[kind].items()))
    z = rng.choice([v for v in FACTS[kind].values() if v != y])
    fill = dict(x=x, X=x[0].upper() + x[1:], y=y, z=z)
    return {
        "prompt": rng.choice(QUESTIONS[kind]).format(**fill),
        "chosen": rng.choice(GOOD[kind]).format(**fill),
        "rejected": rng.choice(BAD).format(**fill),
    }


def unpaired(rows: list[dict], rng: random.Random) -> list[dict]:
    out = []
    for row in rows:
        label = rng.random() < 0.6
        out.append(
            {"prompt": row["prompt"], "completion": row["chosen" if label else "rejected"], "label": label}
        )
    return out


def write(name: str, rows: list[dict]) -> None:
    with open(OUT / name, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def long_pairs(rows: list[dict], n: int, rng: random.Random, k: int = 18) -> list[dict]:
    out = []
    for _ in range(n):
        pick = rng.sample(rows, k)
        joined = {key: " ".join(r[key] for r in pick) for key in ("chosen", "rejected")}
        out.append({"prompt": pick[0]["prompt"], **joined})
    return out


def questions(rng: random.Random) -> list[dict]:
    rows = []
    for kind in sorted(FACTS):
        answers = sorted(set(FACTS[kind].values()))
        for x, y in sorted(FACTS[kind].items()):
            choices = [y] + rng.sample([a for a in answers if a != y], 3)
            rng.shuffle(choices)
            rows.append(
                {"question": QUESTIONS[kind][0].format(x=x), "choices": choices, "label": choices.index(y)}
            )
    return rows


def main() -> None:
    rng = random.Random(SEED)
    OUT.mkdir(parents=True, exist_ok=True)
    train = [pair(rng) for _ in range(N_TRAIN)]
    test = [pair(rng) for _ in range(N_TEST)]
    write("paired_train.jsonl", train)
    write("paired_test.jsonl", test)
    write("unpaired_train.jsonl", unpaired(train, rng))
    write("unpaired_test.jsonl", unpaired(test, rng))
    long_rng = random.Random(SEED + 2)
    write("long_train.jsonl", long_pairs(train, 64, long_rng))
    write("long_test.jsonl", long_pairs(test, 32, long_rng))
    TASK.parent.mkdir(parents=True, exist_ok=True)
    qa = questions(random.Random(SEED + 1))
    TASK.write_text("".join(json.dumps(r) + "\n" for r in qa))
    print(f"wrote {OUT}: {len(train)} train and {len(test)} test pairs, and their unpaired views")
    print(f"wrote {TASK}: {len(qa)} questions")


if __name__ == "__main__":
    main()
