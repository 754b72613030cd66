// Fused element-wise pieces of a decoder layer: RMSNorm (optionally with the
// residual add), rotary embedding of q/k with the K/V cache write, and
// SiLU(gate) * up. Each replaces 3-15 small torch ops; at decode time (one row
// of 576 numbers) those ops cost far more in dispatch than in arithmetic, and
// there are 30 layers; at tree verification (T up to 128 rows) the launcher
// runs rows in parallel and the row loops below are vectorised (vf8, compiled
// per ISA), with exp8 instead of scalar expf in SiLU.
// Torch-free: storage types from types.h, math in fp32, one rounding to the
// storage type per output, at the same points as entmtp/reference.py.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/simd.h"

namespace entmtp {
namespace kernels {
inline namespace ENTMTP_ISA_NS {

// One row: summed = x + residual (rounded to T, as the unfused `x + y` is),
// normed = weight * summed / rms(summed). residual/summed may be null (plain norm).
template <typename T>
void rms_norm_row(const T* x, const T* residual, const T* weight, int64_t H, float eps, T* normed,
                  T* summed) {
  const int64_t hv = H / kLanes * kLanes;
  vf8 sqv = splat(0.f);
  for (int64_t i = 0; i < hv; i += kLanes) {
    vf8 v = load8(x + i);
    if (residual) {
      store8(summed + i, v + load8(residual + i));
      v = load8(summed + i);
    }
    sqv += v * v;
  }
  float sq = hsum(sqv);
  for (int64_t i = hv; i < H; ++i) {
    float v = to_float(x[i]);
    if (residual) {
      const T s = from_float<T>(v + to_float(residual[i]));
      summed[i] = s;
      v = to_float(s);
    }
    sq += v * v;
  }
  const float inv = 1.0f / std::sqrt(sq / static_cast<float>(H) + eps);
  const T* src = residual ? summed : x;
  for (int64_t i = 0; i < hv; i += kLanes) {
    // The reference rounds the normalised value to T before the weight multiply.
    const vf8 unit = round8(load8(src + i) * inv, src);
    store8(normed + i, load8(weight + i) * unit);
  }
  for (int64_t i = hv; i < H; ++i) {
    const float unit = to_float(from_float<T>(to_float(src[i]) * inv));
    normed[i] = from_float<T>(to_float(weight[i]) * unit);
  }
}

// Rotate-half RoPE of one head vector (D even): out[i] = x[i] cos[i] - x[i+D/2] sin[i]
// for i < D/2, and x[i] cos[i] + x[i-D/2] sin[i] above.
template <typename T>
inline void rope_head(const T* x, const T* cos, const T* sin, int64_t D, T* out) {
  const int64_t half = D / 2;
  int64_t i = 0;
  if (half % kLanes == 0) {
    for (; i < half; i += kLanes) {
      const vf8 a = load8(x + i), b = load8(x + i + half);
      store8(out + i, a * load8(cos + i) - b * load8(sin + i));
      store8(out + i + half, b * load8(cos + i + half) + a * load8(sin + i + half));
    }
  }
  for (; i < half; ++i) {
    const float a = to_float(x[i]), b = to_float(x[i + half]);
    out[i] = from_float<T>(a * to_float(cos[i]) - b * to_float(sin[i]));
    out[i + half] = from_float<T>(b * to_float(cos[i + half]) + a * to_float(sin[i + half]));
  }
}

// SiLU(gate) * up for one row; gate_up holds [gate (I) | up (I)].
template <typename T>
inline void silu_mul_row(const T* gate_up, int64_t I, T* out) {
  const int64_t iv = I / kLanes * kLanes;
  for (int64_t i = 0; i < iv; i += kLanes) {
    const vf8 g = load8(gate_up + i);
    // exp8 clamps its input at 88, so g << 0 gives g / e^88 ~ -0 instead of inf/inf.
    store8(out + i, g / (1.0f + exp8(-g)) * load8(gate_up + I + i));
  }
  for (int64_t i = iv; i < I; ++i) {
    const float g = to_float(gate_up[i]);
    out[i] = from_float<T>(g / (1.0f + std::exp(-g)) * to_float(gate_up[I + i]));
  }
}

}  // namespace ENTMTP_ISA_NS
}  // namespace kernels
}  // namespace entmtp
