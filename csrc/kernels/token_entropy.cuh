// CUDA token_entropy (state algebra as in token_entropy.h).
//
// Pass 1, grid (chunks, N), kEntThreads threads: each thread folds a strided
// slice of one vocab chunk into an online state (max m, s = sum e^(x-m),
// t = sum (x-m) e^(x-m), argmax, a sorted top-k list in registers), then the
// block merges them (shuffles, then shared memory) into one state per
// (row, chunk) in the partial buffers. Pass 2, one warp per row, merges the
// chunks' states and writes the outputs. Chunks exist so that N = 1 rows still
// spread over many SMs. Memory is read once; no host sync.
#pragma once

#include <cstdint>

#include "kernels/cuda_common.cuh"

namespace entmtp {
namespace cuda_kernels {

constexpr int kEntThreads = 256;
constexpr int kTopK = 16;  // register list length; the op's k <= 16
constexpr int64_t kNoIndex = INT64_MAX;

// Partial state of one (row, chunk): st = {m, s, t, argmax value}, arg, lists.
struct EntropyPartials {
  float* st;      // [N * C, 4]
  int64_t* arg;   // [N * C]
  float* topv;    // [N * C, kTopK]
  int64_t* topi;  // [N * C, kTopK]
};

// (value desc, index asc); the empty slot (-inf, kNoIndex) ranks last.
__device__ __forceinline__ bool ranks_before(float v, int64_t i, float w, int64_t j) {
  return v > w || (v == w && i < j);
}

struct EntState {
  float m, s, t, am_v;
  int64_t am;

  __device__ void init() {
    m = -INFINITY, s = 0.f, t = 0.f, am_v = -INFINITY, am = kNoIndex;
  }
  __device__ void add(float x, int64_t i) {
    if (am == kNoIndex || x > am_v) am_v = x, am = i;  // thread scans in increasing i
    if (!(x > -INFINITY)) return;                       // -inf (masked) or NaN
    if (x > m) {
      if (m > -INFINITY) {
        const float d = m - x, w = __expf(d);
        t = w * (t + d * s);
        s *= w;
      }
      m = x;
    }
    const float y = fmaxf(x - m, -100.f), e = __expf(y);
    s += e;
    t += y * e;
  }
  __device__ void merge(float m2, float s2, float t2, float v2, int64_t i2) {
    if (i2 != kNoIndex && (am == kNoIndex || ranks_before(v2, i2, am_v, am))) am_v = v2, am = i2;
    if (!(m2 > -INFINITY)) return;
    if (!(m > -INFINITY)) {
      m = m2, s = s2, t = t2;
      return;
    }
    const float M = fmaxf(m, m2), d1 = m - M, d2 = m2 - M;
    const float w1 = __expf(d1), w2 = __expf(d2);
    t = w1 * (t + d1 * s) + w2 * (t2 + d2 * s2);
    s = w1 * s + w2 * s2;
    m = M;
  }
  __device__ void warp_merge() {  // afterwards every lane holds the warp's state
    for (int off = 16; off > 0; off >>= 1) {
      const float m2 = __shfl_xor_sync(kFullMask, m, off), s2 = __shfl_xor_sync(kFullMask, s, off);
      const float t2 = __shfl_xor_sync(kFullMask, t, off), v2 = __shfl_xor_sync(kFullMask, am_v, off);
      const int64_t i2 = __shfl_xor_sync(kFullMask, am, off);
      merge(m2, s2, t2, v2, i2);
    }
  }
};

struct TopList {
  float v[kTopK];
  int64_t i[kTopK];

