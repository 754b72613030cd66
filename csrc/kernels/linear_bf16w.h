// y[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n]) with bf16 weights, fp32 math.
//
// Why: on CPUs without native bf16 dot products (AVX2 machines, most laptops)
// torch's bf16 matmul falls back to a slow path (measured 6 GB/s at M = 1 and
// 4 GFLOP/s at M = 64 on our 2-core EPYC). Decoding streams every weight once
// per step, so a kernel that widens bf16 to fp32 in registers and runs fp32 FMAs
// is what makes bf16 weights pay off. Torch-free: plain pointers and sizes.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define ENTMTP_LINEAR_AVX2 1
#endif

namespace entmtp {
namespace kernels {

inline float bf16_to_float(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

// Round to nearest even, as torch does when casting fp32 to bf16.
inline uint16_t float_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  if (std::isnan(f)) return 0x7FC0;
  bits += 0x7FFF + ((bits >> 16) & 1);
  return static_cast<uint16_t>(bits >> 16);
}

// Rows of output features handled together: their weights are read once per
// pair of input rows.
constexpr int64_t kLinearRowBlock = 4;

#ifdef ENTMTP_LINEAR_AVX2
inline __m256 load_bf16x8(const uint16_t* p) {
  __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}

inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

// Dot products of `rows` (<= 4) weight rows in fp32 (wf, row stride K) or bf16
// (wb) with one or two input rows. acc[r][j] receives row r, input j.
// K_vec is the largest multiple of 8 <= K; the tail is done in scalar code.
template <bool kBf16Weights>
inline void dot_block(const float* wf, const uint16_t* wb, int64_t rows, int64_t K,
                      const float* x0, const float* x1, float acc[kLinearRowBlock][2]) {
  int64_t k = 0;
#ifdef ENTMTP_LINEAR_AVX2
  const int64_t K_vec = K & ~int64_t(7);
  __m256 a00 = _mm256_setzero_ps(), a01 = _mm256_setzero_ps();
  __m256 a10 = _mm256_setzero_ps(), a11 = _mm256_setzero_ps();
  __m256 a20 = _mm256_setzero_ps(), a21 = _mm256_setzero_ps();
  __m256 a30 = _mm256_setzero_ps(), a31 = _mm256_setzero_ps();
  auto load_w = [&](int64_t r, int64_t kk) -> __m256 {
    if (kBf16Weights) return load_bf16x8(wb + r * K + kk);
    return _mm256_loadu_ps(wf + r * K + kk);
  };
  // `rows` is 4 except at the end of the matrix; the compiler hoists the branches.
  for (; k < K_vec; k += 8) {
    __m256 v0 = _mm256_loadu_ps(x0 + k);
    __m256 v1 = x1 ? _mm256_loadu_ps(x1 + k) : v0;
    __m256 w0 = load_w(0, k);
    a00 = _mm256_fmadd_ps(w0, v0, a00);
    a01 = _mm256_fmadd_ps(w0, v1, a01);
    if (rows > 1) {
      __m256 w1 = load_w(1, k);
      a10 = _mm256_fmadd_ps(w1, v0, a10);
      a11 = _mm256_fmadd_ps(w1, v1, a11);
    }
    if (rows > 2) {
      __m256 w2 = load_w(2, k);
      a20 = _mm256_fmadd_ps(w2, v0, a20);
      a21 = _mm256_fmadd_ps(w2, v1, a21);
    }
    if (rows > 3) {
      __m256 w3 = load_w(3, k);
      a30 = _mm256_fmadd_ps(w3, v0, a30);
      a31 = _mm256_fmadd_ps(w3, v1, a31);
    }
  }
  acc[0][0] = hsum8(a00); acc[0][1] = hsum8(a01);
  acc[1][0] = hsum8(a10); acc[1][1] = hsum8(a11);
  acc[2][0] = hsum8(a20); acc[2][1] = hsum8(a21);
  acc[3][0] = hsum8(a30); acc[3][1] = hsum8(a31);
#else
  for (int r = 0; r < kLinearRowBlock; ++r) acc[r][0] = acc[r][1] = 0.f;
#endif
  for (; k < K; ++k) {
    for (int64_t r = 0; r < rows; ++r) {
      float w = kBf16Weights ? bf16_to_float(wb[r * K + k]) : wf[r * K + k];
      acc[r][0] += w * x0[k];
      if (x1) acc[r][1] += w * x1[k];
    }
  }
}

// Output rows [n_begin, n_end) for all M input rows.
//   x: [M, K] fp32 contiguous; w: [N, K] bf16 contiguous; bias: [N] fp32 or null;
//   store(m, n, value) writes one output element.
//   scratch: kLinearRowBlock * K floats, used when M > 2 so each weight block
//   is widened to fp32 once and reused across all input rows.
template <typename Store>
void linear_bf16w_rows(const float* x, int64_t M, int64_t K, const uint16_t* w,
                       const float* bias, int64_t n_begin, int64_t n_end, float* scratch,
                       Store store) {
  float acc[kLinearRowBlock][2];
  for (int64_t n0 = n_begin; n0 < n_end; n0 += kLinearRowBlock) {
    const int64_t rows = (n_end - n0) < kLinearRowBlock ? (n_end - n0) : kLinearRowBlock;
    const uint16_t* wb = w + n0 * K;
    const bool widen = M > 2;
    if (widen) {
      for (int64_t i = 0; i < rows * K; ++i) scratch[i] = bf16_to_float(wb[i]);
    }
    for (int64_t m = 0; m < M; m += 2) {
      const float* x0 = x + m * K;
      const float* x1 = (m + 1 < M) ? x0 + K : nullptr;
      if (widen) {
        dot_block<false>(scratch, nullptr, rows, K, x0, x1, acc);
      } else {
        dot_block<true>(nullptr, wb, rows, K, x0, x1, acc);
      }
      for (int64_t r = 0; r < rows; ++r) {
        const float b = bias ? bias[n0 + r] : 0.f;
        store(m, n0 + r, acc[r][0] + b);
        if (x1) store(m + 1, n0 + r, acc[r][1] + b);
      }
    }
  }
}


#ifdef ENTMTP_LINEAR_AVX2
// Many input rows (tree verification, prefill): classic register-blocked GEMM.
// A panel of 16 output features is widened and transposed once into
// panel[K][16] fp32, then kMR input rows at a time accumulate a kMR x 16 tile in
// 2 * kMR ymm registers: per k, two panel loads and kMR broadcasts feed 2 * kMR FMAs.
constexpr int64_t kPanel = 16;
constexpr int kMaxMR = 6;

inline void pack_panel(const uint16_t* w, int64_t K, int64_t cols, float* panel) {
  // w: [cols, K] bf16 rows of this panel; panel: [K, 16], zero beyond `cols`.
  for (int64_t c = 0; c < kPanel; ++c) {
    if (c < cols) {
      const uint16_t* row = w + c * K;
      for (int64_t k = 0; k < K; ++k) panel[k * kPanel + c] = bf16_to_float(row[k]);
    } else {
      for (int64_t k = 0; k < K; ++k) panel[k * kPanel + c] = 0.f;
    }
  }
}

template <int MR, typename Store>
inline void panel_tile(const float* panel, const float* x, int64_t K, int64_t m0, int64_t n0,
                       int64_t cols, const float* bias, Store store) {
  __m256 lo[MR], hi[MR];
  for (int i = 0; i < MR; ++i) lo[i] = hi[i] = _mm256_setzero_ps();
  const float* xr[MR];
  for (int i = 0; i < MR; ++i) xr[i] = x + (m0 + i) * K;
  for (int64_t k = 0; k < K; ++k) {
    const __m256 p0 = _mm256_loadu_ps(panel + k * kPanel);
    const __m256 p1 = _mm256_loadu_ps(panel + k * kPanel + 8);
    for (int i = 0; i < MR; ++i) {
      const __m256 b = _mm256_broadcast_ss(xr[i] + k);
      lo[i] = _mm256_fmadd_ps(p0, b, lo[i]);
      hi[i] = _mm256_fmadd_ps(p1, b, hi[i]);
    }
  }
  alignas(32) float tile[16];
  for (int i = 0; i < MR; ++i) {
    _mm256_store_ps(tile, lo[i]);
    _mm256_store_ps(tile + 8, hi[i]);
    for (int64_t c = 0; c < cols; ++c) store(m0 + i, n0 + c, tile[c] + (bias ? bias[n0 + c] : 0.f));
  }
}

// Output features [n_begin, n_end) (n_begin a multiple of 16) for all M rows.
// scratch: K * 16 floats.
template <typename Store>
void linear_bf16w_panels(const float* x, int64_t M, int64_t K, const uint16_t* w, const float* bias,
                         int64_t n_begin, int64_t n_end, float* scratch, Store store) {
  for (int64_t n0 = n_begin; n0 < n_end; n0 += kPanel) {
    const int64_t cols = (n_end - n0) < kPanel ? (n_end - n0) : kPanel;
    pack_panel(w + n0 * K, K, cols, scratch);
    int64_t m = 0;
    for (; m + kMaxMR <= M; m += kMaxMR) panel_tile<kMaxMR>(scratch, x, K, m, n0, cols, bias, store);
    switch (M - m) {
      case 5: panel_tile<5>(scratch, x, K, m, n0, cols, bias, store); break;
      case 4: panel_tile<4>(scratch, x, K, m, n0, cols, bias, store); break;
      case 3: panel_tile<3>(scratch, x, K, m, n0, cols, bias, store); break;
      case 2: panel_tile<2>(scratch, x, K, m, n0, cols, bias, store); break;
      case 1: panel_tile<1>(scratch, x, K, m, n0, cols, bias, store); break;
      default: break;
    }
  }
}
#endif  // ENTMTP_LINEAR_AVX2

}  // namespace kernels
}  // namespace entmtp
