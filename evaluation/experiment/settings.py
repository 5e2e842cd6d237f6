"""The experiment's prompts, methods and budget (``Settings``: the README run, or ``quick`` for tests)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

TRAIN_TEMPLATES = [
    "Write a short review of {t}.",
    "Describe {t} in two sentences.",
    "What do you think of {t}?",
    "Give your honest opinion of {t}.",
    "Tell me about your last experience with {t}.",
    "Write a one-paragraph description of {t}.",
]
HELDOUT_TEMPLATES = [
    "Share a brief impression of {t}.",
    "How would you describe {t} to a friend?",
]
TRAIN_TOPICS = [
    "a small coffee shop",
    "a rainy Monday",
    "a new smartphone",
    "a city bus ride",
    "a public library",
    "a family dinner",
    "a hotel room",
    "a morning jog",
    "a pizza place",
    "a history museum",
    "a long flight",
    "a summer festival",
    "an old bookstore",
    "a budget laptop",
    "a mountain hike",
    "a crowded supermarket",
    "a cooking class",
    "a jazz concert",
    "a beach holiday",
    "a dentist visit",
    "a science fiction film",
    "a rock band",
    "a city park",
    "a train station",
    "a used car",
    "a yoga class",
    "a farmers market",
    "a winter morning",
    "a video game",
    "a school cafeteria",
    "a football match",
    "a garden center",
]
HELDOUT_TOPICS = [
    "a street market",
    "a ferry trip",
    "a bakery",
    "an art gallery",
    "a camping weekend",
    "a bike repair shop",
    "a night train",
    "a board game evening",
]
METHODS = ("aot_unpaired", "dpo", "aot_paired", "ipo", "kto")
UNPAIRED_METHODS = ("aot_unpaired", "kto")


@dataclass
class Settings:
    """Sizes of one experiment; ``full`` for the README run, ``quick`` for the test suite."""

    train_prompts: int = 192
    heldout_prompts: int = 16
    samples_per_heldout_prompt: int = 4
    max_new_tokens: int = 40
    seeds: tuple = (1, 2)
    # Two seeds for the comparison the paper makes (AOT unpaired against DPO), one for the others:
    # the budget of the README run (docs/experiment.md).
    one_seed: tuple = ("aot_paired", "ipo", "kto")
    steps: int = 30
    batch: int = 8
    learning_rate: float = 2e-4
    max_length: int = 96
    gen_batch: int = 32
    methods: tuple = METHODS
    # beta 0.1 for every method (the TRL default for DPO, IPO and KTO): the implicit rewards then
    # have one scale in every loss, so one learning rate serves all. The AOT recipes' 0.01 (the
    # paper's, for 7B models) would scale AOT's gradients down tenfold under the same budget.
    overrides: list = field(default_factory=lambda: ["loss.beta=0.1"])

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            train_prompts=12, heldout_prompts=4, samples_per_heldout_prompt=2, max_new_tokens=10, seeds=(1,),
            steps=2, batch=4, max_length=64, gen_batch=16, one_seed=METHODS,
        )  # fmt: skip


def make_prompts(n_train: int, n_heldout: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Train and held-out prompts, disjoint in both template and topic."""
    rng = random.Random(seed)
    train = [t.format(t=topic) for t in TRAIN_TEMPLATES for topic in TRAIN_TOPICS]
    heldout = [t.format(t=topic) for t in HELDOUT_TEMPLATES for topic in HELDOUT_TOPICS]
    rng.shuffle(train)
    rng.shuffle(heldout)
    if n_train > len(train) or n_heldout > len(heldout):
        raise ValueError(f"at most {len(train)} train and {len(heldout)} held-out prompts")
    return train[:n_train], heldout[:n_heldout]


def seeds_of(method: str, s: Settings) -> tuple:
    return s.seeds[:1] if method in s.one_seed else s.seeds
