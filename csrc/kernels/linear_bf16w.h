// y[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n]) with bf16 weights, one code
// path per ISA (compiled per csrc/isa/*.cpp; ENTMTP_ISA_LEVEL says which).
//
// Why our own kernel: decoding streams every weight once per step, at 1 to
// 128 rows (tree verification), and torch's bf16 matmul is slow at one row on
// every CPU measured and slow at any row count on CPUs without native bf16.
//
// All paths are dot products along K: a tile of NR weight rows x MR input
// rows keeps NR * MR vector accumulators in registers, so each weight vector
// (loaded once from DRAM, widened once) is reused across MR input rows and
// each input vector across NR weight rows. Per path:
//   portable (level 0)   GCC vector extensions, widening loads, NR 4 x MR 2.
//   avx2     (level 1)   16 bf16 widened by two unpacks with zero (lane order
//                        {0-3,8-11} / {4-7,12-15}; x is packed in that order
//                        once per call), NR 2 x MR 4.
//   avx512   (level 2)   32 bf16 per zmm load, widened by shift/and into even
//                        and odd elements (x packed even|odd per 32-chunk),
//                        NR 4 x MR 4.
//   avx512bf16 (3)       x bf16: vdpbf16ps on bf16 pairs, no widening, exact
//                        bf16 products with fp32 accumulation; NR 4 x MR 6.
//                        x fp32 keeps the level-2 widening path (fp32 math).
//   amx (4)              x bf16 and M >= kAmxMinRows: tiles, linear_amx.h.
// Up to kSeqRows input rows (plain decoding, small trees) every path runs NR 1:
// one weight row at a time, so each thread reads its weights as one sequential
// stream. NR 4 side by side is four short streams, which the hardware
// prefetcher follows poorly: measured on a 2-core Zen4 (avx512bf16 path), the
// 49152 x 576 GEMV read 12-14 GB/s with NR 4 and 24-30 GB/s with NR 1 (a plain
// read: 41 GB/s), and plain decoding went from 23 to 12-15 ms a token. Above
// kSeqRows the NR x MR tiles pay off (more reuse per load); there, on the
// AVX-512 paths, the first tile of input rows prefetches a later block
// linearly (kAheadBlocks).
// x is packed once per call (fp32 permuted, or bf16), zero-padded to a whole
// number of chunks; the weight tail chunk is read through a zero-padded copy
// (or a masked load), so every path handles any K and N.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/isa.h"
#include "kernels/simd.h"

#if ENTMTP_ISA_LEVEL >= 1
#include <immintrin.h>
#endif

