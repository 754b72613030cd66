// AMX-BF16 path of linear_bf16w (ENTMTP_ISA_LEVEL 4), for bf16 x.
//
// Computes the transposed product C^T = W X^T with tiles: an A tile is 16
// weight rows x 32 k read straight from W (row-major [N, K] is exactly the A
// layout, so the weights are never repacked), a B tile is 16 k-pairs x 16
// input rows of x in the VNNI pair layout, packed once per call (x is small).
// One TDPBF16PS does 16 x 16 x 32 multiply-adds: bf16 products are exact and
// accumulate in fp32, the same semantics as the vdpbf16ps path.
//
// Tiles: C in tmm0-3 (four blocks of 16 weight rows = a group of 64 output
// features), A alternating in tmm4/5, B in tmm6. For each group the weight
// rows (64 x K bf16: 72 KB at K = 576) stay in L2 while every block of 16
// input rows passes them, so DRAM sees each weight once per call.
// Needs K % 32 == 0 (model shapes: 576, 1536); other shapes and the last
// N % 16 rows take the vdpbf16ps path (linear_bf16w.h).
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels/isa.h"
#include "kernels/linear_bf16w.h"
#include "kernels/simd.h"

namespace entmtp {
namespace kernels {
inline namespace ENTMTP_ISA_NS {
namespace amx_detail {

#ifndef ENTMTP_AMX_MIN_ROWS
#define ENTMTP_AMX_MIN_ROWS 1
#endif

// From this many rows on, the tiles run. Measured on a 2-core Sapphire Rapids: even at
// one row (a 16-row tile, 15 rows of zeros) AMX streams the weights at the read
// bandwidth (49152 x 576: 2.2 ms) where the vdpbf16ps GEMV reached 4.2 ms.
constexpr int64_t kAmxMinRows = ENTMTP_AMX_MIN_ROWS;

#ifndef ENTMTP_AMX_PREFETCH_GROUPS
#define ENTMTP_AMX_PREFETCH_GROUPS 1
#endif
// How many 64-row weight groups ahead amx_run prefetches (see Prefetch).
constexpr int64_t kPrefetchGroups = ENTMTP_AMX_PREFETCH_GROUPS;

struct alignas(64) TileConfig {
  uint8_t palette, start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

inline void configure_tiles() {
  TileConfig c;
  std::memset(&c, 0, sizeof(c));
  c.palette = 1;
  for (int t = 0; t < 8; ++t) {
    c.rows[t] = 16;
    c.colsb[t] = 64;
  }
  _tile_loadconfig(&c);
}

inline int64_t m_blocks(const LinearArgs& a) { return (a.M + 15) / 16; }
inline int64_t vnni_bytes(const LinearArgs& a) { return m_blocks(a) * (a.K / 32) * 1024; }

// Software prefetch of a later weight group into L2, a few lines per k step.
// Why: an A tile load touches 16 rows 2K bytes apart, so a group is 64 row
// streams, too many for the hardware prefetcher; once M > 1 the tile math no
// longer overlaps the DRAM misses (64 rows: 2x the one-row time). The group
// is one contiguous block (64 x K bf16), so prefetching it linearly while the
// current group computes keeps the DRAM queue full.
struct Prefetch {
  const char* p;
  const char* end;
  int64_t per;  // cache lines per k step
  inline void step() {
    for (int64_t j = 0; j < per && p < end; ++j, p += 64) _mm_prefetch(p, _MM_HINT_T1);
  }
};

// y[m0 + i, n + j] = c[j][i] + bias[n + j] for i < m_end: c is one C tile
// (16 weight rows x 16 input rows). Gathers a column per output row, adds the
// bias and rounds 16 outputs at once (the scalar per-element store was as
// slow as the tile math itself at 64 rows).
inline void store_tile(const LinearArgs& a, const float* c, int64_t m0, int64_t m_end, int64_t n) {
  const __m512i cols = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                          _mm512_set1_epi32(16));
  const __m512 bias = a.bias ? _mm512_loadu_ps(a.bias + n) : _mm512_setzero_ps();
  for (int64_t i = 0; i < m_end; ++i) {
    const int64_t m = m0 + i;
    const __m512 v = _mm512_add_ps(_mm512_i32gather_ps(cols, c + i, 4), bias);
    if (a.y_bf16) {
      // Round to nearest even, NaN -> 0x7fc0: from_float<bf16_t> lane-wise.
      const __m512i bits = _mm512_castps_si512(v);
      const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
      __m512i r = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
      r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7fc0));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(a.y) + m * a.N + n),
                          _mm512_cvtepi32_epi16(r));
    } else {
      _mm512_storeu_ps(static_cast<float*>(a.y) + m * a.N + n, v);
    }
  }
}

