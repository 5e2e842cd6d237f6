"""AlpacaEval judges: their committed configs, the server they run on, and how far to trust them.

A judge is an alpaca_eval annotator config in ``evaluation/judges/<judge>/configs.yaml``
(``gpt4``: GPT-4-turbo's log-prob-weighted format; ``llama3-70b``: Llama-3-70B-Instruct's
ranking format), rendered with the endpoint into the run's eval folder so that annotations are
cached per run. Keys come only from the environment.

Trust, measured on every judging (``annotate``):

- verdicts: how many pairs were requested, how many verdicts parsed, and how many failed and
  were dropped (alpaca_eval drops an unparsable verdict from the win rate);
- position-swap consistency: a sample of the pairs judged again with the two answers swapped; a
  consistent verdict flips with them. ``consistent`` is the share that flips, ``mean_shift`` the
  mean of |p + p_swapped - 3| over the preferences p in [1, 2] (0: position plays no part).
"""

from __future__ import annotations

import json
import os
import random
import urllib.error
import urllib.request
from pathlib import Path

import yaml

JUDGES = Path(__file__).parent / "judges"
#: pairs judged again with the answers swapped, at most
SWAP_SAMPLE = 32


class JudgeUnreachable(RuntimeError):
    pass


def judge_config(judge: str) -> tuple[dict, str]:
    """The committed annotator config and its default endpoint (None: OpenAI's own)."""
    path = JUDGES / judge / "configs.yaml"
    if not path.is_file():
        valid = sorted(p.name for p in JUDGES.iterdir() if (p / "configs.yaml").is_file())
        raise ValueError(f"unknown judge {judge!r}; valid: {', '.join(valid)} (evaluation/judges/)")
    text = path.read_text()
    default_url = next(
        (ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("# default_url:")), None
    )
    return yaml.safe_load(text), default_url


def render_judge(judge: str, url: str | None, folder: Path, model: str | None = None) -> Path:
    """alpaca_eval's configs.yaml for this judge in ``folder``, with absolute template paths, the
    endpoint and the model to request (``model``: what the server serves, when not the configured name)."""
    import alpaca_eval  # optional: the eval extra

    configs, _ = judge_config(judge)
    package_configs = Path(alpaca_eval.__file__).parent / "evaluators_configs"
    for cfg in configs.values():
        cfg["prompt_template"] = str(package_configs / cfg["prompt_template"])
        if model:
            cfg["completions_kwargs"]["model_name"] = model
        if url:  # alpaca_eval's own argument for the endpoint, which $OPENAI_API_BASE defaults (a
            # base_url in client_kwargs as well would reach openai.OpenAI twice: a TypeError), and
            # no client config file ($OPENAI_CLIENT_CONFIG_PATH), whose endpoints would win
            cfg["completions_kwargs"]["openai_api_base"] = url
            cfg["completions_kwargs"]["client_config_path"] = str(folder / "no-client-config")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "configs.yaml").write_text(yaml.safe_dump(configs))
    return folder / "configs.yaml"


def check_reachable(url: str, judge: str) -> list[str]:
    """The model ids the server reports at ``/models`` (empty if it will not say)."""
    request = urllib.request.Request(url.rstrip("/") + "/models")
    key = os.environ.get("OPENAI_API_KEY")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        body = json.loads(urllib.request.urlopen(request, timeout=10).read() or b"{}")
    except urllib.error.HTTPError:
        return []  # the server answered: reachable (auth or routing is the client's business)
    except (urllib.error.URLError, OSError) as e:
        raise JudgeUnreachable(
            f"judge {judge!r} at {url} is unreachable ({getattr(e, 'reason', e)}). Start it with "
            "`sbatch slurm/serve_judge.sh` (it prints the URL to pass as JUDGE_URL=...), or point "
            "JUDGE_URL at any OpenAI-compatible endpoint (python -m evaluation.judge_server serves a local model)."
        ) from None
    except ValueError:
        return []
    return [m["id"] for m in body.get("data", []) if isinstance(m, dict) and "id" in m]


