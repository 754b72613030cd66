// Softmax statistics state of a stretch of a logit row, and its scalar merge
// and finish steps (see token_entropy.h for the vectorised scan).
//
// State relative to its running max m:
//   s = sum_i e^(x_i - m),  t = sum_i (x_i - m) e^(x_i - m)
// so that H = log s - t / s and p_i = e^(x_i - m) / s. Two states merge by
// rescaling to the larger max, which lets a row be cut into chunks that
// different threads scan (N = 1 decode rows).
//
// ISA-neutral scalar code shared by the launcher and every per-ISA unit, so it
// is included before the target pragma (csrc/isa/prelude.h).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#ifdef ENTMTP_ISA_NS
#error "kernels/entropy_state.h must be included before the ISA target pragma (see csrc/isa/prelude.h)"
#endif

namespace entmtp {
namespace kernels {

constexpr float kStateNegInf = -std::numeric_limits<float>::infinity();
constexpr int kMaxTopK = 16;
constexpr int64_t kVocabBlock = 1024;

struct EntropyState {
  float m = kStateNegInf;  // running max (-inf until a finite or +inf logit is seen)
  double s = 0.0, t = 0.0;
  int64_t argmax = -1;
  int count = 0;  // filled top-k slots
  float topv[kMaxTopK];
  int64_t topi[kMaxTopK];
};

// (value desc, index asc): the order of the top-k lists and of argmax ties.
inline bool ranks_before(float v, int64_t i, float w, int64_t j) {
  return v > w || (v == w && i < j);
}

inline void topk_insert(EntropyState& st, int k, float v, int64_t i) {
  int pos = st.count < k ? st.count : k - 1;
  if (st.count == k && !ranks_before(v, i, st.topv[k - 1], st.topi[k - 1])) return;
  while (pos > 0 && ranks_before(v, i, st.topv[pos - 1], st.topi[pos - 1])) {
    st.topv[pos] = st.topv[pos - 1];
    st.topi[pos] = st.topi[pos - 1];
    --pos;
  }
  st.topv[pos] = v;
  st.topi[pos] = i;
  if (st.count < k) ++st.count;
}

// Re-express (s, t) relative to a new max m_new >= st.m.
inline void rescale_state(EntropyState& st, float m_new) {
  if (st.m == m_new) return;
  if (st.m == kStateNegInf) {  // nothing accumulated yet
    st.m = m_new;
    return;
  }
  const double delta = static_cast<double>(st.m) - static_cast<double>(m_new);
  const double w = std::exp(delta);
  st.t = w * (st.t + delta * st.s);
  st.s = w * st.s;
  st.m = m_new;
}

// Merges `b` (a later stretch of the same row) into `a`.
inline void merge_entropy_states(EntropyState& a, const EntropyState& b, int k) {
  if (b.argmax >= 0 && (a.argmax < 0 || b.m > a.m)) a.argmax = b.argmax;
  if (b.m != kStateNegInf) {
    const float m_new = std::max(a.m, b.m);
    EntropyState bb = b;
    rescale_state(a, m_new);
    rescale_state(bb, m_new);
    a.s += bb.s;
    a.t += bb.t;
  }
  for (int j = 0; j < b.count; ++j) topk_insert(a, k, b.topv[j], b.topi[j]);
}

struct EntropyOut {
  float entropy, max_prob;
  int64_t argmax;
};

// Final statistics of a whole-row state; topk_probs[j] for j < k.
inline EntropyOut finish_entropy(const EntropyState& st, int k, float* topk_probs,
                                 int64_t* topk_ids) {
  EntropyOut o;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const bool ok = st.s > 0.0 && std::isfinite(st.m);  // all -inf rows: NaN like torch
  o.entropy = static_cast<float>(ok ? std::log(st.s) - st.t / st.s : nan);
  o.max_prob = static_cast<float>(ok ? 1.0 / st.s : nan);
  o.argmax = st.argmax < 0 ? 0 : st.argmax;
  for (int j = 0; j < k; ++j) {
    const bool have = j < st.count;
    topk_ids[j] = have ? st.topi[j] : 0;
    topk_probs[j] = static_cast<float>(
        ok && have ? std::exp(static_cast<double>(st.topv[j]) - st.m) / st.s : nan);
  }
  return o;
}

}  // namespace kernels
}  // namespace entmtp
