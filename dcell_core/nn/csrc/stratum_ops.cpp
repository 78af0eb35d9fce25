// The stratum-parallel model's C++ pieces (built and loaded by dcell_core/nn/native.py):
// - the per-bucket loops of StratumLinear and of the heads (dcell_core/nn/stratum_ops.py). A stratum runs one
//   batched matmul per shape bucket, each into a slice of one whole-stratum tensor; written in Python, every bucket
//   cost several microseconds of slicing, viewing and dispatch per op. These loops call the same ATen ops on the
//   same views in the same order, so their results are those of the Python loops, on any device and dtype;
// - CPU kernels: the heads for contiguous float and double tensors (one task per term, each row read once per
//   pass), rows_add_ (torch.ops.dcell.rows_add_), the gradient of a row gather, one thread per destination row, and
//   a stratum's children read fused with its first layer, in cache-sized chunks (read_linear_*), and tanh followed
//   by batch norm in training, per row block (tanh_norm_*), and ragged_ranges' index runs.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <initializer_list>
#include <tuple>
#include <utility>
#include <string>
#include <vector>

// The element loops below are compiled for AVX-512, AVX2 and the baseline on x86-64, picked when the library
// loads (the extension is built without -march flags, so that one build runs on every CPU of a cluster).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define DCELL_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DCELL_VECTOR_CLONES
#endif

namespace {

using Opt = c10::optional<at::Tensor>;
using Ints = std::vector<int64_t>;

// Bucket q of a stratum: n terms, w rows each (w_max), k weight columns, g dense gene columns, c batch columns,
// first row `start` in the stratum tensor.
struct Buckets {
  const Ints &n, &w, &k, &g, &c, &start;
  size_t size() const { return n.size(); }
};

Ints offsets(size_t count, const std::function<int64_t(size_t)>& size) {
  Ints out(count + 1, 0);
  for (size_t q = 0; q < count; ++q) out[q + 1] = out[q] + size(q);
  return out;
}

struct Layout {
  Ints out, weight, inp, dense_w, dense_inp;
  explicit Layout(const Buckets& b) {
    size_t m = b.size();
    out = offsets(m, [&](size_t q) { return b.n[q] * b.w[q] * b.c[q]; });
    weight = offsets(m, [&](size_t q) { return b.n[q] * b.w[q] * b.k[q]; });
    inp = offsets(m, [&](size_t q) { return b.n[q] * b.k[q] * b.c[q]; });
    dense_w = offsets(m, [&](size_t q) { return b.n[q] * b.w[q] * b.g[q]; });
    dense_inp = offsets(m, [&](size_t q) { return b.n[q] * b.g[q] * b.c[q]; });
  }
};

void check_size(const Opt& t, int64_t want, const char* name) {
  int64_t have = t.has_value() ? t->numel() : 0;
  TORCH_CHECK_VALUE(have == want, "StratumLinear: ", name, " has ", have, " elements, the buckets' blocks ", want);
}

void check_buckets(const Ints& n, const Ints& w, const Ints& k, const Ints& g, const Ints& c, const Ints& start) {
  size_t m = n.size();
  TORCH_CHECK_VALUE(w.size() == m && k.size() == m && g.size() == m && c.size() == m && start.size() == m,
                    "StratumLinear: the bucket lists differ in length (n ", m, ", w ", w.size(), ", k ", k.size(),
                    ", g ", g.size(), ", cols ", c.size(), ", start ", start.size(), ")");
}

// Bucket q's [n, rows, cols] block of a flat tensor whose blocks start at `off`.
at::Tensor block(const at::Tensor& flat, const Ints& off, size_t q, int64_t n, int64_t rows, int64_t cols) {
  return flat.narrow(0, off[q], off[q + 1] - off[q]).view({n, rows, cols});
}

}  // namespace

// Forward of StratumLinear without the sparse gene columns: the flat output, bucket q's [n, w, c] block after
// the blocks before it; H_q = bias_q + weight_q @ inp_q (+ dense_w_q @ dense_inp_q). All tensors flat.
at::Tensor linear_forward(const at::Tensor& bias, const Opt& weight, const Opt& inp, const Opt& dense_w,
                          const Opt& dense_inp, const Ints& n, const Ints& w, const Ints& k, const Ints& g,
                          const Ints& c, const Ints& start) {
  check_buckets(n, w, k, g, c, start);
  Buckets b{n, w, k, g, c, start};
  Layout lay(b);
  check_size(weight, lay.weight.back(), "weight");
  check_size(inp, lay.inp.back(), "inp");
  check_size(dense_w, lay.dense_w.back(), "dense_w");
  check_size(dense_inp, lay.dense_inp.back(), "dense_inp");
  at::Tensor out = at::empty({lay.out.back()}, bias.options());
  for (size_t q = 0; q < b.size(); ++q) {
    at::Tensor h = block(out, lay.out, q, n[q], w[q], c[q]);
    at::Tensor bias_q = bias.narrow(0, start[q], n[q] * w[q]).view({n[q], w[q], 1});
    if (k[q]) {
      at::baddbmm_out(h, bias_q, block(*weight, lay.weight, q, n[q], w[q], k[q]),
                      block(*inp, lay.inp, q, n[q], k[q], c[q]));
    } else {
      h.copy_(bias_q.expand({n[q], w[q], c[q]}));
    }
    if (g[q]) {
      h.baddbmm_(block(*dense_w, lay.dense_w, q, n[q], w[q], g[q]),
                 block(*dense_inp, lay.dense_inp, q, n[q], g[q], c[q]));
    }
  }
  return out;
}

// Backward of linear_forward: [bias, weight, inp, dense_w, dense_inp] gradients, flat (None where not needed).
// `uniform`: every bucket has the same batch columns, so the output is [R_s, B] and the bias gradient is one
// row sum.
std::vector<Opt> linear_backward(const at::Tensor& grad, const Opt& weight, const Opt& inp, const Opt& dense_w,
                                 const Opt& dense_inp, const Ints& n, const Ints& w, const Ints& k, const Ints& g,
                                 const Ints& c, const Ints& start, bool uniform, std::vector<bool> needs) {
  check_buckets(n, w, k, g, c, start);
  TORCH_CHECK_VALUE(needs.size() == 5, "StratumLinear backward: 5 needs flags, got ", needs.size());
  Buckets b{n, w, k, g, c, start};
  Layout lay(b);
  TORCH_CHECK_VALUE(grad.numel() == lay.out.back(), "StratumLinear backward: the gradient has ", grad.numel(),
                    " elements, the output ", lay.out.back());
  int64_t num_rows = 0;
  for (size_t q = 0; q < b.size(); ++q) num_rows += n[q] * w[q];
  std::vector<Opt> out(5);
  const Ints* sizes[4] = {&lay.weight, &lay.inp, &lay.dense_w, &lay.dense_inp};
  for (int i = 0; i < 4; ++i) {
    if (needs[i + 1]) out[i + 1] = at::empty({sizes[i]->back()}, grad.options());
  }
  if (needs[0] && uniform) {
    int64_t batch = num_rows ? grad.numel() / num_rows : 0;
    out[0] = grad.view({num_rows, batch}).sum(1);
  } else if (needs[0]) {
    out[0] = at::empty({num_rows}, grad.options());
  }
  for (size_t q = 0; q < b.size(); ++q) {
    at::Tensor gq = block(grad, lay.out, q, n[q], w[q], c[q]);
    if (needs[0] && !uniform) {
      at::Tensor target = out[0]->narrow(0, start[q], n[q] * w[q]).view({n[q], w[q]});
      at::sum_out(target, gq, {-1});
    }
    for (int i = 0; i < 2; ++i) {
      int64_t cols = i == 0 ? k[q] : g[q];
      if (!cols) continue;
      const Opt& w_t = i == 0 ? weight : dense_w;
      const Opt& i_t = i == 0 ? inp : dense_inp;
      const Ints& w_off = i == 0 ? lay.weight : lay.dense_w;
      const Ints& i_off = i == 0 ? lay.inp : lay.dense_inp;
      if (out[2 * i + 1].has_value()) {
        at::Tensor dst = block(*out[2 * i + 1], w_off, q, n[q], w[q], cols);
        at::bmm_out(dst, gq, block(*i_t, i_off, q, n[q], cols, c[q]).transpose(1, 2));
      }
      if (out[2 * i + 2].has_value()) {
        at::Tensor dst = block(*out[2 * i + 2], i_off, q, n[q], cols, c[q]);
        at::bmm_out(dst, block(*w_t, w_off, q, n[q], w[q], cols).transpose(1, 2), gq);
      }
    }
  }
  return out;
}

// y[c] += a * x[c] (the heads' kernels and, with a = 1, exactly y[c] += x[c], the row-gather gradient) and the
// dot product of x and y, for c < n. Half and bfloat16 (the row-gather gradient only) take the plain loop.
DCELL_VECTOR_CLONES void axpy(float* __restrict y, float a, const float* __restrict x, int64_t n) {
  for (int64_t c = 0; c < n; ++c) y[c] += a * x[c];
}

DCELL_VECTOR_CLONES void axpy(double* __restrict y, double a, const double* __restrict x, int64_t n) {
  for (int64_t c = 0; c < n; ++c) y[c] += a * x[c];
}

template <typename T>
void axpy(T* y, T a, const T* x, int64_t n) {
  for (int64_t c = 0; c < n; ++c) y[c] += a * x[c];
}

