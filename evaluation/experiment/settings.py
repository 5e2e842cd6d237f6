"""The experiment's prompts, methods and budget (``Settings``: the README run, or ``quick`` for
tests), and the frontier sweep's (``FrontierSettings``), each declared once here."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from aot.names import METHOD_NAMES, PAIRED_ONLY

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
# The frontier's held-out set: the experiment's two templates and two more, over the same topics
# (4 x 8 = 32 prompts; training sees none of these templates or topics).
FRONTIER_HELDOUT_TEMPLATES = [
    *HELDOUT_TEMPLATES,
    "What is your take on {t}?",
    "Write a few words about {t}.",
]
# The order the experiment trains them in (the paper's comparison first); the names are aot.names'.
METHODS = ("aot_unpaired", "dpo", "aot_paired", "ipo", "kto")
#: methods trained on the unpaired view of the data (rows of one answer each)
UNPAIRED_METHODS = tuple(m for m in METHOD_NAMES if m not in PAIRED_ONLY)


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


@dataclass
class FrontierSettings:
    """The frontier sweep: every variant x beta x seed trained on the experiment's data, each run
    evaluated at ``checkpoints`` evenly spaced steps; ``full`` (docs/experiment.md) or ``quick``.

    A variant is (loss, OT batch): "micro" sorts each micro-batch (the default OT batch, gradient
    accumulation over the step), "step" sorts the whole step's rows together (the two-pass step,
    ``loss.ot_batch_size``), None for a per-pair loss. Every variant sees ``rows_per_step`` rows a
    step, so the budget is one for all."""

    variants: tuple = (
        ("aot_paired", "micro"),
        ("aot_paired", "step"),
        ("aot_unpaired", "micro"),
        ("dpo", None),
    )
    betas: tuple = (0.02, 0.1, 0.5)
    seeds: tuple = (1, 2)
    steps: int = 8
    checkpoints: int = 4
    micro_batch: int = 8
    rows_per_step: int = 32
    # 8 steps of 32 rows at 1.25e-3 (the first step is the 10% warm-up, at learning rate 0): a DPO
    # pilot at 1e-3 and beta 0.1 measured KL 0.4, 3.0 and 5.2 nats at steps 2, 4 and 8
    learning_rate: float = 1.25e-3
    heldout_prompts: int = 32
    samples_per_prompt: int = 4
    max_new_tokens: int = 40  # as the training data's completions
    eval_batch: int = 64
    sampling_seed: int = 7
    # KLs (nats per sequence) at which frontiers are compared, where both reach them
    matched_kls: tuple = (0.5, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32)
    bootstrap: int = 2000
    bootstrap_seed: int = 0
    data: Settings = field(default_factory=Settings)  # the experiment's data, as make experiment builds it

    def __post_init__(self):
        if self.steps % self.checkpoints or self.rows_per_step % self.micro_batch:
            raise ValueError(
                f"steps={self.steps} must be a multiple of checkpoints={self.checkpoints} and "
                f"rows_per_step={self.rows_per_step} of micro_batch={self.micro_batch}"
            )

    @classmethod
    def quick(cls) -> FrontierSettings:
        return cls(
            betas=(0.1,), seeds=(1,), steps=2, checkpoints=2, micro_batch=4, rows_per_step=8, learning_rate=5e-3,
            heldout_prompts=4, samples_per_prompt=2, max_new_tokens=10, eval_batch=8, bootstrap=200,
            matched_kls=tuple(round(0.01 * 1.25**k, 4) for k in range(40)), data=Settings.quick(),
        )  # fmt: skip


def frontier_prompts(n: int, seed: int = 0) -> list[str]:
    """The frontier's held-out prompts (templates and topics unseen in training), fixed seed."""
    prompts = [t.format(t=topic) for t in FRONTIER_HELDOUT_TEMPLATES for topic in HELDOUT_TOPICS]
    random.Random(seed).shuffle(prompts)
    if n > len(prompts):
        raise ValueError(f"at most {len(prompts)} frontier held-out prompts")
    return prompts[:n]
