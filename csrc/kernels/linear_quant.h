// y[m, n] = sum_k x[m, k] * dequant(w)[n, k] (+ bias[n]) with the weights kept
// in their GGUF blocks (Q4_1, Q8_0: kernels/isa.h), one code path per ISA.
//
// Two routes (csrc/isa/table_impl.h picks): bf16 x of few rows takes the int8
// kernels of linear_q8.h (VNNI) / linear_q8_avx2.h, which need no dequantization;
// everything else dequantizes here.
//
// Why dequantize-into-scratch: a decode step verifies 1 to 128 rows, and on a
// CPU the cost of a quantized matmul is streaming the blocks (0.625 bytes a
// weight for Q4_1 against 2 for bf16) plus unpacking them. Unpacking once per
// call, not once per input row, makes a 16-row tree cost about what one row
// costs. So each thread takes a group of G weight rows (64 on the AMX path,
// else 16), dequantizes them into its own scratch (G x K: at most 192 KB, in
// L2), and runs the bf16-weight kernels of linear_bf16w.h / linear_amx.h on
// that scratch for every input row (LinearArgs::w_row0 says which rows the
// scratch holds). Per x dtype:
//   bf16 x: scratch in bf16 (d * q + m in fp32, rounded to nearest even),
//           then the path's bf16 kernel (AMX tiles, vdpbf16ps, or widening).
//   fp32 x: scratch in fp32 and an fp32 x fp32 tile (8-lane dot products in
//           the same order for any row count, so a row's output never depends
//           on the other rows: speculative and plain decoding agree exactly).
// Dequantized values: Q4_1 d * q + m as one fused multiply-add where the ISA
// has FMA (the correctly rounded value, which reference.dequantize_ref computes
// in float64); Q8_0 d * q (exact in fp32).
// The unpacking: AVX-512 builds a 16-entry table d * (0..15) + m per Q4_1
// block and looks the nibbles up with one permute (vpermps / vpermw); other
// paths unpack with plain loops that the compiler vectorises.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/isa.h"
#include "kernels/linear_bf16w.h"
#include "kernels/simd.h"

#if ENTMTP_ISA_LEVEL >= 1
#include <immintrin.h>
#endif

namespace entmtp {
namespace kernels {
inline namespace ENTMTP_ISA_NS {
namespace quant_detail {

inline float half_at(const uint8_t* p) {
  uint16_t bits;
  std::memcpy(&bits, p, 2);
#if ENTMTP_ISA_LEVEL >= 1
  return _cvtsh_ss(bits);
#else
  return to_float(fp16_t{bits});
#endif
}

#if ENTMTP_ISA_LEVEL >= 2
// ---- AVX-512: scales first, then table lookups -------------------------------
// The fp16 scales of up to 64 blocks -> fp32 (Q4_1: d, m pairs; Q8_0: d),
// gathered 16 blocks at a time, so each block then broadcasts its scales from
// memory (a load, not a shuffle: the shuffle port is what the unpacking is
// bound by).
constexpr int64_t kScaleChunk = 64;

template <QType Q>
inline void block_scales(const uint8_t* src, int64_t nb, float* dm) {
  constexpr int64_t bb = Q == QType::kQ4_1 ? 20 : 34;
  const __m512i offsets = _mm512_mullo_epi32(
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(bb));
  int64_t b = 0;
  for (; b + 16 <= nb; b += 16) {
    const __m512i words = _mm512_i32gather_epi32(offsets, src + b * bb, 1);  // d | next 16 bits
    if constexpr (Q == QType::kQ4_1) {
      _mm512_storeu_ps(dm + 2 * b, _mm512_cvtph_ps(_mm512_castsi512_si256(words)));  // d0 m0 .. d7 m7
      _mm512_storeu_ps(dm + 2 * b + 16, _mm512_cvtph_ps(_mm512_extracti64x4_epi64(words, 1)));
    } else {
      _mm512_storeu_ps(dm + b, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(words)));
    }
  }
  for (; b < nb; ++b) {
    if constexpr (Q == QType::kQ4_1) {
      dm[2 * b] = half_at(src + b * bb);
      dm[2 * b + 1] = half_at(src + b * bb + 2);
    } else {
      dm[b] = half_at(src + b * bb);
    }
  }
}

// One block -> 32 fp32, with its scales at s (d, m or d).
template <QType Q>
inline void block_f32(const uint8_t* b, const float* s, float* out) {
  if constexpr (Q == QType::kQ4_1) {
    const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 table = _mm512_fmadd_ps(iota, _mm512_set1_ps(s[0]), _mm512_set1_ps(s[1]));
    const __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 4)));
    _mm512_storeu_ps(out, _mm512_permutexvar_ps(_mm512_and_si512(q, _mm512_set1_epi32(15)), table));
    _mm512_storeu_ps(out + 16, _mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), table));
  } else {
    const __m512 d = _mm512_set1_ps(s[0]);
    const __m128i* q = reinterpret_cast<const __m128i*>(b + 2);
    _mm512_storeu_ps(out, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q))), d));
    _mm512_storeu_ps(out + 16, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q + 1))), d));
  }
}

