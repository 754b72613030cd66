// The larger tiles of tree_attention (more than 4 query rows: tree verification,
// prefill) on bf16 inputs, on the AMX path (level 4): both products as TDPBF16PS
// tile products (16 x 16 outputs of 32 bf16 pairs each, exact products summed in
// fp32, as vdpbf16ps does on the level-3 path).
//
// Per key block of kAmxKeys keys, for the R (<= 48) query rows of one tile:
//   S[r][j] = Q[r] . K[j]          A = Q rows [16 r x 32 d], packed once per tile;
//                                  B = K^T in pairs [16 d-pairs x 16 keys], a 16 x 16
//                                  transpose of each 16-key, 32-dim block of the cache
//   scale, mask, online softmax along each row's keys (fp32); P rounded to bf16 (l sums
//   the fp32 P, as the vdpbf16ps path and flash attention on GPUs do)
//   O[r][:] = O[r][:] * alpha[r] + sum_j P[r][j] V[j][:]
//                                  A = P rows [16 r x 32 keys];
//                                  B = V in pairs [16 key-pairs x 16 d], two V rows
//                                  interleaved by one permute per 16 dims
// Why: on a 2-core Sapphire Rapids a 17-token tree at 256 keys (9 / 3 heads of 64) took
// 93 us a layer on the vdpbf16ps tiles, no faster than the fp32 outer products, where
// its products are ~400 tile instructions.
// Rows past R are zero in Q and P, so their outputs are zero and never stored.
#pragma once

#if ENTMTP_ISA_LEVEL >= 4
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/attention_args.h"
#include "kernels/attention_decode.h"
#include "kernels/linear_amx.h"
#include "kernels/simd.h"

