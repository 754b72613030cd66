// The few-row path of the quantized linear for bf16 x (ENTMTP_ISA_LEVEL >= 3,
// AVX-512 VNNI): activations quantized to int8 per 32-weight block, int8 dot
// products with vpdpbusd straight from the GGUF blocks, as llama.cpp does.
//
// Why: at 1 to 4 rows (plain decoding, the heads' proposals) dequantizing the
// weights into bf16 costs ~5 cycles a block, over what streaming them costs;
// an int8 dot product needs no dequantization. With x_j ~ dx qx_j per block
// (qx int8, dx = max |x| / 127):
//   Q4_1:  sum_j (d q_j + m) x_j = d dx sum_j q_j qx_j + m dx sum_j qx_j
//   Q8_0:  sum_j d q_j x_j = d dx (sum_j (q_j + 128) qx_j - 128 sum_j qx_j)
// vpdpbusd multiplies unsigned by signed bytes: Q4_1's nibbles are unsigned
// already; Q8_0's bytes get +128 (an xor), and the int32 sums start at
// -128 sum qx (exact) to pay it back. Approximate (the activations are rounded
// to int8), so only bf16 x takes this path; every sum runs in the same order
// for any row count.
//
// One step covers 4 blocks of a weight row. Q4_1: the 80 bytes are two loads
// (the second masked to the row), one vpermt2d gathers the 4 x 16 nibble bytes
// (int32 lane 4i + l = block i) and one the 4 (d, m) pairs; no gather, no
// per-row scale pass. Q8_0: 2 x 2 blocks of 32 bytes, their d by one vpermt2w.
// x is packed once per call in the matching lane order with its per-lane
// scales (Q4_1: dx by lane, and dx sum qx beside each block's m in the (d, m)
// vector, which the m term multiplies as loaded; Q8_0: dx and the -128 sum qx
// start values).
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

constexpr int64_t kGroupBlocks = 4;
constexpr int64_t kMaxBlocks = 512;  // K <= 16384
#ifndef ENTMTP_Q8_PREFETCH_ROWS
#define ENTMTP_Q8_PREFETCH_ROWS 16
#endif
constexpr int64_t kQ8PrefetchRows = ENTMTP_Q8_PREFETCH_ROWS;
// Packed x per 4-block group. Q4_1: int8 for the low nibbles [64], for the high
// ones [64], dx by lane [16 f32], [0, dx sum qx] per block [8 f32], zeros [8 f32]. Q8_0: int8 of
// blocks 0-1 [64] and 2-3 [64], dx by lane [2 x 16 f32], -128 sum qx by lane [2 x 16 i32].
template <QType Q>
constexpr int64_t group_bytes() { return Q == QType::kQ4_1 ? 256 : 384; }

inline int64_t groups(int64_t blocks) { return (blocks + kGroupBlocks - 1) / kGroupBlocks; }
template <QType Q>
int64_t x_row_bytes(int64_t K) { return groups(K / 32) * group_bytes<Q>(); }
inline int64_t x_row_bytes(QType q, int64_t K) {
  return q == QType::kQ4_1 ? x_row_bytes<QType::kQ4_1>(K) : x_row_bytes<QType::kQ8_0>(K);
}