// One block -> 32 bf16 (round to nearest even), with its scales at s.
template <QType Q>
inline void block_bf16(const uint8_t* b, const float* s, uint16_t* out) {
#if ENTMTP_ISA_LEVEL >= 3
  if constexpr (Q == QType::kQ4_1) {
    const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 table = _mm512_fmadd_ps(iota, _mm512_set1_ps(s[0]), _mm512_set1_ps(s[1]));
    const __m512i table16 = (__m512i)_mm512_cvtne2ps_pbh(table, table);  // entries 0-15 (and again)
    const __m256i q = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 4)));
    const __m512i idx = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(q, _mm256_set1_epi16(15))),
                                           _mm256_srli_epi16(q, 4), 1);
    _mm512_storeu_si512(out, _mm512_permutexvar_epi16(idx, table16));
  } else {
    const __m512 d = _mm512_set1_ps(s[0]);
    const __m128i* q = reinterpret_cast<const __m128i*>(b + 2);
    const __m512 lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q))), d);
    const __m512 hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q + 1))), d);
    _mm512_storeu_si512(out, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
  }
#else
  alignas(64) float f[32];
  block_f32<Q>(b, s, f);
  bf16_t* o = reinterpret_cast<bf16_t*>(out);
  for (int j = 0; j < 32; j += kLanes) store8(o + j, load8(f + j));
#endif
}

// One weight row of `blocks` blocks -> out [blocks * 32].
template <QType Q, typename T>
void row_q(const uint8_t* src, int64_t blocks, T* out) {
  constexpr int64_t bb = Q == QType::kQ4_1 ? 20 : 34, per = Q == QType::kQ4_1 ? 2 : 1;
  alignas(64) float dm[2 * kScaleChunk];
  for (int64_t c = 0; c < blocks; c += kScaleChunk) {
    const int64_t nb = std::min(kScaleChunk, blocks - c);
    block_scales<Q>(src + c * bb, nb, dm);
    for (int64_t b = 0; b < nb; ++b) {
      if constexpr (std::is_same_v<T, float>) block_f32<Q>(src + (c + b) * bb, dm + per * b, out + (c + b) * 32);
      else block_bf16<Q>(src + (c + b) * bb, dm + per * b, out + (c + b) * 32);
    }
  }
}
#else
// ---- portable and AVX2: plain loops the compiler vectorises -----------------
template <QType Q>
inline void block_f32(const uint8_t* b, float* out) {
  const float d = half_at(b);
  if constexpr (Q == QType::kQ4_1) {
    const float m = half_at(b + 2);
    const uint8_t* qs = b + 4;
    for (int j = 0; j < 16; ++j) out[j] = static_cast<float>(qs[j] & 15) * d + m;
    for (int j = 0; j < 16; ++j) out[16 + j] = static_cast<float>(qs[j] >> 4) * d + m;
  } else {
    const int8_t* q = reinterpret_cast<const int8_t*>(b + 2);
    for (int j = 0; j < 32; ++j) out[j] = static_cast<float>(q[j]) * d;
  }
}

