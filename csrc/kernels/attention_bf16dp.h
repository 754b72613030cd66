// The larger tiles of tree_attention (more than 4 query rows: tree verification,
// prefill) on bf16 inputs, on the paths with AVX-512-BF16 (levels 3 and 4): both
// products by vdpbf16ps, which multiplies bf16 pairs exactly and adds them in
// fp32, 32 products an instruction where an fp32 FMA on 8 lanes does 8.
//
// Same structure as the fp32 tiles (attention_tile): per key block of kKeyBlock,
//   scores  S[j][r] = scale * sum_d K[j][d] Q[r][d]     (rows r in the 16 lanes)
//   mask, online softmax over S (fp32, softmax_block)
//   values  Ot[d][r] = Ot[d][r] * alpha[r] + sum_j V[j][d] P[j][r]
// with the operands laid out as bf16 pairs along the summed index:
//   Qp[d/2][r] = (Q[r][d], Q[r][d+1])   built once per tile, zero rows to rpad
//   K pairs    (K[j][d], K[j][d+1])     read in place from the cache, broadcast
//   Pp[j/2][r] = (P[j][r], P[j+1][r])   P rounded to bf16 (as flash attention does
//                                        on GPUs; l sums the fp32 P)
//   Vp[j/2][s] = (V[j][d], V[j+1][d])   per block, by 16-bit unpacks of two V rows,
//                                        so slot s holds d = vp_dim(s) (unpack order)
// Needs D a multiple of 32 (one zmm of bf16 per 32 dims); the launcher falls
// back to the fp32 tiles otherwise. Accumulators: NA keys (or dims) x NV row
// vectors, 8-12 of them, to cover the instruction's latency.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kernels/attention_args.h"
#include "kernels/attention_decode.h"
#include "kernels/isa.h"
#include "kernels/simd.h"

#if ENTMTP_ISA_LEVEL >= 3
#include <immintrin.h>
#endif

