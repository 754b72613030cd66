// CPU softmax statistics of logit rows in one pass, never materialising the
// softmax: entropy (nats), argmax (lowest index on ties), max probability and
// the top-k (k <= 16) ids and probabilities.
//
// State of a stretch of a row, relative to its running max m:
//   s = sum_i e^(x_i - m),  t = sum_i (x_i - m) e^(x_i - m)
// so that H = log s - t / s and p_i = e^(x_i - m) / s. Two states merge by
// rescaling to the larger max (see merge_entropy_states), which lets a row be
// cut into chunks that different threads scan (N = 1 decode rows).
//
// A chunk is scanned in L1-sized blocks: block max first (vectorised), then one
// vectorised exp pass relative to the updated max. -inf (masked vocab) and huge
// negative logits contribute exactly 0: x - m is clamped to -100 before both
// the exp and the product, so -inf * 0 never produces NaN.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "kernels/simd.h"

namespace entmtp {
namespace kernels {

constexpr int kMaxTopK = 16;
constexpr int64_t kVocabBlock = 1024;

struct EntropyState {
  float m = kNegInf;  // running max (-inf until a finite or +inf logit is seen)
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
  if (st.m == kNegInf) {  // nothing accumulated yet
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
  if (b.m != kNegInf) {
    const float m_new = std::max(a.m, b.m);
    EntropyState bb = b;
    rescale_state(a, m_new);
    rescale_state(bb, m_new);
    a.s += bb.s;
    a.t += bb.t;
  }
  for (int j = 0; j < b.count; ++j) topk_insert(a, k, b.topv[j], b.topi[j]);
}

namespace entropy_detail {

// Accumulates one block x[0, n) (already fp32) whose first index is `offset`.
inline void scan_block(const float* x, int64_t n, int64_t offset, int k, EntropyState& st) {
  const int64_t nv = n / kLanes * kLanes;
  vf8 mv = splat(kNegInf);
  for (int64_t i = 0; i < nv; i += kLanes) mv = vmax(mv, load8(x + i));
  float bm = hmax(mv);
  for (int64_t i = nv; i < n; ++i) bm = x[i] > bm ? x[i] : bm;

  if (k > 0 && (st.count < k || bm >= st.topv[k - 1])) {
    for (int64_t i = 0; i < n; ++i) topk_insert(st, k, x[i], offset + i);
  }
  if (st.argmax < 0 || bm > st.m) {  // strictly greater: earlier index wins ties
    for (int64_t i = 0; i < n; ++i)
      if (x[i] == bm) {
        st.argmax = offset + i;
        break;
      }
  }
  if (!(bm > kNegInf)) return;  // all -inf (or NaN): contributes nothing
  rescale_state(st, std::max(st.m, bm));
  const float m = st.m;
  vf8 sv = splat(0.f), tv = splat(0.f);
  const vf8 floor = splat(-100.f);
  for (int64_t i = 0; i < nv; i += kLanes) {
    vf8 y = load8(x + i) - m;
    y = select(y < floor, floor, y);
    const vf8 e = exp8(y);
    sv += e;
    tv += y * e;
  }
  double s = hsum(sv), t = hsum(tv);
  for (int64_t i = nv; i < n; ++i) {
    const float y = std::max(x[i] - m, -100.f);
    const float e = std::exp(y);
    s += e;
    t += static_cast<double>(y) * e;
  }
  st.s += s;
  st.t += t;
}

}  // namespace entropy_detail

// Scans x[begin, end) of one row. `block` is kVocabBlock floats of scratch
// (used to widen 16-bit logits).
template <typename T>
void entropy_scan(const T* row, int64_t begin, int64_t end, int k, float* block,
                  EntropyState& st) {
  for (int64_t b = begin; b < end; b += kVocabBlock) {
    const int64_t n = std::min(kVocabBlock, end - b);
    const float* x;
    if (std::is_same<T, float>::value) {
      x = reinterpret_cast<const float*>(row + b);
    } else {
      const int64_t nv = n / kLanes * kLanes;
      for (int64_t i = 0; i < nv; i += kLanes) store8(block + i, load8(row + b + i));
      for (int64_t i = nv; i < n; ++i) block[i] = to_float(row[b + i]);
      x = block;
    }
    entropy_detail::scan_block(x, n, b, k, st);
  }
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
