"""`python -m platform.predict (--checkpoint DIR | --model models:/NAME@ALIAS) (--genes G1,G2 ... |
--input FILE --output OUT) [--subsystems K] [--skip-unknown] [--fingerprint FP] [data overrides ...]`:
predicted phenotypes of genotypes from a production checkpoint, and the subsystems they change most.

A genotype is a set of disrupted genes: `--genes YAL001C,YBR001C` is one (repeat --genes for more), an input
table has one per row (a `genes` column of ORFs joined by '+'). With --subsystems K, each genotype also gets the
K GO terms whose neuron states move farthest from the wild type's. Gene names the model does not know are an
error listing them, or with --skip-unknown those genotypes get no prediction. Hydra data overrides (e.g.
data=yeast_dna_repair) name the data the model is meant for: the checkpoint is refused unless its hierarchy
fingerprint is that data's. See docs/promotion.md.
"""
import argparse
import os
import sys
import tempfile
from pathlib import Path

from dcell_core.cli import USAGE_EXIT, compose_or_exit


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m platform.predict", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="production checkpoint directory (e.g. checkpoints/production)")
    src.add_argument("--model", help="registered model: models:/NAME@ALIAS or models:/NAME/VERSION")
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--genes", action="append", help="one genotype: disrupted ORFs separated by commas")
    what.add_argument("--input", type=Path, help="CSV/TSV table with a genes column (ORFs joined by '+')")
    ap.add_argument("--output", type=Path, help="CSV/TSV file for the predictions of --input")
    ap.add_argument("--genes-column", default="genes", help="gene column of --input (default: genes)")
    ap.add_argument("--separator", default="+", help="separator of the ORFs in a genes cell (default: +)")
    ap.add_argument("--subsystems", type=int, metavar="K", help="also rank the K subsystems that change most")
    ap.add_argument("--skip-unknown", action="store_true", help="give genotypes with unknown genes no prediction "
                                                                "instead of failing")
    ap.add_argument("--fingerprint", help="refuse the checkpoint unless its hierarchy has this fingerprint")
    ap.add_argument("--batch-size", type=int, default=1024, help="genotypes per forward pass")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI for --model (default: the project's mlflow.db)")
    ap.add_argument("--project-dir", type=Path, default=Path.cwd(), help="where mlflow.db lives (default: cwd)")
    ap.add_argument("overrides", nargs="*", help="Hydra data overrides naming the data to check the checkpoint "
                                                 "against (e.g. data=yeast_dna_repair)")
    return ap


def main(argv=None) -> int:
    args = parser().parse_intermixed_args(argv)
    if args.input is not None and args.output is None:
        return _usage("--input needs --output (the table of predictions to write)")
    if args.output is not None and args.input is None:
        return _usage("--output goes with --input")
    if args.subsystems is not None and args.subsystems < 1:
        return _usage(f"--subsystems must be >= 1, got {args.subsystems}")
    if args.batch_size < 1:
        return _usage(f"--batch-size must be >= 1, got {args.batch_size}")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from dcell_core.genotypes.readers import GenotypeFileError
    from dcell_core.serving.checkpoint import CheckpointError
    from dcell_core.serving.inference import PredictInputError
    from dcell_core.serving.selection import PromotionError

    # Only errors about what the user gave are usage errors; any other exception (a ValueError from the model
    # code included) is a bug and ends with its traceback.
    try:
        hierarchy = _data_hierarchy(args.overrides) if args.overrides else None
        with tempfile.TemporaryDirectory(prefix="dcell-predict-") as tmp:
            ckpt = _load(args, hierarchy, Path(tmp))
            if args.input is not None:
                _predict_table(args, ckpt)
            else:
                _predict_genes(args, ckpt)
    except (PredictInputError, CheckpointError, GenotypeFileError, PromotionError) as e:
        return _usage(str(e))
    return 0


def _usage(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return USAGE_EXIT


def _data_hierarchy(overrides):
    from dcell_core.serving.inference import PredictInputError
    from dcell_core.serving.promote import rebuild_hierarchy

    cfg = compose_or_exit(overrides)
    try:
        return rebuild_hierarchy(cfg)
    except (FileNotFoundError, ValueError) as e:
        # The hierarchy builder reports bad data settings and input files this way (as `python -m
        # dcell_core.ontology` does): here they come from the overrides the user gave.
        raise PredictInputError(f"data overrides {' '.join(overrides)}: {e}") from e


def _load(args, hierarchy, tmp: Path):
    from dcell_core.serving.checkpoint import load_checkpoint

    if args.checkpoint is not None:
        path = args.checkpoint
    else:
        from dcell_core.serving import registry
        from dcell_core.serving.inference import PredictInputError
        from dcell_core.serving.selection import open_store, tracking_uri_for

        uri = tracking_uri_for(args.tracking_uri, args.project_dir)
        client = open_store(uri)
        try:
            version = registry.resolve_model_uri(client, args.model)
        except ValueError as e:  # its way of saying: no such model URI, or not in the registry
            raise PredictInputError(str(e)) from e
        path = registry.download_version(client, version, uri, tmp / "model")
        print(f"{args.model}: {version.name} version {version.version} (run {version.run_id})", file=sys.stderr)
    ckpt = load_checkpoint(path, hierarchy=hierarchy, fingerprint=args.fingerprint)
    src, metric = ckpt.info["source"], ckpt.info["metric"]
    print(f"model: hierarchy {ckpt.fingerprint} ({ckpt.hierarchy.num_terms} terms, {ckpt.hierarchy.num_genes} genes), "
          f"run {src['run_id']}, {metric['name']} {metric['value']:.4g}", file=sys.stderr)
    return ckpt


def _run(args, ckpt, genotypes, labels: list[str], source: str):
    """(predictions with None for skipped genotypes, unknown genes per genotype, top subsystems or None)."""
    from dcell_core.serving.inference import (UnknownGenesError, encode_genotypes, first_unknown, predict,
                                              subsystem_changes, top_subsystems, unknown_genes)

    unknown = unknown_genes(genotypes, ckpt.hierarchy)
    if any(unknown) and not args.skip_unknown:
        raise UnknownGenesError(first_unknown(genotypes, ckpt.hierarchy, labels), source)
    keep = [i for i, u in enumerate(unknown) if not u]
    x = encode_genotypes([genotypes[i] for i in keep], ckpt.hierarchy)
    kept_pred = predict(ckpt.model, x, args.batch_size)
    preds: list = [None] * len(genotypes)
    for i, p in zip(keep, kept_pred.tolist()):
        preds[i] = p
    subs = None
    if args.subsystems:
        ranked = top_subsystems(subsystem_changes(ckpt.model, x, args.batch_size), ckpt.hierarchy, args.subsystems)
        subs = [[] for _ in genotypes]
        for i, r in zip(keep, ranked):
            subs[i] = r
    if len(keep) < len(genotypes):
        print(f"skipped {len(genotypes) - len(keep)} genotype(s) naming genes not in the model: "
              f"{', '.join(sorted({g for u in unknown for g in u}))}", file=sys.stderr)
    return preds, unknown, subs


def _predict_genes(args, ckpt) -> None:
    from dcell_core.serving.tables import format_subsystems, parse_gene_list

    genotypes = [parse_gene_list(g) for g in args.genes]
    labels = [f"--genes {','.join(g)}" for g in genotypes]
    preds, unknown, subs = _run(args, ckpt, genotypes, labels, "--genes")
    print("genotype\tprediction")
    for i, genes in enumerate(genotypes):
        label = "+".join(genes)
        if preds[i] is None:
            print(f"{label}\tskipped (unknown: {', '.join(unknown[i])})")
            continue
        print(f"{label}\t{preds[i]!r}")
        if subs is not None:
            print("  subsystems that change most against the wild type:")
            print("\n".join(format_subsystems(subs[i])))


def _predict_table(args, ckpt) -> None:
    from dcell_core.serving.tables import check_output, predictions_table, read_genotypes, write_table

    check_output(args.output)  # a bad output name or directory fails before any work
    rows, lines, genotypes = read_genotypes(args.input, args.genes_column, args.separator)
    preds, unknown, subs = _run(args, ckpt, genotypes, [f"line {n}" for n in lines], str(args.input))
    write_table(predictions_table(rows, preds, unknown, subs, args.subsystems or 0), args.output)
    done = sum(p is not None for p in preds)
    print(f"wrote {done} prediction(s) for {len(genotypes)} genotype(s) to {args.output}")


if __name__ == "__main__":
    sys.exit(main())
