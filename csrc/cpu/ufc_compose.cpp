// CPU kernels of the UFC composition: infer_fast_C::ufc_compose and
// infer_fast_C::ufc_compose_grad_ufc. Semantics: infer_fast/ops/backends.py ("Backend
// contract"), math: docs/KERNELS.md section 2.
//
// Output pixel (h, w) of group g reads source pixel (hs, ws) with
//   hs = (h - shifts[g, 0]) mod H,  wr = W-1-w if flips[g] else w,  ws = (wr - shifts[g, 1]) mod W.
// Along one output row, ws runs over at most two contiguous segments of the source row
// (ascending without flip, descending with flip). Both kernels compute in source order
// over contiguous rows (natural, ufc, grad_ufc) and move the one row that is in output
// order (out, grad_out) through those segments: no per-pixel gathers. fp16/bf16 rows go
// through fp32 buffers (see common.h); all arithmetic runs in the accumulate dtype.
#include "common.h"
#include "ops.h"

#include <utility>
#include <vector>

namespace infer_fast {
namespace cpu {
namespace {

constexpr const char* kCompose = "ufc_compose";
constexpr const char* kGrad = "ufc_compose_grad_ufc";
constexpr int64_t kGrainElems = 32768;

// A piece of an output row: output columns [w0, w0 + len) read source columns
// s0, s0 + dir, s0 + 2 dir, ...
struct Segment {
  int64_t w0, s0, len;
};

// The (at most two) segments of a row of width W for column shift sw in [0, W) and flip.
inline int row_segments(int64_t W, int64_t sw, bool flip, Segment* seg) {
  int n = 0;
  if (!flip) {
    // w in [sw, W): ws = w - sw;  w in [0, sw): ws = w - sw + W
    if (W - sw > 0) seg[n++] = {sw, 0, W - sw};
    if (sw > 0) seg[n++] = {0, W - sw, sw};
  } else {
    // w in [0, W - sw): ws = W-1-sw-w;  w in [W - sw, W): ws = 2W-1-sw-w
    if (W - sw > 0) seg[n++] = {0, W - 1 - sw, W - sw};
    if (sw > 0) seg[n++] = {W - sw, W - 1, sw};
  }
  return n;
}

// Per-group roll/flip parameters, shifts reduced to [0, H) x [0, W) as torch.roll does.
struct GroupParams {
  int64_t k, sh, sw;
  bool flip;
};

std::vector<GroupParams> group_params(const at::Tensor& index, const std::optional<at::Tensor>& shifts,
                                      const std::optional<at::Tensor>& flips, int64_t K, int64_t H, int64_t W,
                                      const char* op) {
  const int64_t G = index.size(0);
  const int64_t* ip = index.const_data_ptr<int64_t>();
  const int64_t* sp = shifts.has_value() ? shifts->const_data_ptr<int64_t>() : nullptr;
  const uint8_t* fp = flips.has_value() ? static_cast<const uint8_t*>(flips->const_data_ptr()) : nullptr;
  std::vector<GroupParams> params(G);
  contract::check_index_values(index, K, op);  // (this launcher's own: natural is read at index[g])
  for (int64_t g = 0; g < G; ++g) {
    const int64_t k = ip[g];
    params[g] = {k, sp != nullptr ? pos_mod(sp[2 * g], H) : 0, sp != nullptr ? pos_mod(sp[2 * g + 1], W) : 0,
                 fp != nullptr && fp[g] != 0};
  }
  return params;
}

// The checks of both launchers: the contract's (contract::check_compose_inputs, defined once
// in functional.cpp, which the functional ops ran already) for their own memory safety, as
// Python can call the launchers directly (infer_fast._C.launchers), on the CPU.
void check_inputs(const at::Tensor& natural, const at::Tensor& ufc, const at::Tensor& index,
                  const std::optional<at::Tensor>& shifts, const std::optional<at::Tensor>& flips,
                  const std::optional<at::Tensor>& lo, const std::optional<at::Tensor>& hi, const char* op) {
  check_defined(natural, op, "natural");
  check_cpu(natural, op, "natural");  // (the others: on natural's device)
  contract::check_compose_inputs(natural, ufc, index, shifts, flips, lo, hi, op);
}

// Row helpers. A row is W values; "source order" indexes the pre-transform pixel ws,
// "output order" the output pixel w. Segments map one to the other.

// Moves a row through the segments: kToOutput, dst[w] (output order) = src[ws] (source
// order); otherwise dst[ws] (source order) = src[w] (output order). With flip the source
// side runs backwards.
template <bool kToOutput, typename V>
inline void reorder_row(const V* src, V* dst, const Segment* seg, int nseg, bool flip) {
  for (int s = 0; s < nseg; ++s) {
    const V* a = src + (kToOutput ? seg[s].s0 : seg[s].w0);
    V* o = dst + (kToOutput ? seg[s].w0 : seg[s].s0);
    const int64_t len = seg[s].len;
    if (!flip) {
      for (int64_t i = 0; i < len; ++i) o[i] = a[i];
    } else if constexpr (kToOutput) {
      for (int64_t i = 0; i < len; ++i) o[i] = a[-i];
    } else {
      for (int64_t i = 0; i < len; ++i) o[-i] = a[i];
    }
  }
}

// W values of dtype T as the accumulate dtype: a pointer to the values themselves (fp32,
// fp64) or to `buf` holding them converted (fp16, bf16).
template <typename T>
inline const acc_t<T>* row_as_acc(const T* src, acc_t<T>* buf, int64_t W) {
  if constexpr (IsReduced<T>::value) {
    to_float(src, buf, W);
    return buf;
  } else {
    (void)buf;
    (void)W;
    return src;
  }
}

// ufc in the accumulate dtype: the tensor's own data for fp32/fp64; for fp16/bf16 it is
// converted once into `storage` (ufc is small: one image per group).
template <typename T>
const acc_t<T>* ufc_as_acc(const T* ufc, int64_t numel, std::vector<acc_t<T>>& storage) {
  if constexpr (IsReduced<T>::value) {
    storage.resize(numel);
    at::parallel_for(0, numel, kGrainElems, [&](int64_t begin, int64_t end) {
      to_float(ufc + begin, storage.data() + begin, end - begin);
    });
    return storage.data();
  } else {
    (void)numel;
    (void)storage;
    return ufc;
  }
}

// Work items of both kernels: (g, block of rows (k, h)); an item loops over the classes c
// outside and its rows inside, so that for each class it reads and writes spans of about
// kSpanElems contiguous values of grad_out / out.
constexpr int64_t kSpanElems = 8192;

// out[g, c, k, h, :]: the sum and clamp run in source order over contiguous rows, then the
// row is written out through the segments.
template <typename T, bool Clamp>
void compose_kernel(const T* natural, const T* ufc, const std::vector<GroupParams>& params, const acc_t<T>* lo,
                    const acc_t<T>* hi, T* out, int64_t G, int64_t C, int64_t ch, int64_t H, int64_t W) {
  using A = acc_t<T>;
  std::vector<A> ufc_storage;
  const A* ufc_acc = ufc_as_acc(ufc, G * ch * H * W, ufc_storage);
  const int64_t rows = ch * H;  // rows (k, h) of one group
  const std::pair<int64_t, int64_t> nb_rb = split_even(rows, kSpanElems / W);
  const int64_t nblk = nb_rb.first, rb = nb_rb.second;
  at::parallel_for(0, G * nblk, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> buffer(3 * W);
    A* nbuf = buffer.data();  // natural row converted (fp16/bf16)
    A* vbuf = nbuf + W;       // composed row, source order
    A* pbuf = vbuf + W;       // composed row, output order (fp16/bf16)
    for (int64_t item = begin; item < end; ++item) {
      const int64_t g = item / nblk, blk = item % nblk;
      const int64_t r0 = blk * rb, r1 = std::min(rows, r0 + rb);
      const GroupParams& p = params[g];
      Segment seg[2];
      const int nseg = row_segments(W, p.sw, p.flip, seg);
      for (int64_t c = 0; c < C; ++c) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t k = r / H, h = r % H;
          const int64_t hs = pos_mod(h - p.sh, H);
          const A* u = ufc_acc + ((g * ch + k) * H + hs) * W;
          const A* nv = row_as_acc(natural + (((p.k * C + c) * ch + k) * H + hs) * W, nbuf, W);
          const A lo_k = Clamp ? lo[k] : A(0), hi_k = Clamp ? hi[k] : A(0);
#pragma omp simd
          for (int64_t s = 0; s < W; ++s) {
            A v = nv[s] + u[s];
            if (Clamp) {
              v = v < lo_k ? lo_k : v;
              v = v > hi_k ? hi_k : v;
            }
            vbuf[s] = v;
          }
          T* orow = out + (((g * C + c) * ch + k) * H + h) * W;
          if constexpr (IsReduced<T>::value) {
            reorder_row</*kToOutput=*/true>(vbuf, pbuf, seg, nseg, p.flip);
            from_float(pbuf, orow, W);
          } else {
            reorder_row</*kToOutput=*/true>(vbuf, orow, seg, nseg, p.flip);
          }
        }
      }
    }
  });
}

}  // namespace
}  // namespace cpu
}  // namespace infer_fast