namespace entmtp {
namespace kernels {
inline namespace ENTMTP_ISA_NS {
namespace linear_detail {

// Elements per packed chunk of K (x and w are walked chunk by chunk).
#if ENTMTP_ISA_LEVEL >= 2
constexpr int64_t kChunk = 32;
#elif ENTMTP_ISA_LEVEL == 1
constexpr int64_t kChunk = 16;
#else
constexpr int64_t kChunk = 8;
#endif

inline int64_t padded_k(int64_t K) { return (K + kChunk - 1) / kChunk * kChunk; }

// Position of natural column k inside its chunk of packed fp32 x.
inline int64_t pack_position(int64_t k) {
  const int64_t base = k & ~(kChunk - 1), j = k & (kChunk - 1);
#if ENTMTP_ISA_LEVEL >= 2
  return base + ((j & 1) ? 16 + (j >> 1) : (j >> 1));  // evens | odds
#elif ENTMTP_ISA_LEVEL == 1
  static constexpr int8_t kOrder[16] = {0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15};
  return base + kOrder[j];
#else
  return base + j;
#endif
}

// Weight row n of a (which may hold only rows from a.w_row0 on).
inline const uint16_t* w_row(const LinearArgs& a, int64_t n) { return a.w + (n - a.w_row0) * a.K; }

// Writes y[m, n0 + i] = v[i] + bias for i < cnt.
inline void store_out(const LinearArgs& a, int64_t m, int64_t n0, int cnt, const float* v) {
  for (int i = 0; i < cnt; ++i) {
    const float r = v[i] + (a.bias ? a.bias[n0 + i] : 0.f);
    if (a.y_bf16)
      static_cast<bf16_t*>(a.y)[m * a.N + n0 + i] = from_float<bf16_t>(r);
    else
      static_cast<float*>(a.y)[m * a.N + n0 + i] = r;
  }
}

// Copies the last (partial) chunk of weight row `row` into a zero-padded buffer.
inline const uint16_t* tail_chunk(const uint16_t* row, int64_t K, uint16_t* buf) {
  const int64_t k0 = K / kChunk * kChunk;
  std::memset(buf, 0, kChunk * sizeof(uint16_t));
  std::memcpy(buf, row + k0, (K - k0) * sizeof(uint16_t));
  return buf;
}

#if ENTMTP_ISA_LEVEL == 0
// ---- portable: vf8 widening loads --------------------------------------------
template <int NR, int MR>
void tile(const LinearArgs& a, const float* xp, int64_t m, int64_t n) {
  const int64_t K = a.K, Kp = padded_k(K), full = K / kChunk * kChunk;
  vf8 acc[NR][MR];
  #pragma GCC unroll 8
  for (int r = 0; r < NR; ++r)
    #pragma GCC unroll 8
    for (int j = 0; j < MR; ++j) acc[r][j] = splat(0.f);
  uint16_t tails[NR][kChunk];
  for (int64_t k = 0; k < Kp; k += kChunk) {
    vf8 wv[NR];
    #pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      const uint16_t* row = w_row(a, n + r);
      const uint16_t* src = k < full ? row + k : tail_chunk(row, K, tails[r]);
      wv[r] = load8(reinterpret_cast<const bf16_t*>(src));
    }
    #pragma GCC unroll 8
    for (int j = 0; j < MR; ++j) {
      const vf8 xv = load8(xp + (m + j) * Kp + k);
      #pragma GCC unroll 8
      for (int r = 0; r < NR; ++r) acc[r][j] += wv[r] * xv;
    }
  }
  #pragma GCC unroll 8
  for (int j = 0; j < MR; ++j) {
    float out[NR];
    #pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) out[r] = hsum(acc[r][j]);
    store_out(a, m + j, n, NR, out);
  }
}
constexpr int kNR = 4, kMR = 2;
#endif

#if ENTMTP_ISA_LEVEL == 1
// ---- avx2 + fma: unpack widening ---------------------------------------------
// Sums of 4 ymm accumulators -> one xmm [sum a, sum b, sum c, sum d].
inline __m128 reduce4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 ab = _mm256_add_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
  const __m256 cd = _mm256_add_ps(_mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
  const __m256 abcd = _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(ab), _mm256_castps_pd(cd))),
                                    _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(ab), _mm256_castps_pd(cd))));
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

template <int NR, int MR>
void tile(const LinearArgs& a, const float* xp, int64_t m, int64_t n) {
  const int64_t K = a.K, Kp = padded_k(K), full = K / kChunk * kChunk;
  const __m256i zero = _mm256_setzero_si256();
  __m256 acc[NR][MR];
  #pragma GCC unroll 8
  for (int r = 0; r < NR; ++r)
    #pragma GCC unroll 8
    for (int j = 0; j < MR; ++j) acc[r][j] = _mm256_setzero_ps();
  alignas(32) uint16_t tails[NR][kChunk];
  for (int64_t k = 0; k < Kp; k += kChunk) {
    #pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      const uint16_t* row = w_row(a, n + r);
      const uint16_t* src = k < full ? row + k : tail_chunk(row, K, tails[r]);
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
      const __m256 lo = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, raw));
      const __m256 hi = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, raw));
      #pragma GCC unroll 8
      for (int j = 0; j < MR; ++j) {
        const float* x = xp + (m + j) * Kp + k;
        acc[r][j] = _mm256_fmadd_ps(hi, _mm256_loadu_ps(x + 8), _mm256_fmadd_ps(lo, _mm256_loadu_ps(x), acc[r][j]));
      }
    }
  }
  #pragma GCC unroll 8
  for (int j = 0; j < MR; ++j) {
    alignas(16) float out[4];
    const __m256 z = _mm256_setzero_ps();
    _mm_store_ps(out, reduce4(acc[0][j], NR > 1 ? acc[NR > 1 ? 1 : 0][j] : z, NR > 2 ? acc[NR > 2 ? 2 : 0][j] : z,
                              NR > 3 ? acc[NR > 3 ? 3 : 0][j] : z));
    store_out(a, m + j, n, NR, out);
  }
}
constexpr int kNR = 2, kMR = 4;
#endif