  __device__ void init() {
#pragma unroll
    for (int j = 0; j < kTopK; ++j) v[j] = -INFINITY, i[j] = kNoIndex;
  }
  // Sorted insert into the first k slots (fully unrolled: stays in registers).
  __device__ void push(float x, int64_t idx, int k) {
#pragma unroll
    for (int j = 0; j < kTopK; ++j) {
      if (j < k && ranks_before(x, idx, v[j], i[j])) {
        const float tv = v[j];
        const int64_t ti = i[j];
        v[j] = x, i[j] = idx;
        x = tv, idx = ti;
      }
    }
  }
  __device__ void pop_front() {
#pragma unroll
    for (int j = 0; j + 1 < kTopK; ++j) v[j] = v[j + 1], i[j] = i[j + 1];
    v[kTopK - 1] = -INFINITY, i[kTopK - 1] = kNoIndex;
  }
};

// k rounds of a warp-wide "best head of list": merges the 32 lanes' sorted
// lists; lane 0 receives the merged top-k in out_v/out_i (registers of lane 0).
__device__ inline void warp_merge_lists(TopList& list, int k, TopList& out) {
  const int lane = threadIdx.x % 32;
  for (int r = 0; r < k; ++r) {
    float bv = list.v[0];
    int64_t bi = list.i[0];
    int bl = lane;
    for (int off = 16; off > 0; off >>= 1) {
      const float ov = __shfl_xor_sync(kFullMask, bv, off);
      const int64_t oi = __shfl_xor_sync(kFullMask, bi, off);
      const int ol = __shfl_xor_sync(kFullMask, bl, off);
      if (ranks_before(ov, oi, bv, bi) || (ov == bv && oi == bi && ol < bl)) bv = ov, bi = oi, bl = ol;
    }
    if (lane == bl) list.pop_front();
    out.push(bv, bi, r + 1);  // appends: bv ranks after everything merged so far
  }
}

template <typename T>
__global__ void __launch_bounds__(kEntThreads)
    entropy_partial_kernel(const T* x, int64_t row_stride, int64_t V, int64_t chunk_len, int k,
                           EntropyPartials out) {
  __shared__ float s_state[kEntThreads / 32][4];
  __shared__ int64_t s_arg[kEntThreads / 32];
  __shared__ float s_topv[kEntThreads / 32][kTopK];
  __shared__ int64_t s_topi[kEntThreads / 32][kTopK];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, n_warps = blockDim.x / 32;
  const int64_t row = blockIdx.y, slot = row * gridDim.x + blockIdx.x;
  const int64_t begin = blockIdx.x * chunk_len, end = min(V, begin + chunk_len);
  const T* xr = x + row * row_stride;

  EntState st;
  st.init();
  TopList list, merged;
  list.init();
  merged.init();
  float kth_v = -INFINITY;
  int64_t kth_i = kNoIndex;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const float xv = to_f(xr[i]);
    st.add(xv, i);
    if (k > 0 && ranks_before(xv, i, kth_v, kth_i)) {
      list.push(xv, i, k);
#pragma unroll
      for (int j = 0; j < kTopK; ++j)
        if (j == k - 1) kth_v = list.v[j], kth_i = list.i[j];
    }
  }
  st.warp_merge();
  if (k > 0) warp_merge_lists(list, k, merged);
  if (lane == 0) {
    s_state[warp][0] = st.m, s_state[warp][1] = st.s, s_state[warp][2] = st.t, s_state[warp][3] = st.am_v;
    s_arg[warp] = st.am;
#pragma unroll
    for (int j = 0; j < kTopK; ++j) s_topv[warp][j] = merged.v[j], s_topi[warp][j] = merged.i[j];
  }
  __syncthreads();
  if (warp != 0) return;
  st.init();
  list.init();
  merged.init();
  if (lane < n_warps) {
    st.merge(s_state[lane][0], s_state[lane][1], s_state[lane][2], s_state[lane][3], s_arg[lane]);
#pragma unroll
    for (int j = 0; j < kTopK; ++j) list.v[j] = s_topv[lane][j], list.i[j] = s_topi[lane][j];
  }
  st.warp_merge();
  if (k > 0) warp_merge_lists(list, k, merged);
  if (lane == 0) {
    float* o = out.st + slot * 4;
    o[0] = st.m, o[1] = st.s, o[2] = st.t, o[3] = st.am_v;
    out.arg[slot] = st.am;
    for (int j = 0; j < k; ++j) out.topv[slot * kTopK + j] = merged.v[j], out.topi[slot * kTopK + j] = merged.i[j];
  }
}

// One warp per row: merges the row's C (<= 32) chunk states, writes outputs.
__global__ void entropy_finish_kernel(EntropyPartials in, int64_t chunks, int k, float* entropy,
                                      int64_t* argmax, float* max_prob, int64_t* topk_ids,
                                      float* topk_probs) {
  const int lane = threadIdx.x;
  const int64_t row = blockIdx.x;
  EntState st;
  st.init();
  TopList list, merged;
  list.init();
  merged.init();
  if (lane < chunks) {
    const int64_t slot = row * chunks + lane;
    const float* s = in.st + slot * 4;
    st.merge(s[0], s[1], s[2], s[3], in.arg[slot]);
    for (int j = 0; j < k; ++j) list.v[j] = in.topv[slot * kTopK + j], list.i[j] = in.topi[slot * kTopK + j];
  }
  st.warp_merge();
  if (k > 0) warp_merge_lists(list, k, merged);
  if (lane != 0) return;
  const bool ok = st.s > 0.f && isfinite(st.m);  // all -inf rows: NaN, like torch.softmax
  entropy[row] = ok ? logf(st.s) - st.t / st.s : NAN;
  max_prob[row] = ok ? 1.f / st.s : NAN;
  argmax[row] = st.am == kNoIndex ? 0 : st.am;
  for (int j = 0; j < k; ++j) {
    topk_ids[row * k + j] = merged.i[j] == kNoIndex ? 0 : merged.i[j];
    topk_probs[row * k + j] = ok ? __expf(merged.v[j] - st.m) / st.s : NAN;
  }
}

}  // namespace cuda_kernels
}  // namespace entmtp
