// Shared helpers of the C++ CPU kernels (csrc/cpu/*.cpp): accumulate types, checks and
// small loop utilities. Semantics of the ops: infer_fast/ops/backends.py ("Backend contract").
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define INFER_FAST_X86_DISPATCH 1
#include <immintrin.h>
#endif

namespace infer_fast {
namespace cpu {

// Statistics and compositions accumulate in fp32, or fp64 for fp64 inputs.
template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};
template <typename T>
using acc_t = typename AccType<T>::type;

inline int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// Splits [0, total) into parts of about `target`, as evenly as possible: (count, size).
inline std::pair<int64_t, int64_t> split_even(int64_t total, int64_t target) {
  target = std::max<int64_t>(1, std::min(target, total));
  const int64_t count = ceil_div(total, target);
  return {count, ceil_div(total, count)};
}

// Non-negative remainder (Python's %), for roll offsets.
inline int64_t pos_mod(int64_t a, int64_t m) {
  int64_t r = a % m;
  return r < 0 ? r + m : r;
}

// ---- fp16 / bf16 <-> fp32 block conversions ----
// The extension is built for the baseline x86-64 ISA (no -march flags), where c10's scalar
// Half conversions are slow bit manipulations. The kernels therefore convert blocks of
// reduced-precision values through these helpers: AVX2/F16C versions chosen at run time
// when the CPU has them, portable loops otherwise. Both round exactly like c10
// (round-to-nearest-even; bf16 NaN -> 0x7FC0 as in c10::detail::round_to_nearest_even).
template <typename T>
struct IsReduced : std::integral_constant<bool, std::is_same<T, c10::Half>::value ||
                                                    std::is_same<T, c10::BFloat16>::value> {};

#ifdef INFER_FAST_X86_DISPATCH

inline bool cpu_has_avx2_f16c() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  return ok;
}

__attribute__((target("avx2,f16c"))) inline void half_to_float_avx2(const c10::Half* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
  for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

__attribute__((target("avx2,f16c"))) inline void float_to_half_avx2(const float* src, c10::Half* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
  }
  for (; i < n; ++i) dst[i] = static_cast<c10::Half>(src[i]);
}

__attribute__((target("avx2"))) inline void bf16_to_float_avx2(const c10::BFloat16* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    const __m256i u = _mm256_slli_epi32(_mm256_cvtepu16_epi32(b), 16);
    _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(u));
  }
  for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

__attribute__((target("avx2"))) inline void float_to_bf16_avx2(const float* src, c10::BFloat16* dst, int64_t n) {
  int64_t i = 0;
  const __m256i one = _mm256_set1_epi32(1), bias = _mm256_set1_epi32(0x7FFF), qnan = _mm256_set1_epi32(0x7FC0);
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(src + i);
    const __m256i u = _mm256_castps_si256(v);
    const __m256i r = _mm256_add_epi32(_mm256_and_si256(_mm256_srli_epi32(u, 16), one), bias);
    __m256i w = _mm256_srli_epi32(_mm256_add_epi32(u, r), 16);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    w = _mm256_blendv_epi8(w, qnan, nan);
    // values fit in 16 bits: pack (per 128-bit lane) and restore the order
    const __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(w, w), 0xD8);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm256_castsi256_si128(p));
  }
  for (; i < n; ++i) dst[i] = static_cast<c10::BFloat16>(src[i]);
}
#endif

inline void to_float(const c10::Half* src, float* dst, int64_t n) {
#ifdef INFER_FAST_X86_DISPATCH
  if (cpu_has_avx2_f16c()) return half_to_float_avx2(src, dst, n);
#endif
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

inline void to_float(const c10::BFloat16* src, float* dst, int64_t n) {
#ifdef INFER_FAST_X86_DISPATCH
  if (cpu_has_avx2_f16c()) return bf16_to_float_avx2(src, dst, n);
#endif
  const uint16_t* s = reinterpret_cast<const uint16_t*>(src);
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t u = static_cast<uint32_t>(s[i]) << 16;
    std::memcpy(dst + i, &u, sizeof(u));
  }
}

inline void from_float(const float* src, c10::Half* dst, int64_t n) {
#ifdef INFER_FAST_X86_DISPATCH
  if (cpu_has_avx2_f16c()) return float_to_half_avx2(src, dst, n);
#endif
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<c10::Half>(src[i]);
}

inline void from_float(const float* src, c10::BFloat16* dst, int64_t n) {
#ifdef INFER_FAST_X86_DISPATCH
  if (cpu_has_avx2_f16c()) return float_to_bf16_avx2(src, dst, n);
#endif
  uint16_t* d = reinterpret_cast<uint16_t*>(dst);
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, src + i, sizeof(u));
    const uint32_t r = (u + (((u >> 16) & 1u) + 0x7FFFu)) >> 16;
    d[i] = src[i] != src[i] ? uint16_t(0x7FC0) : static_cast<uint16_t>(r);
  }
}

// ---- checks of the internal contract (user-facing validation happens in Python) ----
inline void check_cpu(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ", t.device());
}

inline void check_defined(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
}

inline void check_contiguous(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous, got strides ", t.strides());
}

inline void check_dtype(const at::Tensor& t, at::ScalarType want, const char* op, const char* name) {
  TORCH_CHECK(t.scalar_type() == want, op, ": ", name, " must have dtype ", want, ", got ", t.scalar_type());
}

inline void check_shape(const at::Tensor& t, at::IntArrayRef want, const char* op, const char* name) {
  TORCH_CHECK(t.sizes() == want, op, ": ", name, " must have shape ", want, ", got ", t.sizes());
}

// One of the four floating dtypes the ops take.
inline void check_supported_float(const at::Tensor& t, const char* op, const char* name) {
  const at::ScalarType st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16, op, ": ", name,
              " must be float16, bfloat16, float32 or float64, got ", st);
}

// A defined, contiguous CPU tensor of the given dtype and shape (checked in this order:
// defined, CPU, dtype, shape, contiguous).
inline void check_tensor(const at::Tensor& t, at::ScalarType dtype, at::IntArrayRef shape, const char* op,
                         const char* name) {
  check_defined(t, op, name);
  check_cpu(t, op, name);
  check_dtype(t, dtype, op, name);
  check_shape(t, shape, op, name);
  check_contiguous(t, op, name);
}

}  // namespace cpu
}  // namespace infer_fast