namespace entmtp {
namespace kernels {
inline namespace ENTMTP_ISA_NS {
namespace attn_amx {

constexpr int64_t kAmxKeys = 64;     // keys per block: 4 key groups of 16, 2 chunks of 32
constexpr int64_t kAmxRows = 48;     // most query rows a tile holds (kMaxTileRows)
constexpr int64_t kAmxMaxDim = 128;

inline bool amx_tile(int64_t R, int64_t D) { return R > 4 && R <= kAmxRows && D % 32 == 0 && D <= kAmxMaxDim; }

// Floats of scratch one worker needs: Qa, Kt, S, P, Vv, Ot, O, m, l, alpha.
inline int64_t amx_scratch_floats(int64_t D) {
  return kAmxRows * D / 2 + kAmxKeys * D / 2 + kAmxRows * kAmxKeys + kAmxRows * kAmxKeys / 2 + kAmxKeys * D / 2
         + 2 * kAmxRows * D + 3 * kAmxRows + 64;  // + 64: room to align the tile buffers
}

// out[p] = word p of each in[n]: a 16 x 16 transpose of 32-bit words.
inline void transpose16(__m512i r[16]) {
  __m512i t[16], u[16];
  for (int g = 0; g < 4; ++g) {
    t[4 * g + 0] = _mm512_unpacklo_epi32(r[4 * g], r[4 * g + 1]);
    t[4 * g + 1] = _mm512_unpackhi_epi32(r[4 * g], r[4 * g + 1]);
    t[4 * g + 2] = _mm512_unpacklo_epi32(r[4 * g + 2], r[4 * g + 3]);
    t[4 * g + 3] = _mm512_unpackhi_epi32(r[4 * g + 2], r[4 * g + 3]);
  }
  // u[4g + c], 128-bit lane L: rows 4g..4g+3 of column 4L + c.
  for (int g = 0; g < 4; ++g) {
    u[4 * g + 0] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
    u[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
    u[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
    u[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
  }
  for (int c = 0; c < 4; ++c) {
    const __m512i a0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x88), a1 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xdd);
    const __m512i b0 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x88),
                  b1 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xdd);
    r[c] = _mm512_shuffle_i32x4(a0, b0, 0x88);        // column c      (lane 0)
    r[4 + c] = _mm512_shuffle_i32x4(a1, b1, 0x88);    // column 4 + c  (lane 1)
    r[8 + c] = _mm512_shuffle_i32x4(a0, b0, 0xdd);    // column 8 + c  (lane 2)
    r[12 + c] = _mm512_shuffle_i32x4(a1, b1, 0xdd);   // column 12 + c (lane 3)
  }
}

// Kt[g][c]: the B tile of key group g (keys 16 g.. of the block) and dims 32 c..32 c + 31,
// row p = dim pair 16 c + p of each key; zero keys past nk.
inline void pack_k(const bf16_t* k, int64_t k_sl, int64_t nk, int64_t D, uint32_t* Kt) {
  const int64_t halves = D / 32;
  for (int64_t g = 0; g * 16 < nk; ++g)
    for (int64_t c = 0; c < halves; ++c) {
      __m512i r[16];
      for (int n = 0; n < 16; ++n)
        r[n] = g * 16 + n < nk ? _mm512_loadu_si512(k + (g * 16 + n) * k_sl + 32 * c) : _mm512_setzero_si512();
      transpose16(r);
      uint32_t* tile = Kt + (g * halves + c) * 256;
      for (int p = 0; p < 16; ++p) _mm512_storeu_si512(tile + 16 * p, r[p]);
    }
}

// Vv[q][d]: the pair (V[2q][d], V[2q+1][d]) for the key pairs of the block, zero past
// nk up to nkp (a multiple of 32 keys); tile (chunk kc, dims 16 b..) at Vv + kc 16 D + 16 b,
// rows D dwords apart.
inline void pack_v(const bf16_t* v, int64_t v_sl, int64_t nk, int64_t nkp, int64_t D, uint32_t* Vv) {
  alignas(64) static const uint16_t kLo[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                               8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  const __m512i lo = _mm512_load_si512(kLo), hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
  for (int64_t j = 0; j < nkp; j += 2) {
    uint32_t* dst = Vv + j / 2 * D;
    for (int64_t d = 0; d < D; d += 32) {
      const __m512i x0 = j < nk ? _mm512_loadu_si512(v + j * v_sl + d) : _mm512_setzero_si512();
      const __m512i x1 = j + 1 < nk ? _mm512_loadu_si512(v + (j + 1) * v_sl + d) : _mm512_setzero_si512();
      _mm512_storeu_si512(dst + d, _mm512_permutex2var_epi16(x0, lo, x1));
      _mm512_storeu_si512(dst + d + 16, _mm512_permutex2var_epi16(x0, hi, x1));
    }
  }
}

// Lane-wise e^x on 16 lanes: exp8's range reduction and polynomial (simd.h) in AVX-512;
// below -87 (and -inf) exactly 0. The kernels pass x <= 0.
inline __m512 exp16(__m512 x) {
  const __mmask16 under = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_LT_OQ);
  x = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(88.0f), _CMP_GT_OQ), x, _mm512_set1_ps(88.0f));
  x = _mm512_mask_blend_ps(under, x, _mm512_set1_ps(-87.0f));
  const __m512 magic = _mm512_set1_ps(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const __m512 shifted = _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), magic);
  const __m512 n = _mm512_sub_ps(shifted, magic);
  const __m512i ni = _mm512_sub_epi32(_mm512_castps_si512(shifted), _mm512_castps_si512(magic));
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
  const __m512 scale = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(ni, _mm512_set1_epi32(127)), 23));
  return _mm512_maskz_mul_ps(static_cast<__mmask16>(~under), y, scale);
}