inline int64_t rows_in(const LinearArgs& a, int64_t mb) { return std::min<int64_t>(16, a.M - mb * 16); }

// NC blocks of 16 weight rows from n0 against input rows [16 mb, 16 mb + 16):
// C in tmm0-3, A alternating in tmm4/5, B in tmm6.
template <int NC>
void group(const LinearArgs& a, const uint16_t* vnni, int64_t mb, int64_t n0, Prefetch& pf) {
  const int64_t K = a.K, KC = K / 32;
  const int64_t ws = K * 2;  // weight row stride in bytes
  const uint16_t* bt = vnni + mb * KC * 512;
  const uint16_t* w = linear_detail::w_row(a, n0);
  _tile_zero(0);
  if constexpr (NC > 1) _tile_zero(1);
  if constexpr (NC > 2) _tile_zero(2);
  if constexpr (NC > 3) _tile_zero(3);
  for (int64_t kc = 0; kc < KC; ++kc) {
    const int64_t k = kc * 32;
    pf.step();
    _tile_loadd(6, bt + kc * 512, 64);
    _tile_loadd(4, w + k, ws);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (NC > 1) {
      _tile_loadd(5, w + 16 * K + k, ws);
      _tile_dpbf16ps(1, 5, 6);
    }
    if constexpr (NC > 2) {
      _tile_loadd(4, w + 32 * K + k, ws);
      _tile_dpbf16ps(2, 4, 6);
    }
    if constexpr (NC > 3) {
      _tile_loadd(5, w + 48 * K + k, ws);
      _tile_dpbf16ps(3, 5, 6);
    }
  }
  alignas(64) float c[4][16 * 16];  // c[block][n][m]
  _tile_stored(0, c[0], 64);
  if constexpr (NC > 1) _tile_stored(1, c[1], 64);
  if constexpr (NC > 2) _tile_stored(2, c[2], 64);
  if constexpr (NC > 3) _tile_stored(3, c[3], 64);
  for (int b = 0; b < NC; ++b) store_tile(a, c[b], mb * 16, rows_in(a, mb), n0 + b * 16);
}

