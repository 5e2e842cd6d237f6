"""The paper's distributional claim on a real model, measured against a ground-truth reward.

Controlled sentiment generation with SmolLM2-135M-Instruct as the reference policy and VADER's
compound score (in [-1, 1], a lexicon nobody here wrote) as the true reward:

1. prompts: short requests for an opinion, review or description, from templates x topics with a
   fixed seed; the held-out prompts use templates *and* topics never seen in training;
2. data: two sampled completions per prompt from the reference (temperature 1), scored by VADER;
   paired view: chosen = the higher score; unpaired view: one completion per prompt, chosen when
   above the median score (the paper's HelpSteer rule), so chosen and rejected rows come from
   different prompts in unequal numbers;
3. training: AOT unpaired, AOT paired, DPO, IPO and KTO with one budget for all (LoRA);
4. evaluation on held-out prompts, for each policy and the reference: sampled completions scored
   by VADER (mean, quantiles), the FSD violation of the policy's true-reward distribution over
   the reference's, the win rate against the reference on the same prompts, a KL estimate (the
   mean log-ratio of the policy's own samples), and the run's implicit-reward diagnostics.

Every stage is cached under the output directory (generations, scores, finished runs,
evaluations), so an interrupted experiment rerun picks up where it stopped.

    python scripts/experiment.py [--quick] [--out results/experiment]    # or: make experiment [QUICK=1]
"""

from evaluation.experiment.pipeline import run_experiment
from evaluation.experiment.report import table
from evaluation.experiment.settings import Settings

__all__ = ["Settings", "run_experiment", "table"]
