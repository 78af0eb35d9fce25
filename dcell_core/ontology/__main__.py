"""`python -m dcell_core.ontology [hydra overrides] [--json] [--width-basis contained|direct] [--no-cache]`

Builds (or loads from cache) the hierarchy of the composed data config and prints its summary: terms, edges,
genes, strata with their sizes, neurons, widths and parameters under the paper's width rule, the gene universe
(its genes, those without any GO annotation), and the fingerprint.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from dcell_core.cli import compose_or_exit, fail_usage


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dcell_core.ontology", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data=yeast_go data.ontology.min_genes=10")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--width-basis", choices=["contained", "direct"], default="contained")
    ap.add_argument("--no-cache", action="store_true", help="rebuild instead of reading the cache")
    args = ap.parse_args(argv)

    from dcell_core.config import cache_dir
    from dcell_core.data import load_run_hierarchy

    cfg = compose_or_exit(args.overrides)
    start = time.perf_counter()
    try:
        hierarchy = load_run_hierarchy(cfg, None if args.no_cache else cache_dir(cfg))
    except (FileNotFoundError, ValueError) as e:  # bad input files or settings: one message, exit 2
        return fail_usage(str(e))
    seconds = time.perf_counter() - start
    summary = {"data": cfg.data.name, **hierarchy.summary(args.width_basis), "seconds": round(seconds, 3),
               "go_data_version": hierarchy.provenance["go"]["data_version"],
               "annotation_source": hierarchy.provenance["annotations"]["source"],
               "universe": hierarchy.provenance["universe"],
               "filters": hierarchy.provenance["filter_log"], "scope": hierarchy.provenance["scope"]}
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"data            {summary['data']}  (root {summary['root']})")
    print(f"GO release      {summary['go_data_version']}; annotations: {summary['annotation_source']}")
    print(f"terms           {summary['terms']}")
    print(f"term edges      {summary['term_edges']}")
    print(f"genes           {summary['genes']}  ({summary['annotations']} direct annotations)")
    u = summary["universe"]
    print(f"gene universe   {u['source']}: {u['genes']} genes, {u['unannotated']} without any GO annotation"
          + (f" (e.g. {', '.join(u['unannotated_examples'][:5])})" if u["unannotated"] else "")
          + f", {u['not_in_hierarchy']} not in this hierarchy; {u['annotated_genes_outside']} annotated genes "
          "outside it")
    print(f"strata          {len(summary['strata'])}: sizes {summary['strata']}")
    print(f"neurons         {summary['neurons']}  (width max(20, ceil(0.3 x {args.width_basis} genes)): "
          f"{summary['min_width']} to {summary['max_width']}, root {summary['root_width']})")
    print(f"parameters      {summary['parameters']:,}  (term layers + auxiliary and root heads)")
    print(f"fingerprint     {summary['fingerprint']}")
    print("filters         " + " -> ".join(f"{s['step']} ({s['terms_before']}->{s['terms_after']} terms)"
                                            for s in summary["filters"]))
    sc = summary["scope"]
    print(f"annotations     {sc['annotation_records']} records; outside the gene universe "
          f"{sc['outside_universe']}, obsolete GO ids {sc['obsolete_go_id']}, "
          f"unknown GO ids {sc['unknown_go_id']}, outside this hierarchy {sc['outside_scope']}, "
          f"alt ids resolved {sc['alt_id_resolved']}")
    print(f"loaded in       {seconds:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
