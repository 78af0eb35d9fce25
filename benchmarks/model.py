"""`python -m benchmarks.model [--json] [--synthetic] [--threads N] [--repeats N] [--device cpu|cuda] [--bf16]`:
DCell training-step speed.

For the whole yeast hierarchy (`load_named("yeast_go")`, or `--synthetic`: a random hierarchy of the same shape)
and both width bases, at batch 32 and 256: one training step (zero_grad, forward, DCell loss, backward, AdamW
step) of the per-term oracle and of the stratum-parallel model holding the same weights, in this process with
the same thread count, interleaved and best of N repeats (the 2 cores are shared; the minimum is the least
disturbed run). The dense floor is one [B, 4096] @ [4096, P/4096] matmul forward + backward (input and weight
requiring grad) with P = the model's parameter count, measured in the same run. floor_ratio = fast_s / floor_s.

The perturbation floor is the dense floor at the effective batch b_eff: the arithmetic of only the perturbed
(term, sample) pairs plus one wild-type row per term. Term t is perturbed in sample b when any gene of its subtree
(its direct genes and those of all its descendants) is nonzero in x[b]; with n_t the perturbed samples of t in the
batch and P_t the oracle parameters of `terms[t]` (embedding / attention parameters, if any, count at the full
batch B), b_eff = ceil(sum_t P_t (n_t + 1) / sum_t P_t). pert_floor_ratio = fast_s / pert_floor_s; it is timed in
the same interleaved loop as the dense floor.

paired_ratio: the median over the N rounds of fast_s / floor_s of the same round, with its quartiles
(paired_ratio_q); the two runs of a round are seconds apart, so a slow phase of a shared VM (for minutes at a
time, 30-50 % slower) moves both, while the best-of ratio can pair a fast phase of one with a slow phase of the
other. It is reported next to floor_ratio, the ratio the targets are stated in.

Genotypes are triple disruptions (3 random genes per sample, `--genes-per-sample`), as in a triple-mutant screen.
The stratum-parallel model applies the gene columns of its first layers from the nonzero genotype entries
(ModelConfig.sparse_gene_inputs, on by default), so its time grows with the disrupted genes per sample;
`--dense-gene-inputs` turns that off (dense matmuls over all gene inputs, as the oracle).

The stratum-parallel models take turns in the place right after the oracle's step, where a step runs slower
(the memory the oracle's step frees is faulted back in), so that best-of-N compares them on equal terms.

`unformed_s` times a third copy of the stratum-parallel model with no stratum above 0 in perturbation form
(`perturbation.max_read_ratio = 0`: stratum 0's compact form only, the model before that form existed), in the
same loop; form_gain = unformed_s / fast_s (absent where the settings take the general path).

Every result names its CPU: `cpu` (model name, family and model numbers), `cpu_flags` (the vector extensions
among sse4_2, avx, avx2, fma, f16c, avx512* and amx* in /proc/cpuinfo) and `torch_cpu_capability` (the kernels
PyTorch dispatches to).

peak_mb: parameters + optimizer state of the stratum-parallel model plus the peak of the bytes allocated during
one step (gradients, activations, temporaries), from the PyTorch profiler's allocation events
(profile_memory=True, an extra untimed step); oracle_peak_mb likewise. On CUDA: torch.cuda.max_memory_allocated
over one step (parameters and optimizer state included).

`--device cuda` runs everything on the GPU (timings synchronize the device); `--bf16` runs the oracle, the model
and the floor under bfloat16 autocast, as `train.bf16=true` does.

Large CPU tensors are freshly mmap'ed by PyTorch on every op, and on this VM page faults cost more than the
arithmetic of a copy; THP_MEM_ALLOC_ENABLE=1 (set here unless already set, for every model and the floor alike)
makes PyTorch request transparent huge pages for them (--no-thp sets it to 0; the platform sets it too, in
dcell_core/__init__.py).
"""
from __future__ import annotations

import os
import sys

if "--no-thp" in sys.argv:  # importing dcell_core would otherwise set it (dcell_core/__init__.py)
    os.environ["THP_MEM_ALLOC_ENABLE"] = "0"
else:
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dcell_core.nn import LossConfig, ModelConfig, build_dcell, dcell_loss, from_oracle  # noqa: E402
from dcell_core.nn.common import TermSizes  # noqa: E402
from dcell_core.nn.oracle import OracleDCell  # noqa: E402
from dcell_core.ontology.hierarchy import Hierarchy  # noqa: E402

YEAST_STRATA = [1156, 727, 451, 292, 203, 138, 86, 58, 37, 20, 13, 9, 6, 2, 1, 1]


