// CUDA tree attention (see tree_attention.h for the layouts and the mask).
//
// Grid (row tiles, B * Hkv, key splits), 4 warps per block. A block owns a tile
// of kTileRows query rows r = t * G + g of one (batch, kv head), so each K/V
// block staged in shared memory serves every query and GQA head of the tile;
// each warp owns 4 rows. Per key block of 32: lane j scores key j against the
// warp's 4 rows (4 FMAs per shared K load), an online-softmax step runs with
// warp shuffles, then lane j accumulates output dims j, j + 32, ... (DPL of
// them, D = 32 * DPL) from the staged V rows. fp32 throughout.
//
// Few tiles (decode) leave SMs idle, so the host splits the keys (flash-
// decoding): each split writes unnormalised partials [splits, B*Hkv, rows,
// D + 2] (o, m, l) and attention_combine_kernel merges them. Never a host sync.
#pragma once

#include <cstdint>

#include "kernels/attention_args.h"
#include "kernels/cuda_common.cuh"

namespace entmtp {
namespace cuda_kernels {

constexpr int kAttnWarps = 4;
constexpr int kAttnRowsPerWarp = 4;
constexpr int kAttnTileRows = kAttnWarps * kAttnRowsPerWarp;
constexpr int kAttnKeys = 32;

__device__ __forceinline__ bool key_visible(const uint64_t* bits, int64_t words, int64_t t, int64_t n) {
  if (bits == nullptr) return n <= t;
  return (bits[t * words + (n >> 6)] >> (n & 63)) & 1ull;
}

template <typename T, int DPL>
__global__ void __launch_bounds__(kAttnWarps * 32)
    tree_attention_kernel(kernels::AttnArgs<T> a, int64_t G, int64_t per_split, float* partial) {
  constexpr int D = 32 * DPL;
  __shared__ float qs[kAttnTileRows][D];
  __shared__ float ks[kAttnKeys][D + 1];  // +1: lane j reads row j without bank conflicts
  __shared__ float vs[kAttnKeys][D];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t rows = a.T * G;
  const int64_t r0 = blockIdx.x * int64_t(kAttnTileRows);
  const int64_t b = blockIdx.y / a.Hkv, hkv = blockIdx.y % a.Hkv;
  const int64_t L = a.Lk - a.T;
  const int64_t r_last = min(rows, r0 + kAttnTileRows) - 1;
  const int64_t k_begin = blockIdx.z * per_split;
  const int64_t k_end = min(L + r_last / G + 1, k_begin + per_split);  // tree keys never exceed the row's t

  for (int idx = threadIdx.x; idx < kAttnTileRows * D; idx += blockDim.x) {
    const int i = idx / D, d = idx % D;
    const int64_t r = r0 + i;
    float x = 0.f;
    if (r < rows) {
      const int64_t t = r / G, h = hkv * G + r % G;
      x = to_f(a.q[b * a.q_sb + t * a.q_st + h * a.q_sh + d]) * a.scale;
    }
    qs[i][d] = x;
  }

  float m[kAttnRowsPerWarp], l[kAttnRowsPerWarp], o[kAttnRowsPerWarp][DPL];
  int64_t row_t[kAttnRowsPerWarp];
#pragma unroll
  for (int i = 0; i < kAttnRowsPerWarp; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.f;
    const int64_t r = r0 + warp * kAttnRowsPerWarp + i;
    row_t[i] = r < rows ? r / G : -1;  // -1: padding row, sees nothing
#pragma unroll
    for (int c = 0; c < DPL; ++c) o[i][c] = 0.f;
  }
  const T* kbase = a.k + b * a.k_sb + hkv * a.k_sh;
  const T* vbase = a.v + b * a.v_sb + hkv * a.v_sh;

  for (int64_t kb = k_begin; kb < k_end; kb += kAttnKeys) {
    __syncthreads();  // the previous block's K/V are consumed (and Q is staged)
    for (int idx = threadIdx.x; idx < kAttnKeys * D; idx += blockDim.x) {
      const int j = idx / D, d = idx % D;
      const int64_t key = kb + j;
      const bool in = key < k_end;
      ks[j][d] = in ? to_f(kbase[key * a.k_sl + d]) : 0.f;
      vs[j][d] = in ? to_f(vbase[key * a.v_sl + d]) : 0.f;
    }
    __syncthreads();

    float s[kAttnRowsPerWarp];
#pragma unroll
    for (int i = 0; i < kAttnRowsPerWarp; ++i) s[i] = 0.f;
#pragma unroll 8
    for (int d = 0; d < D; ++d) {
      const float kd = ks[lane][d];
#pragma unroll
      for (int i = 0; i < kAttnRowsPerWarp; ++i) s[i] += qs[warp * kAttnRowsPerWarp + i][d] * kd;
    }

    const int64_t key = kb + lane;
    float p[kAttnRowsPerWarp];
#pragma unroll
    for (int i = 0; i < kAttnRowsPerWarp; ++i) {
      const bool vis = row_t[i] >= 0 && key < k_end &&
                       (key < L || key_visible(a.tree_bits, a.words, row_t[i], key - L));
      const float si = vis ? s[i] : -INFINITY;
      const float m_new = fmaxf(m[i], warp_max(si));
      const float base = m_new == -INFINITY ? 0.f : m_new;  // all masked so far: avoid inf - inf
      p[i] = __expf(si - base);
      const float alpha = __expf(m[i] - base);
      l[i] = l[i] * alpha + warp_sum(p[i]);
      m[i] = m_new;
#pragma unroll
      for (int c = 0; c < DPL; ++c) o[i][c] *= alpha;
    }
#pragma unroll 4
    for (int j = 0; j < kAttnKeys; ++j) {
      float vv[DPL];
#pragma unroll
      for (int c = 0; c < DPL; ++c) vv[c] = vs[j][lane + 32 * c];
#pragma unroll
      for (int i = 0; i < kAttnRowsPerWarp; ++i) {
        const float pj = __shfl_sync(kFullMask, p[i], j);
#pragma unroll
        for (int c = 0; c < DPL; ++c) o[i][c] += pj * vv[c];
      }
    }
  }

#pragma unroll
  for (int i = 0; i < kAttnRowsPerWarp; ++i) {
    if (row_t[i] < 0) continue;
    const int64_t r = r0 + warp * kAttnRowsPerWarp + i;
    if (partial == nullptr) {
      const int64_t h = hkv * G + r % G;
      T* dst = a.out + ((b * a.T + row_t[i]) * a.Hq + h) * D;
      const float inv = l[i] > 0.f ? 1.f / l[i] : 0.f;  // no visible key: zeros
#pragma unroll
      for (int c = 0; c < DPL; ++c) dst[lane + 32 * c] = from_f<T>(o[i][c] * inv);
    } else {
      float* dst = partial + ((int64_t(blockIdx.z) * gridDim.y + blockIdx.y) * rows + r) * (D + 2);
#pragma unroll
      for (int c = 0; c < DPL; ++c) dst[lane + 32 * c] = o[i][c];
      if (lane == 0) {
        dst[D] = m[i];
        dst[D + 1] = l[i];
      }
    }
  }
}

// One warp per (row, batch * kv head): merges the key splits' partials.
template <typename T, int DPL>
__global__ void attention_combine_kernel(kernels::AttnArgs<T> a, int64_t G, int64_t splits,
                                         const float* partial) {
  constexpr int D = 32 * DPL;
  const int lane = threadIdx.x;
  const int64_t rows = a.T * G, r = blockIdx.x, bh = blockIdx.y;
  const int64_t b = bh / a.Hkv, hkv = bh % a.Hkv;
  const int64_t split_stride = int64_t(gridDim.y) * rows * (D + 2);
  const float* first = partial + (bh * rows + r) * (D + 2);
  float M = -INFINITY;
  for (int64_t s = 0; s < splits; ++s) M = fmaxf(M, first[s * split_stride + D]);
  float acc[DPL], lsum = 0.f;
#pragma unroll
  for (int c = 0; c < DPL; ++c) acc[c] = 0.f;
  if (M != -INFINITY) {
    for (int64_t s = 0; s < splits; ++s) {
      const float* part = first + s * split_stride;
      if (part[D] == -INFINITY) continue;
      const float w = __expf(part[D] - M);
      lsum += w * part[D + 1];
#pragma unroll
      for (int c = 0; c < DPL; ++c) acc[c] += w * part[lane + 32 * c];
    }
  }
  const float inv = lsum > 0.f ? 1.f / lsum : 0.f;
  T* dst = a.out + ((b * a.T + r / G) * a.Hq + hkv * G + r % G) * D;
#pragma unroll
  for (int c = 0; c < DPL; ++c) dst[lane + 32 * c] = from_f<T>(acc[c] * inv);
}

}  // namespace cuda_kernels
}  // namespace entmtp
