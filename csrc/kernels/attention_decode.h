// The decode-sized tiles of tree_attention (1-4 query rows: one token's GQA
// heads, or a 2-token tree's) work along the keys, with scores row-major,
// S[r][j] (kKeyBlock floats a row): why, and what it measured, in tree_attention.h.
#pragma once

#include <algorithm>
#include <cstdint>

#include "kernels/isa.h"
#include "kernels/simd.h"

namespace entmtp {
namespace kernels {
inline namespace ENTMTP_ISA_NS {

constexpr int64_t kKeyBlock = 32;  // keys per streamed K/V block (both tile forms)

namespace attn_detail {

// [sum a, sum b, sum c, sum d] of four 8-lane vectors: pairwise adds across them
// (7 shuffles and adds for the four sums, where four hsum calls take 28 serial adds).
inline void hsum4(vf8 a, vf8 b, vf8 c, vf8 d, float* out, int64_t stride) {
  const vi8 lo = {0, 8, 1, 9, 2, 10, 3, 11}, hi = {4, 12, 5, 13, 6, 14, 7, 15};
  const vf8 ab = __builtin_shuffle(a, b, lo) + __builtin_shuffle(a, b, hi);  // a b a b a b a b
  const vf8 cd = __builtin_shuffle(c, d, lo) + __builtin_shuffle(c, d, hi);
  const vi8 even = {0, 1, 8, 9, 4, 5, 12, 13}, odd = {2, 3, 10, 11, 6, 7, 14, 15};
  const vf8 abcd = __builtin_shuffle(ab, cd, even) + __builtin_shuffle(ab, cd, odd);  // a b c d a b c d
  for (int i = 0; i < 4; ++i) out[i * stride] = abcd[i] + abcd[i + 4];
}

// Decode-sized tiles (R <= 4 rows): S[r][j] (row-major, kKeyBlock apart), 4 keys at
// a time: the 4 x R dot products accumulate side by side (each K vector widened once,
// used for all R rows) and are reduced together by hsum4; the last nk % 4 keys alone.
template <int R, typename Elem>
void scores_rows(const float* Q, const Elem* k, int64_t k_sl, int64_t nk, int64_t D, float* S) {
  int64_t j = 0;
  for (; j + 4 <= nk; j += 4) {
    const Elem* kr = k + j * k_sl;
    vf8 acc[R][4];
    for (int r = 0; r < R; ++r)
      for (int i = 0; i < 4; ++i) acc[r][i] = splat(0.f);
    for (int64_t d = 0; d < D; d += kLanes) {
      vf8 kv[4];
      for (int i = 0; i < 4; ++i) kv[i] = load8(kr + i * k_sl + d);
      for (int r = 0; r < R; ++r) {
        const vf8 q = load8(Q + r * D + d);
        for (int i = 0; i < 4; ++i) acc[r][i] += q * kv[i];
      }
    }
    for (int r = 0; r < R; ++r) hsum4(acc[r][0], acc[r][1], acc[r][2], acc[r][3], S + r * kKeyBlock + j, 1);
  }
  for (; j < nk; ++j) {
    vf8 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = splat(0.f);
    for (int64_t d = 0; d < D; d += kLanes) {
      const vf8 kv = load8(k + j * k_sl + d);
      for (int r = 0; r < R; ++r) acc[r] += load8(Q + r * D + d) * kv;
    }
    for (int r = 0; r < R; ++r) S[r * kKeyBlock + j] = hsum(acc[r]);
  }
}

// The online-softmax step of decode-sized tiles, vectorised along the keys of each
// row (S[r][j], a row padded with -inf to whole vectors): with 1-4 rows, vectors
// across rows (softmax_block) would leave most lanes idle.
inline void softmax_rows(float* S, int64_t nk, int64_t R, float* m, float* l, float* alpha) {
  const int64_t nkp = (nk + kLanes - 1) / kLanes * kLanes;
  for (int64_t r = 0; r < R; ++r) {
    float* row = S + r * kKeyBlock;
    for (int64_t j = nk; j < nkp; ++j) row[j] = kNegInf;
    vf8 mb = splat(kNegInf);
    for (int64_t j = 0; j < nkp; j += kLanes) mb = vmax(mb, load8(row + j));
    const float m_new = std::max(m[r], hmax(mb));
    // A row that has seen only masked keys keeps m = -inf; 0 as its base keeps exp finite.
    const vf8 base = splat(m_new == kNegInf ? 0.f : m_new);
    vf8 sum = splat(0.f);
    for (int64_t j = 0; j < nkp; j += kLanes) {
      const vf8 p = exp8(load8(row + j) - base);
      store8(row + j, p);
      sum += p;
    }
    const float a = exp8(splat(m[r]) - base)[0];
    alpha[r] = a;
    l[r] = l[r] * a + hsum(sum);
    m[r] = m_new;
  }
}

// Decode-sized tiles: O[r][:] = O[r][:] * alpha[r] + sum_j P[r][j] V[j][:] for all R
// rows in one pass over V, read in place (widened in registers, no fp32 copy).
template <int R, int NV, typename Elem>
void pv_dot_chunk(const Elem* v, int64_t v_sl, int64_t nk, const float* P, const float* alpha, int64_t d0,
                  int64_t D, float* O) {
  vf8 acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < NV; ++c) acc[r][c] = load8(O + r * D + d0 + c * kLanes) * alpha[r];
  for (int64_t j = 0; j < nk; ++j) {
    vf8 vv[NV];
    for (int c = 0; c < NV; ++c) vv[c] = load8(v + j * v_sl + d0 + c * kLanes);
    for (int r = 0; r < R; ++r) {
      const vf8 p = splat(P[r * kKeyBlock + j]);
      for (int c = 0; c < NV; ++c) acc[r][c] += p * vv[c];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < NV; ++c) store8(O + r * D + d0 + c * kLanes, acc[r][c]);
}

template <int R, typename Elem>
void pv_dot(const Elem* v, int64_t v_sl, int64_t nk, const float* P, const float* alpha, int64_t D, float* O) {
  constexpr int NV = R <= 2 ? 4 : 2;  // R x NV accumulators fit the 16 ymm registers of AVX2
  int64_t d = 0;
  for (; d + NV * kLanes <= D; d += NV * kLanes) pv_dot_chunk<R, NV>(v, v_sl, nk, P, alpha, d, D, O);
  for (; d < D; d += kLanes) pv_dot_chunk<R, 1>(v, v_sl, nk, P, alpha, d, D, O);
}

}  // namespace attn_detail
}  // namespace ENTMTP_ISA_NS
}  // namespace kernels
}  // namespace entmtp