// Row r of S (nk <= kAmxKeys scores, already masked): scaled, then the online-softmax
// step; the probabilities go to P's row as bf16, zero from nk to nkp. The row stays in
// registers (4 vectors of 16 keys).
inline void softmax_row(const float* s, int64_t nk, int64_t nkp, float scale, float& m, float& l, float& alpha,
                        uint16_t* p) {
  constexpr int kChunks = kAmxKeys / 16;
  const int chunks = static_cast<int>((nk + 15) / 16);
  const __m512 sc = _mm512_set1_ps(scale), neg = _mm512_set1_ps(kNegInf);
  __m512 x[kChunks];
  __m512 mx = neg;
  #pragma GCC unroll 4
  for (int c = 0; c < kChunks; ++c) {
    if (c >= chunks) break;
    const int64_t left = nk - 16 * c;
    const __mmask16 in = left >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << left) - 1);
    x[c] = _mm512_mul_ps(_mm512_mask_loadu_ps(neg, in, s + 16 * c), sc);  // -inf past nk stays -inf
    mx = _mm512_max_ps(mx, x[c]);
  }
  const float m_new = std::max(m, _mm512_reduce_max_ps(mx));
  // A row that has seen only masked keys keeps m = -inf; 0 as its base keeps exp finite.
  const float base = m_new == kNegInf ? 0.f : m_new;
  const __m512 b = _mm512_set1_ps(base);
  __m512 sum = _mm512_setzero_ps();
  #pragma GCC unroll 4
  for (int c = 0; c < kChunks; ++c) {
    if (c >= chunks) break;
    const __m512 e = exp16(_mm512_sub_ps(x[c], b));
    sum = _mm512_add_ps(sum, e);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + 16 * c), (__m256i)_mm512_cvtneps_pbh(e));
  }
  for (int64_t j = 16 * chunks; j < nkp; j += 16) _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + j),
                                                                       _mm256_setzero_si256());
  alpha = m == kNegInf ? 0.f : std::exp(m - base);
  l = l * alpha + _mm512_reduce_add_ps(sum);
  m = m_new;
}

// The tile products keep four independent C tiles (tmm0-3) in flight: one A tile (tmm4)
// feeds them, B tiles alternate in tmm5/6.
// C tiles 0..NC-1 += A (at a, stride sa) x B_c (at b + c * b_step, stride sb).
template <int NC>
inline void dp_row(const void* a, int64_t sa, const char* b, int64_t b_step, int64_t sb) {
  _tile_loadd(4, a, sa);
  _tile_loadd(5, b, sb);
  _tile_dpbf16ps(0, 4, 5);
  if constexpr (NC > 1) {
    _tile_loadd(6, b + b_step, sb);
    _tile_dpbf16ps(1, 4, 6);
  }
  if constexpr (NC > 2) {
    _tile_loadd(5, b + 2 * b_step, sb);
    _tile_dpbf16ps(2, 4, 5);
  }
  if constexpr (NC > 3) {
    _tile_loadd(6, b + 3 * b_step, sb);
    _tile_dpbf16ps(3, 4, 6);
  }
}

template <int NC>
inline void zero_c() {
  _tile_zero(0);
  if constexpr (NC > 1) _tile_zero(1);
  if constexpr (NC > 2) _tile_zero(2);
  if constexpr (NC > 3) _tile_zero(3);
}

// Stores C tile c at out + c * step (stride so).
template <int NC>
inline void store_c(char* out, int64_t step, int64_t so) {
  _tile_stored(0, out, so);
  if constexpr (NC > 1) _tile_stored(1, out + step, so);
  if constexpr (NC > 2) _tile_stored(2, out + 2 * step, so);
  if constexpr (NC > 3) _tile_stored(3, out + 3 * step, so);
}

// Ot[rb rows][16 (d0 + c)..] = P(rb) V over nkc chunks of 32 keys, NC dim blocks from d0 / 16.
template <int NC>
inline void pv_pass(const uint16_t* P, int64_t rb, const uint32_t* Vv, int64_t D, int64_t d0, int64_t nkc,
                    float* Ot) {
  zero_c<NC>();
  for (int64_t kc = 0; kc < nkc; ++kc)
    dp_row<NC>(P + rb * 16 * kAmxKeys + 32 * kc, kAmxKeys * 2,
               reinterpret_cast<const char*>(Vv + kc * 16 * D + d0), 64, D * 4);
  store_c<NC>(reinterpret_cast<char*>(Ot + rb * 16 * D + d0), 64, D * 4);
}

struct AmxAcc {
  const float* O;  // [rpad][D] row-major
  const float* m;
  const float* l;
};