// The sum of term(c) for c < n in sixteen partial sums, one per lane (independent, so the loop vectorizes without
// reordering any sum), added in lane order at the end; inlined into the vector-compiled callers.
template <typename T, typename Term>
inline __attribute__((always_inline)) T lane_sum(int64_t n, const Term& term) {
  T part[16] = {};
  int64_t c = 0;
  for (; c + 16 <= n; c += 16) {
    for (int j = 0; j < 16; ++j) part[j] += term(c + j);
  }
  for (; c < n; ++c) part[c % 16] += term(c);
  T sum = 0;
  for (int j = 0; j < 16; ++j) sum += part[j];
  return sum;
}

template <typename T>
DCELL_VECTOR_CLONES T dot(const T* __restrict x, const T* __restrict y, int64_t n) {
  return lane_sum<T>(n, [&](int64_t c) { return x[c] * y[c]; });
}

// The heads' kernels on the CPU for float and double, contiguous tensors of one dtype: one task per term,
// each reading its rows of o once (forward: the head as a sum of rows weighted by the head weights; backward:
// every row's input gradient and head-weight gradient in one pass). Elsewhere the per-bucket matmuls below.
bool heads_kernel(std::initializer_list<const at::Tensor*> tensors) {
  at::ScalarType dtype = (*tensors.begin())->scalar_type();
  if (dtype != at::kFloat && dtype != at::kDouble) return false;
  for (const at::Tensor* t : tensors) {
    if (!t->device().is_cpu() || t->scalar_type() != dtype || !t->is_contiguous()) return false;
  }
  return true;
}

// Per term of a stratum (bucket-slot order): its first row and its width (w_max of its bucket).
std::pair<Ints, Ints> term_rows(const Ints& n, const Ints& w, const Ints& start) {
  Ints row, width;
  for (size_t q = 0; q < n.size(); ++q) {
    for (int64_t j = 0; j < n[q]; ++j) {
      row.push_back(start[q] + j * w[q]);
      width.push_back(w[q]);
    }
  }
  return {row, width};
}

int64_t term_grain(int64_t batch) { return std::max<int64_t>(1, (int64_t{1} << 12) / std::max<int64_t>(batch, 1)); }

// Heads of every term of a stratum, [T_s, B] in bucket-slot order: head_bias + head_weight @ O_t, from the stratum
// output o [R_s, B]; bucket q's blocks of weight [R_s] and bias [T_s] are [n, 1, w] and [n, 1, 1].
at::Tensor heads_forward(const at::Tensor& o, const at::Tensor& weight, const at::Tensor& bias, const Ints& n,
                         const Ints& w, const Ints& start) {
  int64_t batch = o.size(1);
  at::Tensor heads = at::empty({bias.numel(), batch}, o.options());
  if (heads_kernel({&o, &weight, &bias})) {
    auto [row, width] = term_rows(n, w, start);
    TORCH_CHECK_VALUE(int64_t(row.size()) == bias.numel(), "heads_forward: ", bias.numel(), " head biases for ",
                      row.size(), " terms");
    AT_DISPATCH_FLOATING_TYPES(o.scalar_type(), "heads_forward", [&] {
      const scalar_t* op = o.data_ptr<scalar_t>();
      const scalar_t* wp = weight.data_ptr<scalar_t>();
      const scalar_t* bp = bias.data_ptr<scalar_t>();
      scalar_t* hp = heads.data_ptr<scalar_t>();
      at::parallel_for(0, int64_t(row.size()), term_grain(batch), [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
          scalar_t* h = hp + t * batch;
          for (int64_t c = 0; c < batch; ++c) h[c] = bp[t];
          for (int64_t i = 0; i < width[t]; ++i) {
            int64_t r = row[t] + i;
            axpy(h, wp[r], op + r * batch, batch);
          }
        }
      });
    });
    return heads;
  }
  int64_t first = 0;
  for (size_t q = 0; q < n.size(); ++q) {
    at::Tensor dst = heads.narrow(0, first, n[q]).view({n[q], 1, batch});
    at::baddbmm_out(dst, bias.narrow(0, first, n[q]).view({n[q], 1, 1}),
                    weight.narrow(0, start[q], n[q] * w[q]).view({n[q], 1, w[q]}),
                    o.narrow(0, start[q], n[q] * w[q]).view({n[q], w[q], batch}));
    first += n[q];
  }
  return heads;
}

// Backward of heads_forward: adds the input gradient into `target` [R_s, B] in place (when given) and returns
// the head weights' gradient [R_s] (when `needs_weight`).
Opt heads_backward(const at::Tensor& o, const at::Tensor& weight, const at::Tensor& grad, const Opt& target,
                   bool needs_weight, const Ints& n, const Ints& w, const Ints& start) {
  int64_t batch = o.size(1);
  Opt weight_grad;
  if (needs_weight) weight_grad = at::empty({weight.numel()}, grad.options());
  if (target.has_value() ? heads_kernel({&o, &weight, &grad, &*target}) : heads_kernel({&o, &weight, &grad})) {
    auto [row, width] = term_rows(n, w, start);
    TORCH_CHECK_VALUE(int64_t(row.size()) == grad.size(0), "heads_backward: ", grad.size(0), " head gradients for ",
                      row.size(), " terms");
    AT_DISPATCH_FLOATING_TYPES(o.scalar_type(), "heads_backward", [&] {
      const scalar_t* op = o.data_ptr<scalar_t>();
      const scalar_t* wp = weight.data_ptr<scalar_t>();
      const scalar_t* gp = grad.data_ptr<scalar_t>();
      scalar_t* tp = target.has_value() ? target->data_ptr<scalar_t>() : nullptr;
      scalar_t* wg = needs_weight ? weight_grad->data_ptr<scalar_t>() : nullptr;
      at::parallel_for(0, int64_t(row.size()), term_grain(batch), [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
          const scalar_t* g = gp + t * batch;
          for (int64_t i = 0; i < width[t]; ++i) {
            int64_t r = row[t] + i;
            if (wg) wg[r] = dot(g, op + r * batch, batch);
            if (tp) axpy(tp + r * batch, wp[r], g, batch);
          }
        }
      });
    });
    return weight_grad;
  }
  int64_t first = 0;
  for (size_t q = 0; q < n.size(); ++q) {
    at::Tensor gq = grad.narrow(0, first, n[q]).view({n[q], 1, batch});
    first += n[q];
    at::Tensor w_q = weight.narrow(0, start[q], n[q] * w[q]).view({n[q], 1, w[q]});
    if (target.has_value()) {
      at::Tensor t = target->narrow(0, start[q], n[q] * w[q]).view({n[q], w[q], batch});
      if (t.scalar_type() == grad.scalar_type()) {
        t.baddbmm_(w_q.transpose(1, 2), gq);
      } else {
        t.add_(at::bmm(w_q.transpose(1, 2), gq));
      }
    }
    if (needs_weight) {
      at::Tensor dst = weight_grad->narrow(0, start[q], n[q] * w[q]).view({n[q], 1, w[q]});
      at::bmm_out(dst, gq, o.narrow(0, start[q], n[q] * w[q]).view({n[q], w[q], batch}).transpose(1, 2));
    }
  }
  return weight_grad;
}

// target[dest[u]] += sum of src[order[j]] for j in [ptr[u], ptr[u + 1]), rows of [N, B] and [M, B] tensors: the
// gradient of a row gather whose index was grouped by destination once (order: the gather's positions sorted by
// the row they read, dest: the distinct rows, ptr: where each row's positions start). Each destination row is
// written by one thread, the positions added in the gather's order: deterministic, and parallel over rows, where
// index_add_ of rows runs as a scatter parallel over the B columns only.
void rows_add_(const at::Tensor& target, const at::Tensor& src, const at::Tensor& order, const at::Tensor& dest,
               const at::Tensor& ptr) {
  TORCH_CHECK_VALUE(target.device().is_cpu() && src.device().is_cpu(), "rows_add_: CPU tensors only");
  TORCH_CHECK_VALUE(target.dim() == 2 && src.dim() == 2 && target.size(1) == src.size(1),
                    "rows_add_: target ", target.sizes(), " and src ", src.sizes(), " must be [N, B] and [M, B]");
  TORCH_CHECK_VALUE(target.is_contiguous() && src.is_contiguous(), "rows_add_: target and src must be contiguous");
  TORCH_CHECK_VALUE(target.scalar_type() == src.scalar_type(), "rows_add_: target is ", target.scalar_type(),
                    ", src ", src.scalar_type());
  for (const at::Tensor* t : {&order, &dest, &ptr}) {
    TORCH_CHECK_VALUE(t->scalar_type() == at::kLong && t->is_contiguous() && t->dim() == 1 && t->device().is_cpu(),
                      "rows_add_: order, dest and ptr must be contiguous int64 CPU vectors");
  }
  int64_t rows = dest.numel(), batch = target.size(1);
  TORCH_CHECK_VALUE(ptr.numel() == rows + 1, "rows_add_: ptr has ", ptr.numel(), " entries for ", rows, " rows");
  const int64_t* o = order.data_ptr<int64_t>();
  const int64_t* d = dest.data_ptr<int64_t>();
  const int64_t* p = ptr.data_ptr<int64_t>();
  TORCH_CHECK_VALUE(rows == 0 || (d[0] >= 0 && d[rows - 1] < target.size(0)),
                    "rows_add_: dest (ascending) must lie in the target's ", target.size(0), " rows");
  TORCH_CHECK_VALUE(p[0] == 0 && p[rows] == order.numel(), "rows_add_: ptr must run from 0 to the ", order.numel(),
                    " positions of order");
  int64_t m = src.size(0);
  int64_t grain = std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(batch, 1));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, target.scalar_type(), "rows_add_", [&] {
    scalar_t* t = target.data_ptr<scalar_t>();
    const scalar_t* s = src.data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      for (int64_t u = begin; u < end; ++u) {
        scalar_t* row = t + d[u] * batch;
        for (int64_t j = p[u]; j < p[u + 1]; ++j) {
          TORCH_CHECK_INDEX(o[j] >= 0 && o[j] < m, "rows_add_: position ", o[j], " outside src's ", m, " rows");
          const scalar_t* add = s + o[j] * batch;
          axpy(row, scalar_t(1), add, batch);
        }
      }
    });
  });
}


