"""Preemption: a signal or a stop file makes every rank finish its step, checkpoint and exit.

Slurm sends USR1 before the time limit (``slurm/train.sh`` then creates the stop file) and
SIGTERM on preemption; a signal to any one rank is enough, because the stop is all-reduced. The
callback also measures the longest step and checkpoint and warns when together they would not
fit in the launcher's lead time.
"""

from __future__ import annotations

import logging
import os
import signal
import time

import torch
import torch.distributed as dist
from transformers import TrainerCallback

log = logging.getLogger("aot")
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # Slurm: SIGTERM on preemption, USR1 before the time limit


class StopOnSignal(TrainerCallback):
    """On SIGTERM or SIGUSR1 (to any rank), or once the stop file ``$AOT_STOP_FILE`` exists
    (slurm/train.sh creates it when the time limit nears): finish the current step, save a
    checkpoint, stop. Also measures how long a step and a checkpoint take, and warns when the
    two together would not fit in the lead time the launcher gives (``$AOT_STOP_LEAD_S``)."""

    def __init__(self):
        self.requested, self.stopped_at, self._previous = False, None, {}
        self.stop_file = os.environ.get("AOT_STOP_FILE") or None
        self.lead = float(os.environ.get("AOT_STOP_LEAD_S", "0")) or None
        self.step_seconds, self.save_seconds, self._t = 0.0, 0.0, None
        self._warned = False

    def _handler(self, signum, frame):
        self.requested = True
        log.info("received %s: will checkpoint after this step and exit", signal.Signals(signum).name)

    def on_train_begin(self, args, state, control, **kwargs):
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handler)
        self._t = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.monotonic()
        self.step_seconds, self._t = max(self.step_seconds, now - self._t), now
        requested = self.requested
        if not requested and self.stop_file and args.process_index == 0 and os.path.exists(self.stop_file):
            log.info("stop file %s found: will checkpoint after this step and exit", self.stop_file)
            requested = self.requested = True
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # Every rank must stop (and join the checkpoint's collectives) at the same step, even
            # when the signal reached them on either side of a step boundary.
            flag = torch.tensor([float(requested)], device=args.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            requested = bool(flag.item())
        if requested:
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control

    def on_save(self, args, state, control, **kwargs):
        now = time.monotonic()
        self.save_seconds, self._t = max(self.save_seconds, now - self._t), now
        needed = self.step_seconds + self.save_seconds
        if self.lead and not self._warned:
            self._warned = True
            fits = needed <= self.lead
            (log.info if fits else log.warning)(
                "preemption: a step takes up to %.1f s and a checkpoint %.1f s, so a stop request needs "
                "up to %.1f s; the launcher's lead time is %.0f s%s",
                self.step_seconds,
                self.save_seconds,
                needed,
                self.lead,
                ""
                if fits
                else " (too short: raise --signal and STOP_LEAD in slurm/train.sh, "
                "or rely on train.save_steps checkpoints)",
            )

    def on_train_end(self, args, state, control, **kwargs):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
