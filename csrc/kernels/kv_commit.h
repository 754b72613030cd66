// KV-cache commit: move the accepted tree tokens' K/V rows down to the end of
// the committed prefix, for every (layer, K/V, batch, kv head) row group.
//
// kv [n_layers, 2, B, Hkv, S_max, D] (element strides, D contiguous);
// row i of every group: slot src_slots[i] -> slot dst_start + i.
// src_slots is strictly increasing with src_slots[i] >= dst_start + i, so a
// destination can only alias an *earlier* source, which has already been read
// when rows are copied in increasing i: the copy is in place and safe.
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/hd.h"

namespace entmtp {
namespace kernels {

struct KvCommitArgs {
  char* kv;               // base pointer (bytes)
  int64_t strides[5];     // byte strides of dims 0..4 (layer, kv, batch, head, slot)
  int64_t sizes[4];       // layer, kv, batch, head extents
  int64_t row_bytes;      // D * element size
  const int64_t* src;     // [n]
  int64_t n, dst_start, slots;  // slots = S_max
  ENTMTP_HD int64_t groups() const { return sizes[0] * sizes[1] * sizes[2] * sizes[3]; }
};

// Slot 0 of row group g (flattened layer, kv, batch, head).
ENTMTP_HD inline char* kv_group_base(const KvCommitArgs& a, int64_t g) {
  char* base = a.kv;
  for (int dim = 3; dim >= 0; --dim) {
    base += (g % a.sizes[dim]) * a.strides[dim];
    g /= a.sizes[dim];
  }
  return base;
}

// CPU: copies the n rows of group g in increasing i (see above for why).
inline void kv_commit_group(const KvCommitArgs& a, int64_t g) {
  char* base = kv_group_base(a, g);
  for (int64_t i = 0; i < a.n; ++i) {
    const int64_t src = a.src[i], dst = a.dst_start + i;
    if (src == dst) continue;
    std::memcpy(base + dst * a.strides[4], base + src * a.strides[4], a.row_bytes);
  }
}

}  // namespace kernels
}  // namespace entmtp