void infer_fast::cpu::ufc_compose(const at::Tensor& natural, const at::Tensor& ufc, const at::Tensor& index,
                                  const std::optional<at::Tensor>& shifts, const std::optional<at::Tensor>& flips,
                                  const std::optional<at::Tensor>& lo, const std::optional<at::Tensor>& hi,
                                  const at::Tensor& out) {
  check_inputs(natural, ufc, index, shifts, flips, lo, hi, kCompose);
  const int64_t K = natural.size(0), C = natural.size(1), ch = natural.size(2), H = natural.size(3),
                W = natural.size(4);
  const int64_t G = ufc.size(0);
  check_tensor(out, natural.scalar_type(), {G, C, ch, H, W}, kCompose, "out");
  if (out.numel() == 0) return;
  const std::vector<GroupParams> params = group_params(index, shifts, flips, K, H, W, kCompose);
  const bool clamp = lo.has_value() && lo->defined();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, natural.scalar_type(), kCompose, [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* np = natural.const_data_ptr<scalar_t>();
    const scalar_t* up = ufc.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    if (clamp) {
      compose_kernel<scalar_t, true>(np, up, params, lo->const_data_ptr<A>(), hi->const_data_ptr<A>(), op, G, C, ch,
                                     H, W);
    } else {
      compose_kernel<scalar_t, false>(np, up, params, nullptr, nullptr, op, G, C, ch, H, W);
    }
  });
}

