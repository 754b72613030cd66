// CUDA tree_accept and kv_commit kernels (logic shared with the CPU in
// tree_accept.h / kv_commit.h). Both run without host syncs so a whole
// decoding step can be captured in a CUDA graph.
#pragma once

#include <cstdint>

#include "kernels/kv_commit.h"
#include "kernels/tree_accept.h"

namespace entmtp {
namespace cuda_kernels {

// One block: the per-node tests run in parallel, then one thread walks the
// tree in topological order over shared memory (T <= kMaxTreeNodes).
__global__ void tree_accept_kernel(kernels::AcceptArgs a, int64_t* path, int64_t* accept_len,
                                   int64_t* bonus) {
  __shared__ int32_t depth[kernels::kMaxTreeNodes];
  __shared__ int32_t parent[kernels::kMaxTreeNodes];
  __shared__ unsigned char passes[kernels::kMaxTreeNodes];
  for (int64_t i = threadIdx.x; i < a.T; i += blockDim.x) {
    parent[i] = static_cast<int32_t>(a.parents[i]);
    passes[i] = i > 0 && kernels::node_passes(a, i);  // malformed parents fail here
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  kernels::accept_serial(
      a, [&](int64_t i) { return passes[i] != 0; }, [&](int64_t i) { return int64_t(parent[i]); }, depth,
      path, accept_len, bonus);
}

// One thread per (row group, Word-sized unit of a row): it copies its unit of
// every committed row in increasing i, so the in-place aliasing argument of
// kv_commit.h holds per thread and threads never touch each other's bytes.
// Slots outside [0, S_max) are skipped (they cannot be diagnosed without a sync).
template <typename Word>
__global__ void kv_commit_kernel(kernels::KvCommitArgs a) {
  const int64_t units = a.row_bytes / sizeof(Word);
  const int64_t u = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (u >= a.groups() * units) return;
  char* base = kernels::kv_group_base(a, u / units) + (u % units) * sizeof(Word);
  for (int64_t i = 0; i < a.n; ++i) {
    const int64_t src = a.src[i], dst = a.dst_start + i;
    if (src == dst || src < 0 || src >= a.slots) continue;
    *reinterpret_cast<Word*>(base + dst * a.strides[4]) =
        *reinterpret_cast<const Word*>(base + src * a.strides[4]);
  }
}

}  // namespace cuda_kernels
}  // namespace entmtp