#if ENTMTP_ISA_LEVEL >= 2
// ---- avx512: even/odd widening, and vdpbf16ps --------------------------------
// Sums of 4 zmm accumulators -> one xmm [sum a, sum b, sum c, sum d].
inline __m128 reduce4(__m512 a, __m512 b, __m512 c, __m512 d) {
  const __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
  const __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
  const __m512 abcd = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(ab), _mm512_castps_pd(cd))),
                                    _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(ab), _mm512_castps_pd(cd))));
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(abcd),
                                 _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(abcd), 1)));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

// 32 bf16 of weight row `row` at chunk k (masked on the tail).
inline __m512i load_w32(const uint16_t* row, int64_t k, int64_t K) {
  if (k + 32 <= K) return _mm512_loadu_si512(row + k);
  return _mm512_maskz_loadu_epi16((__mmask32)((1ull << (K - k)) - 1), row + k);
}

// Inlined always: a call taking acc by reference made GCC keep acc in memory
// and store every accumulator on every k step (seen in the disassembly).
template <int NR, int MR>
__attribute__((always_inline)) inline void store_tile(const LinearArgs& a, __m512 (&acc)[NR][MR], int64_t m,
                                                      int64_t n) {
  const __m512 z = _mm512_setzero_ps();
  #pragma GCC unroll 8
  for (int j = 0; j < MR; ++j) {
    alignas(16) float out[4];
    _mm_store_ps(out, reduce4(acc[0][j], NR > 1 ? acc[NR > 1 ? 1 : 0][j] : z, NR > 2 ? acc[NR > 2 ? 2 : 0][j] : z,
                              NR > 3 ? acc[NR > 3 ? 3 : 0][j] : z));
    store_out(a, m + j, n, NR, out);
  }
}

// fp32 x (packed evens | odds per 32-chunk) against widened weights.
template <int NR, int MR>
void tile(const LinearArgs& a, const float* xp, int64_t m, int64_t n, const char* pf) {
  const int64_t K = a.K, Kp = padded_k(K);
  const __m512i hi_mask = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  __m512 acc[NR][MR];
  #pragma GCC unroll 8
  for (int r = 0; r < NR; ++r)
    #pragma GCC unroll 8
    for (int j = 0; j < MR; ++j) acc[r][j] = _mm512_setzero_ps();
  const uint16_t* wr[NR];  // the tile's weight rows, addressed once
  #pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) wr[r] = w_row(a, n + r);
  for (int64_t k = 0; k < Kp; k += kChunk) {
    if (pf != nullptr)  // NR lines of a later block per k step: the whole block by the loop's end
      for (int r = 0; r < NR; ++r) _mm_prefetch(pf + (k / kChunk * NR + r) * 64, _MM_HINT_T0);
    #pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      const __m512i raw = load_w32(wr[r], k, K);
      const __m512 ev = _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16));
      const __m512 od = _mm512_castsi512_ps(_mm512_and_si512(raw, hi_mask));
      #pragma GCC unroll 8
      for (int j = 0; j < MR; ++j) {
        const float* x = xp + (m + j) * Kp + k;
        acc[r][j] = _mm512_fmadd_ps(od, _mm512_loadu_ps(x + 16), _mm512_fmadd_ps(ev, _mm512_loadu_ps(x), acc[r][j]));
      }
    }
  }
  store_tile<NR, MR>(a, acc, m, n);
}
constexpr int kNR = 4, kMR = 4;

