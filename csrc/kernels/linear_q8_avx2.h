// The few-row int8 path of the quantized linear for CPUs without AVX-512 VNNI
// (ENTMTP_ISA_LEVEL 1 and 2: AVX2, AVX-512 F/BW): the same arithmetic as
// linear_q8.h, one 32-weight block per ymm, with vpmaddubsw + vpmaddwd for the
// int8 dot product (as llama.cpp does on AVX2).
//
// Why: without VNNI the dequantizing path unpacks every weight to bf16 and
// widens it again to fp32 for the FMA, per call; at one row (plain decoding)
// the int8 dot product does a third of that work.
//   Q4_1:  sum_j (d q_j + m) x_j = d dx sum_j q_j qx_j + m sx        (sx = dx sum_j qx_j)
//   Q8_0:  sum_j d q_j x_j = d dx sum_j |q_j| sign(qx_j, q_j)
// vpmaddubsw multiplies unsigned by signed bytes and adds pairs into int16:
// Q4_1's nibbles (<= 15) times |qx| <= 127 stay far from int16 saturation, and
// so do Q8_0's |q| <= 128 times qx (pairs <= 2 x 128 x 127 = 32512).
// x is packed once per call: per block its 32 int8, dx and sx.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels/isa.h"
#include "kernels/linear_bf16w.h"
#include "kernels/linear_quant.h"
#include "kernels/simd.h"

namespace entmtp {
namespace kernels {
inline namespace ENTMTP_ISA_NS {
namespace q8_detail {

constexpr int64_t kMaxBlocks = 512;      // K <= 16384 (the VNNI path's bound too)
constexpr int64_t kBlockBytes = 64;      // packed x per block: int8 [32], dx, sx, padding
constexpr int64_t kPrefetchRows = 16;
inline int64_t x_row_bytes(QType, int64_t K) { return K / 32 * kBlockBytes; }

inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

// x row (bf16) -> per block int8 (round to nearest even), dx = max |x| / 127, sx = dx sum qx.
inline void pack_row(QType, const uint16_t* x, int64_t K, char* out) {
  for (int64_t b = 0; b < K / 32; ++b) {
    alignas(32) float v[32];
    float amax = 0.f;
    for (int j = 0; j < 32; ++j) {
      v[j] = to_float(bf16_t{x[32 * b + j]});
      amax = std::max(amax, std::fabs(v[j]));
    }
    const float d = amax / 127.f, id = amax > 0.f ? 127.f / amax : 0.f;
    char* blk = out + b * kBlockBytes;
    int32_t sum = 0;
    for (int j = 0; j < 32; ++j) {
      const int32_t q = static_cast<int32_t>(std::nearbyint(v[j] * id));  // default rounding: to nearest even
      blk[j] = static_cast<char>(q);
      sum += q;
    }
    const float sx = d * static_cast<float>(sum);
    std::memcpy(blk + 32, &d, 4);
    std::memcpy(blk + 36, &sx, 4);
  }
}

// NR weight rows from n x MR input rows from m.
template <QType Q, int NR, int MR>
void tile(const QuantLinearArgs& a, const LinearArgs& la, const char* xp, int64_t m, int64_t n) {
  constexpr int64_t bb = Q == QType::kQ4_1 ? 20 : 34;
  const int64_t blocks = a.K / 32, xs = x_row_bytes(Q, a.K), row_bytes = blocks * bb;
  const __m256i low4 = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
  __m256 acc[NR][MR];
  float mterm[NR][MR];
  for (int r = 0; r < NR; ++r)
    for (int j = 0; j < MR; ++j) acc[r][j] = _mm256_setzero_ps(), mterm[r][j] = 0.f;
  // Prefetch kPrefetchRows rows ahead, a line per block and row (see linear_q8.h).
  const bool ahead = n + NR + kPrefetchRows <= a.N;
  for (int64_t b = 0; b < blocks; ++b) {
    #pragma GCC unroll 4
    for (int r = 0; r < NR; ++r) {
      const uint8_t* w = a.w + (n + r) * row_bytes + b * bb;
      if (ahead) _mm_prefetch(reinterpret_cast<const char*>(w + kPrefetchRows * row_bytes), _MM_HINT_T0);
      const __m256 dw = _mm256_set1_ps(quant_detail::half_at(w));
      __m256i wq;
      float mw = 0.f;
      if constexpr (Q == QType::kQ4_1) {
        const __m128i qs = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 4));
        wq = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(qs, 4), qs), low4);  // weights 0-15 | 16-31
        mw = quant_detail::half_at(w + 2);
      } else {
        wq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 2));
      }
      const __m256i wabs = Q == QType::kQ4_1 ? wq : _mm256_sign_epi8(wq, wq);
      #pragma GCC unroll 4
      for (int j = 0; j < MR; ++j) {
        const char* x = xp + (m + j) * xs + b * kBlockBytes;
        __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
        if constexpr (Q == QType::kQ8_0) xq = _mm256_sign_epi8(xq, wq);
        const __m256i dot = _mm256_madd_epi16(_mm256_maddubs_epi16(wabs, xq), ones);
        float dx, sx;
        std::memcpy(&dx, x + 32, 4);
        std::memcpy(&sx, x + 36, 4);
        acc[r][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(dw, _mm256_set1_ps(dx)), acc[r][j]);
        if constexpr (Q == QType::kQ4_1) mterm[r][j] += mw * sx;
      }
    }
  }
  for (int j = 0; j < MR; ++j) {
    float out[NR];
    for (int r = 0; r < NR; ++r) out[r] = hsum8(acc[r][j]) + mterm[r][j];
    linear_detail::store_out(la, m + j, n, NR, out);
  }
}

}  // namespace q8_detail
}  // namespace ENTMTP_ISA_NS
}  // namespace kernels
}  // namespace entmtp