namespace infer_fast {
namespace cpu {
namespace {

// grad_ufc[g, k, hs, ws] = sum_c grad_out[g, c, k, h, w] * [lo[k] <= v <= hi[k]].
// Work items as in compose_kernel: the class loop is the outer loop, each grad_out row is
// brought to source order, and the masked sum accumulates in a buffer of the accumulate
// dtype holding the item's rows in source order; the grad_ufc rows are written at the end.
template <typename T, bool Clamp>
void grad_ufc_kernel(const T* grad_out, const T* natural, const T* ufc, const std::vector<GroupParams>& params,
                     const acc_t<T>* lo, const acc_t<T>* hi, T* grad_ufc, int64_t G, int64_t C, int64_t ch, int64_t H,
                     int64_t W) {
  using A = acc_t<T>;
  std::vector<A> ufc_storage;
  const A* ufc_acc = Clamp ? ufc_as_acc(ufc, G * ch * H * W, ufc_storage) : nullptr;
  const int64_t rows = ch * H;  // rows (k, h) of one group
  const std::pair<int64_t, int64_t> nb_rb = split_even(rows, kSpanElems / W);
  const int64_t nblk = nb_rb.first, rb = nb_rb.second;
  at::parallel_for(0, G * nblk, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> accum(rb * W);  // class sums of the item's rows, source order
    std::vector<A> buffer(3 * W);
    A* nbuf = buffer.data();  // natural row converted (fp16/bf16)
    A* gbuf = nbuf + W;       // grad_out row converted (fp16/bf16), output order
    A* sbuf = gbuf + W;       // grad_out row, source order
    for (int64_t item = begin; item < end; ++item) {
      const int64_t g = item / nblk, blk = item % nblk;
      const int64_t r0 = blk * rb, r1 = std::min(rows, r0 + rb);
      const GroupParams& p = params[g];
      Segment seg[2];
      const int nseg = row_segments(W, p.sw, p.flip, seg);
      std::fill(accum.begin(), accum.end(), A(0));
      for (int64_t c = 0; c < C; ++c) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t k = r / H, h = r % H;
          const int64_t hs = pos_mod(h - p.sh, H);
          A* acc = accum.data() + (r - r0) * W;
          const A* go = row_as_acc(grad_out + (((g * C + c) * ch + k) * H + h) * W, gbuf, W);
          reorder_row</*kToOutput=*/false>(go, sbuf, seg, nseg, p.flip);
          if (Clamp) {
            const A* u = ufc_acc + ((g * ch + k) * H + hs) * W;
            const A* nv = row_as_acc(natural + (((p.k * C + c) * ch + k) * H + hs) * W, nbuf, W);
            const A lo_k = lo[k], hi_k = hi[k];
#pragma omp simd
            for (int64_t s = 0; s < W; ++s) {
              const A v = nv[s] + u[s];
              const A keep = (v >= lo_k && v <= hi_k) ? A(1) : A(0);
              acc[s] += sbuf[s] * keep;
            }
          } else {
#pragma omp simd
            for (int64_t s = 0; s < W; ++s) acc[s] += sbuf[s];
          }
        }
      }
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t k = r / H, h = r % H;
        const int64_t hs = pos_mod(h - p.sh, H);
        const A* acc = accum.data() + (r - r0) * W;
        T* gu = grad_ufc + ((g * ch + k) * H + hs) * W;
        if constexpr (IsReduced<T>::value) {
          from_float(acc, gu, W);
        } else {
          for (int64_t s = 0; s < W; ++s) gu[s] = acc[s];
        }
      }
    }
  });
}

}  // namespace
}  // namespace cpu
}  // namespace infer_fast