// ---- the children read fused with the first layer (CPU, float and double) -----------------------------------
// A stratum that reads only its children's rows (the sparse gene path) gathers [sum n * k, B] input rows, which at
// batch 256 is several times the size of its output: written by the gather, read by the forward matmul, read again
// by the weight gradient's, its gradient written by the input gradient's and read by the row add. Here each bucket
// runs in chunks of terms whose gathered rows fit in `chunk` elements (about a core's L2 cache): gather the chunk,
// multiply it while it is in cache; backward gathers it again for the weight gradient and adds the chunk's input
// gradient into the gradient buffer straight from cache. Nothing of the size of the gather is kept between forward
// and backward. The matmuls are those of linear_forward / linear_backward on row blocks of the same views.
namespace {

int64_t chunk_terms(int64_t n, int64_t k, int64_t batch, int64_t chunk) {
  return std::max<int64_t>(1, std::min<int64_t>(n, chunk / std::max<int64_t>(k * batch, 1)));
}

int64_t scratch_rows(const Ints& n, const Ints& k, int64_t batch, int64_t chunk) {
  int64_t most = 0;
  for (size_t q = 0; q < n.size(); ++q) {
    if (k[q]) most = std::max(most, chunk_terms(n[q], k[q], batch, chunk) * k[q]);
  }
  return most;
}

// The sparse gene columns of a fused read (see GeneSlots, dcell_core/nn/stratum_ops.py): slot j = (row, length,
// col, b) in `slots` [M, 4], sorted by row: out[(row + r) * B + b] += gene_weight[col + r] (x value[j]) for r <
// length. Applied per chunk of rows while its output (forward) or gradient (backward) is in cache; the additions
// into any one element come in slot order either way.
struct GeneSlots {
  const int64_t* s = nullptr;  // [M, 4]
  int64_t M = 0;
  bool given = false;  // (M may be 0: the gene weights still get their zero gradient)
  int64_t applied = 0;  // slots passed to `each` so far (every slot must lie in some bucket's rows)
  bool some() const { return given; }
  // f(j, slot j's four entries) for the slots whose row lies in [r0, r1)
  template <typename F>
  void each(int64_t r0, int64_t r1, const F& f) {
    auto [j0, j1] = range(r0, r1);
    applied += j1 - j0;
    parallel(j0, j1, [&](int64_t a, int64_t b) {
      for (int64_t j = a; j < b; ++j) f(j, s + 4 * j);
    });
  }
  // the slots whose row lies in [r0, r1): [first, last)
  std::pair<int64_t, int64_t> range(int64_t r0, int64_t r1) const {
    int64_t lo = 0, hi = M;
    while (lo < hi) {
      int64_t mid = (lo + hi) / 2;
      if (s[4 * mid] < r0) lo = mid + 1; else hi = mid;
    }
    int64_t first = lo;
    hi = M;
    while (lo < hi) {
      int64_t mid = (lo + hi) / 2;
      if (s[4 * mid] < r1) lo = mid + 1; else hi = mid;
    }
    return {first, lo};
  }
  // f(j0', j1') over [j0, j1) split among the threads at row boundaries: the slots of one row (which add into
  // the same elements) stay on one thread, in order
  template <typename F>
  void parallel(int64_t j0, int64_t j1, const F& f) const {
    int64_t parts = std::min<int64_t>(at::get_num_threads(), (j1 - j0) / 256);
    if (parts < 2 || at::in_parallel_region()) {
      f(j0, j1);
      return;
    }
    Ints cut(parts + 1, j1);
    cut[0] = j0;
    for (int64_t p = 1; p < parts; ++p) {
      int64_t j = std::max(cut[p - 1], j0 + (j1 - j0) * p / parts);
      while (j > j0 && j < j1 && s[4 * j] == s[4 * (j - 1)]) ++j;
      cut[p] = j;
    }
    at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) f(cut[p], cut[p + 1]);
    });
  }
};

GeneSlots gene_slots(const Opt& slots, const Opt& gene_weight, const Opt& value, int64_t rows, int64_t B,
                     at::ScalarType dtype) {
  GeneSlots g;
  if (!slots.has_value()) return g;
  TORCH_CHECK_VALUE(gene_weight.has_value() && gene_weight->scalar_type() == dtype && gene_weight->is_contiguous(),
                    "read_linear: gene slots need the flat gene weights, contiguous, of the buffer's dtype");
  TORCH_CHECK_VALUE(slots->scalar_type() == at::kLong && slots->dim() == 2 && slots->size(1) == 4 &&
                    slots->is_contiguous(), "read_linear: the gene slots must be a contiguous int64 [M, 4] tensor");
  g.s = slots->data_ptr<int64_t>();
  g.M = slots->size(0);
  g.given = true;
  if (value.has_value()) {
    TORCH_CHECK_VALUE(value->scalar_type() == dtype && value->is_contiguous() && value->numel() == g.M,
                      "read_linear: the gene values must be a contiguous vector of the buffer's dtype, one per slot");
  }
  int64_t numel = gene_weight->numel();
  for (int64_t j = 0; j < g.M; ++j) {
    const int64_t* e = g.s + 4 * j;
    TORCH_CHECK_VALUE((j == 0 || e[0] >= e[-4]) && e[0] >= 0 && e[1] >= 1 && e[0] + e[1] <= rows && e[2] >= 0 &&
                      e[2] + e[1] <= numel && e[3] >= 0 && e[3] < B, "read_linear: gene slot ", j, " (row ", e[0],
                      ", length ", e[1], ", column ", e[2], ", sample ", e[3], ") is out of order or outside the ",
                      rows, " rows, ", numel, " gene weights or ", B, " samples");
  }
  return g;
}

// Checks shared by both directions; returns the stratum's rows.
int64_t check_read_linear(const at::Tensor& buf, const at::Tensor& index, const at::Tensor& weight, const Ints& n,
                          const Ints& w, const Ints& k, const Ints& start) {
  TORCH_CHECK_VALUE(n.size() == w.size() && n.size() == k.size() && n.size() == start.size(),
                    "read_linear: the bucket lists differ in length");
  TORCH_CHECK_VALUE(buf.device().is_cpu() && buf.dim() == 2 && buf.is_contiguous() &&
                    (buf.scalar_type() == at::kFloat || buf.scalar_type() == at::kDouble),
                    "read_linear: the buffer must be a contiguous float or double CPU [rows, B] tensor");
  TORCH_CHECK_VALUE(weight.scalar_type() == buf.scalar_type() && weight.is_contiguous(),
                    "read_linear: the weight must be contiguous and of the buffer's dtype");
  TORCH_CHECK_VALUE(index.scalar_type() == at::kLong && index.dim() == 1 && index.is_contiguous(),
                    "read_linear: the index must be a contiguous int64 vector");
  int64_t rows = 0, weights = 0, reads = 0;
  for (size_t q = 0; q < n.size(); ++q) {
    rows += n[q] * w[q];
    weights += n[q] * w[q] * k[q];
    reads += n[q] * k[q];
  }
  TORCH_CHECK_VALUE(weight.numel() == weights && index.numel() == reads, "read_linear: weight has ", weight.numel(),
                    " elements and the index ", index.numel(), ", the buckets' blocks ", weights, " and ", reads);
  return rows;
}

}  // namespace

// z [R_s, B]: for every bucket q, z_q = bias_q + weight_q @ buf[index_q] ([n, w, k] @ [n, k, B]).
// With `slots` (and `gene_weight`, `value`), the sparse gene columns are added in as well (GeneSlots).
at::Tensor read_linear_forward(const at::Tensor& buf, const at::Tensor& index, const at::Tensor& bias,
                               const at::Tensor& weight, const Ints& n, const Ints& w, const Ints& k,
                               const Ints& start, int64_t chunk, const Opt& slots, const Opt& gene_weight,
                               const Opt& value) {
  int64_t rows = check_read_linear(buf, index, weight, n, w, k, start);
  TORCH_CHECK_VALUE(bias.numel() == rows && bias.scalar_type() == buf.scalar_type(), "read_linear_forward: bias "
                    "has ", bias.numel(), " elements of ", bias.scalar_type(), ", the stratum ", rows, " rows");
  int64_t B = buf.size(1);
  GeneSlots genes = gene_slots(slots, gene_weight, value, rows, B, buf.scalar_type());
  at::Tensor out = at::empty({rows, B}, buf.options());
  at::Tensor scratch = at::empty({scratch_rows(n, k, B, chunk), B}, buf.options());
  // the gene columns of rows [r0, r1), once they hold bias + weight @ input
  auto add_genes = [&](int64_t r0, int64_t r1) {
    if (!genes.some()) return;
    AT_DISPATCH_FLOATING_TYPES(buf.scalar_type(), "read_linear_forward", [&] {
      scalar_t* o = out.data_ptr<scalar_t>();
      const scalar_t* gw = gene_weight->data_ptr<scalar_t>();
      const scalar_t* v = value.has_value() ? value->data_ptr<scalar_t>() : nullptr;
      genes.each(r0, r1, [&](int64_t j, const int64_t* e) {
        scalar_t* dst = o + e[0] * B + e[3];
        const scalar_t* src = gw + e[2];
        for (int64_t r = 0; r < e[1]; ++r) {
          scalar_t add = v ? src[r] * v[j] : src[r];
          dst[r * B] += add;
        }
      });
    });
  };
  int64_t woff = 0, ioff = 0;
  for (size_t q = 0; q < n.size(); ++q) {
    at::Tensor h = out.narrow(0, start[q], n[q] * w[q]).view({n[q], w[q], B});
    at::Tensor bias_q = bias.narrow(0, start[q], n[q] * w[q]).view({n[q], w[q], 1});
    if (!k[q]) {
      h.copy_(bias_q.expand({n[q], w[q], B}));
      add_genes(start[q], start[q] + n[q] * w[q]);
      continue;
    }
    at::Tensor W = weight.narrow(0, woff, n[q] * w[q] * k[q]).view({n[q], w[q], k[q]});
    int64_t per = chunk_terms(n[q], k[q], B, chunk);
    for (int64_t i0 = 0; i0 < n[q]; i0 += per) {
      int64_t m = std::min(per, n[q] - i0);
      at::Tensor s = scratch.narrow(0, 0, m * k[q]);
      at::index_select_out(s, buf, 0, index.narrow(0, ioff + i0 * k[q], m * k[q]));
      at::Tensor dst = h.narrow(0, i0, m);
      at::baddbmm_out(dst, bias_q.narrow(0, i0, m), W.narrow(0, i0, m), s.view({m, k[q], B}));
      add_genes(start[q] + i0 * w[q], start[q] + (i0 + m) * w[q]);
    }
    woff += n[q] * w[q] * k[q];
    ioff += n[q] * k[q];
  }
  TORCH_CHECK_VALUE(genes.applied == genes.M, "read_linear_forward: ", genes.M - genes.applied,
                    " gene slots outside the buckets");
  return out;
}