def synthetic_hierarchy(num_genes: int = 5983, strata: list[int] = YEAST_STRATA, annotations_per_gene: float = 12.0,
                        seed: int = 0) -> Hierarchy:
    """Random DAG with yeast_go's stratum sizes: every term of stratum s > 0 has a child in s - 1 plus ~1
    more from any lower stratum; orphans are attached to a random term above; genes are annotated to
    ~annotations_per_gene terms each, skewed toward low strata; every stratum-0 term gets >= 3 genes."""
    rng = np.random.default_rng(seed)
    ids = [[f"S{s:02d}_{i:04d}" for i in range(n)] for s, n in enumerate(strata)]
    children: dict[str, list[str]] = {t: [] for level in ids for t in level}
    for s in range(1, len(strata)):
        lower = [t for level in ids[:s] for t in level]
        for t in ids[s]:
            kids = {ids[s - 1][rng.integers(len(ids[s - 1]))]}
            kids |= {lower[i] for i in rng.integers(len(lower), size=rng.poisson(1.0))}
            children[t] = sorted(kids)
    has_parent = {c for kids in children.values() for c in kids}
    for s in range(len(strata) - 1):
        upper = [t for level in ids[s + 1:] for t in level]
        for t in ids[s]:
            if t not in has_parent:
                children[upper[rng.integers(len(upper))]].append(t)
    genes = [f"G{i:05d}" for i in range(num_genes)]
    weights = np.concatenate([np.full(n, 1.0 / (1 + s)) for s, n in enumerate(strata)])
    weights /= weights.sum()
    terms = [t for level in ids for t in level]
    direct: dict[str, set[str]] = {t: set() for t in terms}
    for g in genes:
        k = min(len(terms), 1 + rng.poisson(annotations_per_gene - 1))
        for i in rng.choice(len(terms), size=k, replace=False, p=weights):
            direct[terms[i]].add(g)
    for t in ids[0]:
        while len(direct[t]) < 3:
            direct[t].add(genes[rng.integers(num_genes)])
    return Hierarchy.from_mappings(children, {t: sorted(g) for t, g in direct.items() if g},
                                   provenance={"fingerprint": f"synthetic-yeast-shape-{seed}"})


def _state_mb(model: torch.nn.Module, opt: torch.optim.Optimizer) -> float:
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    state = sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values()
                if torch.is_tensor(v) and v.dim() > 0)
    return (params + state) / 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Trainer:
    def __init__(self, model: torch.nn.Module, bf16: bool = False):
        self.model = model
        self.device = next(model.parameters()).device
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, fused=True)
        self.loss_cfg = LossConfig()
        self.bf16 = bf16

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        _sync(self.device)
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            total, _ = dcell_loss(self.model(x), y, self.loss_cfg)
        total.backward()
        self.opt.step()
        _sync(self.device)
        return time.perf_counter() - t0

    def peak_mb(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.opt.zero_grad(set_to_none=True)  # gradients are allocated inside the step and counted
        gc.collect()
        if self.device.type == "cuda":  # everything on the device: parameters, optimizer state, the step
            torch.cuda.reset_peak_memory_stats(self.device)
            self.step(x, y)
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            self.step(x, y)
        events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                        if e.name() == "[memory]")
        live = np.cumsum([n for _, n in events]) if events else np.zeros(1)
        return _state_mb(self.model, self.opt) + max(0.0, float(live.max())) / 2**20


def floor_step(num_weights: int, batch: int, device: torch.device = torch.device("cpu"), bf16: bool = False):
    weight = torch.randn(4096, math.ceil(num_weights / 4096), device=device, requires_grad=True)
    inp = torch.randn(batch, 4096, device=device, requires_grad=True)

    def run() -> float:
        _sync(device)
        t0 = time.perf_counter()
        weight.grad = inp.grad = None
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = inp @ weight
        out.backward(torch.ones_like(out))
        _sync(device)
        return time.perf_counter() - t0

    return run


def perturbed_counts(sizes: TermSizes, x: torch.Tensor) -> np.ndarray:
    """n_t [T]: the samples of x [B, G] in which any gene of term t's subtree is nonzero."""
    subtree = sizes.subtree_matrix()  # [T, G]
    hit = x.detach().cpu().numpy() != 0  # [B, G]
    cols = np.flatnonzero(hit.any(axis=0))  # only the genes disrupted somewhere in the batch
    return ((subtree[:, cols].astype(np.int32) @ hit[:, cols].T.astype(np.int32)) > 0).sum(axis=1)


