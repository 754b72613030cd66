// CPU tree attention: softmax(q k^T * scale + mask) v over a committed prefix
// plus T new tokens whose mutual visibility is a tree (or causal).
//
// Layout (element strides, last dim contiguous everywhere):
//   q   [B, T, Hq, D]      strided (a slice of the fused qkv projection)
//   k,v [B, Hkv, Lk, D]    strided (slices of the preallocated cache); the
//                          first L = Lk - T keys are the prefix, visible to all
//   out [B, T, Hq, D]      contiguous
//   tree_bits [T, W]       bit n of row t set <=> new token t sees new token n;
//                          null means causal among the new tokens.
//
// Work split: for one (batch, kv head) the query rows are the flattened pairs
// r = t * G + g (G = Hq / Hkv query heads sharing that kv head), so one tile of
// rows reads each K/V block once for all its queries and GQA heads. Tiles are
// further split along the keys when there are too few of them to feed every
// thread (decode: B * Hkv work items); the splits' partial softmax states are
// merged afterwards (flash-decoding).
//
// Inside a tile, keys are streamed in blocks of kKeyBlock with an online
// softmax in fp32. Decode-sized tiles (<= 4 rows) keep scores row-major,
// S[r][j], and work along the keys: 4 keys' dot products at a time (each K
// vector widened once for all rows), the softmax vectorised along the keys,
// P V in one pass over V read in place; measured on a 2-core Zen4 (bf16, 9 / 3
// heads of 64, one token) this took 11.9 / 38.3 / 137 us at 200 / 1024 / 4096
// keys where the earlier key-major form (one hsum per key and row, the softmax
// across 3 of 8 lanes) took 15.5 / 55.4 / 201. Larger tiles (tree verify,
// prefill) keep scores key-major, S[j][r], the softmax vectorised across rows,
// and do both products as register-blocked outer products (outer_microtile),
// which is where the time goes. Torch-free: the launcher supplies threads and scratch.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kernels/attention_amx.h"
#include "kernels/attention_args.h"
#include "kernels/attention_bf16dp.h"
#include "kernels/attention_decode.h"
#include "kernels/isa.h"
#include "kernels/simd.h"