// Backward of read_linear_forward from grad [R_s, B]: returns [bias, weight, gene weight] gradients (None where
// not needed; the gene weights' with `slots`) and, when `grad_buf` [rows, B] is given, adds buf[index]'s gradient
// into it in place, except at the zero row (index 0, padding). The rows of a chunk are added in index order, the
// columns split among threads; with rows under 512 bytes, the whole input gradient is made first and added by
// rows_add_ with the read's grouping (order, dest, ptr, see RowRead). Either way deterministic, every destination
// row getting its additions in gather order.
std::vector<Opt> read_linear_backward(const at::Tensor& grad, const at::Tensor& buf, const at::Tensor& index,
                                      const at::Tensor& order, const at::Tensor& dest, const at::Tensor& ptr,
                                      const at::Tensor& weight, const Opt& grad_buf, const Ints& n, const Ints& w,
                                      const Ints& k, const Ints& start, bool needs_bias, bool needs_weight,
                                      int64_t chunk, const Opt& slots, const Opt& gene_weight, const Opt& value) {
  int64_t rows = check_read_linear(buf, index, weight, n, w, k, start);
  int64_t B = buf.size(1);
  GeneSlots genes = gene_slots(slots, gene_weight, value, rows, B, buf.scalar_type());
  TORCH_CHECK_VALUE(grad.sizes() == at::IntArrayRef({rows, B}) && grad.is_contiguous() &&
                    grad.scalar_type() == buf.scalar_type(), "read_linear_backward: the gradient is ", grad.sizes(),
                    " ", grad.scalar_type(), ", the output [", rows, ", ", B, "] ", buf.scalar_type());
  if (grad_buf.has_value()) {
    TORCH_CHECK_VALUE(grad_buf->sizes() == buf.sizes() && grad_buf->is_contiguous() &&
                      grad_buf->scalar_type() == buf.scalar_type(),
                      "read_linear_backward: the gradient buffer must be contiguous and shaped as the buffer");
    const int64_t* ix = index.data_ptr<int64_t>();
    for (int64_t r = 0; r < index.numel(); ++r) {
      TORCH_CHECK_INDEX(ix[r] >= 0 && ix[r] < buf.size(0), "read_linear_backward: index ", ix[r], " outside the ",
                        buf.size(0), " buffer rows");
    }
  }
  std::vector<Opt> out(3);
  // the bias gradient per chunk too (row sums of grad, by the same ATen reduction as grad.sum(1), row by row)
  if (needs_bias) out[0] = at::empty({rows}, grad.options());
  int64_t summed = 0;
  auto bias_grads = [&](int64_t r0, int64_t r1) {
    if (!needs_bias) return;
    summed += r1 - r0;
    at::Tensor dst = out[0]->narrow(0, r0, r1 - r0);
    at::sum_out(dst, grad.narrow(0, r0, r1 - r0), {1});
  };
  if (needs_weight) out[1] = at::empty({weight.numel()}, grad.options());
  if (genes.some()) out[2] = at::zeros({gene_weight->numel()}, grad.options());
  // the gene weights' gradient from rows [r0, r1) of grad, while they are in cache
  auto gene_grads = [&](int64_t r0, int64_t r1) {
    if (!genes.some()) return;
    AT_DISPATCH_FLOATING_TYPES(buf.scalar_type(), "read_linear_backward", [&] {
      const scalar_t* g = grad.data_ptr<scalar_t>();
      scalar_t* gw = out[2]->data_ptr<scalar_t>();
      const scalar_t* v = value.has_value() ? value->data_ptr<scalar_t>() : nullptr;
      genes.each(r0, r1, [&](int64_t j, const int64_t* e) {
        const scalar_t* src = g + e[0] * B + e[3];
        scalar_t* dst = gw + e[2];
        for (int64_t r = 0; r < e[1]; ++r) {
          scalar_t add = v ? src[r * B] * v[j] : src[r * B];
          dst[r] += add;
        }
      });
    });
  };
  int64_t most = scratch_rows(n, k, B, chunk);
  // rows shorter than 512 bytes: split among threads, each row's piece costs more in loop overhead than in adds,
  // so the input gradient is made whole and added by rows_add_ (one thread per destination row, same order)
  bool whole = B * int64_t(buf.element_size()) < 512;
  at::Tensor s_in = at::empty({needs_weight ? most : 0, B}, buf.options());
  at::Tensor s_grad = at::empty({grad_buf.has_value() ? (whole ? index.numel() : most) : 0, B}, buf.options());
  int64_t woff = 0, ioff = 0;
  for (size_t q = 0; q < n.size(); ++q) {
    if (!k[q]) {
      gene_grads(start[q], start[q] + n[q] * w[q]);
      bias_grads(start[q], start[q] + n[q] * w[q]);
      continue;
    }
    at::Tensor gq = grad.narrow(0, start[q], n[q] * w[q]).view({n[q], w[q], B});
    at::Tensor W = weight.narrow(0, woff, n[q] * w[q] * k[q]).view({n[q], w[q], k[q]});
    int64_t per = chunk_terms(n[q], k[q], B, chunk);
    for (int64_t i0 = 0; i0 < n[q]; i0 += per) {
      int64_t m = std::min(per, n[q] - i0);
      at::Tensor g = gq.narrow(0, i0, m);
      at::Tensor idx = index.narrow(0, ioff + i0 * k[q], m * k[q]);
      if (needs_weight) {
        at::Tensor s = s_in.narrow(0, 0, m * k[q]);
        at::index_select_out(s, buf, 0, idx);
        at::Tensor dst = out[1]->narrow(0, woff + i0 * w[q] * k[q], m * w[q] * k[q]).view({m, w[q], k[q]});
        at::bmm_out(dst, g, s.view({m, k[q], B}).transpose(1, 2));
      }
      gene_grads(start[q] + i0 * w[q], start[q] + (i0 + m) * w[q]);  // g is in cache
      bias_grads(start[q] + i0 * w[q], start[q] + (i0 + m) * w[q]);
      if (grad_buf.has_value()) {
        at::Tensor s = s_grad.narrow(0, whole ? ioff + i0 * k[q] : 0, m * k[q]);
        at::Tensor sv = s.view({m, k[q], B});
        at::bmm_out(sv, W.narrow(0, i0, m).transpose(1, 2), g);
        if (whole) continue;
        AT_DISPATCH_FLOATING_TYPES(buf.scalar_type(), "read_linear_backward", [&] {
          scalar_t* t = grad_buf->data_ptr<scalar_t>();
          const scalar_t* src = s.data_ptr<scalar_t>();
          const int64_t* dest = idx.data_ptr<int64_t>();
          int64_t count = m * k[q];
          at::parallel_for(0, B, 16, [&](int64_t c0, int64_t c1) {
            for (int64_t r = 0; r < count; ++r) {
              if (dest[r]) axpy(t + dest[r] * B + c0, scalar_t(1), src + r * B + c0, c1 - c0);
            }
          });
        });
      }
    }
    woff += n[q] * w[q] * k[q];
    ioff += n[q] * k[q];
  }
  if (grad_buf.has_value() && whole) rows_add_(*grad_buf, s_grad, order, dest, ptr);
  TORCH_CHECK_VALUE(genes.applied == genes.M, "read_linear_backward: ", genes.M - genes.applied,
                    " gene slots outside the buckets");
  TORCH_CHECK_VALUE(!needs_bias || summed == rows, "read_linear_backward: the buckets cover ", summed, " of ", rows,
                    " rows");
  return out;
}