#if ENTMTP_ISA_LEVEL >= 3
// bf16 x (natural order, zero-padded to Kp) with vdpbf16ps.
template <int NR, int MR>
void tile_bf16(const LinearArgs& a, const uint16_t* xp, int64_t m, int64_t n, const char* pf) {
  const int64_t K = a.K, Kp = padded_k(K);
  __m512 acc[NR][MR];
  #pragma GCC unroll 8
  for (int r = 0; r < NR; ++r)
    #pragma GCC unroll 8
    for (int j = 0; j < MR; ++j) acc[r][j] = _mm512_setzero_ps();
  const uint16_t* wr[NR];  // the tile's weight rows, addressed once
  #pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) wr[r] = w_row(a, n + r);
  for (int64_t k = 0; k < Kp; k += kChunk) {
    if (pf != nullptr)  // NR lines of a later block per k step: the whole block by the loop's end
      for (int r = 0; r < NR; ++r) _mm_prefetch(pf + (k / kChunk * NR + r) * 64, _MM_HINT_T0);
    __m512i xv[MR];
    #pragma GCC unroll 8
    for (int j = 0; j < MR; ++j) xv[j] = _mm512_loadu_si512(xp + (m + j) * Kp + k);
    #pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      const __m512bh wv = (__m512bh)load_w32(wr[r], k, K);
      #pragma GCC unroll 8
      for (int j = 0; j < MR; ++j) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], wv, (__m512bh)xv[j]);
    }
  }
  store_tile<NR, MR>(a, acc, m, n);
}
constexpr int kMRb = 6;
#endif
#endif

// Measured on the Zen4 above, 30 layers' four projections of the default model
// at M rows (ms, median of alternating builds): NR 1 up to 8 rows beat NR 4 at
// 1-8 rows on the avx512bf16 and (forced) avx2 paths, and lost at 16 (34 vs 27).
#ifndef ENTMTP_BF16W_SEQ_ROWS
#define ENTMTP_BF16W_SEQ_ROWS 8
#endif
constexpr int64_t kSeqRows = ENTMTP_BF16W_SEQ_ROWS;

// Same measurement, 6 alternating rounds: prefetching 0 / 1 / 4 blocks ahead gave
// 28.2 / 23.1 / 23.1 ms at 16 rows, 41.6 / 35.5 / 35.2 at 32, 66.7 / 64.1 / 60.7 at 64.
#ifndef ENTMTP_BF16W_AHEAD_BLOCKS
#define ENTMTP_BF16W_AHEAD_BLOCKS 4
#endif
// Past a few input rows a tile reads NR weight rows side by side, which the
// hardware prefetcher follows poorly (NR short streams); the rows of the block
// kAheadBlocks on are one contiguous range, prefetched linearly by the first
// tile of input rows (null: nothing to prefetch: a one-row block, the end, or
// the quantized linear's scratch, already in cache).
constexpr int64_t kAheadBlocks = ENTMTP_BF16W_AHEAD_BLOCKS;
inline const char* ahead_block(const LinearArgs& a, bool first_rows, int64_t n, int nr) {
  if (kAheadBlocks <= 0 || nr == 1 || !first_rows || a.w_rows >= 0 || n + (kAheadBlocks + 1) * nr > a.N)
    return nullptr;
  return reinterpret_cast<const char*>(w_row(a, n + kAheadBlocks * nr));
}

// Calls fn(rows, m) over rows [m0, m1): MR at a time, then 4/2/1 for the rest.
template <int MR, typename Fn>
void rows_loop(int64_t m0, int64_t m1, Fn&& fn) {
  int64_t m = m0;
  for (; m + MR <= m1; m += MR) fn(std::integral_constant<int, MR>{}, m);
  if constexpr (MR > 4) {
    if (m1 - m >= 4) fn(std::integral_constant<int, 4>{}, m), m += 4;
  }
  if constexpr (MR > 2) {
    if (m1 - m >= 2) fn(std::integral_constant<int, 2>{}, m), m += 2;
  }
  if constexpr (MR > 1) {
    for (; m < m1; ++m) fn(std::integral_constant<int, 1>{}, m);
  }
}