def judge_model(judge: str, configured: str, served: list[str]) -> tuple[str, str]:
    """(model to request, column label). The label is the model that judged: the configured one,
    or the one the server reports when it serves another (then with the judge's prompt named), so
    that verdicts of another model never pass for the named judge's, and the same model on any
    node lands in one column."""
    if not served or configured in served:
        return configured, configured
    if len(served) > 1:
        raise JudgeUnreachable(
            f"the judge server serves {served} but not {configured!r} (evaluation/judges/{judge}/configs.yaml)"
        )
    return served[0], f"{served[0]} [{judge} prompt]"


def connect(judge: str, url: str | None) -> tuple[str | None, str, str]:
    """(endpoint, model to request, column label) of a reachable judge."""
    configs, default_url = judge_config(judge)
    configured = next(iter(configs.values()))["completions_kwargs"]["model_name"]
    url = url or default_url
    served = []
    if url:
        served = check_reachable(url, judge)
        os.environ.setdefault(
            "OPENAI_API_KEY", os.environ.get("JUDGE_API_KEY", "EMPTY")
        )  # local servers take any
    elif not os.environ.get("OPENAI_API_KEY"):
        raise JudgeUnreachable(f"judge {judge!r} needs OPENAI_API_KEY in the environment (or JUDGE_URL=...)")
    model, label = judge_model(judge, configured, served)
    return url, model, label


def annotate(config: Path, outputs: list[dict], references: list[dict], folder: Path, name: str):
    """alpaca_eval's pairwise annotator on ``outputs`` (generator ``name``) against ``references``.

    Returns (metrics, {instruction: preference}, annotations). A preference is in [1, 2]: 1
    prefers the reference, 2 the output; verdicts that did not parse are missing, and the metrics
    (``win_rate`` etc., alpaca_eval's ``get_winrate``) cover the parsed ones (``None`` when none
    parsed: a weak judge may parse none, and then there is no win rate to report). The
    annotations are every pair's, parsed or not (the length-controlled win rate takes them all)."""
    import pandas as pd  # optional: the eval extra (pinned below 3 for alpaca_eval)
    from alpaca_eval.annotators import PairwiseAnnotator
    from alpaca_eval.metrics import get_winrate

    annotator = PairwiseAnnotator(annotators_config=str(config.resolve()))
    annotations = annotator.annotate_head2head(
        outputs_1=pd.DataFrame(references),
        outputs_2=pd.DataFrame([{**o, "generator": name} for o in outputs]),
    )
    parsed = [
        a for a in annotations if a.get("preference") is not None and a["preference"] == a["preference"]
    ]
    preferences = {a["instruction"]: float(a["preference"]) for a in parsed}
    metrics = {
        "n_total": len(parsed),
        "avg_length": sum(len(o["output"]) for o in outputs) / max(len(outputs), 1),
    }
    metrics.update(get_winrate(parsed) if parsed else {"win_rate": None, "standard_error": None})
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([{"generator": name, **metrics}]).set_index("generator").to_csv(folder / "leaderboard.csv")
    (folder / "annotations.json").write_text(json.dumps(annotations, indent=1, default=str) + "\n")
    return metrics, preferences, annotations


def verdicts(requested: int, preferences: dict) -> dict:
    return {
        "requested": requested,
        "parsed": len(preferences),
        "failed_dropped": requested - len(preferences),
    }


def swap_sample(records: list[dict], size: int = SWAP_SAMPLE, seed: int = 0) -> list[int]:
    """Indices of the pairs judged again with the answers swapped (the same ones on every run)."""
    indices = list(range(len(records)))
    random.Random(seed).shuffle(indices)
    return sorted(indices[:size])


def swap_consistency(preferences: dict, swapped: dict, requested: int) -> dict:
    """How often a verdict flips when the two answers swap places (see the module docstring), over
    the ``sample`` of the ``requested`` swapped pairs whose two verdicts both parsed."""
    both = [k for k in preferences if k in swapped]
    if not both:
        return {"requested": requested, "sample": 0, "consistent": None, "mean_shift": None}
    flips = [(preferences[k] - 1.5) * (swapped[k] - 1.5) < 0 for k in both]
    shifts = [abs(preferences[k] + swapped[k] - 3) for k in both]
    return {
        "requested": requested,
        "sample": len(both),
        "consistent": sum(flips) / len(both),
        "mean_shift": sum(shifts) / len(both),
    }