// ---- tanh then batch norm per row, in training (norm_order act_norm, the default) -----------------------------
// The stratum tensor z [R_s, B] is one neuron per row; batch norm's statistics are per row over the batch. In row
// blocks of 512 KiB (in L2): t = tanh(z) (ATen's vectorized kernel), then per row its mean and biased variance
// (sixteen lanes of partial sums, as `dot`), and h = (t - mean) * invstd * gain + shift written to h, or only to
// `dest` (the stratum's rows of the activation buffer) when given, where separate ops read and wrote the whole
// tensor once each (tanh, two passes of batch norm, the copy into the buffer); with the stratum's heads, each
// term's head is summed from its rows of h while they are in cache (where the next stratum's read read them
// again). Backward likewise per row, the heads' gradient added to the row's on the fly.
namespace {

// Row sums for batch norm, in lanes as `dot`: of x, of (x - m)^2, of g * (x - m).
template <typename T>
DCELL_VECTOR_CLONES T sum(const T* __restrict x, int64_t n) {
  return lane_sum<T>(n, [&](int64_t c) { return x[c]; });
}

template <typename T>
DCELL_VECTOR_CLONES T centered_squares(const T* __restrict x, T m, int64_t n) {
  return lane_sum<T>(n, [&](int64_t c) { return (x[c] - m) * (x[c] - m); });
}

template <typename T>
DCELL_VECTOR_CLONES T centered_dot(const T* __restrict g, const T* __restrict x, T m, int64_t n) {
  return lane_sum<T>(n, [&](int64_t c) { return g[c] * (x[c] - m); });
}

template <typename T>
DCELL_VECTOR_CLONES void affine(T* __restrict out, const T* __restrict x, T m, T scale, T shift, int64_t n) {
  for (int64_t c = 0; c < n; ++c) out[c] = (x[c] - m) * scale + shift;
}

// out = scale * (g - a - xhat * b) * (1 - x^2), xhat = (x - m) * inv
template <typename T>
DCELL_VECTOR_CLONES void norm_tanh_grad(T* __restrict out, const T* __restrict g, const T* __restrict x, T m, T inv,
                                        T scale, T a, T b, int64_t n) {
  for (int64_t c = 0; c < n; ++c) out[c] = scale * (g[c] - a - (x[c] - m) * inv * b) * (T(1) - x[c] * x[c]);
}

void check_rows(const at::Tensor& t, int64_t rows, int64_t batch, at::ScalarType dtype, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu() && t.is_contiguous() && t.scalar_type() == dtype && t.dim() == 2 &&
                    t.size(0) == rows && t.size(1) == batch, "tanh_norm: ", name, " must be a contiguous ", dtype,
                    " CPU [", rows, ", ", batch, "] tensor, got ", t.sizes(), " ", t.scalar_type());
}

void check_vector(const at::Tensor& t, int64_t rows, at::ScalarType dtype, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu() && t.is_contiguous() && t.scalar_type() == dtype && t.numel() == rows,
                    "tanh_norm: ", name, " must be a contiguous ", dtype, " CPU vector of ", rows, " rows");
}

}  // namespace

namespace {

// Row blocks of tanh_norm_* (each tanh'ed by one ATen call, then its rows, in L2, one by one); with the heads of
// the stratum, its terms in bucket-slot order (term i's rows row[i] .. row[i] + width[i] - 1, one after another
// from row 0 to R), the blocks cut at term boundaries (heads[i] is written by one thread).
struct TermBlocks {
  Ints row, width, cut, tcut;  // cut: block b is rows [cut[b], cut[b + 1]), terms [tcut[b], tcut[b + 1])
  TermBlocks(int64_t R, int64_t B, const Opt& head_weight, const Opt& head_bias, const Ints& n, const Ints& w,
             const Ints& start, at::ScalarType dtype) {
    // 512 KiB of float rows, or fewer so that every thread gets blocks of a small stratum
    int64_t per = std::max<int64_t>(1, std::min<int64_t>((int64_t{1} << 17) / std::max<int64_t>(B, 1),
                                                         R / (2 * int64_t(at::get_num_threads()))));
    if (!head_weight.has_value()) {
      for (int64_t r = 0; r < R; r += per) cut.push_back(r);
      cut.push_back(R);
      return;
    }
    TORCH_CHECK_VALUE(head_bias.has_value(), "tanh_norm: head weights without head biases");
    check_vector(*head_weight, R, dtype, "head_weight");
    std::tie(row, width) = term_rows(n, w, start);
    int64_t T = int64_t(row.size());
    check_vector(*head_bias, T, dtype, "head_bias");
    cut.push_back(0);
    tcut.push_back(0);
    for (int64_t i = 0; i < T; ++i) {
      TORCH_CHECK_VALUE(row[i] == (i ? row[i - 1] + width[i - 1] : 0), "tanh_norm: the terms' rows must follow "
                        "one another from row 0, term ", i, " starts at row ", row[i]);
      int64_t end = row[i] + width[i];
      if (end - cut.back() >= per || i == T - 1) {
        cut.push_back(end);
        tcut.push_back(i + 1);
      }
    }
    TORCH_CHECK_VALUE(cut.back() == R, "tanh_norm: the terms cover ", cut.back(), " rows of ", R);
  }
  bool heads() const { return !tcut.empty(); }
};

}  // namespace

// Returns h [R, B] (`dest` itself when given: the output is written there only), t = tanh(z) [R, B] (for
// backward), per row mean, invstd = 1 / sqrt(var + eps) and the biased variance var (for the running statistics),
// [R] each, and, with head_weight [R] and head_bias [T] (the buckets n, w, start), the terms' heads [T, B]
// computed from h as heads_forward computes them, each term's rows read while in cache.
std::vector<at::Tensor> tanh_norm_forward(const at::Tensor& z, const at::Tensor& gain, const at::Tensor& shift,
                                          double eps, const Opt& dest, const Opt& head_weight, const Opt& head_bias,
                                          const Ints& n, const Ints& w, const Ints& start) {
  TORCH_CHECK_VALUE(z.dim() == 2 && (z.scalar_type() == at::kFloat || z.scalar_type() == at::kDouble),
                    "tanh_norm_forward: z must be a float or double [R, B] tensor, got ", z.sizes(), " ",
                    z.scalar_type());
  int64_t R = z.size(0), B = z.size(1);
  TORCH_CHECK_VALUE(B > 1, "tanh_norm_forward: batch norm needs more than one sample per row, got ", B);
  check_rows(z, R, B, z.scalar_type(), "z");
  check_vector(gain, R, z.scalar_type(), "gain");
  check_vector(shift, R, z.scalar_type(), "shift");
  if (dest.has_value()) check_rows(*dest, R, B, z.scalar_type(), "dest");
  TermBlocks blocks(R, B, head_weight, head_bias, n, w, start, z.scalar_type());
  at::Tensor h = dest.has_value() ? *dest : at::empty({R, B}, z.options()), t = at::empty({R, B}, z.options());
  at::Tensor mean = at::empty({R}, z.options()), invstd = at::empty({R}, z.options());
  at::Tensor var = at::empty({R}, z.options());
  at::Tensor heads = blocks.heads() ? at::empty({int64_t(blocks.row.size()), B}, z.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "tanh_norm_forward", [&] {
    const scalar_t* gp = gain.data_ptr<scalar_t>();
    const scalar_t* sp = shift.data_ptr<scalar_t>();
    scalar_t* tp = t.data_ptr<scalar_t>();
    scalar_t* hp = h.data_ptr<scalar_t>();
    scalar_t *mp = mean.data_ptr<scalar_t>(), *ip = invstd.data_ptr<scalar_t>(), *vp = var.data_ptr<scalar_t>();
    auto row_out = [&](int64_t r) {
      const scalar_t* row = tp + r * B;
      scalar_t m = sum(row, B) / scalar_t(B);
      scalar_t v = centered_squares(row, m, B) / scalar_t(B);
      scalar_t inv = scalar_t(1) / std::sqrt(v + scalar_t(eps));
      mp[r] = m;
      ip[r] = inv;
      vp[r] = v;
      affine(hp + r * B, row, m, inv * gp[r], sp[r], B);
    };
    at::parallel_for(0, int64_t(blocks.cut.size()) - 1, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        int64_t r0 = blocks.cut[b], r1 = blocks.cut[b + 1];
        at::Tensor tb = t.narrow(0, r0, r1 - r0);
        at::tanh_out(tb, z.narrow(0, r0, r1 - r0));
        if (!blocks.heads()) {
          for (int64_t r = r0; r < r1; ++r) row_out(r);
          continue;
        }
        const scalar_t* hw = head_weight->data_ptr<scalar_t>();
        const scalar_t* hb = head_bias->data_ptr<scalar_t>();
        scalar_t* heads_p = heads.data_ptr<scalar_t>();
        for (int64_t i = blocks.tcut[b]; i < blocks.tcut[b + 1]; ++i) {
          scalar_t* head = heads_p + i * B;
          for (int64_t c = 0; c < B; ++c) head[c] = hb[i];
          for (int64_t r = blocks.row[i]; r < blocks.row[i] + blocks.width[i]; ++r) {
            row_out(r);
            axpy(head, hw[r], hp + r * B, B);
          }
        }
      }
    });
  });
  return {h, t, mean, invstd, var, heads};
}

