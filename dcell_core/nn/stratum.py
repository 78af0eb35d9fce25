"""One stratum of the stratum-parallel model: its buckets, gathers, gene columns and batch-norm statistics, and
the whole-stratum computations (first layer, extra layers, norms, stratum 0's compact form)."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dcell_core.nn.buckets import TermBucket
from dcell_core.nn.common import BN_MOMENTUM, NORM_EPS, TermSizes
from dcell_core.nn.compact import Compact
from dcell_core.nn.native import ops
from dcell_core.nn.perturbed import PermuteRows
from dcell_core.nn.plan import BucketPlan
from dcell_core.nn.stratum_ops import (BucketRows, PairTanhNorm, StratumLinear, TanhNorm,
                                       update_running_stats)


class RowRead(NamedTuple):
    """A gather of buffer rows (`index`) and its gradient's plan: the positions of `index` grouped by the row they
    read (`order`; the distinct rows `dest`, ascending, and where each one's positions start, `ptr`), padding reads
    of the zero row left out (its gradient is never read). See `rows_add_`."""
    index: torch.Tensor
    order: torch.Tensor
    dest: torch.Tensor
    ptr: torch.Tensor


def row_read(index: np.ndarray) -> tuple[np.ndarray, ...]:
    """The `RowRead` fields of a gather of rows `index` (row 0: the zero row, padding)."""
    index = index.astype(np.int64)
    kept = np.flatnonzero(index != 0)
    order = kept[np.argsort(index[kept], kind="stable")]
    dest, counts = np.unique(index[order], return_counts=True)
    ptr = np.concatenate([[0], np.cumsum(counts)])
    return index, order.astype(np.int64), dest.astype(np.int64), ptr.astype(np.int64)


def rows_add_(target: torch.Tensor, read: RowRead, src: torch.Tensor) -> None:
    """target[read.index[i]] += src[i] for every row i of src [M, B] (target [N, B]), except the padding reads of
    the zero row. On the CPU one destination row per thread (the C++ `rows_add_`, deterministic; `index_add_` runs
    as a scatter parallel over the B columns only, several times slower than the gather at small B); index_add_
    elsewhere."""
    if target.device.type == "cpu":
        ops()  # registers torch.ops.dcell
        torch.ops.dcell.rows_add_(target, src.contiguous(), read.order, read.dest, read.ptr)
    else:
        target.index_add_(0, read.index, src)


class Stratum(nn.Module):
    def __init__(self, plans: list[BucketPlan], buckets: list[TermBucket], sizes: TermSizes, layers: int,
                 norm_type: str):
        super().__init__()
        # one gather per input kind: the children inputs of every bucket ([n_k * c_max_k] buffer rows each, one
        # bucket after another), then the gene inputs ([n_k * g_max_k] each); `groups`: is gene, in read order
        self.groups: list[bool] = []
        for is_gene in (False, True):
            parts = [p.gene_gather if is_gene else p.child_gather for p in plans]
            if any(part.size for part in parts):
                kind = "genes" if is_gene else "children"
                for name, v in zip(RowRead._fields, row_read(np.concatenate(parts))):
                    self.register_buffer(f"read_{kind}_{name}", torch.from_numpy(v), persistent=False)
                self.groups.append(is_gene)
        self.buckets = nn.ModuleList(buckets)
        self.row_start = plans[0].row_offset  # first buffer row of this stratum's outputs
        self.rows = tuple(BucketRows(b.row_offset - self.row_start, b.n, b.w_max) for b in buckets)
        self.num_rows = sum(b.n * b.w_max for b in buckets)
        # unpadded gene columns: term -> offset of its [G_t, L_t] block (one contiguous column of the first layer
        # per gene input); padded position of every entry
        E = sizes.token_dim
        self.gene_offset: dict[int, int] = {}
        pad_index, pad_base, offset = [], 0, 0
        for plan, bucket in zip(plans, buckets):
            for i, t in enumerate(plan.terms):
                L, G = sizes.widths[t], len(sizes.direct_genes[t]) * E
                if G:
                    self.gene_offset[t] = offset
                    j, r = np.meshgrid(np.arange(G), np.arange(L), indexing="ij")
                    pad_index.append((pad_base + (i * bucket.w_max + r) * bucket.g_max + j).reshape(-1))
                    offset += L * G
            pad_base += bucket.n * bucket.w_max * bucket.g_max
        self.gene_pad_size = sum(b.n * b.w_max * b.g_max for b in buckets)
        # weight columns per bucket: the first layer's children and (dense path) gene columns, the extra layers'
        self.weight_cols = tuple(b.c_max for b in buckets)
        self.gene_cols = tuple(b.g_max for b in buckets)
        self.layer_cols = tuple(b.w_max for b in buckets)
        self._flat_parameters(layers, norm_type)
        self.gene_weight = nn.Parameter(torch.zeros(offset)) if offset else None
        if offset:
            self.register_buffer("gene_pad_index", torch.from_numpy(np.concatenate(pad_index)), persistent=False)
        valid_rows = torch.cat([b.row_mask.reshape(-1) for b in buckets])
        for k in range(layers if norm_type == "batch" else 0):
            self.register_buffer(f"running_mean_{k}", torch.zeros(self.num_rows))
            self.register_buffer(f"running_var_{k}", valid_rows.clone())

    # ---- parameters: one flat tensor per kind, the buckets' padded blocks one after another --------------
    def _flat_parameters(self, layers: int, norm_type: str) -> None:
        """Every parameter kind of the buckets (`TermBucket.shapes`: child_weight, layer_weights.{k}, biases.{k},
        norm_weights.{k}, norm_biases.{k}, head_weight, head_bias) as one flat parameter of the stratum under the
        same name, bucket q's block at `self.blocks[q][name]` (offset, shape). The row-shaped kinds (biases, norm
        gains and shifts, head weights) are [R_s] in the stratum tensor's row order and the head biases [T_s] in
        bucket-slot order, so whole-stratum ops use them directly; the fused optimizer steps a few large tensors
        instead of six per bucket, and the stratum's autograd functions write one gradient per kind."""
        self.blocks: list[dict[str, tuple[int, tuple[int, ...]]]] = []
        sizes: dict[str, int] = {}
        for bucket in self.buckets:
            blocks = {}
            for name, shape in bucket.shapes().items():
                blocks[name] = (sizes.get(name, 0), shape)
                sizes[name] = sizes.get(name, 0) + int(np.prod(shape))
            self.blocks.append(blocks)
        self.flat_names = list(sizes)  # in the stored order of the first bucket that has them
        has_affine = norm_type != "none"
        self.child_weight = nn.Parameter(torch.zeros(sizes["child_weight"])) if "child_weight" in sizes else None
        self.layer_weights = nn.ParameterList(nn.Parameter(torch.zeros(sizes[f"layer_weights.{k}"]))
                                              for k in range(layers - 1))
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(self.num_rows)) for _ in range(layers))
        self.norm_weights = nn.ParameterList(nn.Parameter(torch.zeros(self.num_rows))
                                             for _ in range(layers * has_affine))
        self.norm_biases = nn.ParameterList(nn.Parameter(torch.zeros(self.num_rows))
                                            for _ in range(layers * has_affine))
        self.head_weight = nn.Parameter(torch.zeros(self.num_rows))
        self.head_bias = nn.Parameter(torch.zeros(sum(b.n for b in self.buckets)))
        self.register_state_dict_post_hook(_stored_form)
        self.register_load_state_dict_pre_hook(_from_stored_form)

    def block(self, q: int, name: str, flat: torch.Tensor | None = None) -> torch.Tensor:
        """Bucket q's padded block of parameter kind `name` (a view of `flat`, by default the parameter)."""
        offset, shape = self.blocks[q][name]
        return block_view(self.get_parameter(name) if flat is None else flat, offset, shape)

    @torch.no_grad()
    def reset_buckets(self, init_range: float) -> None:
        """Initial values of the buckets' blocks, bucket by bucket in the stored order (the random stream is
        that of per-bucket parameters): norm gains 1, shifts 0, the rest uniform in +-init_range; padding 0."""
        for q, bucket in enumerate(self.buckets):
            masks = bucket.valid_masks()
            for name in bucket.shapes():
                p = self.block(q, name)
                if name.startswith("norm_weights"):
                    p.copy_(masks[name].to(p.dtype))
                elif name.startswith("norm_biases"):
                    p.zero_()
                else:
                    p.uniform_(-init_range, init_range).mul_(masks[name].to(p.dtype))

    def padding_violations(self) -> list[str]:
        """Stored names (`buckets.{q}.{kind}`) of blocks with a non-zero padded entry."""
        out = []
        for q, bucket in enumerate(self.buckets):
            for name, mask in bucket.valid_masks().items():
                if bool((self.block(q, name).detach()[~mask] != 0).any()):
                    out.append(f"buckets.{q}.{name}")
        return out

    def read_groups(self, genes: bool) -> list[bool]:
        """The input kinds to read (is gene, in read order): all, or only the children inputs."""
        return [g for g in self.groups if genes or not g]

    def gathers(self, genes: bool) -> tuple[RowRead, ...]:
        kinds = ("genes" if g else "children" for g in self.read_groups(genes))
        return tuple(RowRead(*(getattr(self, f"read_{kind}_{name}") for name in RowRead._fields)) for kind in kinds)

    def views(self, h: torch.Tensor) -> list[torch.Tensor]:
        """The [n, w_max, B] block of every bucket in a stratum tensor [R_s, B]."""
        B = h.shape[1]
        return [v.view(b.n, b.w_max, B) for v, b in zip(h.split([b.n * b.w_max for b in self.buckets]), self.buckets)]

    def padded_gene_weights(self) -> torch.Tensor:
        """The gene columns as padded [n, w_max, g_max] blocks, one bucket after another, flat (dense path),
        differentiable."""
        return self.gene_weight.new_zeros(self.gene_pad_size).index_copy(0, self.gene_pad_index, self.gene_weight)

    def first_layer(self, parts: tuple[torch.Tensor, ...], B: int, genes: bool,
                    sparse: tuple[torch.Tensor, ...] | None) -> torch.Tensor:
        """W I + b of every term of the stratum -> [R_s, B], from the read groups `parts` (`read_groups`)."""
        inp = gene_inp = None
        for is_gene, part in zip(self.read_groups(genes), parts):
            if is_gene:
                gene_inp = part
            else:
                inp = part
        dense = self.padded_gene_weights() if gene_inp is not None else None
        return StratumLinear.apply(self.rows, B, sparse, self.weight_cols, self.gene_cols, self.biases[0],
                                   self.child_weight, inp, dense, gene_inp,
                                   self.gene_weight if sparse is not None else None)

    def next_layer(self, o: torch.Tensor, k: int) -> torch.Tensor:
        """Extra subsystem layer k >= 1 of every term: W_k O + b_k -> [R_s, B]."""
        return StratumLinear.apply(self.rows, o.shape[1], None, self.layer_cols, None,
                                   self.biases[k], self.layer_weights[k - 1], o, None, None, None)

    def head_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head_weight, self.head_bias

    def compact_output(self, c: Compact, B: int, act, norm_order: str, norm_type: str, training: bool,
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """The output of a stratum without children (one layer, batch norm or none) in compact form: the
        wild-type output [R_s] and the outputs at the entries of `c`. Without children, a term's pre-activation in
        sample b is its bias unless one of its genes is disrupted in b; so every neuron has one wild-type value
        v0 [R_s] shared by most samples and a few other values e at the entries `c.rows`, `c.flat`. Activation
        and norm (batch statistics as sums weighted by how many samples hold v0) run on that form; the caller
        makes the output dense."""
        bias = self.biases[0]  # [R_s]
        add = self.gene_weight.index_select(0, c.w_idx)
        if c.values is not None:
            add = add * c.values.to(add.dtype)
        e = bias.index_select(0, c.rows) + add.new_zeros(c.size).index_add(0, c.e_idx, add)
        return self.compact_finish(bias, e, c, B, act, norm_order, norm_type, training)

    def pair_linear(self, parts: tuple[torch.Tensor, ...], p) -> torch.Tensor:
        """The flat pre-activations of a stratum in perturbation form (perturbed.py; `p` its `StratumPairs`,
        `parts` = (the read `p.read`,)): per tier [n, w, cols], the rows' wild-type and perturbed columns."""
        weight = None if self.child_weight is None else PermuteRows.apply(self.child_weight, *p.weight_perm)
        bias = PermuteRows.apply(self.biases[0], *p.row_perm)
        return StratumLinear.apply(p.rows, p.cols, p.genes, p.weight_cols, None, bias, weight, parts[0], None, None,
                                   self.gene_weight if p.genes is not None else None)

    def pair_output(self, parts: tuple[torch.Tensor, ...], p, B: int, act, norm_order: str, norm_type: str,
                    training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The wild-type output [R_s] and the outputs at the entries of `p.compact` of a stratum in perturbation
        form."""
        z = self.pair_linear(parts, p)
        return self.compact_finish(z.index_select(0, p.z_wild), z.index_select(0, p.z_entry), p.compact, B, act,
                                   norm_order, norm_type, training)

    def pair_tanh_norm(self, parts: tuple[torch.Tensor, ...], p, dest: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A stratum in perturbation form, tanh then batch norm in training (`PairTanhNorm`): its output written
        into `dest` (a stand-in returned for it), its wild-type output and its heads."""
        return PairTanhNorm.apply(self.pair_linear(parts, p), self.norm_weights[0], self.norm_biases[0],
                                  self.running_mean_0, self.running_var_0, self.head_weight, self.head_bias,
                                  p.terms, p.samp, p.z_wild, dest)

    def compact_finish(self, v0: torch.Tensor, e: torch.Tensor, c: Compact, B: int, act, norm_order: str,
                       norm_type: str, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Norm and activation of the wild-type pre-activations v0 [R_s] and the other entries e (`c.rows`,
        `c.flat`): the wild-type output [R_s] and the entries' outputs."""
        if norm_order == "act_norm":
            v0, e = self._compact_norm(act(v0), act(e), c, B, norm_type, training)
        else:
            v0, e = self._compact_norm(v0, e, c, B, norm_type, training)
            v0, e = act(v0), act(e)
        return v0, e

    def compact_heads(self, v0: torch.Tensor, e: torch.Tensor, c: Compact, term: torch.Tensor, B: int
                      ) -> torch.Tensor:
        """The heads [T_s, B] (bucket-slot order) of a stratum in compact form: one wild-type head per term plus,
        where the term is perturbed, the change its entries make. `term` [R_s]: the term slot of every row."""
        weight, bias = self.head_weight, self.head_bias  # [R_s], [T_s]
        wild = bias.index_add(0, term, weight * v0)
        entry_term = term.index_select(0, c.rows)
        change = weight.index_select(0, c.rows) * (e - v0.index_select(0, c.rows))
        spikes = change.new_zeros(len(bias) * B).index_add(0, entry_term * B + c.flat % B, change)
        return wild.unsqueeze(1) + spikes.view(len(bias), B)

    def _compact_norm(self, v0: torch.Tensor, e: torch.Tensor, c: Compact, B: int, norm_type: str, training: bool,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        if norm_type == "none":
            return v0, e
        rm, rv = self.running_mean_0, self.running_var_0
        if training:
            if B <= 1:  # as F.batch_norm
                raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                                 f"{torch.Size([1, self.num_rows, B])}")
            held = B - v0.new_zeros(self.num_rows).index_add_(0, c.rows, v0.new_ones(c.size))  # samples at v0
            mean = (held * v0 + v0.new_zeros(self.num_rows).index_add(0, c.rows, e)) / B
            d0, de = v0 - mean, e - mean.index_select(0, c.rows)
            var = (held * d0 * d0 + v0.new_zeros(self.num_rows).index_add(0, c.rows, de * de)) / B
            update_running_stats(rm, rv, mean, var, B)
        else:
            mean, var = rm, rv
            d0, de = v0 - mean, e - mean.index_select(0, c.rows)
        inv = torch.rsqrt(var + NORM_EPS)
        gain, shift = self.norm_weights[0], self.norm_biases[0]
        scale = inv * gain
        return d0 * scale + shift, de * scale.index_select(0, c.rows) + shift.index_select(0, c.rows)

    def tanh_norm(self, h: torch.Tensor, k: int) -> torch.Tensor:
        """Batch norm of tanh(h) in training (`TanhNorm`)."""
        return TanhNorm.apply(h, self.norm_weights[k], self.norm_biases[k], getattr(self, f"running_mean_{k}"),
                              getattr(self, f"running_var_{k}"), None, None, None, None)

    def tanh_norm_heads(self, h: torch.Tensor, k: int, dest: torch.Tensor | None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch norm of tanh(h) in training and the stratum's heads [T_s, B] from it (`TanhNorm`); with `dest`,
        the output written there only and a stand-in returned for it."""
        return TanhNorm.apply(h, self.norm_weights[k], self.norm_biases[k], getattr(self, f"running_mean_{k}"),
                              getattr(self, f"running_var_{k}"), dest, self.rows, self.head_weight, self.head_bias)

    def norm(self, h: torch.Tensor, k: int, norm_type: str, training: bool) -> torch.Tensor:
        if norm_type == "none":
            return h
        gain, shift = self.norm_weights[k], self.norm_biases[k]  # [R_s]
        if norm_type == "layer":
            normed = torch.cat([b.normalize(v).view(-1, h.shape[1]) for b, v in zip(self.buckets, self.views(h))])
            return normed * gain.unsqueeze(1) + shift.unsqueeze(1)
        # batch norm per neuron over the batch: channels = the R_s neurons, one "length" axis = the batch
        out = F.batch_norm(h.view(1, *h.shape), getattr(self, f"running_mean_{k}"), getattr(self, f"running_var_{k}"),
                           gain, shift, training, BN_MOMENTUM, NORM_EPS)
        return out.view(h.shape)


def block_view(flat: torch.Tensor, offset: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The block of `shape` stored at `offset` of a flat tensor (a view)."""
    return flat[offset: offset + int(np.prod(shape))].view(shape)


def _stored_form(module: Stratum, state_dict: dict, prefix: str, local_metadata) -> None:
    """State-dict hook: the flat parameters stored as the buckets' blocks (`buckets.{q}.{kind}`, shapes as in
    `TermBucket.shapes`), the stored form checkpoints keep, after the stratum's other entries (the order of
    per-bucket parameters). Copies, so that no two stored tensors share memory."""
    flat = {name: state_dict.pop(prefix + name) for name in module.flat_names}
    for q, blocks in enumerate(module.blocks):
        for name in blocks:
            state_dict[f"{prefix}buckets.{q}.{name}"] = module.block(q, name, flat[name].detach()).clone()


def _from_stored_form(module: Stratum, state_dict: dict, prefix: str, local_metadata, strict: bool,
                      missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
    """Load-state-dict pre-hook: the buckets' stored blocks joined into the flat parameters. A flat name
    already present is loaded as given; a missing block is reported under its stored name, a block of the
    wrong shape as a size mismatch (the flat parameter is then left out, so strict loading fails)."""
    for name in module.flat_names:
        if prefix + name in state_dict:
            continue
        pieces, complete = [], True
        for q, blocks in enumerate(module.blocks):
            if name not in blocks:
                continue
            key, shape = f"{prefix}buckets.{q}.{name}", blocks[name][1]
            value = state_dict.get(key)
            if value is None:
                missing_keys.append(key)
                complete = False
            elif tuple(value.shape) != shape:
                error_msgs.append(f"size mismatch for {key}: copying a param with shape {tuple(value.shape)} from "
                                  f"checkpoint, the shape in current model is {torch.Size(shape)}.")
                complete = False
            else:
                pieces.append(value.reshape(-1))
        if complete:
            for q, blocks in enumerate(module.blocks):
                state_dict.pop(f"{prefix}buckets.{q}.{name}", None)
            state_dict[prefix + name] = torch.cat(pieces)