template <QType Q, typename T>
void row_q(const uint8_t* src, int64_t blocks, T* out) {
  constexpr int64_t bb = Q == QType::kQ4_1 ? 20 : 34;
  for (int64_t b = 0; b < blocks; ++b) {
    if constexpr (std::is_same_v<T, float>) {
      block_f32<Q>(src + b * bb, out + b * 32);
    } else {
      alignas(32) float f[32];
      block_f32<Q>(src + b * bb, f);
      bf16_t* o = reinterpret_cast<bf16_t*>(out + b * 32);
      for (int j = 0; j < 32; j += kLanes) store8(o + j, load8(f + j));
    }
  }
}
#endif

#ifndef ENTMTP_DEQUANT_PREFETCH_ROWS
#define ENTMTP_DEQUANT_PREFETCH_ROWS 16
#endif
// Weight rows [n0, n0 + rows) of a, dequantized into out [rows, K], each row's
// blocks prefetched ENTMTP_DEQUANT_PREFETCH_ROWS rows ahead (0: none).
template <QType Q, typename T>
void rows_q(const QuantLinearArgs& a, int64_t n0, int64_t rows, T* out) {
  const int64_t blocks = a.K / kQBlock, bb = qblock_bytes(Q), row_bytes = blocks * bb;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t ahead = n0 + r + ENTMTP_DEQUANT_PREFETCH_ROWS;
    if (ENTMTP_DEQUANT_PREFETCH_ROWS > 0 && ahead < a.N) {
      const char* p = reinterpret_cast<const char*>(a.w + ahead * row_bytes);
      for (int64_t off = 0; off < row_bytes; off += 64) __builtin_prefetch(p + off, 0, 3);
    }
    row_q<Q>(a.w + (n0 + r) * row_bytes, blocks, out + r * a.K);
  }
}

template <typename T>
void dequant_rows(const QuantLinearArgs& a, int64_t n0, int64_t rows, T* out) {
  if (a.qtype == QType::kQ4_1) rows_q<QType::kQ4_1>(a, n0, rows, out);
  else rows_q<QType::kQ8_0>(a, n0, rows, out);
}

// ---- fp32 x against dequantized fp32 rows -----------------------------------
// w holds rows from w_row0 on; x rows at stride x_stride; 8-lane accumulators.
template <int NR, int MR>
void tile_f32(const LinearArgs& a, const float* w, int64_t m, int64_t n) {
  const int64_t K = a.K;
  const float* x = static_cast<const float*>(a.x);
  vf8 acc[NR][MR];
  #pragma GCC unroll 8
  for (int r = 0; r < NR; ++r)
    #pragma GCC unroll 8
    for (int j = 0; j < MR; ++j) acc[r][j] = splat(0.f);
  const float* wr = w + (n - a.w_row0) * K;
  for (int64_t k = 0; k < K; k += kLanes) {
    vf8 wv[NR];
    #pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) wv[r] = load8(wr + r * K + k);
    #pragma GCC unroll 8
    for (int j = 0; j < MR; ++j) {
      const vf8 xv = load8(x + (m + j) * a.x_stride + k);
      #pragma GCC unroll 8
      for (int r = 0; r < NR; ++r) acc[r][j] += wv[r] * xv;
    }
  }
  #pragma GCC unroll 8
  for (int j = 0; j < MR; ++j) {
    float out[NR];
    #pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) out[r] = hsum(acc[r][j]);
    linear_detail::store_out(a, m + j, n, NR, out);
  }
}

// The bf16-weight LinearArgs for a's activations (w set per dequantized group).
inline LinearArgs as_linear(const QuantLinearArgs& a) {
  LinearArgs la;
  la.x = a.x;
  la.x_stride = a.x_stride;
  la.x_bf16 = a.x_bf16;
  la.w = nullptr;
  la.bias = a.bias;
  la.y = a.y;
  la.y_bf16 = a.y_bf16;
  la.M = a.M, la.K = a.K, la.N = a.N;
  return la;
}

}  // namespace quant_detail
}  // namespace ENTMTP_ISA_NS
}  // namespace kernels
}  // namespace entmtp
