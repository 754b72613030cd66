// CPU softmax statistics of logit rows in one pass, never materialising the
// softmax: entropy (nats), argmax (lowest index on ties), max probability and
// the top-k (k <= 16) ids and probabilities.
//
// The state, its merge and finish live in entropy_state.h (ISA-neutral); this
// header is the per-ISA scan.
//
// A chunk is scanned in L1-sized blocks: block max first (vectorised), then one
// vectorised exp pass relative to the updated max. -inf (masked vocab) and huge
// negative logits contribute exactly 0: x - m is clamped to -100 before both
// the exp and the product, so -inf * 0 never produces NaN.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "kernels/entropy_state.h"
#include "kernels/simd.h"

namespace entmtp {
namespace kernels {
inline namespace ENTMTP_ISA_NS {

namespace entropy_detail {

// Accumulates one block x[0, n) (already fp32) whose first index is `offset`.
inline void scan_block(const float* x, int64_t n, int64_t offset, int k, EntropyState& st) {
  const int64_t nv = n / kLanes * kLanes;
  vf8 mv = splat(kNegInf);
  for (int64_t i = 0; i < nv; i += kLanes) mv = vmax(mv, load8(x + i));
  float bm = hmax(mv);
  for (int64_t i = nv; i < n; ++i) bm = x[i] > bm ? x[i] : bm;

  if (k > 0 && (st.count < k || bm >= st.topv[k - 1])) {
    // Most lanes of a block that reaches the top-k lose to its current k-th
    // value: test 8 at a time against it and insert only where one may win.
    int64_t i = 0;
    for (; i < nv; i += kLanes) {
      if (st.count == k && hmax(load8(x + i)) < st.topv[k - 1]) continue;
      for (int64_t j = i; j < i + kLanes; ++j) topk_insert(st, k, x[j], offset + j);
    }
    for (; i < n; ++i) topk_insert(st, k, x[i], offset + i);
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

}  // namespace ENTMTP_ISA_NS
}  // namespace kernels
}  // namespace entmtp