// Weight rows [n0, n1) in blocks of NR (then single rows) x input rows [m0, m1):
// the block of NR weight rows stays in L1 while all input rows pass it.
template <int NR, int MR, typename Tiler>
void blocks_loop(int64_t m0, int64_t m1, int64_t n0, int64_t n1, Tiler&& t) {
  int64_t n = n0;
  for (; n + NR <= n1; n += NR)
    rows_loop<MR>(m0, m1, [&](auto mr, int64_t m) { t(std::integral_constant<int, NR>{}, mr, m, n); });
  for (; n < n1; ++n)
    rows_loop<MR>(m0, m1, [&](auto mr, int64_t m) { t(std::integral_constant<int, 1>{}, mr, m, n); });
}

}  // namespace linear_detail

inline bool linear_uses_bf16_x(const LinearArgs& a) {
#if ENTMTP_ISA_LEVEL >= 3
  return a.x_bf16;
#else
  (void)a;
  return false;
#endif
}

// Bytes of packed x: fp32 [M][Kp] in the path's chunk order, or bf16 [M][Kp].
inline int64_t linear_simd_pack_bytes(const LinearArgs& a) {
  const int64_t Kp = linear_detail::padded_k(a.K);
  return a.M * Kp * (linear_uses_bf16_x(a) ? 2 : 4);
}

inline void linear_simd_pack(const LinearArgs& a, void* packed, int64_t m0, int64_t m1) {
  using namespace linear_detail;
  const int64_t K = a.K, Kp = padded_k(K);
  for (int64_t m = m0; m < m1; ++m) {
    if (linear_uses_bf16_x(a)) {
      uint16_t* dst = static_cast<uint16_t*>(packed) + m * Kp;
      std::memcpy(dst, static_cast<const uint16_t*>(a.x) + m * a.x_stride, K * 2);
      std::memset(dst + K, 0, (Kp - K) * 2);
      continue;
    }
    float* dst = static_cast<float*>(packed) + m * Kp;
    std::memset(dst + K / kChunk * kChunk, 0, (Kp - K / kChunk * kChunk) * 4);
    for (int64_t k = 0; k < K; ++k) {
      const float v = a.x_bf16 ? to_float(static_cast<const bf16_t*>(a.x)[m * a.x_stride + k])
                               : static_cast<const float*>(a.x)[m * a.x_stride + k];
      dst[pack_position(k)] = v;
    }
  }
}

inline void linear_simd_run(const LinearArgs& a, const void* packed, int64_t m0, int64_t m1, int64_t n0,
                            int64_t n1) {
  using namespace linear_detail;
#if ENTMTP_ISA_LEVEL >= 3
  if (a.x_bf16) {
    const uint16_t* xp = static_cast<const uint16_t*>(packed);
    auto t = [&](auto nr, auto mr, int64_t m, int64_t n) {
      tile_bf16<decltype(nr)::value, decltype(mr)::value>(a, xp, m, n, ahead_block(a, m == m0, n, decltype(nr)::value));
    };
    if (m1 - m0 <= kSeqRows) blocks_loop<1, kMRb>(m0, m1, n0, n1, t);
    else blocks_loop<kNR, kMRb>(m0, m1, n0, n1, t);
    return;
  }
#endif
  const float* xp = static_cast<const float*>(packed);
  auto t = [&](auto nr, auto mr, int64_t m, int64_t n) {
#if ENTMTP_ISA_LEVEL >= 2
    tile<decltype(nr)::value, decltype(mr)::value>(a, xp, m, n, ahead_block(a, m == m0, n, decltype(nr)::value));
#else
    tile<decltype(nr)::value, decltype(mr)::value>(a, xp, m, n);
#endif
  };
  if (m1 - m0 <= kSeqRows) blocks_loop<1, kMR>(m0, m1, n0, n1, t);
  else blocks_loop<kNR, kMR>(m0, m1, n0, n1, t);
}

}  // namespace ENTMTP_ISA_NS
}  // namespace kernels
}  // namespace entmtp
