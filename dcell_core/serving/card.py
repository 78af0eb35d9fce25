"""The model card of a production checkpoint: a short markdown page a person reads before using the model."""
from __future__ import annotations

import math

from dcell_core.ontology.hierarchy import Hierarchy
from dcell_core.search import ledger
from dcell_core.serving.selection import describe_counts

SHOWN_METRICS = ("val/pearson", "val/spearman", "val/mse", "train/loss", "train/root_mse", "val/std_ratio")


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def model_card(*, model_name: str, alias: str, parent, winner, hierarchy: Hierarchy, config, history: list[dict],
               plots: list[str]) -> str:
    """Markdown: what was searched, the winner's parameters and metric, the data, the plots, how to use it."""
    run = winner.run
    tags, params = parent.data.tags, parent.data.params
    search = tags.get(ledger.TAG_SEARCH, parent.info.run_id)
    sampled = dict(sorted(run.data.params.items()))
    final = history[-1] if history else {}
    lines = [
        f"# {model_name}: DCell model promoted from search `{search}`",
        "",
        f"{tags.get('mlflow.note.content', '').strip() or 'No search description.'}",
        "",
        "## Search",
        "",
        f"- search space `{tags.get(ledger.TAG_SEARCH_FILE, '?')}` (sha256 "
        f"{tags.get(ledger.TAG_SEARCH_FILE_SHA, '?')[:12]}), algorithm {params.get('algorithm', '?')}, scheduler "
        f"{params.get('scheduler', '?')}",
        f"- parent run `{parent.info.run_id}` (status {parent.info.status}), code "
        f"{tags.get(ledger.TAG_GIT_COMMIT, '?')}",
        f"- command-line overrides: `{tags.get(ledger.TAG_OVERRIDES, '') or 'none'}`",
        f"- {describe_counts(winner.counts)}",
        f"- rule: the FINISHED trial (its whole epoch budget) with the {'highest' if winner.mode == 'max' else 'lowest'}"
        f" `{winner.metric}` at its last epoch (ties: the earlier run)",
        "",
        "## Winner",
        "",
        f"- run `{run.info.run_id}` ({run.info.run_name}), trial {run.data.tags.get(ledger.TAG_TRIAL, '?')}",
        f"- **{winner.metric} = {_fmt(winner.value)}** after {int(final.get('epoch', len(history)))} epochs",
        "",
        "| parameter | value |",
        "|---|---|",
        *[f"| `{k}` | {v} |" for k, v in sampled.items()],
        "",
        "| final metric | value |",
        "|---|---|",
        *[f"| {k} | {_fmt(final[k])} |" for k in SHOWN_METRICS if k in final],
        "",
        "## Data and model",
        "",
        f"- data `{config.data.name}`: {config.data.description}",
        f"- hierarchy fingerprint `{hierarchy.fingerprint}`: {hierarchy.num_terms} terms in {hierarchy.num_strata} "
        f"strata, {hierarchy.num_genes} genes, root {hierarchy.terms[hierarchy.root]} "
        f"({hierarchy.names[hierarchy.root]})",
        "- model: " + ", ".join(f"{k}={v}" for k, v in config.model.items()),
        "- inputs: one 0/1 value per gene of `hierarchy.json` (1 = disrupted); output: the predicted "
        f"{config.data.genotypes.phenotype}",
        "",
        "## Plots",
        "",
        *[f"![{p}]({p})" for p in plots],
        *([] if plots else ["No plots were recorded."]),
        "",
        "## Use",
        "",
        "```",
        "python -m platform.predict --checkpoint <this directory> --genes GENE1,GENE2 --subsystems 5",
        f"python -m platform.predict --model models:/{model_name}@{alias} --input genotypes.csv --output out.csv",
        "```",
        "",
        "In Python: `dcell_core.load_checkpoint(path).predict([[\"GENE1\", \"GENE2\"]])`.",
        "",
    ]
    return "\n".join(lines)