// Backward of tanh_norm_forward from grad [R, B] (undefined: zero) and, with the heads, their gradient
// grad_heads [T, B]: {z's gradient, gain's, shift's, the head weights' (with the heads)}. Per row, the head's
// input gradient head_weight * grad_heads is added to grad (as heads_backward adds it into the gradient buffer),
// the head weight's gradient is grad_heads . h (h made again from t), then dt = gain * invstd * (g - mean(g) -
// xhat * mean(g * xhat)) with xhat = (t - mean) * invstd, and dz = dt * (1 - t^2).
std::vector<at::Tensor> tanh_norm_backward(const Opt& grad, const at::Tensor& t, const at::Tensor& mean,
                                           const at::Tensor& invstd, const at::Tensor& gain, const at::Tensor& shift,
                                           const Opt& grad_heads, const Opt& head_weight, const Opt& head_bias,
                                           const Ints& n, const Ints& w, const Ints& start) {
  int64_t R = t.size(0), B = t.size(1);
  at::ScalarType dtype = t.scalar_type();
  check_rows(t, R, B, dtype, "t");
  if (grad.has_value()) check_rows(*grad, R, B, dtype, "the gradient");
  check_vector(mean, R, dtype, "mean");
  check_vector(invstd, R, dtype, "invstd");
  check_vector(gain, R, dtype, "gain");
  check_vector(shift, R, dtype, "shift");
  TermBlocks blocks(R, B, head_weight, head_bias, n, w, start, dtype);
  TORCH_CHECK_VALUE(blocks.heads() || grad.has_value(), "tanh_norm_backward: no gradient for the output");
  if (blocks.heads()) {
    TORCH_CHECK_VALUE(grad_heads.has_value(), "tanh_norm_backward: the heads need their gradient");
    check_rows(*grad_heads, int64_t(blocks.row.size()), B, dtype, "the heads' gradient");
  }
  at::Tensor dz = at::empty({R, B}, t.options());
  at::Tensor dgain = at::empty({R}, t.options()), dshift = at::empty({R}, t.options());
  at::Tensor dhead = blocks.heads() ? at::empty({R}, t.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(dtype, "tanh_norm_backward", [&] {
    const scalar_t* gp = grad.has_value() ? grad->data_ptr<scalar_t>() : nullptr;
    const scalar_t* tp = t.data_ptr<scalar_t>();
    const scalar_t *mp = mean.data_ptr<scalar_t>(), *ip = invstd.data_ptr<scalar_t>();
    const scalar_t *wp = gain.data_ptr<scalar_t>(), *sp = shift.data_ptr<scalar_t>();
    scalar_t *dp = dz.data_ptr<scalar_t>(), *gw = dgain.data_ptr<scalar_t>(), *gs = dshift.data_ptr<scalar_t>();
    // one row: its output gradient g (plus the head's), then the batch norm and tanh backward
    auto row_grad = [&](int64_t r, const scalar_t* g) {
      const scalar_t* x = tp + r * B;
      scalar_t m = mp[r], inv = ip[r];
      scalar_t sum_g = sum(g, B), sum_gx = centered_dot(g, x, m, B) * inv;
      gw[r] = sum_gx;
      gs[r] = sum_g;
      norm_tanh_grad(dp + r * B, g, x, m, inv, wp[r] * inv, sum_g / scalar_t(B), sum_gx / scalar_t(B), B);
    };
    at::parallel_for(0, int64_t(blocks.cut.size()) - 1, 1, [&](int64_t b0, int64_t b1) {
      if (!blocks.heads()) {
        for (int64_t r = blocks.cut[b0]; r < blocks.cut[b1]; ++r) row_grad(r, gp + r * B);
        return;
      }
      const scalar_t* ghp = grad_heads->data_ptr<scalar_t>();
      const scalar_t* hw = head_weight->data_ptr<scalar_t>();
      scalar_t* dh = dhead.data_ptr<scalar_t>();
      std::vector<scalar_t> g(B), o(B);
      for (int64_t i = blocks.tcut[b0]; i < blocks.tcut[b1]; ++i) {
        const scalar_t* gh = ghp + i * B;
        for (int64_t r = blocks.row[i]; r < blocks.row[i] + blocks.width[i]; ++r) {
          if (gp) {
            std::copy(gp + r * B, gp + (r + 1) * B, g.data());
          } else {
            std::fill(g.begin(), g.end(), scalar_t(0));
          }
          affine(o.data(), tp + r * B, mp[r], ip[r] * wp[r], sp[r], B);
          dh[r] = dot(gh, o.data(), B);
          axpy(g.data(), hw[r], gh, B);
          row_grad(r, g.data());
        }
      }
    });
  });
  return {dz, dgain, dshift, dhead};
}

// A stratum in perturbation form (dcell_core/nn/perturbed.py), tanh then batch norm in training, per term. Term
// i holds stratum rows row[i] .. row[i] + width[i] - 1 (one term after another from row 0), the first real[i] of
// them real, and m[i] perturbed samples samp[first[i] .. first[i] + m[i]) (distinct). Row r's pre-activations are
// z[zw[r]] (its wild type: every sample but those) and z[zw[r] + 1 + k] (at sample k of its term, real rows only:
// a padding row holds the wild type everywhere). A row's batch statistics count the wild-type value once per sample
// holding it, as batch norm of the dense row would.
namespace {

struct PairTerms {
  const int64_t *row, *width, *real, *m, *first, *cols, *samp, *zw;
  int64_t T, R, B, P, Z;
  PairTerms(const at::Tensor& terms, const at::Tensor& samp_t, const at::Tensor& zw_t, int64_t rows, int64_t batch,
            int64_t z_size) {
    TORCH_CHECK_VALUE(terms.device().is_cpu() && terms.scalar_type() == at::kLong && terms.dim() == 2 &&
                      terms.size(0) == 6 && terms.is_contiguous(), "pair_tanh_norm: terms must be a contiguous "
                      "int64 CPU [6, T] tensor (row, width, real, m, first, cols), got ", terms.sizes());
    for (const at::Tensor* t : {&samp_t, &zw_t}) {
      TORCH_CHECK_VALUE(t->device().is_cpu() && t->scalar_type() == at::kLong && t->dim() == 1 &&
                        t->is_contiguous(), "pair_tanh_norm: samp and zw must be contiguous int64 CPU vectors");
    }
    T = terms.size(1);
    R = rows;
    B = batch;
    P = samp_t.numel();
    Z = z_size;
    const int64_t* p = terms.data_ptr<int64_t>();
    row = p;
    width = p + T;
    real = p + 2 * T;
    m = p + 3 * T;
    first = p + 4 * T;
    cols = p + 5 * T;
    samp = samp_t.data_ptr<int64_t>();
    zw = zw_t.data_ptr<int64_t>();
    TORCH_CHECK_VALUE(zw_t.numel() == R, "pair_tanh_norm: zw has ", zw_t.numel(), " rows, the stratum ", R);
    for (int64_t i = 0; i < T; ++i) {
      TORCH_CHECK_VALUE(row[i] == (i ? row[i - 1] + width[i - 1] : 0) && real[i] >= 0 && real[i] <= width[i] &&
                        m[i] >= 0 && m[i] <= B && m[i] + 1 <= cols[i] && first[i] >= 0 && first[i] + m[i] <= P,
                        "pair_tanh_norm: term ", i, " is inconsistent (row ", row[i], ", width ", width[i], ", real ",
                        real[i], ", m ", m[i], ", first ", first[i], ", cols ", cols[i], ")");
      for (int64_t k = 0; k < m[i]; ++k) {
        int64_t b = samp[first[i] + k];
        TORCH_CHECK_VALUE(b >= 0 && b < B, "pair_tanh_norm: term ", i, " has sample ", b, " outside [0, ", B, ")");
      }
      for (int64_t r = row[i]; r < row[i] + width[i]; ++r) {
        TORCH_CHECK_VALUE(zw[r] >= 0 && zw[r] + cols[i] <= Z, "pair_tanh_norm: row ", r, "'s columns at ", zw[r],
                          " leave z (", Z, " elements)");
      }
    }
    TORCH_CHECK_VALUE(T == 0 || row[T - 1] + width[T - 1] == R, "pair_tanh_norm: the terms cover ",
                      T ? row[T - 1] + width[T - 1] : 0, " rows of ", R);
    int64_t columns = 0;
    for (int64_t i = 0; i < T; ++i) columns += width[i] * cols[i];
    TORCH_CHECK_VALUE(columns == Z, "pair_tanh_norm: the rows' columns are ", columns, " elements, z ", Z);
  }
  int64_t entries(int64_t i, int64_t r) const { return r - row[i] < real[i] ? m[i] : 0; }
};

template <typename T>
DCELL_VECTOR_CLONES void fill_row(T* __restrict out, T v, int64_t n) {
  for (int64_t c = 0; c < n; ++c) out[c] = v;
}

}  // namespace

// Forward: writes the dense output of the stratum into dest [R, B] and returns {its wild-type output [R], mean,
// invstd, biased var [R], the heads [T, B] (head_bias + head_weight . output, per term), tanh(z) (one vectorized
// ATen call; for backward)}.
std::vector<at::Tensor> pair_tanh_norm_forward(const at::Tensor& z, const at::Tensor& terms, const at::Tensor& samp,
                                               const at::Tensor& zw, const at::Tensor& gain, const at::Tensor& shift,
                                               const at::Tensor& head_weight, const at::Tensor& head_bias,
                                               double eps, const at::Tensor& dest) {
  TORCH_CHECK_VALUE(z.dim() == 1 && (z.scalar_type() == at::kFloat || z.scalar_type() == at::kDouble) &&
                    z.is_contiguous() && z.device().is_cpu(), "pair_tanh_norm_forward: z must be a contiguous "
                    "float or double CPU vector, got ", z.sizes(), " ", z.scalar_type());
  TORCH_CHECK_VALUE(dest.dim() == 2, "pair_tanh_norm_forward: dest must be [R, B]");
  int64_t R = dest.size(0), B = dest.size(1);
  TORCH_CHECK_VALUE(B > 1, "pair_tanh_norm_forward: batch norm needs more than one sample per row, got ", B);
  at::ScalarType dtype = z.scalar_type();
  check_rows(dest, R, B, dtype, "dest");
  check_vector(gain, R, dtype, "gain");
  check_vector(shift, R, dtype, "shift");
  check_vector(head_weight, R, dtype, "head_weight");
  PairTerms pt(terms, samp, zw, R, B, z.numel());
  check_vector(head_bias, pt.T, dtype, "head_bias");
  at::Tensor wild = at::empty({R}, z.options()), mean = at::empty({R}, z.options());
  at::Tensor invstd = at::empty({R}, z.options()), var = at::empty({R}, z.options());
  at::Tensor heads = at::empty({pt.T, B}, z.options());
  at::Tensor t = at::tanh(z);
  AT_DISPATCH_FLOATING_TYPES(dtype, "pair_tanh_norm_forward", [&] {
    const scalar_t *zp = t.data_ptr<scalar_t>(), *gp = gain.data_ptr<scalar_t>(), *sp = shift.data_ptr<scalar_t>();
    const scalar_t *hw = head_weight.data_ptr<scalar_t>(), *hb = head_bias.data_ptr<scalar_t>();
    scalar_t *dp = dest.data_ptr<scalar_t>(), *wp = wild.data_ptr<scalar_t>(), *mp = mean.data_ptr<scalar_t>();
    scalar_t *ip = invstd.data_ptr<scalar_t>(), *vp = var.data_ptr<scalar_t>(), *hp = heads.data_ptr<scalar_t>();
    const scalar_t inv_eps = scalar_t(1) / std::sqrt(scalar_t(eps));
    at::parallel_for(0, pt.T, term_grain(B), [&](int64_t i0, int64_t i1) {
      std::vector<scalar_t> a, delta;
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t* S = pt.samp + pt.first[i];
        delta.assign(pt.m[i], scalar_t(0));
        scalar_t head = hb[i];
        for (int64_t r = pt.row[i]; r < pt.row[i] + pt.width[i]; ++r) {
          int64_t mm = pt.entries(i, r);
          const scalar_t* zr = zp + pt.zw[r];
          if (mm == 0) {  // every sample at the wild type: mean a0, variance 0, the output the shift
            mp[r] = zr[0];
            ip[r] = inv_eps;
            vp[r] = 0;
            wp[r] = sp[r];
            fill_row(dp + r * B, sp[r], B);
            head += hw[r] * sp[r];
            continue;
          }
          a.resize(mm);
          scalar_t a0 = zr[0], total = 0;
          for (int64_t k = 0; k < mm; ++k) total += (a[k] = zr[1 + k]);
          scalar_t held = scalar_t(B - mm);
          scalar_t mu = (held * a0 + total) / scalar_t(B);
          scalar_t squares = 0;
          for (int64_t k = 0; k < mm; ++k) squares += (a[k] - mu) * (a[k] - mu);
          scalar_t v = (held * (a0 - mu) * (a0 - mu) + squares) / scalar_t(B);
          scalar_t inv = scalar_t(1) / std::sqrt(v + scalar_t(eps)), scale = inv * gp[r];
          scalar_t o0 = (a0 - mu) * scale + sp[r];
          mp[r] = mu;
          ip[r] = inv;
          vp[r] = v;
          wp[r] = o0;
          scalar_t* out = dp + r * B;
          fill_row(out, o0, B);
          head += hw[r] * o0;
          for (int64_t k = 0; k < mm; ++k) {
            scalar_t o = (a[k] - mu) * scale + sp[r];
            out[S[k]] = o;
            delta[k] += hw[r] * (o - o0);
          }
        }
        scalar_t* h = hp + i * B;
        fill_row(h, head, B);
        for (int64_t k = 0; k < pt.m[i]; ++k) h[S[k]] += delta[k];
      }
    });
  });
  return {wild, mean, invstd, var, heads, t};
}

