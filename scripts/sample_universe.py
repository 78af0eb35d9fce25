"""Write a seeded random sample of annotated ORFs as a gene-universe file (data.ontology.gene_universe=FILE).

"Annotated" is every gene the paper's filters can keep: the genes of `--data` (default yeast_go_paper) built over
all annotated genes (gene_universe=annotated), i.e. ORFs with at least one GO annotation other than the excluded
evidence codes (IGI, ND) to a live GO term of the embedded snapshot. The sample is drawn from these genes sorted
by name with Python's random.Random(seed), so a seed gives the same file on every machine.

Usage: python scripts/sample_universe.py --out genes.txt [--size 3582] [--seed 0] [--data yeast_go_paper]
  then: python -m dcell_core.ontology data=yeast_go_paper data.ontology.gene_universe=genes.txt --json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dcell_core.config import cache_dir, compose, ontology_config  # noqa: E402
from dcell_core.fileio import atomic_write_bytes  # noqa: E402
from dcell_core.ontology import load_hierarchy  # noqa: E402
from dcell_core.ontology.universe import format_gene_list, sample_genes  # noqa: E402

PAPER_GENES = 3582  # the paper's root width 1,075 = ceil(0.3 x genes) for 3,580..3,583 genes


def annotated_genes(data: str) -> tuple[tuple[str, ...], dict]:
    """The genes of data config `data` over the annotated universe, and that hierarchy's provenance."""
    cfg = compose([f"data={data}", "data.ontology.gene_universe=annotated"])
    h = load_hierarchy(ontology_config(cfg), cache_dir(cfg), cfg.base_dir)
    return h.genes, h.provenance


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="the gene list to write (one ORF per line)")
    ap.add_argument("--size", type=int, default=PAPER_GENES)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default="yeast_go_paper", help="data config whose annotated genes are sampled")
    args = ap.parse_args(argv)
    population, prov = annotated_genes(args.data)
    try:
        sample = sample_genes(population, args.size, args.seed)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    comments = [f"{args.size} of the {len(population)} annotated ORFs of data={args.data} (gene_universe=annotated), "
                f"random.Random({args.seed}).sample over the sorted names",
                f"GO {prov['go']['data_version']}; annotations {prov['annotations']['source']} "
                f"(sha256 {prov['annotations']['sha256'][:16]}); written by scripts/sample_universe.py"]
    atomic_write_bytes(args.out, format_gene_list(sample, comments).encode())
    print(f"{args.out}: {len(sample)} genes (seed {args.seed}) of {len(population)} annotated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
