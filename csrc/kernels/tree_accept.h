// Accepting a verified draft tree (Medusa convention), shared by the CPU and
// CUDA launchers (host/device functions, torch-free).
//
// Nodes 0..T-1 in topological order: node 0 is the root (the last committed
// token), parents[i] < i for i > 0. Node i > 0 carries the drafted token
// node_tokens[i]; target_ids[j] is the base model's token after node j.
//   greedy:  own_ok(i) = node_tokens[i] == target_ids[parents[i]]
//   typical: own_ok(i) = draft_probs[i] > min(epsilon, alpha * exp(-entropy[parents[i]]))
//            (draft_probs[i] = p_parent(node_tokens[i]); entropy in nats)
// Node i is accepted iff own_ok(i) and its parent is accepted. The result is
// the deepest accepted node (lowest index on ties), its root-to-node path and
// the base token after it (the bonus token).
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/hd.h"

namespace entmtp {
namespace kernels {

constexpr int64_t kMaxTreeNodes = 4096;

struct AcceptArgs {
  const int64_t* node_tokens;  // [T]
  const int64_t* parents;      // [T]
  const int64_t* target_ids;   // [T]
  const float* draft_probs;    // [T] or nullptr (greedy)
  const float* entropy;        // [T] (typical only)
  float epsilon, alpha;
  int64_t T, max_depth;
};

// Whether node i (> 0) passes its own test; a malformed parent fails it.
ENTMTP_HD inline bool node_passes(const AcceptArgs& a, int64_t i) {
  const int64_t p = a.parents[i];
  if (p < 0 || p >= i) return false;
  if (a.draft_probs == nullptr) return a.node_tokens[i] == a.target_ids[p];
  const float threshold = fminf(a.epsilon, a.alpha * expf(-a.entropy[p]));
  return a.draft_probs[i] > threshold;
}

// Serial pass in topological order. passes[i]: node_passes(i) (computed by the
// caller, possibly in parallel); depth: T ints of scratch (-1 = rejected).
// Writes path [max_depth + 1] (padded with -1), accept_len and bonus.
template <typename PassFlags, typename ParentAt>
ENTMTP_HD void accept_serial(const AcceptArgs& a, PassFlags passes, ParentAt parent_at,
                             int32_t* depth, int64_t* path, int64_t* accept_len,
                             int64_t* bonus) {
  int64_t best = 0;
  int32_t best_depth = 0;
  depth[0] = 0;
  for (int64_t i = 1; i < a.T; ++i) {
    int32_t d = -1;
    if (passes(i)) {
      const int32_t pd = depth[parent_at(i)];
      if (pd >= 0 && pd < a.max_depth) d = pd + 1;
    }
    depth[i] = d;
    if (d > best_depth) {
      best_depth = d;
      best = i;
    }
  }
  for (int64_t j = 0; j <= a.max_depth; ++j) path[j] = -1;
  int64_t node = best;
  for (int32_t j = best_depth; j >= 0; --j) {
    path[j] = node;
    node = j > 0 ? parent_at(node) : node;
  }
  *accept_len = best_depth;
  *bonus = a.target_ids[best];
}

}  // namespace kernels
}  // namespace entmtp