// Backward of pair_tanh_norm_forward (t = its tanh(z)) from the gradients of the dense output grad [R, B], of the
// wild-type output grad_wild [R] and of the heads grad_heads [T, B] (each undefined: zero): {z's gradient (every
// column of every row's block written, those past its entries zero), gain's, shift's, head_weight's,
// head_bias's}. Per row, g0 = the gradient summed over the samples at the wild type (plus grad_wild), g_k at
// entry k (each with the head's part head_weight * grad_heads), then batch norm's backward with the wild type
// counted once per such sample, and tanh's.
std::vector<at::Tensor> pair_tanh_norm_backward(const Opt& grad, const Opt& grad_wild, const Opt& grad_heads,
                                                const at::Tensor& t, const at::Tensor& terms, const at::Tensor& samp,
                                                const at::Tensor& zw, const at::Tensor& mean,
                                                const at::Tensor& invstd, const at::Tensor& gain,
                                                const at::Tensor& shift, const at::Tensor& head_weight, int64_t B) {
  TORCH_CHECK_VALUE(t.dim() == 1 && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble) &&
                    t.is_contiguous() && t.device().is_cpu(), "pair_tanh_norm_backward: t must be a contiguous "
                    "float or double CPU vector, got ", t.sizes(), " ", t.scalar_type());
  at::ScalarType dtype = t.scalar_type();
  int64_t R = mean.numel();
  check_vector(mean, R, dtype, "mean");
  check_vector(invstd, R, dtype, "invstd");
  check_vector(gain, R, dtype, "gain");
  check_vector(shift, R, dtype, "shift");
  check_vector(head_weight, R, dtype, "head_weight");
  PairTerms pt(terms, samp, zw, R, B, t.numel());
  if (grad.has_value()) check_rows(*grad, R, B, dtype, "the gradient");
  if (grad_wild.has_value()) check_vector(*grad_wild, R, dtype, "the wild-type gradient");
  if (grad_heads.has_value()) check_rows(*grad_heads, pt.T, B, dtype, "the heads' gradient");
  at::Tensor dz = at::empty({t.numel()}, t.options());
  at::Tensor dgain = at::empty({R}, t.options()), dshift = at::empty({R}, t.options());
  at::Tensor dhw = at::empty({R}, t.options()), dhb = at::empty({pt.T}, t.options());
  AT_DISPATCH_FLOATING_TYPES(dtype, "pair_tanh_norm_backward", [&] {
    const scalar_t *zp = t.data_ptr<scalar_t>(), *mp = mean.data_ptr<scalar_t>(), *ip = invstd.data_ptr<scalar_t>();
    const scalar_t *gp = gain.data_ptr<scalar_t>(), *sp = shift.data_ptr<scalar_t>();
    const scalar_t* hw = head_weight.data_ptr<scalar_t>();
    const scalar_t* G = grad.has_value() ? grad->data_ptr<scalar_t>() : nullptr;
    const scalar_t* GW = grad_wild.has_value() ? grad_wild->data_ptr<scalar_t>() : nullptr;
    const scalar_t* GH = grad_heads.has_value() ? grad_heads->data_ptr<scalar_t>() : nullptr;
    scalar_t *dzp = dz.data_ptr<scalar_t>(), *dgp = dgain.data_ptr<scalar_t>(), *dsp = dshift.data_ptr<scalar_t>();
    scalar_t *dwp = dhw.data_ptr<scalar_t>(), *dbp = dhb.data_ptr<scalar_t>();
    at::parallel_for(0, pt.T, term_grain(B), [&](int64_t i0, int64_t i1) {
      std::vector<scalar_t> a, g, gh;
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t* S = pt.samp + pt.first[i];
        int64_t m = pt.m[i];
        gh.assign(m, scalar_t(0));
        scalar_t gh_all = 0, gh_held = 0;
        if (GH) {
          const scalar_t* ghr = GH + i * B;
          gh_all = sum(ghr, B);
          for (int64_t k = 0; k < m; ++k) gh[k] = ghr[S[k]];
        }
        dbp[i] = gh_all;
        for (int64_t r = pt.row[i]; r < pt.row[i] + pt.width[i]; ++r) {
          int64_t mm = pt.entries(i, r);
          const scalar_t* zr = zp + pt.zw[r];
          if (mm == 0) {  // a constant row: the output is the shift, no gradient reaches z or the gain
            scalar_t g0 = (G ? sum(G + r * B, B) : scalar_t(0)) + hw[r] * gh_all + (GW ? GW[r] : scalar_t(0));
            dwp[r] = sp[r] * gh_all;
            dgp[r] = 0;
            dsp[r] = g0;
            std::fill(dzp + pt.zw[r], dzp + pt.zw[r] + pt.cols[i], scalar_t(0));
            continue;
          }
          a.resize(mm);
          g.resize(mm);
          scalar_t mu = mp[r], inv = ip[r], scale = inv * gp[r];
          scalar_t a0 = zr[0];
          scalar_t o0 = (a0 - mu) * scale + sp[r];
          gh_held = gh_all;
          scalar_t g0 = G ? sum(G + r * B, B) : scalar_t(0), dh = 0;
          for (int64_t k = 0; k < mm; ++k) {
            a[k] = zr[1 + k];
            scalar_t gk = G ? G[r * B + S[k]] : scalar_t(0);
            g0 -= gk;
            gh_held -= gh[k];
            g[k] = gk + hw[r] * gh[k];
            dh += ((a[k] - mu) * scale + sp[r]) * gh[k];
          }
          g0 += hw[r] * gh_held + (GW ? GW[r] : scalar_t(0));
          dwp[r] = o0 * gh_held + dh;
          scalar_t xh0 = (a0 - mu) * inv, sum_g = g0, sum_gx = g0 * xh0;
          for (int64_t k = 0; k < mm; ++k) {
            sum_g += g[k];
            sum_gx += g[k] * (a[k] - mu) * inv;
          }
          dgp[r] = sum_gx;
          dsp[r] = sum_g;
          scalar_t held = scalar_t(B - mm), cg = sum_g / scalar_t(B), cx = sum_gx / scalar_t(B);
          scalar_t* out = dzp + pt.zw[r];
          out[0] = scale * (g0 - held * cg - held * xh0 * cx) * (scalar_t(1) - a0 * a0);
          for (int64_t k = 0; k < mm; ++k) {
            out[1 + k] = scale * (g[k] - cg - (a[k] - mu) * inv * cx) * (scalar_t(1) - a[k] * a[k]);
          }
          for (int64_t k = 1 + mm; k < pt.cols[i]; ++k) out[k] = 0;
        }
      }
    });
  });
  return {dz, dgain, dshift, dhw, dhb};
}