// NA (1 or 2) blocks of 16 weight rows from n0 against two blocks of input
// rows (mb, mb + 1): C[a][m] in tmm(2a + m), A in tmm4/5, B in tmm6/7. Each
// A tile feeds two products, so at 64 rows a weight tile is loaded twice per
// call (from L1: 32 x K bf16 = 36 KB at K = 576) instead of four times.
template <int NA>
void pair(const LinearArgs& a, const uint16_t* vnni, int64_t mb, int64_t n0, Prefetch& pf) {
  const int64_t K = a.K, KC = K / 32;
  const int64_t ws = K * 2;
  const uint16_t* bt0 = vnni + mb * KC * 512;
  const uint16_t* bt1 = bt0 + KC * 512;
  const uint16_t* w = linear_detail::w_row(a, n0);
  _tile_zero(0);
  _tile_zero(1);
  if constexpr (NA > 1) {
    _tile_zero(2);
    _tile_zero(3);
  }
  for (int64_t kc = 0; kc < KC; ++kc) {
    const int64_t k = kc * 32;
    pf.step();
    _tile_loadd(4, w + k, ws);
    _tile_loadd(6, bt0 + kc * 512, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_loadd(7, bt1 + kc * 512, 64);
    _tile_dpbf16ps(1, 4, 7);
    if constexpr (NA > 1) {
      _tile_loadd(5, w + 16 * K + k, ws);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
  alignas(64) float c[4][16 * 16];  // c[2 a + m][n][m]
  _tile_stored(0, c[0], 64);
  _tile_stored(1, c[1], 64);
  if constexpr (NA > 1) {
    _tile_stored(2, c[2], 64);
    _tile_stored(3, c[3], 64);
  }
  for (int b = 0; b < NA; ++b) {
    store_tile(a, c[2 * b], mb * 16, 16, n0 + b * 16);
    store_tile(a, c[2 * b + 1], mb * 16 + 16, rows_in(a, mb + 1), n0 + b * 16);
  }
}

}  // namespace amx_detail

inline bool linear_uses_amx(const LinearArgs& a) {
  return a.x_bf16 && a.M >= amx_detail::kAmxMinRows && a.K % 32 == 0 && a.N >= 16;
}

// x in the VNNI layout: tile (mb, kc) row r holds, for input rows m of block
// mb, the pair x[m, 32 kc + 2 r], x[m, 32 kc + 2 r + 1]; zero rows past M.
inline void amx_pack(const LinearArgs& a, uint16_t* vnni, int64_t m0, int64_t m1) {
  const int64_t KC = a.K / 32;
  const uint16_t* x = static_cast<const uint16_t*>(a.x);
  // A k-pair is one 32-bit lane: row r of tile (mb, kc) is lane 16 kc + r of
  // each x row, so a 64-byte chunk of x row i scatters to column i of the
  // tile's 16 rows (stride 16 lanes).
  const __m512i rows = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                          _mm512_set1_epi32(16));
  for (int64_t mb = m0 / 16; mb * 16 < m1; ++mb) {
    uint32_t* t = reinterpret_cast<uint32_t*>(vnni + mb * KC * 512);
    const int64_t n = std::min<int64_t>(16, a.M - mb * 16);
    if (n < 16) std::memset(t, 0, KC * 1024);
    for (int64_t i = 0; i < n; ++i) {
      const uint16_t* row = x + (mb * 16 + i) * a.x_stride;
      for (int64_t kc = 0; kc < KC; ++kc)
        _mm512_i32scatter_epi32(t + kc * 256 + i, rows, _mm512_loadu_si512(row + kc * 32), 4);
    }
  }
}

// Output features [n0, n1) (n0 a multiple of 16) for all rows; rows
// [m0, m1) must be whole blocks of 16 or end at M.
inline void amx_run(const LinearArgs& a, const uint16_t* vnni, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  using namespace amx_detail;
  configure_tiles();
  const int64_t K = a.K, KC = K / 32;
  const int64_t mb0 = m0 / 16, mb1 = (m1 + 15) / 16;
  const int64_t n_full = n0 + (n1 - n0) / 16 * 16;
  const char* wb = reinterpret_cast<const char*>(a.w);
  for (int64_t n = n0; n < n_full;) {
    const int64_t left = (n_full - n) / 16;
    const int nc = left >= 4 ? 4 : static_cast<int>(left);
    // Prefetch the group kPrefetchGroups ahead (within this thread's rows),
    // spread evenly over the k steps this group takes.
    const int64_t steps = KC * ((mb1 - mb0) / 2 * ((nc + 1) / 2) + (mb1 - mb0) % 2);
    // (Only rows w holds: a dequantized block holds just the rows it computes.)
    const int64_t held = a.w_rows < 0 ? n1 : std::min(n1, a.w_row0 + a.w_rows);
    const int64_t p0 = std::min(held, n + 64 * kPrefetchGroups), p1 = std::min(held, p0 + 64);
    Prefetch pf{wb + (p0 - a.w_row0) * K * 2, wb + (p1 - a.w_row0) * K * 2,
                ((p1 - p0) * K * 2 / 64 + steps - 1) / steps};
    int64_t mb = mb0;
    for (; mb + 1 < mb1; mb += 2) {
      for (int b = 0; b < nc; b += 2) {
        if (nc - b >= 2) pair<2>(a, vnni, mb, n + b * 16, pf);
        else pair<1>(a, vnni, mb, n + b * 16, pf);
      }
    }
    if (mb < mb1) {
      switch (nc) {
        case 4: group<4>(a, vnni, mb, n, pf); break;
        case 3: group<3>(a, vnni, mb, n, pf); break;
        case 2: group<2>(a, vnni, mb, n, pf); break;
        default: group<1>(a, vnni, mb, n, pf); break;
      }
    }
    n += nc * 16;
  }
  _tile_release();
}

}  // namespace ENTMTP_ISA_NS
}  // namespace kernels
}  // namespace entmtp
