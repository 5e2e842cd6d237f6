"""The training methods by name: the loss each trains with and the rows it needs."""

from __future__ import annotations

from aot.losses import LOSSES

#: method name -> its loss in ``aot.losses``; ``None``: "kto" trains on TRL's KTOTrainer (its
#: KL estimate needs a forward pass of its own).
METHODS = {**LOSSES, "kto": None}
#: methods that compare policy margins with reference margins: rows with chosen and rejected
#: answers to one prompt
PAIRED_ONLY = frozenset({"aot_paired", "dpo", "ipo"})


def check_rows(method: str, kind: str, source: str) -> None:
    """The one rule on rows: a paired-only method needs paired rows (``kind`` "paired" or
    "unpaired", as ``source`` declares or holds them). Raises ``ValueError`` naming both."""
    if method in PAIRED_ONLY and kind != "paired":
        raise ValueError(f"loss={method} needs paired rows; {source} is unpaired (use aot_unpaired or kto)")