// The read of a stratum in perturbation form (dcell_core/nn/perturbed.py) from the flat activation buffer, per
// tier g with children (n[g] terms, c[g] input rows each, cols[g] columns): block [n, c, cols], element (j, i, 0)
// = buf[wild[e]] (the wild-type value of term j's input row i, e its place in one [sum n * c] order over the
// tiers) and element (j, i, k >= 1) = buf[row[e] * batch + samp[soff[g] + j * cols + k]]. One index per input
// row instead of one per element; backward adds the gradient back in the same element order.
namespace {

struct PairRead {
  const int64_t *row, *wild, *samp;
  Ints n, c, cols, soff, out;  // out: each tier's first element in the flat read
  int64_t batch;
  PairRead(const at::Tensor& row_t, const at::Tensor& wild_t, const at::Tensor& samp_t, const Ints& n_,
           const Ints& c_, const Ints& cols_, const Ints& soff_, int64_t batch_, int64_t size)
      : n(n_), c(c_), cols(cols_), soff(soff_), batch(batch_) {
    for (const at::Tensor* t : {&row_t, &wild_t, &samp_t}) {
      TORCH_CHECK_VALUE(t->device().is_cpu() && t->scalar_type() == at::kLong && t->dim() == 1 &&
                        t->is_contiguous(), "pair_read: row, wild and samp must be contiguous int64 CPU vectors");
    }
    TORCH_CHECK_VALUE(n.size() == c.size() && n.size() == cols.size() && n.size() == soff.size(),
                      "pair_read: n, c, cols and soff must be as long as each other");
    row = row_t.data_ptr<int64_t>();
    wild = wild_t.data_ptr<int64_t>();
    samp = samp_t.data_ptr<int64_t>();
    int64_t rows = 0, total = 0;
    for (size_t g = 0; g < n.size(); ++g) {
      TORCH_CHECK_VALUE(n[g] >= 0 && c[g] > 0 && cols[g] > 0 && soff[g] >= 0 &&
                        soff[g] + n[g] * cols[g] <= samp_t.numel(), "pair_read: tier ", g, " (n ", n[g], ", c ",
                        c[g], ", cols ", cols[g], ", soff ", soff[g], ") leaves samp (", samp_t.numel(), ")");
      out.push_back(total);
      rows += n[g] * c[g];
      total += n[g] * c[g] * cols[g];
    }
    out.push_back(total);
    TORCH_CHECK_VALUE(row_t.numel() == rows && wild_t.numel() == rows, "pair_read: ", rows, " input rows in the "
                      "tiers, row has ", row_t.numel(), ", wild ", wild_t.numel());
    for (int64_t e = 0; e < rows; ++e) {
      TORCH_CHECK_VALUE(row[e] >= 0 && (row[e] + 1) * batch <= size && wild[e] >= 0 && wild[e] < size,
                        "pair_read: input row ", e, " (buffer row ", row[e], ", wild-type position ", wild[e],
                        ") leaves the buffer (", size, " elements)");
    }
    for (int64_t i = 0; i < samp_t.numel(); ++i) {
      TORCH_CHECK_VALUE(samp[i] >= 0 && samp[i] < batch, "pair_read: sample ", samp[i], " at ", i,
                        " outside [0, ", batch, ")");
    }
  }
  // f(flat read position, buffer position) for every element, tier by tier, in order
  template <typename F>
  void each(int64_t g, const F& f) const {
    int64_t e = 0, o = out[g];
    for (int64_t h = 0; h < int64_t(g); ++h) e += n[h] * c[h];
    for (int64_t j = 0; j < n[g]; ++j) {
      const int64_t* S = samp + soff[g] + j * cols[g];
      for (int64_t i = 0; i < c[g]; ++i, ++e) {
        f(o++, wild[e]);
        int64_t base = row[e] * batch;
        for (int64_t k = 1; k < cols[g]; ++k) f(o++, base + S[k]);
      }
    }
  }
};

}  // namespace

at::Tensor pair_read_forward(const at::Tensor& buf, const at::Tensor& row, const at::Tensor& wild,
                             const at::Tensor& samp, const Ints& n, const Ints& c, const Ints& cols, const Ints& soff) {
  TORCH_CHECK_VALUE(buf.dim() == 2 && buf.is_contiguous() && buf.device().is_cpu() &&
                    (buf.scalar_type() == at::kFloat || buf.scalar_type() == at::kDouble),
                    "pair_read_forward: buf must be a contiguous float or double CPU [rows, B] tensor");
  PairRead pr(row, wild, samp, n, c, cols, soff, buf.size(1), buf.numel());
  at::Tensor out = at::empty({pr.out.back()}, buf.options());
  AT_DISPATCH_FLOATING_TYPES(buf.scalar_type(), "pair_read_forward", [&] {
    const scalar_t* bp = buf.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, int64_t(n.size()), 1, [&](int64_t g0, int64_t g1) {
      for (int64_t g = g0; g < g1; ++g) pr.each(g, [&](int64_t o, int64_t p) { op[o] = bp[p]; });
    });
  });
  return out;
}

// target.view(-1)[position of read element o] += grad[o], in element order (one thread).
void pair_read_backward_(at::Tensor& target, const at::Tensor& grad, const at::Tensor& row, const at::Tensor& wild,
                         const at::Tensor& samp, const Ints& n, const Ints& c, const Ints& cols, const Ints& soff) {
  TORCH_CHECK_VALUE(target.dim() == 2 && target.is_contiguous() && target.device().is_cpu() &&
                    grad.scalar_type() == target.scalar_type() && grad.is_contiguous() && grad.dim() == 1 &&
                    (target.scalar_type() == at::kFloat || target.scalar_type() == at::kDouble),
                    "pair_read_backward_: target must be a contiguous float or double CPU [rows, B] tensor and grad "
                    "a contiguous vector of its dtype");
  PairRead pr(row, wild, samp, n, c, cols, soff, target.size(1), target.numel());
  TORCH_CHECK_VALUE(grad.numel() == pr.out.back(), "pair_read_backward_: the gradient has ", grad.numel(),
                    " elements, the read ", pr.out.back());
  AT_DISPATCH_FLOATING_TYPES(target.scalar_type(), "pair_read_backward_", [&] {
    scalar_t* tp = target.data_ptr<scalar_t>();
    const scalar_t* gp = grad.data_ptr<scalar_t>();
    for (int64_t g = 0; g < int64_t(n.size()); ++g) pr.each(g, [&](int64_t o, int64_t p) { tp[p] += gp[o]; });
  });
}

// ragged_ranges (dcell_core/nn/common.py) on the CPU: the runs base[i], base[i] + stride, ..., base[i] +
// (length[i] - 1) * stride concatenated into a fresh int64 [total]; one write per element, runs split among
// threads (about 32 Ki elements per task).
at::Tensor ragged_ranges(const at::Tensor& base, const at::Tensor& length, int64_t stride, int64_t total) {
  TORCH_CHECK_VALUE(base.device().is_cpu() && length.device().is_cpu() && base.scalar_type() == at::kLong &&
                    length.scalar_type() == at::kLong && base.dim() == 1 && length.dim() == 1 &&
                    base.numel() == length.numel() && base.is_contiguous() && length.is_contiguous(),
                    "ragged_ranges: base and length must be contiguous int64 CPU vectors of one length, got ",
                    base.sizes(), " ", base.scalar_type(), " and ", length.sizes(), " ", length.scalar_type());
  int64_t m = base.numel();
  const int64_t *bp = base.data_ptr<int64_t>(), *lp = length.data_ptr<int64_t>();
  Ints first(m + 1, 0);
  for (int64_t i = 0; i < m; ++i) {
    TORCH_CHECK_VALUE(lp[i] >= 1, "ragged_ranges: every run needs length >= 1, got ", lp[i]);
    first[i + 1] = first[i] + lp[i];
  }
  TORCH_CHECK_VALUE(first[m] == total, "ragged_ranges: total ", total, " is not the sum of the lengths, ", first[m]);
  at::Tensor out = at::empty({total}, base.options());
  int64_t* op = out.data_ptr<int64_t>();
  int64_t grain = std::max<int64_t>(1, m * (int64_t(1) << 15) / std::max<int64_t>(total, 1));
  at::parallel_for(0, m, grain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      int64_t* o = op + first[i];
      int64_t v = bp[i];
      for (int64_t r = 0, n = lp[i]; r < n; ++r) o[r] = v + r * stride;
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("ragged_ranges", &ragged_ranges);
  m.def("linear_forward", &linear_forward);
  m.def("linear_backward", &linear_backward);
  m.def("heads_forward", &heads_forward);
  m.def("heads_backward", &heads_backward);
  m.def("read_linear_forward", &read_linear_forward);
  m.def("read_linear_backward", &read_linear_backward);
  m.def("tanh_norm_forward", &tanh_norm_forward);
  m.def("tanh_norm_backward", &tanh_norm_backward);
  m.def("pair_tanh_norm_forward", &pair_tanh_norm_forward);
  m.def("pair_read_forward", &pair_read_forward);
  m.def("pair_read_backward_", &pair_read_backward_);
  m.def("pair_tanh_norm_backward", &pair_tanh_norm_backward);
}

// rows_add_ as a dispatcher op (torch.ops.dcell.rows_add_): visible to the profiler and to dispatch modes like
// every ATen op the other functions call.
TORCH_LIBRARY(dcell, m) {
  m.def("rows_add_(Tensor(a!) target, Tensor src, Tensor order, Tensor dest, Tensor ptr) -> ()");
}

TORCH_LIBRARY_IMPL(dcell, CPU, m) { m.impl("rows_add_", &rows_add_); }