// x row (bf16) -> per block int8 (round to nearest even) and scales, packed.
template <QType Q>
void pack_row(const uint16_t* x, int64_t K, char* out) {
  const int64_t blocks = K / 32;
  std::memset(out, 0, x_row_bytes<Q>(K));
  for (int64_t b = 0; b < blocks; ++b) {
    const __m256i* src = reinterpret_cast<const __m256i*>(x + 32 * b);
    const __m512 v0 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(src)), 16));
    const __m512 v1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(src + 1)), 16));
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
    const float d = amax / 127.f, id = amax > 0.f ? 127.f / amax : 0.f;
    const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, _mm512_set1_ps(id)));
    const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, _mm512_set1_ps(id)));
    alignas(64) int32_t qi[32];
    _mm512_store_si512(qi, q0);
    _mm512_store_si512(qi + 16, q1);
    char* g = out + (b / kGroupBlocks) * group_bytes<Q>();
    const int64_t i = b % kGroupBlocks;
    if constexpr (Q == QType::kQ4_1) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(g + 16 * i), _mm512_cvtsepi32_epi8(q0));       // x of low nibbles
      _mm_storeu_si128(reinterpret_cast<__m128i*>(g + 64 + 16 * i), _mm512_cvtsepi32_epi8(q1));  // and high
      const float s = d * static_cast<float>(_mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1)));
      float* dx = reinterpret_cast<float*>(g + 128);
      float* sx = reinterpret_cast<float*>(g + 192);  // [0 s0 0 s1 0 s2 0 s3]: beside the weights' (d, m)
      for (int l = 0; l < 4; ++l) dx[4 * i + l] = d;
      sx[2 * i + 1] = s;
    } else {
      // Blocks 2h, 2h + 1 share zmm h: lane 8 (i % 2) + l holds bytes 4l..4l+3 of block i.
      const int64_t h = i / 2, half = i % 2;
      _mm_storeu_si128(reinterpret_cast<__m128i*>(g + 64 * h + 32 * half), _mm512_cvtsepi32_epi8(q0));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(g + 64 * h + 32 * half + 16), _mm512_cvtsepi32_epi8(q1));
      float* dx = reinterpret_cast<float*>(g + 128 + 64 * h);
      int32_t* start = reinterpret_cast<int32_t*>(g + 256 + 64 * h);
      for (int l = 0; l < 8; ++l) {
        dx[8 * half + l] = d;
        start[8 * half + l] = -128 * (qi[4 * l] + qi[4 * l + 1] + qi[4 * l + 2] + qi[4 * l + 3]);
      }
    }
  }
}

inline void pack_row(QType q, const uint16_t* x, int64_t K, char* out) {
  if (q == QType::kQ4_1) pack_row<QType::kQ4_1>(x, K, out);
  else pack_row<QType::kQ8_0>(x, K, out);
}

// Bytes [0, n) of p as one zmm (zeros past n), n <= 64.
inline __m512i load_upto(const uint8_t* p, int64_t n) {
  if (n >= 64) return _mm512_loadu_si512(p);
  return _mm512_maskz_loadu_epi8(n <= 0 ? 0 : (~0ull >> (64 - n)), p);
}

