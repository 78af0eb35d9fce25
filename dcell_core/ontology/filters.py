"""DCell filters: named steps over a mutable term graph with annotation records, applied in a recorded order.

Removing a term never loses genes: its children reconnect to all of its parents, and its directly annotated
genes move to all of its parents, so every remaining term keeps the genes it contains.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import networkx as nx


class EmptyHierarchyError(ValueError):
    """The filters removed every term (or the root)."""


@dataclass
class FilterState:
    children: dict[str, set[str]]  # term -> child terms
    parents: dict[str, set[str]]  # term -> parent terms
    records: dict[str, set[tuple[str, str, str | None]]]  # term -> direct (gene, evidence, date) records
    root: str
    has_dates: bool

    def terms(self) -> int:
        return len(self.children)

    def annotation_count(self) -> int:
        return sum(len({g for g, _, _ in recs}) for recs in self.records.values())

    def remove_term(self, t: str) -> None:
        """Delete t; its children join all its parents, its direct records move to all its parents."""
        kids, ups, recs = self.children.pop(t), self.parents.pop(t), self.records.pop(t)
        for p in ups:
            self.children[p].discard(t)
            self.children[p] |= kids
            self.records[p] |= recs
        for c in kids:
            self.parents[c].discard(t)
            self.parents[c] |= ups

    def post_order(self) -> list[str]:
        """Terms with every child before its parents (iterative DFS from the root)."""
        order, seen, stack = [], set(), [(self.root, False)]
        while stack:
            t, done = stack.pop()
            if done:
                order.append(t)
                continue
            if t in seen:
                continue
            seen.add(t)
            stack.append((t, True))
            stack.extend((c, False) for c in self.children[t] if c not in seen)
        return order

    def contained(self) -> dict[str, int]:
        """Contained genes of every term as a bitset (Python int)."""
        index: dict[str, int] = {}
        bits: dict[str, int] = {}
        for t in self.post_order():
            mask = 0
            for g, _, _ in self.records[t]:
                mask |= 1 << index.setdefault(g, len(index))
            for c in self.children[t]:
                mask |= bits[c]
            bits[t] = mask
        return bits


def date_filter(state: FilterState, date_cutoff: str) -> None:
    if not state.has_dates:
        raise ValueError(f"date filter (date_cutoff={date_cutoff}) needs an annotation source with dates; "
                         "this one has none (SGD GenBank qualifiers carry no dates: use a GAF file)")
    cutoff = date_cutoff.replace("-", "")
    for t, recs in state.records.items():
        state.records[t] = {r for r in recs if r[2] is not None and r[2] <= cutoff}


def evidence_filter(state: FilterState, exclude_evidence: list[str]) -> None:
    excluded = set(exclude_evidence)
    for t, recs in state.records.items():
        state.records[t] = {r for r in recs if r[1] not in excluded}


def containment_filter(state: FilterState, min_genes: int) -> None:
    """Remove terms containing fewer than min_genes genes (the records hold only the gene universe's genes)."""
    counts = {t: b.bit_count() for t, b in state.contained().items()}
    if counts[state.root] < min_genes:
        raise EmptyHierarchyError(f"root {state.root} contains {counts[state.root]} genes, fewer than "
                                  f"min_genes={min_genes}: the hierarchy is empty after the containment filter")
    for t in [t for t, n in counts.items() if n < min_genes]:
        state.remove_term(t)


def redundancy_filter(state: FilterState) -> None:
    """Remove every term whose contained genes equal those of one of its children.

    One pass is exact: removals keep every contained set unchanged. The root is never removed; when it
    equals a child, that child is merged into the root instead, which removes the same redundant level.
    """
    bits = state.contained()
    redundant = [t for t in state.post_order() if any(bits[c] == bits[t] for c in state.children[t])]
    for t in redundant:
        if t != state.root:
            state.remove_term(t)
    if bits[state.root] in {bits[c] for c in state.children[state.root]}:
        while True:
            same = sorted(c for c in state.children[state.root] if bits[c] == bits[state.root])
            if not same:
                break
            state.remove_term(same[0])


def transitive_reduction(state: FilterState) -> None:
    """Drop an edge parent -> child when the child is also reachable through another child of the parent."""
    g = nx.DiGraph((p, c) for p, kids in state.children.items() for c in kids)
    g.add_nodes_from(state.children)
    reduced = nx.transitive_reduction(g)
    for t in state.children:
        state.children[t] = set(reduced.successors(t))
        state.parents[t] = set(reduced.predecessors(t))


def drop_empty(state: FilterState) -> None:
    """Remove terms that contain no gene at all (nothing to compute); always the last step."""
    bits = state.contained()
    if bits[state.root] == 0:
        raise EmptyHierarchyError(f"root {state.root} contains no gene after the filters: the hierarchy is empty")
    for t in [t for t, b in bits.items() if b == 0]:
        state.remove_term(t)


def apply_filters(state: FilterState, steps: list[tuple[str, Callable[[FilterState], None]]]) -> list[dict]:
    """Run named steps in order; return the log with term and annotation counts around each step."""
    log = []
    for name, step in steps + [("drop_empty", drop_empty)]:
        before = (state.terms(), state.annotation_count())
        step(state)
        log.append({"step": name, "terms_before": before[0], "terms_after": state.terms(),
                    "annotations_before": before[1], "annotations_after": state.annotation_count()})
    return log