namespace entmtp {
namespace kernels {
inline namespace ENTMTP_ISA_NS {

constexpr int64_t kMaxTileRows = 48;  // query rows (t, g) per tile; a multiple of 8


// AttnPlan (how the work is cut) is in isa.h: the launcher holds it.

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
inline int64_t ceil_div(int64_t x, int64_t m) { return (x + m - 1) / m; }

// Modelled cost of one work item of `rows` query rows against `keys` keys, in
// row-key units: rows as its tile form pays for them (the fp32 tiles pad them to
// 8 lanes; the bf16 dot-product tiles to 16 lanes at twice the products a lane),
// plus a per-key share for the K/V blocks and the mask, times the keys plus a
// per-block share. Only ratios between plans matter.
inline int64_t attention_item_cost(int64_t rows, int64_t keys, bool dp) {
  const int64_t paid = rows <= 4 ? rows : dp ? round_up(rows, 16) / 2 : round_up(rows, kLanes);
  return (paid + 4) * (keys + kKeyBlock);
}

// The cut of the work into items (batch x kv head x row tile x key split) that
// the threads finish soonest under attention_item_cost: the slowest thread runs
// ceil(items / threads) items, since at::parallel_for hands each thread an equal
// run of them. The shapes that matter most have few items (B * Hkv = 3 on the
// default model), where one whole tile per kv head leaves a thread idle for a
// third of the time on 2 threads. Measured on a 2-core Zen4 (bf16, 9 / 3 heads
// of 64, 256 keys), a 2- and a 9-token tree took 23.2 / 58.7 us with one tile per
// kv head and no key split, 16.2 / 49.3 us cut this way. Key splits pay a second
// pass that merges them (kSplitMergeCost units).
constexpr int64_t kSplitMergeCost = 1024;

template <typename Elem>
AttnPlan plan_attention(const AttnArgs<Elem>& a, int64_t threads) {
  AttnPlan p;
  p.G = a.Hq / a.Hkv;
  p.rows = a.T * p.G;
  const int64_t rows = std::max<int64_t>(p.rows, 1), B = std::max<int64_t>(a.B * a.Hkv, 1);
  threads = std::max<int64_t>(threads, 1);
  const int64_t min_tiles = ceil_div(rows, kMaxTileRows);
  int64_t best = -1;
  p.tiles = min_tiles;
  p.tile_rows = ceil_div(rows, min_tiles);
  p.splits = 1;
  const bool dp = attn_detail::bf16dp_tile<Elem>(16, a.D);  // whether tiles past 8 rows take it
  for (int64_t tiles = min_tiles; tiles <= std::min(rows, 2 * min_tiles + 2); ++tiles) {
    const int64_t tile_rows = ceil_div(rows, tiles);
    const int64_t n_tiles = ceil_div(rows, tile_rows);  // no empty tiles
    // Never below two key blocks a split; at most enough splits to feed every thread twice over.
    const int64_t max_splits = std::max<int64_t>(1, std::min(a.Lk / (2 * kKeyBlock),
                                                             ceil_div(2 * threads, B * n_tiles)));
    for (int64_t splits = 1; splits <= max_splits; ++splits) {
      const int64_t waves = ceil_div(B * n_tiles * splits, threads);
      const int64_t cost = waves * attention_item_cost(tile_rows, ceil_div(a.Lk, splits), dp)
                           + (splits > 1 ? kSplitMergeCost : 0);
      if (best < 0 || cost < best) {
        best = cost;
        p.tiles = n_tiles;
        p.tile_rows = tile_rows;
        p.splits = splits;
      }
    }
  }
  return p;
}

// Scratch floats one worker needs (reused across its items).
inline int64_t attention_scratch_floats(int64_t D) {
  const int64_t rpad = round_up(kMaxTileRows, 16);
  const int64_t floats = D * rpad             // Q tile, either [R][D] or transposed [D][Rpad]
                         + kKeyBlock * rpad   // scores S[j][r]
                         + kMaxTileRows * D   // output accumulators, [R][D] or transposed [D][rpad]
                         + 2 * kKeyBlock * D  // K and V block widened to fp32
                         + 3 * rpad;          // m, l, alpha per row
#if ENTMTP_ISA_LEVEL >= 4
  return std::max(floats, attn_amx::amx_scratch_floats(D));  // the AMX tiles' buffers (attention_amx.h)
#else
  return floats;
#endif
}

// Partial state of one (item, row) after its key split: unnormalised O, m, l.
inline int64_t attention_partial_floats(const AttnPlan& p, int64_t B, int64_t Hkv, int64_t D) {
  return p.splits == 1 ? 0 : p.splits * B * Hkv * p.tiles * p.tile_rows * (D + 2);
}

namespace attn_detail {

// Key/dim values per outer-product microtile: 4 x 3 vectors = 12 accumulators.
constexpr int kOuterA = 4;

// View of a block of fp32 rows: either the cache itself (fp32 input) or the
// widened scratch copy.
struct Rows {
  const float* base;
  int64_t stride;
  const float* operator[](int64_t j) const { return base + j * stride; }
};

template <typename Elem>
Rows widen_block(const Elem* src, int64_t stride, int64_t n, int64_t D, float* scratch) {
  if (std::is_same<Elem, float>::value) return Rows{reinterpret_cast<const float*>(src), stride};
  for (int64_t j = 0; j < n; ++j)
    for (int64_t d = 0; d < D; d += kLanes) store8(scratch + j * D + d, load8(src + j * stride + d));
  return Rows{scratch, D};
}

// Outer-product accumulation, the workhorse of larger tiles:
//   C[a][r] = init + sum_x A(a, x) * B[x][r],  A(a, x) = A[a * sa + x * sx],
// for NA values of a and 8 * NV rows r at once; init is 0 (scale == nullptr)
// or C[a][r] * scale[r]. The NA x NV = 12 accumulators cover the FMA latency
// and stay in registers across the whole x loop. Used as
//   scores: S[j][r]   = sum_d K[j][d] * Qt[d][r]            (A = K rows)
//   values: Ot[d][r]  = Ot[d][r] * alpha[r] + sum_j V[j][d] * P[j][r]
template <int NA, int NV, bool kUnitX>
void outer_microtile(const float* A, int64_t sa, int64_t sx, int64_t a0, const float* B, int64_t ldb,
                     int64_t nx, int64_t r0, const float* scale, float* C, int64_t ldc) {
  if (kUnitX) sx = 1;  // lets the compiler drop the x-stride multiply
  vf8 acc[NA][NV];
  for (int a = 0; a < NA; ++a)
    for (int v = 0; v < NV; ++v)
      acc[a][v] = scale ? load8(C + (a0 + a) * ldc + r0 + v * kLanes) * load8(scale + r0 + v * kLanes)
                        : splat(0.f);
  const float* arow = A + a0 * sa;
  for (int64_t x = 0; x < nx; ++x) {
    vf8 bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = load8(B + x * ldb + r0 + v * kLanes);
    for (int a = 0; a < NA; ++a) {
      const vf8 ax = splat(arow[a * sa + x * sx]);
      for (int v = 0; v < NV; ++v) acc[a][v] += ax * bv[v];
    }
  }
  for (int a = 0; a < NA; ++a)
    for (int v = 0; v < NV; ++v) store8(C + (a0 + a) * ldc + r0 + v * kLanes, acc[a][v]);
}

template <int NV, bool kUnitX>
void outer_rows(const float* A, int64_t sa, int64_t sx, int64_t na, const float* B, int64_t ldb,
                int64_t nx, int64_t r0, const float* scale, float* C, int64_t ldc) {
  int64_t a = 0;
  for (; a + kOuterA <= na; a += kOuterA)
    outer_microtile<kOuterA, NV, kUnitX>(A, sa, sx, a, B, ldb, nx, r0, scale, C, ldc);
  for (; a < na; ++a) outer_microtile<1, NV, kUnitX>(A, sa, sx, a, B, ldb, nx, r0, scale, C, ldc);
}

// C [na][rpad] over all rpad (a multiple of 8) rows, in groups of 24/16/8.
template <bool kUnitX>
void outer_product(const float* A, int64_t sa, int64_t sx, int64_t na, const float* B,
                   int64_t nx, int64_t rpad, const float* scale, float* C) {
  int64_t r = 0;
  for (; r + 24 <= rpad; r += 24) outer_rows<3, kUnitX>(A, sa, sx, na, B, rpad, nx, r, scale, C, rpad);
  if (r + 16 <= rpad) {
    outer_rows<2, kUnitX>(A, sa, sx, na, B, rpad, nx, r, scale, C, rpad);
    r += 16;
  }
  if (r < rpad) outer_rows<1, kUnitX>(A, sa, sx, na, B, rpad, nx, r, scale, C, rpad);
}

// Online-softmax step for one key block, vectorised over rows: turns scores
// S[j][r] into probabilities in place relative to the new running max, and
// updates m, l and the rescale factor alpha for the old accumulators.
inline void softmax_block(float* S, int64_t nk, int64_t rpad, float* m, float* l, float* alpha) {
  for (int64_t r = 0; r < rpad; r += kLanes) {
    vf8 mb = splat(kNegInf);
    for (int64_t j = 0; j < nk; ++j) mb = vmax(mb, load8(S + j * rpad + r));
    const vf8 m_old = load8(m + r);
    const vf8 m_new = vmax(m_old, mb);
    // A row that has seen only masked keys keeps m = -inf; use 0 as its base
    // so that exp(-inf - base) = 0 instead of NaN.
    const vf8 base = select(m_new == kNegInf, splat(0.f), m_new);
    vf8 sum = splat(0.f);
    for (int64_t j = 0; j < nk; ++j) {
      const vf8 p = exp8(load8(S + j * rpad + r) - base);
      store8(S + j * rpad + r, p);
      sum += p;
    }
    const vf8 a = exp8(m_old - base);
    store8(alpha + r, a);
    store8(l + r, load8(l + r) * a + sum);
    store8(m + r, m_new);
  }
}

inline bool tree_visible(const uint64_t* bits, int64_t words, int64_t t, int64_t n) {
  if (bits == nullptr) return n <= t;
  return (bits[t * words + (n >> 6)] >> (n & 63)) & 1u;
}

// Sets S to -inf where row r0 + i may not see new-token key kb + j (S[j * sj + i * si];
// the prefix, keys below L, is visible to every row).
template <typename Elem>
void mask_new_keys(const AttnArgs<Elem>& a, float* S, int64_t sj, int64_t si, int64_t kb, int64_t nk, int64_t r0,
                   int64_t R, int64_t G) {
  const int64_t L = a.Lk - a.T;
  for (int64_t j = std::max<int64_t>(0, L - kb); j < nk; ++j)
    for (int64_t i = 0; i < R; ++i)
      if (!tree_visible(a.tree_bits, a.words, (r0 + i) / G, kb + j - L)) S[j * sj + i * si] = kNegInf;
}

// One key block [kb, kb + nk) of a decode-sized tile of R rows: scores S[r][j], the
// tree mask, the online softmax and O += P V, all along the keys.
template <int R, typename Elem>
void decode_block(const AttnArgs<Elem>& a, const float* Q, const Elem* k, const Elem* v, int64_t kb, int64_t nk,
                  int64_t r0, int64_t G, float* S, float* m, float* l, float* alpha, float* O) {
  scores_rows<R>(Q, k, a.k_sl, nk, a.D, S);
  mask_new_keys(a, S, 1, kKeyBlock, kb, nk, r0, R, G);
  softmax_rows(S, nk, R, m, l, alpha);
  pv_dot<R>(v, a.v_sl, nk, S, alpha, a.D, O);
}

#if ENTMTP_ISA_LEVEL >= 3
// One key block [kb, kb + nk) of a bf16 dot-product tile: S, then P into Pp and
// Ot (O, [D][rpad]) updated. Pp: kKeyBlock / 2 * rpad pairs; Vp: kKeyBlock / 2 * D.
inline void dp_block(const AttnArgs<bf16_t>& a, const uint32_t* Qp, const bf16_t* k, const bf16_t* v, int64_t kb,
                     int64_t nk, int64_t r0, int64_t R, int64_t G, int64_t rpad, float* S, uint32_t* Pp,
                     uint32_t* Vp, float* m, float* l, float* alpha, float* O) {
  const int64_t D = a.D;
  dp_product(reinterpret_cast<const uint16_t*>(k), a.k_sl, 2, nk, Qp, D / 2, rpad, nullptr,
             [&](int64_t j) { return S + j * rpad; });
  const __m512 scale = _mm512_set1_ps(a.scale);
  for (int64_t j = 0; j < nk; ++j)
    for (int64_t r = 0; r < rpad; r += kDpLanes)
      _mm512_storeu_ps(S + j * rpad + r, _mm512_mul_ps(_mm512_loadu_ps(S + j * rpad + r), scale));
  mask_new_keys(a, S, rpad, 1, kb, nk, r0, R, G);
  softmax_block(S, nk, rpad, m, l, alpha);
  dp_pack_p(S, nk, rpad, Pp);
  dp_pack_v(v, a.v_sl, nk, D, Vp);
  // Ot[d][r]: the a-th Vp slot is dim vp_dim(a); Vp pairs are D apart per key pair.
  dp_product(reinterpret_cast<const uint16_t*>(Vp), 2, 2 * D, D, Pp, (nk + 1) / 2, rpad, alpha,
             [&](int64_t s) { return O + vp_dim(s) * rpad; });
}
#endif

}  // namespace attn_detail

// Unnormalised result of one tile: row i, dim d of the output accumulators is
// O[i * sr + d * sd] (row-major on the dot path, [D][rpad] on the tiled path).
struct TileAcc {
  const float* O;
  int64_t sr, sd;
  const float* m;
  const float* l;
};

// One work item: rows [r0, r1) of (b, hkv) against its key split. The
// accumulators live in `scratch` (attention_scratch_floats(D) floats).
template <typename Elem>
TileAcc attention_tile(const AttnArgs<Elem>& a, const AttnPlan& p, int64_t b, int64_t hkv, int64_t r0,
                       int64_t r1, int64_t split, float* scratch) {
  using namespace attn_detail;
  const int64_t D = a.D, G = p.G, R = r1 - r0;
  const int64_t L = a.Lk - a.T;
  const int64_t rpad = round_up(R, kLanes);
  // Decode-sized tiles take dot products and row-wise PV (little to gain
  // from outer products over <= 4 rows); larger ones the outer products.
  const bool dot_path = R <= 4;
  const int64_t rmax = round_up(kMaxTileRows, 16);
  float* Q = scratch;
  float* S = Q + D * rmax;
  float* O = S + kKeyBlock * rmax;
  float* Kf = O + kMaxTileRows * D;
  float* Vf = Kf + kKeyBlock * D;
  float* m = Vf + kKeyBlock * D;
  float* l = m + rmax;
  float* alpha = l + rmax;

  // Keys this tile can see: the prefix plus new tokens up to its last query
  // (tree ancestors always precede a node), cut to this item's split.
  const int64_t t_last = (r1 - 1) / G;
  const int64_t key_limit = L + t_last + 1;
  const int64_t per_split = round_up(ceil_div(a.Lk, p.splits), 8);
  const int64_t k_begin = split * per_split;
  const int64_t k_end = std::min(key_limit, k_begin + per_split);
  const Elem* kbase = a.k + b * a.k_sb + hkv * a.k_sh;
  const Elem* vbase = a.v + b * a.v_sb + hkv * a.v_sh;

#if ENTMTP_ISA_LEVEL >= 4
  if constexpr (std::is_same<Elem, bf16_t>::value) {
    if (attn_amx::amx_tile(R, D)) {  // attention_amx.h: both products as AMX tile products
      const attn_amx::AmxAcc acc = attn_amx::amx_attention_tile(
          a, b, hkv, G, r0, R, k_begin, k_end, scratch,
          [&](float* s, int64_t ld, int64_t kb, int64_t nk) { mask_new_keys(a, s, 1, ld, kb, nk, r0, R, G); });
      return TileAcc{acc.O, D, 1, acc.m, acc.l};
    }
  }
#endif
#if ENTMTP_ISA_LEVEL >= 3
  if constexpr (std::is_same<Elem, bf16_t>::value) {
    if (bf16dp_tile<Elem>(R, D)) {  // attention_bf16dp.h: the same loop on bf16 pairs, 16 rows a vector
      const int64_t rp16 = round_up(R, kDpLanes);
      uint32_t* Qp = reinterpret_cast<uint32_t*>(Q);
      dp_pack_q(a, b, hkv, G, r0, R, rp16, Qp);
      std::fill(O, O + rp16 * D, 0.f);
      std::fill(m, m + rp16, kNegInf);
      std::fill(l, l + rp16, 0.f);
      for (int64_t kb = k_begin; kb < k_end; kb += kKeyBlock)
        dp_block(a, Qp, kbase + kb * a.k_sl, vbase + kb * a.v_sl, kb, std::min(kKeyBlock, k_end - kb), r0, R, G,
                 rp16, S, reinterpret_cast<uint32_t*>(Kf), reinterpret_cast<uint32_t*>(Vf), m, l, alpha, O);
      return TileAcc{O, 1, rp16, m, l};
    }
  }
#endif
  // Q tile, pre-scaled: rows [R][D] for the dot path, transposed [D][rpad]
  // (zero padded) for the tiled path. O has the same layout.
  if (!dot_path) std::fill(Q, Q + D * rpad, 0.f);
  for (int64_t i = 0; i < R; ++i) {
    const int64_t r = r0 + i, t = r / G, h = hkv * G + r % G;
    const Elem* qr = a.q + b * a.q_sb + t * a.q_st + h * a.q_sh;
    for (int64_t d = 0; d < D; ++d) {
      const float x = to_float(qr[d]) * a.scale;
      if (dot_path) Q[i * D + d] = x; else Q[d * rpad + i] = x;
    }
  }
  std::fill(S, S + kKeyBlock * rpad, 0.f);
  std::fill(O, O + rpad * D, 0.f);
  std::fill(m, m + rpad, kNegInf);
  std::fill(l, l + rpad, 0.f);

  for (int64_t kb = k_begin; kb < k_end; kb += kKeyBlock) {
    const int64_t nk = std::min(kKeyBlock, k_end - kb);
    if (dot_path) {
      const Elem* kblk = kbase + kb * a.k_sl;
      const Elem* vblk = vbase + kb * a.v_sl;
      switch (R) {
        case 1: decode_block<1>(a, Q, kblk, vblk, kb, nk, r0, G, S, m, l, alpha, O); break;
        case 2: decode_block<2>(a, Q, kblk, vblk, kb, nk, r0, G, S, m, l, alpha, O); break;
        case 3: decode_block<3>(a, Q, kblk, vblk, kb, nk, r0, G, S, m, l, alpha, O); break;
        default: decode_block<4>(a, Q, kblk, vblk, kb, nk, r0, G, S, m, l, alpha, O); break;
      }
      continue;
    }
    const Rows K = widen_block(kbase + kb * a.k_sl, a.k_sl, nk, D, Kf);
    outer_product<true>(K.base, K.stride, 1, nk, Q, D, rpad, nullptr, S);  // S[j][r]
    mask_new_keys(a, S, rpad, 1, kb, nk, r0, R, G);
    softmax_block(S, nk, rpad, m, l, alpha);
    const Rows V = widen_block(vbase + kb * a.v_sl, a.v_sl, nk, D, Vf);
    outer_product<false>(V.base, 1, V.stride, D, S, nk, rpad, alpha, O);  // Ot[d][r]
  }
  return TileAcc{O, dot_path ? D : 1, dot_path ? 1 : rpad, m, l};
}

// out[b, t, h, :] = o * inv, with o's elements `sd` floats apart.
template <typename Elem>
void store_row(const AttnArgs<Elem>& a, int64_t b, int64_t t, int64_t h, const float* o, int64_t sd,
               float inv) {
  Elem* dst = a.out + ((b * a.T + t) * a.Hq + h) * a.D;
  for (int64_t d = 0; d < a.D; ++d) dst[d] = from_float<Elem>(o[d * sd] * inv);
}

// Item index -> (b, hkv, tile, split), item-major order of AttnPlan::items().
struct AttnItem {
  int64_t b, hkv, r0, r1, split;
};
inline AttnItem attention_item(const AttnPlan& p, int64_t Hkv, int64_t item) {
  AttnItem it;
  it.split = item % p.splits;
  int64_t rest = item / p.splits;
  const int64_t tile = rest % p.tiles;
  rest /= p.tiles;
  it.hkv = rest % Hkv;
  it.b = rest / Hkv;
  it.r0 = tile * p.tile_rows;
  it.r1 = std::min(p.rows, it.r0 + p.tile_rows);
  return it;
}

// Runs one item. With a single split the result is normalised and written to
// out; otherwise O, m, l go to `partial` (slot = item, tile_rows x (D + 2)).
template <typename Elem>
void attention_run_item(const AttnArgs<Elem>& a, const AttnPlan& p, int64_t item, float* scratch,
                        float* partial) {
  const AttnItem it = attention_item(p, a.Hkv, item);
  if (it.r0 >= it.r1) return;
  const TileAcc acc = attention_tile(a, p, it.b, it.hkv, it.r0, it.r1, it.split, scratch);
  const int64_t R = it.r1 - it.r0, D = a.D;
  if (p.splits == 1) {
    for (int64_t i = 0; i < R; ++i) {
      const int64_t r = it.r0 + i;
      // A row with no visible key has l = 0: defined to output zeros.
      const float inv = acc.l[i] > 0.f ? 1.f / acc.l[i] : 0.f;
      store_row(a, it.b, r / p.G, it.hkv * p.G + r % p.G, acc.O + i * acc.sr, acc.sd, inv);
    }
    return;
  }
  float* slot = partial + item * p.tile_rows * (D + 2);
  for (int64_t i = 0; i < R; ++i) {
    float* row = slot + i * (D + 2);
    for (int64_t d = 0; d < D; ++d) row[d] = acc.O[i * acc.sr + d * acc.sd];
    row[D] = acc.m[i];
    row[D + 1] = acc.l[i];
  }
}

// Merges the splits of one (b, hkv, tile) = `group` (item / splits) and writes
// its rows. tmp: D floats.
template <typename Elem>
void attention_combine(const AttnArgs<Elem>& a, const AttnPlan& p, int64_t group,
                       const float* partial, float* tmp) {
  const AttnItem it = attention_item(p, a.Hkv, group * p.splits);
  const int64_t D = a.D, stride = p.tile_rows * (D + 2);
  const float* first = partial + group * p.splits * stride;
  for (int64_t i = 0; i < it.r1 - it.r0; ++i) {
    float M = kNegInf;
    for (int64_t s = 0; s < p.splits; ++s) M = std::max(M, first[s * stride + i * (D + 2) + D]);
    std::fill(tmp, tmp + D, 0.f);
    float lsum = 0.f;
    if (M != kNegInf) {
      for (int64_t s = 0; s < p.splits; ++s) {
        const float* row = first + s * stride + i * (D + 2);
        if (row[D] == kNegInf) continue;
        const float w = std::exp(row[D] - M);
        lsum += w * row[D + 1];
        for (int64_t d = 0; d < D; ++d) tmp[d] += w * row[d];
      }
    }
    const int64_t r = it.r0 + i;
    store_row(a, it.b, r / p.G, it.hkv * p.G + r % p.G, tmp, 1, lsum > 0.f ? 1.f / lsum : 0.f);
  }
}

}  // namespace ENTMTP_ISA_NS
}  // namespace kernels
}  // namespace entmtp