void infer_fast::cpu::ufc_compose_grad_ufc(const at::Tensor& grad_out, const at::Tensor& natural,
                                           const at::Tensor& ufc, const at::Tensor& index,
                                           const std::optional<at::Tensor>& shifts,
                                           const std::optional<at::Tensor>& flips,
                                           const std::optional<at::Tensor>& lo, const std::optional<at::Tensor>& hi,
                                           const at::Tensor& grad_ufc) {
  check_inputs(natural, ufc, index, shifts, flips, lo, hi, kGrad);
  const int64_t K = natural.size(0), C = natural.size(1), ch = natural.size(2), H = natural.size(3),
                W = natural.size(4);
  const int64_t G = ufc.size(0);
  check_tensor(grad_out, natural.scalar_type(), {G, C, ch, H, W}, kGrad, "grad_out");
  check_tensor(grad_ufc, natural.scalar_type(), {G, ch, H, W}, kGrad, "grad_ufc");
  if (grad_ufc.numel() == 0) return;
  const std::vector<GroupParams> params = group_params(index, shifts, flips, K, H, W, kGrad);
  const bool clamp = lo.has_value() && lo->defined();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, natural.scalar_type(), kGrad, [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* gp = grad_out.const_data_ptr<scalar_t>();
    const scalar_t* np = natural.const_data_ptr<scalar_t>();
    const scalar_t* up = ufc.const_data_ptr<scalar_t>();
    scalar_t* op = grad_ufc.mutable_data_ptr<scalar_t>();
    if (clamp) {
      grad_ufc_kernel<scalar_t, true>(gp, np, up, params, lo->const_data_ptr<A>(), hi->const_data_ptr<A>(), op, G, C,
                                      ch, H, W);
    } else {
      grad_ufc_kernel<scalar_t, false>(gp, np, up, params, nullptr, nullptr, op, G, C, ch, H, W);
    }
  });
}
