"""The immutable DCell hierarchy: terms, their child terms, directly annotated genes and strata.

Terms are indexed in stratum order (stratum 0 first, ties by term id), so the root is the last term and
every term's children have smaller indices. Genes are indexed in sorted order of their names.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Hashable, Iterable, Mapping, Sequence, TypeVar

Node = TypeVar("Node", bound=Hashable)


class HierarchyError(ValueError):
    """A hierarchy that violates a structural invariant; the message names the offending term or gene."""


def paper_width(contained: int, ratio: float = 0.3, min_width: int = 20) -> int:
    """DCell width rule: max(min_width, ceil(ratio x genes)); `contained` may be direct genes too."""
    return max(min_width, math.ceil(ratio * contained - 1e-9))


@dataclass(frozen=True)
class Hierarchy:
    terms: tuple[str, ...]  # term ids, indexed by term index (stratum order, root last)
    names: tuple[str, ...]  # human-readable term names, same index
    children: tuple[tuple[int, ...], ...]  # child term indices of each term (sorted)
    direct_genes: tuple[tuple[int, ...], ...]  # gene indices annotated directly to each term (sorted)
    genes: tuple[str, ...]  # gene names (systematic ORF ids), indexed by gene index
    provenance: Mapping = field(default_factory=dict, compare=False)  # sources, filters, stats, fingerprint
    # Derived on construction (validated, never passed in):
    strata: tuple[int, ...] = field(init=False)
    contained_counts: tuple[int, ...] = field(init=False)
    root: int = field(init=False)

    def __post_init__(self) -> None:
        n_terms, n_genes = len(self.terms), len(self.genes)
        if n_terms == 0:
            raise HierarchyError("hierarchy has no terms")
        for name, seq in (("names", self.names), ("children", self.children), ("direct_genes", self.direct_genes)):
            if len(seq) != n_terms:
                raise HierarchyError(f"{name} has {len(seq)} entries for {n_terms} terms")
        if len(set(self.terms)) != n_terms:
            dup = sorted({t for t in self.terms if self.terms.count(t) > 1})
            raise HierarchyError(f"duplicate term ids: {dup[:5]}")
        if len(set(self.genes)) != n_genes:
            dup = sorted({g for g in self.genes if self.genes.count(g) > 1})
            raise HierarchyError(f"duplicate gene names: {dup[:5]}")
        n_parents = [0] * n_terms
        for t, kids in enumerate(self.children):
            for c in kids:
                if not 0 <= c < n_terms:
                    raise HierarchyError(f"term {self.terms[t]} has child index {c} out of range [0, {n_terms})")
                if c == t:
                    raise HierarchyError(f"term {self.terms[t]} is its own child")
                n_parents[c] += 1
            if len(set(kids)) != len(kids):
                raise HierarchyError(f"term {self.terms[t]} lists a child twice")
        annotated = [False] * n_genes
        for t, gs in enumerate(self.direct_genes):
            for g in gs:
                if not 0 <= g < n_genes:
                    raise HierarchyError(f"term {self.terms[t]} has gene index {g} out of range [0, {n_genes})")
                annotated[g] = True
            if len(set(gs)) != len(gs):
                raise HierarchyError(f"term {self.terms[t]} lists a gene twice")
            if not gs and not self.children[t]:
                raise HierarchyError(f"term {self.terms[t]} has neither child terms nor genes")
        if not all(annotated):
            raise HierarchyError(f"gene {self.genes[annotated.index(False)]} is annotated to no term")
        roots = [t for t in range(n_terms) if n_parents[t] == 0]
        if len(roots) != 1:
            shown = ", ".join(self.terms[t] for t in roots[:5])
            raise HierarchyError(f"hierarchy needs exactly one root, found {len(roots)}: {shown}")
        strata = _strata(self.terms, self.children)
        reached = reachable_from(roots[0], self.children)
        if len(reached) != n_terms:
            lost = next(t for t in range(n_terms) if t not in reached)
            raise HierarchyError(f"term {self.terms[lost]} does not reach the root {self.terms[roots[0]]}")
        object.__setattr__(self, "strata", strata)
        object.__setattr__(self, "root", roots[0])
        object.__setattr__(self, "contained_counts", tuple(len(s) for s in self.contained_gene_sets()))

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def from_mappings(
        cls,
        children: Mapping[str, Iterable[str]],
        direct_genes: Mapping[str, Iterable[str]],
        names: Mapping[str, str] | None = None,
        provenance: Mapping | None = None,
    ) -> "Hierarchy":
        """Build from term-id keyed maps; orders terms by (stratum, id) and genes by name."""
        term_ids = sorted(set(children) | set(direct_genes) | {c for kids in children.values() for c in kids})
        kids_by_id = {t: sorted(set(children.get(t, ()))) for t in term_ids}
        strata = _strata_by_id(kids_by_id)
        order = sorted(term_ids, key=lambda t: (strata[t], t))
        index = {t: i for i, t in enumerate(order)}
        genes = sorted({g for gs in direct_genes.values() for g in gs})
        gindex = {g: i for i, g in enumerate(genes)}
        names = names or {}
        return cls(
            terms=tuple(order),
            names=tuple(names.get(t, t) for t in order),
            children=tuple(tuple(sorted(index[c] for c in kids_by_id[t])) for t in order),
            direct_genes=tuple(tuple(sorted({gindex[g] for g in direct_genes.get(t, ())})) for t in order),
            genes=tuple(genes),
            provenance=dict(provenance or {}),
        )

    # ---- queries ------------------------------------------------------------------------------------
    @property
    def num_terms(self) -> int:
        return len(self.terms)

    @property
    def num_genes(self) -> int:
        return len(self.genes)

    @property
    def num_strata(self) -> int:
        return max(self.strata) + 1

    @property
    def fingerprint(self) -> str:
        return str(self.provenance.get("fingerprint", ""))

    @property
    def term_index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.terms)}

    @property
    def gene_index(self) -> dict[str, int]:
        return {g: i for i, g in enumerate(self.genes)}

    def parents(self) -> tuple[tuple[int, ...], ...]:
        out: list[list[int]] = [[] for _ in self.terms]
        for t, kids in enumerate(self.children):
            for c in kids:
                out[c].append(t)
        return tuple(tuple(p) for p in out)

    def stratum_sizes(self) -> list[int]:
        sizes = [0] * self.num_strata
        for s in self.strata:
            sizes[s] += 1
        return sizes

    def contained_gene_sets(self) -> list[frozenset[int]]:
        """Genes annotated to each term or any descendant (children precede parents in index order)."""
        out: list[frozenset[int]] = [frozenset()] * self.num_terms
        for t in sorted(range(self.num_terms), key=self.strata.__getitem__):
            acc = set(self.direct_genes[t])
            for c in self.children[t]:
                acc |= out[c]
            out[t] = frozenset(acc)
        return out

    def widths(self, basis: str = "contained", ratio: float = 0.3, min_width: int = 20) -> list[int]:
        """Neurons per term under the paper's rule; basis 'contained' (paper) or 'direct'."""
        if basis == "contained":
            counts = self.contained_counts
        elif basis == "direct":
            counts = tuple(len(g) for g in self.direct_genes)
        else:
            raise ValueError(f"width basis must be 'contained' or 'direct', got {basis!r}")
        return [paper_width(c, ratio, min_width) for c in counts]

    def parameter_count(self, basis: str = "contained", ratio: float = 0.3, min_width: int = 20) -> int:
        """Weights and biases of every term's linear layer, its auxiliary head and the root head."""
        widths = self.widths(basis, ratio, min_width)
        total = 0
        for t in range(self.num_terms):
            fan_in = len(self.direct_genes[t]) + sum(widths[c] for c in self.children[t])
            total += widths[t] * (fan_in + 1) + widths[t] + 1  # linear layer + auxiliary (or root) head
        return total

    def summary(self, basis: str = "contained", ratio: float = 0.3, min_width: int = 20) -> dict:
        edges = sum(len(k) for k in self.children)
        widths = self.widths(basis, ratio, min_width)
        return {
            "root": self.terms[self.root],
            "terms": self.num_terms,
            "genes": self.num_genes,
            "term_edges": edges,
            "annotations": sum(len(g) for g in self.direct_genes),
            "strata": self.stratum_sizes(),
            "neurons": sum(widths),
            "min_width": min(widths),
            "max_width": max(widths),
            "root_width": widths[self.root],
            "width_basis": basis,
            "parameters": self.parameter_count(basis, ratio, min_width),
            "fingerprint": self.fingerprint,
        }

    # ---- conversions --------------------------------------------------------------------------------
    def to_hetero_data(self):
        """torch-geometric HeteroData: node types gene/term; edges gene-annotated_to-term, term-child_of-term."""
        import torch
        from torch_geometric.data import HeteroData

        data = HeteroData()
        data["gene"].num_nodes = self.num_genes
        data["term"].num_nodes = self.num_terms
        data["term"].stratum = torch.tensor(self.strata, dtype=torch.long)
        data["term"].contained = torch.tensor(self.contained_counts, dtype=torch.long)
        ann = [(g, t) for t, gs in enumerate(self.direct_genes) for g in gs]
        data["gene", "annotated_to", "term"].edge_index = torch.tensor(ann, dtype=torch.long).reshape(-1, 2).T
        kid = [(c, t) for t, kids in enumerate(self.children) for c in kids]
        data["term", "child_of", "term"].edge_index = torch.tensor(kid, dtype=torch.long).reshape(-1, 2).T
        return data

    def to_json(self) -> str:
        return json.dumps(
            {
                "terms": self.terms,
                "names": self.names,
                "children": self.children,
                "direct_genes": self.direct_genes,
                "genes": self.genes,
                "provenance": self.provenance,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> "Hierarchy":
        d = json.loads(text)
        return cls(
            terms=tuple(d["terms"]),
            names=tuple(d["names"]),
            children=tuple(tuple(k) for k in d["children"]),
            direct_genes=tuple(tuple(g) for g in d["direct_genes"]),
            genes=tuple(d["genes"]),
            provenance=d["provenance"],
        )


def _strata(terms: Sequence[str], children: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """stratum(t) = 0 without children, else 1 + max over children; raises on a cycle, naming a term on it."""
    n = len(terms)
    stratum = [-1] * n
    state = [0] * n  # 0 new, 1 on stack, 2 done
    for start in range(n):
        if state[start]:
            continue
        stack = [(start, iter(children[start]))]
        state[start] = 1
        while stack:
            node, it = stack[-1]
            advanced = False
            for c in it:
                if state[c] == 1:
                    raise HierarchyError(f"cycle in hierarchy through term {terms[c]}")
                if state[c] == 0:
                    state[c] = 1
                    stack.append((c, iter(children[c])))
                    advanced = True
                    break
            if not advanced:
                stack.pop()
                state[node] = 2
                stratum[node] = 1 + max((stratum[c] for c in children[node]), default=-1)
    return tuple(stratum)


def _strata_by_id(children: Mapping[str, Sequence[str]]) -> dict[str, int]:
    ids = list(children)
    index = {t: i for i, t in enumerate(ids)}
    strata = _strata(ids, [[index[c] for c in children[t]] for t in ids])
    return dict(zip(ids, strata))


def reachable_from(root: Node, children: Mapping[Node, Iterable[Node]] | Sequence[Iterable[Node]]) -> set[Node]:
    """`root` and every node below it; `children[node]` lists a node's children (term ids or indices)."""
    seen = {root}
    stack = [root]
    while stack:
        for c in children[stack.pop()]:
            if c not in seen:
                seen.add(c)
                stack.append(c)
    return seen