def effective_batch(oracle: OracleDCell, x: torch.Tensor) -> int:
    """b_eff = ceil(sum_t P_t (n_t + 1) / sum_t P_t), parameters outside `oracle.terms` at the full batch."""
    per_term = np.array([sum(p.numel() for p in term.parameters()) for term in oracle.terms])
    total = sum(p.numel() for p in oracle.parameters())
    work = int(per_term @ (perturbed_counts(oracle.sizes, x) + 1)) + (total - int(per_term.sum())) * x.shape[0]
    return -(-work // total)


def paired_ratio(num: list[float], den: list[float]) -> tuple[float, float, float]:
    """Median and quartiles of num[i] / den[i] over the rounds i (both lists in round order)."""
    if len(num) != len(den) or not num:
        raise ValueError(f"paired_ratio needs two equally long, non-empty lists, got {len(num)} and {len(den)}")
    q25, median, q75 = np.percentile(np.asarray(num) / np.asarray(den), [25, 50, 75])
    return float(median), float(q25), float(q75)


def genotype_batch(num_genes: int, batch: int, seed: int, per_sample: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_sample` random disrupted genes per sample (3: triple disruptions) and random targets."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(batch, num_genes)
    x[torch.arange(batch).repeat_interleave(per_sample),
      torch.randint(0, num_genes, (per_sample * batch,), generator=g)] = 1.0
    return x, torch.randn(batch, generator=g)


def bench_basis(h: Hierarchy, basis: str, batches: list[int], repeats: int, log, per_sample: int = 3,
                sparse_gene_inputs: bool = True, device: torch.device = torch.device("cpu"),
                bf16: bool = False) -> list[dict]:
    cfg = ModelConfig(width_basis=basis, sparse_gene_inputs=sparse_gene_inputs)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    oracle = build_dcell(h, cfg, fast=False)
    fast = from_oracle(oracle).to(device)
    oracle.to(device)
    log(f"[{basis}] built oracle + stratum-parallel model in {time.perf_counter() - t0:.1f} s; "
        f"plan {fast.plan.stats}")
    num_weights = sum(p.numel() for p in oracle.parameters())
    trainers = {"oracle": Trainer(oracle, bf16), "fast": Trainer(fast, bf16)}
    if fast.perturbation is not None:  # the same model with no stratum above 0 in perturbation form
        unformed = from_oracle(oracle).to(device)
        unformed.perturbation.max_read_ratio = 0.0
        trainers["unformed"] = Trainer(unformed, bf16)
    rows = []
    for batch in batches:
        x, y = (t.to(device) for t in genotype_batch(h.num_genes, batch, seed=batch, per_sample=per_sample))
        b_eff = effective_batch(oracle, x)
        floors = {"floor": floor_step(num_weights, batch, device, bf16),
                  "pert_floor": floor_step(num_weights, b_eff, device, bf16)}
        for tr in trainers.values():
            tr.step(x, y)  # warm-up: optimizer state, allocator
        for run in floors.values():
            run()
        times = {name: [] for name in [*trainers, *floors]}
        models = [name for name in trainers if name != "oracle"]
        for i in range(repeats):
            # the step right after the oracle's runs slower (the oracle frees ~GBs the next step faults back in):
            # the stratum-parallel models take turns in that place
            for name in ["oracle", *models[i % len(models):], *models[:i % len(models)]]:
                times[name].append(trainers[name].step(x, y))
            for name, run in floors.items():
                times[name].append(run())
        best = {k: min(v) for k, v in times.items()}
        paired, q25, q75 = paired_ratio(times["fast"], times["floor"])
        row = {"width_basis": basis, "batch": batch, "parameters": num_weights,
               "oracle_s": best["oracle"], "fast_s": best["fast"], "floor_s": best["floor"],
               "b_eff": b_eff, "pert_floor_s": best["pert_floor"],
               "fast_median_s": float(np.median(times["fast"])),
               "speedup": best["oracle"] / best["fast"], "floor_ratio": best["fast"] / best["floor"],
               "paired_ratio": paired, "paired_ratio_q": [q25, q75],
               "pert_floor_ratio": best["fast"] / best["pert_floor"],
               "unformed_s": best.get("unformed"), "form_gain": best["unformed"] / best["fast"] if "unformed" in best
               else None,
               "samples_per_s": batch / best["fast"], "oracle_samples_per_s": batch / best["oracle"],
               "peak_mb": trainers["fast"].peak_mb(x, y), "oracle_peak_mb": trainers["oracle"].peak_mb(x, y)}
        log(f"[{basis}] batch {batch}: oracle {row['oracle_s']:.3f} s, fast {row['fast_s']:.3f} s, floor "
            f"{row['floor_s']:.3f} s, speedup {row['speedup']:.1f}x, floor ratio {row['floor_ratio']:.2f} "
            f"(paired {paired:.2f}, quartiles {q25:.2f}-{q75:.2f}), "
            f"b_eff {b_eff}: pert floor {row['pert_floor_s']:.3f} s, pert ratio {row['pert_floor_ratio']:.2f}"
            + (f"; unformed {row['unformed_s']:.3f} s, form gain {row['form_gain']:.2f}" if row["form_gain"] else ""))
        rows.append(row)
        del floors
        gc.collect()
    return rows


def _cpuinfo(*keys: str) -> list[str]:
    """The values of the first line of each of `keys` in /proc/cpuinfo, read in one pass."""
    found: dict[str, str] = {}
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            name, _, value = line.partition(":")
            found.setdefault(name.strip(), value.strip())
    missing = [k for k in keys if k not in found]
    if missing:
        raise RuntimeError(f"no {missing[0]!r} line in /proc/cpuinfo")
    return [found[k] for k in keys]


def cpu_model() -> str:
    """The model name with its family and model numbers: VMs name several CPU generations alike ("AMD EPYC")."""
    name, family, model = _cpuinfo("model name", "cpu family", "model")
    return f"{name} (family {family}, model {model})"


def cpu_flags() -> list[str]:
    """The vector extensions among /proc/cpuinfo's flags: sse4_2, avx, avx2, fma, f16c, avx512*, amx*."""
    return sorted(f for f in _cpuinfo("flags")[0].split()
                  if f in ("sse4_2", "avx", "avx2", "fma", "f16c") or f.startswith(("avx512", "amx")))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object with a list `rows`")
    ap.add_argument("--synthetic", action="store_true", help="random hierarchy of yeast_go's shape")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bases", default="contained,direct")
    ap.add_argument("--batches", default="32,256")
    ap.add_argument("--genes-per-sample", type=int, default=3, help="disrupted genes per genotype")
    ap.add_argument("--dense-gene-inputs", action="store_true", help="ModelConfig.sparse_gene_inputs=False")
    ap.add_argument("--no-thp", action="store_true", help="set THP_MEM_ALLOC_ENABLE=0")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the oracle, the model and the floor")
    args = ap.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        ap.error(f"--device {args.device!r}: {e}")
    if device.type not in ("cpu", "cuda"):
        ap.error(f"--device {args.device!r}: only cpu and cuda are supported")
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device {args.device!r}: no CUDA device is available")
    torch.set_num_threads(args.threads)
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if args.json else print
    if args.synthetic:
        h, name = synthetic_hierarchy(), "synthetic (yeast_go shape)"
    else:
        from dcell_core.ontology import load_named

        h, name = load_named("yeast_go"), "yeast_go"
    log(f"hierarchy {name}: {h.num_terms} terms, {h.num_genes} genes, strata {h.stratum_sizes()}")
    load_before = os.getloadavg()
    rows = []
    for basis in args.bases.split(","):
        rows += bench_basis(h, basis, [int(b) for b in args.batches.split(",")], args.repeats, log,
                            args.genes_per_sample, not args.dense_gene_inputs, device, args.bf16)
    result = {"hierarchy": name, "fingerprint": h.fingerprint, "terms": h.num_terms, "genes": h.num_genes,
              "threads": args.threads, "device": str(device), "bf16": args.bf16,
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "cpu": cpu_model(),
              "cpu_flags": cpu_flags(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "cores": os.cpu_count(), "torch": torch.__version__,
              "thp_mem_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE", ""), "repeats": args.repeats,
              "genes_per_sample": args.genes_per_sample, "sparse_gene_inputs": not args.dense_gene_inputs,
              "load_average_before_after": [load_before[0], os.getloadavg()[0]], "rows": rows}
    if args.json:
        print(json.dumps(result))
    else:
        where = f"{result['gpu']}, " if result["gpu"] else f"{args.threads} threads, "
        print(f"\n{name}, {where}{result['cpu']} (torch CPU capability {result['torch_cpu_capability']}; "
              f"{' '.join(result['cpu_flags'])}){', bf16 autocast' if args.bf16 else ''}, best of {args.repeats}")
        print("| basis | batch | params | oracle s | unformed s | fast s | floor s | pert floor s | speedup "
              "| form gain | floor ratio | paired ratio (quartiles) | pert ratio | samples/s | peak MB |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            unformed = (f"{r['unformed_s']:.3f} |", f"{r['form_gain']:.2f} |") if r["form_gain"] else ("- |", "- |")
            print(f"| {r['width_basis']} | {r['batch']} | {r['parameters'] / 1e6:.1f} M | {r['oracle_s']:.3f} | "
                  f"{unformed[0]} {r['fast_s']:.3f} | {r['floor_s']:.3f} | {r['pert_floor_s']:.3f} | "
                  f"{r['speedup']:.1f} | {unformed[1]} {r['floor_ratio']:.2f} | {r['paired_ratio']:.2f} "
                  f"({r['paired_ratio_q'][0]:.2f}-{r['paired_ratio_q'][1]:.2f}) | {r['pert_floor_ratio']:.2f} | "
                  f"{r['samples_per_s']:.0f} | {r['peak_mb']:.0f} |")


if __name__ == "__main__":
    main()
