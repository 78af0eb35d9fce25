"""`python -m benchmarks.optimizer [--json] [--basis contained|direct] [--repeats N] [--threads N]`:
the optimizer step the training loop takes, in torch's fused form against its default (multi-tensor) form.

For the whole yeast hierarchy (`load_named("yeast_go")`) the stratum-parallel model's parameters (the paper's
contained width basis by default: 140 M) get one fixed random gradient; each optimizer of `train.optimizer`
(adamw, adam, sgd with momentum) takes steps in both forms, interleaved in this process, one warm-up step each,
then best of N. ratio = default_s / fused_s. The training loop (dcell_core/train/loop.py, make_optimizer) uses
the fused form on CPU and CUDA. Every result names its CPU model.

flat_s: the fused form over one tensor holding as many elements as all the parameters together (its own fixed
random gradient), in the same interleaved loop: the same arithmetic and memory traffic without the per-tensor
cost. per_tensor_us = (fused_s - flat_s) / tensors: what each parameter tensor adds to a fused step (the
stratum-parallel model keeps its parameters per shape bucket, several hundred tensors).
"""
from __future__ import annotations

import argparse
import json
import time

from benchmarks.model import cpu_model  # first: it sets THP_MEM_ALLOC_ENABLE before torch is imported

import torch  # noqa: E402

OPTIMIZERS = {
    "adamw": lambda params, fused: torch.optim.AdamW(params, lr=1e-4, fused=fused),
    "adam": lambda params, fused: torch.optim.Adam(params, lr=1e-4, fused=fused),
    "sgd": lambda params, fused: torch.optim.SGD(params, lr=1e-4, momentum=0.9, fused=fused),
}


def measure(basis: str, repeats: int) -> list[dict]:
    from dcell_core.nn import ModelConfig, build_dcell
    from dcell_core.ontology import load_named

    model = build_dcell(load_named("yeast_go"), ModelConfig(width_basis=basis))
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    count = sum(p.numel() for p in params)
    flat = torch.nn.Parameter(torch.zeros(count))
    flat.grad = torch.randn(count, generator=gen) * 1e-3
    rows = []
    for name, make in OPTIMIZERS.items():
        opts = {"default": make(params, False), "fused": make(params, True), "flat": make([flat], True)}
        best = {form: float("inf") for form in opts}
        for rep in range(repeats + 1):
            for form, opt in opts.items():
                started = time.perf_counter()
                opt.step()
                took = time.perf_counter() - started
                if rep > 0:  # the first step allocates the optimizer state
                    best[form] = min(best[form], took)
        rows.append({"optimizer": name, "basis": basis, "params_m": round(count / 1e6, 1), "tensors": len(params),
                     "default_s": round(best["default"], 4), "fused_s": round(best["fused"], 4),
                     "flat_s": round(best["flat"], 4), "ratio": round(best["default"] / best["fused"], 2),
                     "per_tensor_us": round((best["fused"] - best["flat"]) / len(params) * 1e6, 1)})
        del opts
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.optimizer", description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object with a list `rows`")
    ap.add_argument("--basis", choices=("contained", "direct"), default="contained")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    rows = measure(args.basis, args.repeats)
    out = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "rows": rows}
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{out['cpu']}, {out['threads']} threads, best of {args.repeats}")
    print(f"{'optimizer':<10} {'basis':<10} {'params':>8} {'tensors':>8} {'default s':>10} {'fused s':>9} "
          f"{'ratio':>6} {'flat s':>8} {'per tensor us':>14}")
    for r in rows:
        print(f"{r['optimizer']:<10} {r['basis']:<10} {r['params_m']:>7}M {r['tensors']:>8} {r['default_s']:>10.4f} "
              f"{r['fused_s']:>9.4f} {r['ratio']:>6.2f} {r['flat_s']:>8.4f} {r['per_tensor_us']:>14.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
