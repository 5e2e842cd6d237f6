"""The one registry of names, and the rules on them, in plain Python: the methods, penalties,
sorts and data sources a recipe may name, their limits, and the checks that the objective and
the config check share.

Nothing here imports torch: checking a recipe (``aot.config``) reads these names without the ML
stack, and ``aot.losses``, ``aot.sorting`` and ``aot.methods`` attach the functions to them.
"""

from __future__ import annotations

import math

# --- methods ----------------------------------------------------------------------------------

#: the training methods (``loss=<name>``). Each trains with ``aot.losses.<name>_loss``
#: (``aot.methods.METHODS``) but those on TRL's trainers (``TRL_METHODS``).
METHOD_NAMES = ("aot_unpaired", "aot_paired", "dpo", "ipo", "kto")
#: kto trains on TRL's KTOTrainer: its KL estimate needs a forward pass of its own
TRL_METHODS = frozenset({"kto"})
#: methods that compare policy margins with reference margins: rows with chosen and rejected
#: answers to one prompt
PAIRED_ONLY = frozenset({"aot_paired", "dpo", "ipo"})

# --- options of the objective -----------------------------------------------------------------

#: AOT penalties h(z, label_smoothing), z = beta * (matched quantile difference); each is the
#: function ``aot.losses._<name>``
PENALTY_NAMES = ("logistic", "hinge", "squared_hinge", "least_squares")
#: sort name -> how the order statistics are taken: ``None`` is torch.sort, else the method of
#: ``aot.sorting.soft_sort``. "soft" is Blondel et al.'s L2 soft sort (PAV).
SORTS = {"hard": None, "soft": "pav", "sinkhorn": "sinkhorn"}
#: default ``sort_strength`` per soft sort. "soft" (PAV) is relative to each sample's mean spacing
#: (max - min) / (n - 1): neighbouring order statistics further apart than 1 / strength spacings
#: are pooled (``aot.sorting.relative_soft_sort``), so one default serves rewards near 0 and
#: margins of tens of nats alike. Sinkhorn's is an entropic regularisation on z-scores squashed
#: to (0, 1), where neighbouring anchors are 1/n apart.
DEFAULT_SORT_STRENGTH = {"soft": 1.0, "sinkhorn": 1e-3}
#: Largest n the Sinkhorn sort accepts: its forward and backward unroll ``n_iter`` O(n^2)
#: iterations through autograd, and the time grows past what a training step can spend (timings
#: in docs/benchmarks.md). Above it, PAV (``sort="soft"``) serves.
SINKHORN_MAX_N = 128

# --- data -------------------------------------------------------------------------------------

#: ``data.source`` -> the rows it gives, "paired" or "unpaired", known before loading; ``None``:
#: known only then (sample: by its ``data.view``; local: by the file's columns)
DATA_SOURCES = {
    "sample": None,
    "local": None,
    "hub_paired": "paired",
    "helpsteer": "unpaired",
    "beavertails": "unpaired",
}


# --- rules: one place, for the functions and for the config check ----------------------------


def check_options(
    beta,
    penalty="logistic",
    label_smoothing=0.0,
    sort="hard",
    sort_strength=None,
    prefix="",
    smoothing_rule=True,
) -> None:
    """Every option of ``aot_loss``, named as the caller names it (``prefix="loss."`` for a
    config's keys). ``smoothing_rule``: label smoothing only with the logistic penalty (AOT)."""
    if penalty not in PENALTY_NAMES:
        raise ValueError(f"{prefix}penalty={penalty!r} is unknown; valid: {', '.join(PENALTY_NAMES)}")
    if sort not in SORTS:
        raise ValueError(f"{prefix}sort={sort!r} is unknown; valid: {', '.join(SORTS)}")
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise ValueError(f"{prefix}beta must be > 0 (and finite), got {beta!r}")
    if not (isinstance(label_smoothing, (int, float)) and 0 <= label_smoothing < 0.5):
        raise ValueError(f"{prefix}label_smoothing must be in [0, 0.5), got {label_smoothing!r}")
    if smoothing_rule and label_smoothing and penalty != "logistic":
        raise ValueError(
            f"{prefix}label_smoothing={label_smoothing} applies to the logistic penalty only, "
            f"not {prefix}penalty={penalty}"
        )
    if sort_strength is not None and not (
        isinstance(sort_strength, (int, float)) and math.isfinite(sort_strength) and sort_strength > 0
    ):
        raise ValueError(
            f"{prefix}sort_strength must be > 0 (or null for the default), got {sort_strength!r}"
        )


def check_rows(method: str, kind: str, source: str) -> None:
    """The one rule on rows: a paired-only method needs paired rows (``kind`` "paired" or
    "unpaired", as ``source`` declares or holds them). Raises ``ValueError`` naming both."""
    if method in PAIRED_ONLY and kind != "paired":
        raise ValueError(f"loss={method} needs paired rows; {source} is unpaired (use aot_unpaired or kto)")