// NR weight rows from n x MR input rows from m.
template <QType Q, int NR, int MR>
void tile(const QuantLinearArgs& a, const LinearArgs& la, const char* xp, int64_t m, int64_t n) {
  constexpr int64_t bb = Q == QType::kQ4_1 ? 20 : 34, gb = group_bytes<Q>();
  const int64_t blocks = a.K / 32, G = groups(blocks), xs = x_row_bytes<Q>(a.K), row_bytes = blocks * bb;
  // Q4_1 dword indices into the 80 bytes of a group: nibbles of block i are
  // dwords 5i + 1..4, its (d, m) pair dword 5i.
  const __m512i qs_idx = _mm512_setr_epi32(1, 2, 3, 4, 6, 7, 8, 9, 11, 12, 13, 14, 16, 17, 18, 19);
  const __m512i dm_idx = _mm512_setr_epi32(0, 5, 10, 15, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  // Q8_0 word indices of the 4 d's (bytes 0, 34, 68, 102).
  const __m512i d_idx = _mm512_setr_epi32(0 | 17 << 16, 34 | 51 << 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i by4_even = _mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6);
  const __m512i by8_lo = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  const __m512i by8_hi = _mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
  const __m512i low4 = _mm512_set1_epi8(0x0f), flip = _mm512_set1_epi8(-128);
  const __m512i zero = _mm512_setzero_si512();
  __m512 acc[NR][MR];
  #pragma GCC unroll 8
  for (int r = 0; r < NR; ++r)
    #pragma GCC unroll 8
    for (int j = 0; j < MR; ++j) acc[r][j] = _mm512_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    const int64_t b0 = g * kGroupBlocks, nb = std::min(kGroupBlocks, blocks - b0), bytes = nb * bb;
    // The rows kQ8PrefetchRows on (a later tile's), a group's lines per row:
    // short rows (360-612 bytes) in 4 streams are too short for the hardware
    // prefetcher to ramp up on.
    if (kQ8PrefetchRows > 0 && n + NR + kQ8PrefetchRows <= a.N)
      for (int r = 0; r < NR; ++r) {
        const uintptr_t ahead = reinterpret_cast<uintptr_t>(a.w + (n + r + kQ8PrefetchRows) * row_bytes + b0 * bb);
        for (uintptr_t line = ahead & ~uintptr_t{63}; line < ahead + kGroupBlocks * bb; line += 64)
          _mm_prefetch(reinterpret_cast<const char*>(line), _MM_HINT_T0);
      }
    #pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      const uint8_t* w = a.w + (n + r) * row_bytes + b0 * bb;
      // A whole Q4_1 group is 80 bytes: one zmm and one xmm load (the permutes below read
      // dwords 0-19 only), no masks; a short last group, and Q8_0's 136 bytes, by load_upto.
      // Measured on a 2-core Zen4, alternating in one process: the default model's 121
      // Q4_1 / Q8_0 GEMVs 0.90-0.95x, a 576 x 1536 Q4_1 one 0.72-0.82x.
      const bool whole = Q == QType::kQ4_1 && nb == kGroupBlocks;
      const __m512i part0 = whole ? _mm512_loadu_si512(w) : load_upto(w, bytes);
      const __m512i part1 = whole ? _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 64)))
                                  : load_upto(w + 64, bytes - 64);
      if constexpr (Q == QType::kQ4_1) {
        const __m512i y = _mm512_permutex2var_epi32(part0, qs_idx, part1);
        const __m512i lo = _mm512_and_si512(y, low4);
        const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(y, 4), low4);
        // dm = [d0 m0 d1 m1 d2 m2 d3 m3] fp32; dw spreads each d over its block's 4 lanes (the
        // m term multiplies dm as it is).
        const __m512 dm = _mm512_zextps256_ps512(  // zero above lane 8: the m term reads every lane
            _mm256_cvtph_ps(_mm512_castsi512_si128(_mm512_permutex2var_epi32(part0, dm_idx, part1))));
        const __m512 dw = _mm512_permutexvar_ps(by4_even, dm);
        #pragma GCC unroll 8
        for (int j = 0; j < MR; ++j) {
          const char* x = xp + (m + j) * xs + g * gb;
          const __m512i dot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, lo, _mm512_loadu_si512(x)), hi,
                                                  _mm512_loadu_si512(x + 64));
          const __m512 dx = _mm512_loadu_ps(reinterpret_cast<const float*>(x + 128));
          const __m512 sx = _mm512_loadu_ps(reinterpret_cast<const float*>(x + 192));
          acc[r][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dw, dx), acc[r][j]);
          acc[r][j] = _mm512_fmadd_ps(dm, sx, acc[r][j]);  // m_i (dx sum qx)_i in lane 2i + 1, 0 elsewhere
        }
      } else {
        auto q32 = [&](int64_t i) {  // block i's 32 bytes, zero past the row's end
          return i < nb ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 34 * i + 2)) : _mm256_setzero_si256();
        };
        const __m512i w0 = _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(q32(0)), q32(1), 1), flip);
        const __m512i w1 = _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(q32(2)), q32(3), 1), flip);
        const __m512 d4 = _mm512_castps128_ps512(
            _mm_cvtph_ps(_mm512_castsi512_si128(_mm512_permutex2var_epi16(part0, d_idx, part1))));
        const __m512 dw0 = _mm512_permutexvar_ps(by8_lo, d4), dw1 = _mm512_permutexvar_ps(by8_hi, d4);
        #pragma GCC unroll 8
        for (int j = 0; j < MR; ++j) {
          const char* x = xp + (m + j) * xs + g * gb;
          const float* dx = reinterpret_cast<const float*>(x + 128);
          const __m512i dot0 = _mm512_dpbusd_epi32(_mm512_loadu_si512(x + 256), w0, _mm512_loadu_si512(x));
          const __m512i dot1 = _mm512_dpbusd_epi32(_mm512_loadu_si512(x + 320), w1, _mm512_loadu_si512(x + 64));
          acc[r][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot0), _mm512_mul_ps(dw0, _mm512_loadu_ps(dx)), acc[r][j]);
          acc[r][j] =
              _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot1), _mm512_mul_ps(dw1, _mm512_loadu_ps(dx + 16)), acc[r][j]);
        }
      }
    }
  }
  linear_detail::store_tile<NR, MR>(la, acc, m, n);
}

}  // namespace q8_detail
}  // namespace ENTMTP_ISA_NS
}  // namespace kernels
}  // namespace entmtp
