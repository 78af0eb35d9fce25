"""Rewrite tests/expectations/snapshot.json from `python -m dcell_core.ontology --json` for each data config.

Run only when the embedded snapshot or the build logic changes on purpose, and review the diff: the test that
reads this file is what catches an unintended change in term counts.
"""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["yeast_go", "yeast_dna_repair", "yeast_dna_metabolism", "yeast_cell_cycle"]
KEYS = ["root", "terms", "genes", "term_edges", "annotations", "strata", "neurons", "parameters", "fingerprint",
        "go_data_version"]


def summary(name: str, basis: str) -> dict:
    cmd = [sys.executable, "-m", "dcell_core.ontology", f"data={name}", "--json", "--width-basis", basis]
    return json.loads(subprocess.check_output(cmd, cwd=ROOT))


def main() -> None:
    out = {"_comment": "Counts of the embedded snapshot (GO releases/2019-01-27 + SGD GenBank records of 2017-01-18) "
                       "per data config. Regenerate only when the snapshot or the build logic changes on purpose: "
                       "python scripts/snapshot_expectations.py"}
    for name in NAMES:
        s = summary(name, "contained")
        out[name] = {k: s[k] for k in KEYS}
        out[name]["parameters_direct"] = summary(name, "direct")["parameters"]
    (ROOT / "tests" / "expectations" / "snapshot.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
