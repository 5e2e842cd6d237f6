"""The training methods by name (``aot.names.METHOD_NAMES``): the loss each trains with."""

from __future__ import annotations

from aot.losses import LOSSES
from aot.names import METHOD_NAMES, PAIRED_ONLY, check_rows  # noqa: F401  (the rows each needs: re-exported)

#: method name -> its loss in ``aot.losses``; ``None``: kto trains on TRL's KTOTrainer (its
#: KL estimate needs a forward pass of its own).
METHODS = {name: LOSSES.get(name) for name in METHOD_NAMES}