namespace entmtp {
namespace kernels {
inline namespace ENTMTP_ISA_NS {
namespace attn_detail {

#if ENTMTP_ISA_LEVEL >= 3
constexpr bool kHasBf16Dp = true;
#else
constexpr bool kHasBf16Dp = false;
#endif

// Whether a tile of R rows over bf16 inputs of head size D takes this path: every
// tile the fp32 outer products would take (R > 4). Even half empty, 16 lanes of pairs
// beat 8 fp32 lanes: on a 2-core Zen4 (9 / 3 heads of 64, 1024 keys) a 2-token tree
// (6 rows a tile) took 68.6 us on the fp32 tiles, a 5-token one (15 rows) 54.5 us here.
template <typename Elem>
constexpr bool bf16dp_tile(int64_t R, int64_t D) {
  return kHasBf16Dp && std::is_same<Elem, bf16_t>::value && R > 4 && D % 32 == 0;
}

#if ENTMTP_ISA_LEVEL >= 3
constexpr int64_t kDpLanes = 16;

// Slot s of a Vp row -> its dim d. _mm512_unpack{lo,hi}_epi16 of two rows' 32-dim
// chunk c give, per 128-bit lane L, the pairs of dims 8L..8L+3 (lo) and 8L+4..8L+7
// (hi); lo is stored at slots 32c + 0..15, hi at 32c + 16..31. Slots 4g..4g+3 hold
// 4 consecutive dims.
inline int64_t vp_dim(int64_t s) {
  const int64_t c = s / 32, w = s % 32, g = w / 4;
  return 32 * c + (g < 4 ? 8 * g : 8 * (g - 4) + 4) + w % 4;
}

inline __m512i bcast_pair(const uint16_t* p) {
  uint32_t v;
  __builtin_memcpy(&v, p, 4);
  return _mm512_set1_epi32(static_cast<int>(v));
}

// C[a][r] for NA values a (row pointers c[a]) x NV vectors of 16 rows from r0:
// C = (scale ? C * scale[r] : 0) + sum_x dp(A pair (a, x), B[x][r]); A pair (a, x)
// at A + a * sa + x * sx (uint16 units), B rows of ldb uint32 pairs.
template <int NA, int NV>
__attribute__((always_inline)) inline void dp_microtile(const uint16_t* A, int64_t sa, int64_t sx, const uint32_t* B,
                                                        int64_t ldb, int64_t nx, int64_t r0, const float* scale,
                                                        float* const* c) {
  __m512 acc[NA][NV];
  #pragma GCC unroll 16
  for (int a = 0; a < NA; ++a)
    #pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      acc[a][v] = scale ? _mm512_mul_ps(_mm512_loadu_ps(c[a] + r0 + v * kDpLanes),
                                        _mm512_loadu_ps(scale + r0 + v * kDpLanes))
                        : _mm512_setzero_ps();
  for (int64_t x = 0; x < nx; ++x) {
    __m512bh bv[NV];
    #pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = (__m512bh)_mm512_loadu_si512(B + x * ldb + r0 + v * kDpLanes);
    #pragma GCC unroll 16
    for (int a = 0; a < NA; ++a) {
      const __m512bh ax = (__m512bh)bcast_pair(A + a * sa + x * sx);
      #pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[a][v] = _mm512_dpbf16_ps(acc[a][v], ax, bv[v]);
    }
  }
  #pragma GCC unroll 16
  for (int a = 0; a < NA; ++a)
    #pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(c[a] + r0 + v * kDpLanes, acc[a][v]);
}

// All na values of a for the NV * 16 rows from r: NA a's a microtile, then one at a time.
template <int NA, int NV, typename RowOf>
void dp_rows(const uint16_t* A, int64_t sa, int64_t sx, int64_t na, const uint32_t* B, int64_t nx, int64_t rpad,
             int64_t r, const float* scale, RowOf& c_of) {
  float* c[NA];
  int64_t a = 0;
  for (; a + NA <= na; a += NA) {
    for (int i = 0; i < NA; ++i) c[i] = c_of(a + i);
    dp_microtile<NA, NV>(A + a * sa, sa, sx, B, rpad, nx, r, scale, c);
  }
  for (; a < na; ++a) c[0] = c_of(a), dp_microtile<1, NV>(A + a * sa, sa, sx, B, rpad, nx, r, scale, c);
}

// All na values of a, all rpad (a multiple of 16) rows: 4 a's a pass over 48 or 32
// rows, 8 over 16; c_of(a) gives C's row for a.
template <typename RowOf>
void dp_product(const uint16_t* A, int64_t sa, int64_t sx, int64_t na, const uint32_t* B, int64_t nx, int64_t rpad,
                const float* scale, RowOf&& c_of) {
  int64_t r = 0;
  for (; r + 48 <= rpad; r += 48) dp_rows<4, 3>(A, sa, sx, na, B, nx, rpad, r, scale, c_of);
  for (; r + 32 <= rpad; r += 32) dp_rows<4, 2>(A, sa, sx, na, B, nx, rpad, r, scale, c_of);
  for (; r < rpad; r += 16) dp_rows<8, 1>(A, sa, sx, na, B, nx, rpad, r, scale, c_of);
}

// Qp [D/2][rpad] pairs of rows r0.. of (b, hkv), zero past R. Unscaled: the scale
// multiplies the scores (bf16 Q * scale would round).
inline void dp_pack_q(const AttnArgs<bf16_t>& a, int64_t b, int64_t hkv, int64_t G, int64_t r0, int64_t R,
                      int64_t rpad, uint32_t* Qp) {
  std::fill(Qp, Qp + a.D / 2 * rpad, 0u);
  for (int64_t i = 0; i < R; ++i) {
    const int64_t r = r0 + i, t = r / G, h = hkv * G + r % G;
    const uint16_t* q = reinterpret_cast<const uint16_t*>(a.q + b * a.q_sb + t * a.q_st + h * a.q_sh);
    for (int64_t x = 0; x < a.D / 2; ++x) {
      uint32_t v;
      __builtin_memcpy(&v, q + 2 * x, 4);
      Qp[x * rpad + i] = v;
    }
  }
}

// Vp [ceil(nk/2)][D] from V rows j, j+1 (a zero row past nk): see vp_dim.
inline void dp_pack_v(const bf16_t* v, int64_t v_sl, int64_t nk, int64_t D, uint32_t* Vp) {
  const __m512i zero = _mm512_setzero_si512();
  for (int64_t j = 0; j < nk; j += 2) {
    const uint16_t* r0 = reinterpret_cast<const uint16_t*>(v + j * v_sl);
    const uint16_t* r1 = reinterpret_cast<const uint16_t*>(v + (j + 1) * v_sl);
    uint32_t* dst = Vp + j / 2 * D;
    for (int64_t c = 0; c < D; c += 32) {
      const __m512i x0 = _mm512_loadu_si512(r0 + c);
      const __m512i x1 = j + 1 < nk ? _mm512_loadu_si512(r1 + c) : zero;
      _mm512_storeu_si512(dst + c, _mm512_unpacklo_epi16(x0, x1));
      _mm512_storeu_si512(dst + c + 16, _mm512_unpackhi_epi16(x0, x1));
    }
  }
}

// Pp [ceil(nk/2)][rpad] from the probabilities S[j][r] (fp32, rpad apart), a zero
// partner past nk.
inline void dp_pack_p(const float* S, int64_t nk, int64_t rpad, uint32_t* Pp) {
  // Lane r of the result: (bf16 P[j][r], bf16 P[j+1][r]); cvtne2ps puts the first
  // argument's 16 values in the upper half.
  alignas(64) static const uint16_t kInterleave[32] = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23,
                                                       8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i idx = _mm512_load_si512(kInterleave);
  for (int64_t j = 0; j < nk; j += 2)
    for (int64_t r = 0; r < rpad; r += kDpLanes) {
      const __m512 p0 = _mm512_loadu_ps(S + j * rpad + r);
      const __m512 p1 = j + 1 < nk ? _mm512_loadu_ps(S + (j + 1) * rpad + r) : _mm512_setzero_ps();
      const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(p1, p0);  // p0 low, p1 high
      _mm512_storeu_si512(Pp + j / 2 * rpad + r, _mm512_permutexvar_epi16(idx, both));
    }
}

#endif

}  // namespace attn_detail
}  // namespace ENTMTP_ISA_NS
}  // namespace kernels
}  // namespace entmtp