// One tile: rows [r0, r0 + R) of (b, hkv) against keys [k_begin, k_end), `mask(S, ld, kb, nk)`
// masking the new-token keys of S[r][j] (row stride ld). Scratch: amx_scratch_floats(D).
template <typename Mask>
AmxAcc amx_attention_tile(const AttnArgs<bf16_t>& a, int64_t b, int64_t hkv, int64_t G, int64_t r0, int64_t R,
                          int64_t k_begin, int64_t k_end, float* scratch, Mask&& mask) {
  const int64_t D = a.D, rpad = (R + 15) / 16 * 16, halves = D / 32;
  float* base = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(scratch) + 63) & ~uintptr_t(63));
  uint16_t* Qa = reinterpret_cast<uint16_t*>(base);                   // [rpad][D] bf16
  uint32_t* Kt = reinterpret_cast<uint32_t*>(base + kAmxRows * D / 2);  // [4][halves][16][16]
  float* S = base + kAmxRows * D / 2 + kAmxKeys * D / 2;                // [rpad][kAmxKeys]
  uint16_t* P = reinterpret_cast<uint16_t*>(S + kAmxRows * kAmxKeys);  // [rpad][kAmxKeys] bf16
  uint32_t* Vv = reinterpret_cast<uint32_t*>(S + kAmxRows * kAmxKeys + kAmxRows * kAmxKeys / 2);
  float* Ot = reinterpret_cast<float*>(Vv) + kAmxKeys * D / 2;          // [rpad][D]
  float* O = Ot + kAmxRows * D;                                         // [rpad][D]
  float* m = O + kAmxRows * D;
  float* l = m + kAmxRows;
  float* alpha = l + kAmxRows;

  std::fill(Qa, Qa + rpad * D, uint16_t(0));
  for (int64_t i = 0; i < R; ++i) {
    const int64_t r = r0 + i, t = r / G, h = hkv * G + r % G;
    std::copy_n(reinterpret_cast<const uint16_t*>(a.q + b * a.q_sb + t * a.q_st + h * a.q_sh), D, Qa + i * D);
  }
  std::fill(P, P + rpad * kAmxKeys, uint16_t(0));  // rows past R stay zero
  std::fill(O, O + rpad * D, 0.f);
  std::fill(m, m + rpad, kNegInf);
  std::fill(l, l + rpad, 0.f);
  const bf16_t* kbase = a.k + b * a.k_sb + hkv * a.k_sh;
  const bf16_t* vbase = a.v + b * a.v_sb + hkv * a.v_sh;
  amx_detail::configure_tiles();

  for (int64_t kb = k_begin; kb < k_end; kb += kAmxKeys) {
    const int64_t nk = std::min(kAmxKeys, k_end - kb), nkp = (nk + 31) / 32 * 32;
    pack_k(kbase + kb * a.k_sl, a.k_sl, nk, D, Kt);
    // S[r][16 g..] for the 4 key groups at once (a group past nk multiplies stale or zero
    // Kt: columns never read).
    for (int64_t rb = 0; rb < rpad / 16; ++rb) {
      zero_c<4>();
      for (int64_t c = 0; c < halves; ++c)
        dp_row<4>(Qa + rb * 16 * D + 32 * c, D * 2, reinterpret_cast<const char*>(Kt + c * 256), halves * 1024, 64);
      store_c<4>(reinterpret_cast<char*>(S + rb * 16 * kAmxKeys), 64, kAmxKeys * 4);
    }
    mask(S, kAmxKeys, kb, nk);
    for (int64_t i = 0; i < R; ++i)
      softmax_row(S + i * kAmxKeys, nk, nkp, a.scale, m[i], l[i], alpha[i], P + i * kAmxKeys);
    pack_v(vbase + kb * a.v_sl, a.v_sl, nk, nkp, D, Vv);
    // Ot[r][d] = P V over the block, 4 dim blocks of 16 at a time.
    for (int64_t rb = 0; rb < rpad / 16; ++rb) {
      int64_t d0 = 0;
      for (; d0 + 64 <= D; d0 += 64) pv_pass<4>(P, rb, Vv, D, d0, nkp / 32, Ot);
      if (d0 < D) pv_pass<2>(P, rb, Vv, D, d0, nkp / 32, Ot);  // D % 32 == 0: 32 dims left
    }
    for (int64_t i = 0; i < R; ++i) {
      const __m512 s = _mm512_set1_ps(alpha[i]);
      for (int64_t d = 0; d < D; d += 16)
        _mm512_storeu_ps(O + i * D + d, _mm512_fmadd_ps(_mm512_loadu_ps(O + i * D + d), s,
                                                       _mm512_loadu_ps(Ot + i * D + d)));
    }
  }
  _tile_release();
  return AmxAcc{O, m, l};
}

}  // namespace attn_amx
}  // namespace ENTMTP_ISA_NS
}  // namespace kernels
}  // namespace entmtp
#endif
