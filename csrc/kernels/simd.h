// Portable 8-lane fp32 SIMD for the CPU kernels, on GCC/Clang vector extensions.
//
// Why not intrinsics or at::vec: the kernels are torch-free, and vector
// extensions compile to AVX2/AVX-512 (ymm), SSE pairs or NEON from the same
// source, while still giving explicit register blocking, which plain loops do
// not reliably get from the auto-vectoriser (float reductions are not
// vectorised at all without -ffast-math).
//
// Runtime ISA dispatch: this header is compiled once per code path, by the
// per-ISA translation units csrc/isa/*.cpp, each after its own
// `#pragma GCC target(...)`. Everything below therefore lives in the inline
// namespace ENTMTP_ISA_NS (portable, avx2, avx512, ...): an inline function
// compiled for AVX-512 must never share a mangled name (and thus a COMDAT
// section the linker may pick for every caller) with the generic one.
//
// Also here: exact scalar conversions of the 16-bit storage types, and a
// vectorised exp (glibc's expf is not vectorised without -ffast-math).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "kernels/types.h"

#ifndef ENTMTP_ISA_NS
#error "kernels/simd.h is compiled per ISA: include it from csrc/isa/*.cpp (which define ENTMTP_ISA_NS)"
#endif

namespace entmtp {
namespace kernels {
inline namespace ENTMTP_ISA_NS {

typedef float vf8 __attribute__((vector_size(32)));
typedef int32_t vi8 __attribute__((vector_size(32)));
typedef uint32_t vu8 __attribute__((vector_size(32)));
typedef uint16_t vh8 __attribute__((vector_size(16)));
constexpr int kLanes = 8;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

inline float bits_to_float(uint32_t bits) {
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}
inline uint32_t float_to_bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return bits;
}

// ---- scalar conversions (exact; round to nearest even like torch) ----------

inline float to_float(float x) { return x; }
inline float to_float(bf16_t x) { return bits_to_float(static_cast<uint32_t>(x.bits) << 16); }
inline float to_float(fp16_t x) {
  // Put the 15 exponent+mantissa bits under the fp32 layout and rescale by
  // 2^(127-15): right for normals and subnormals; inf/NaN get the fp32 exponent.
  const uint32_t h = x.bits;
  const uint32_t em = h & 0x7fffu;
  uint32_t bits = float_to_bits(bits_to_float(em << 13) * 0x1p112f);
  if (em >= 0x7c00u) bits = (em << 13) | 0x7f800000u;
  return bits_to_float(bits | ((h & 0x8000u) << 16));
}

template <typename T>
T from_float(float f);
template <>
inline float from_float<float>(float f) {
  return f;
}
template <>
inline bf16_t from_float<bf16_t>(float f) {
  if (std::isnan(f)) return bf16_t{0x7fc0};
  uint32_t bits = float_to_bits(f);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return bf16_t{static_cast<uint16_t>(bits >> 16)};
}
template <>
inline fp16_t from_float<fp16_t>(float f) {
  uint32_t x = float_to_bits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x > 0x7f800000u) return fp16_t{static_cast<uint16_t>(sign | 0x7e00u)};  // NaN
  if (x >= 0x477ff000u) return fp16_t{static_cast<uint16_t>(sign | 0x7c00u)};  // >= 65520: inf
  if (x < 0x38800000u) {
    // Below the smallest normal half (2^-14): subnormal, n * 2^-24 with n
    // rounded to nearest even by the fp32 magic-number add (n <= 1024; 1024 is
    // exactly the bit pattern of the smallest normal).
    const float scaled = bits_to_float(x) * 0x1p24f;
    const float rounded = (scaled + 8388608.0f) - 8388608.0f;
    return fp16_t{static_cast<uint16_t>(sign | static_cast<uint16_t>(rounded))};
  }
  x += 0xfffu + ((x >> 13) & 1u);  // round the 13 dropped mantissa bits
  x -= 112u << 23;                 // rebias the exponent from 127 to 15
  return fp16_t{static_cast<uint16_t>(sign | (x >> 13))};
}

// ---- vector helpers ---------------------------------------------------------

inline vf8 splat(float x) { return vf8{x, x, x, x, x, x, x, x}; }
inline vf8 select(vi8 mask, vf8 a, vf8 b) {  // mask lanes are all-ones or zero
  return (vf8)(((vi8)a & mask) | ((vi8)b & ~mask));
}
inline vf8 vmax(vf8 a, vf8 b) { return select(a > b, a, b); }

inline vf8 load8(const float* p) {
  vf8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline vf8 load8(const bf16_t* p) {
  vh8 h;
  std::memcpy(&h, p, sizeof(h));
  return (vf8)(__builtin_convertvector(h, vu8) << 16);
}
inline vf8 load8(const fp16_t* p) {
  // Same rescaling trick as the scalar to_float(fp16_t), lane-wise.
  vh8 h16;
  std::memcpy(&h16, p, sizeof(h16));
  const vu8 h = __builtin_convertvector(h16, vu8);
  const vu8 em = h & 0x7fffu;
  const vu8 finite = (vu8)((vf8)(em << 13) * 0x1p112f);
  const vu8 special = (em << 13) | 0x7f800000u;
  const vu8 is_special = (vu8)(em >= 0x7c00u);
  const vu8 bits = (finite & ~is_special) | (special & is_special);
  return (vf8)(bits | ((h & 0x8000u) << 16));
}
inline void store8(float* p, vf8 v) { std::memcpy(p, &v, sizeof(v)); }
// Round-to-nearest-even stores to the 16-bit types, lane-wise like from_float.
inline void store8(bf16_t* p, vf8 v) {
  const vu8 b = (vu8)v;
  const vu8 r = (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
  const vu8 nan = (vu8)(v != v);
  const vh8 h = __builtin_convertvector((r & ~nan) | (nan & 0x7fc0u), vh8);
  std::memcpy(p, &h, sizeof(h));
}
inline void store8(fp16_t* p, vf8 v) {  // rare dtype here: scalar, exact
  for (int i = 0; i < kLanes; ++i) p[i] = from_float<fp16_t>(v[i]);
}
// The value a store to T keeps, back in fp32 (the reference rounds there).
inline vf8 round8(vf8 v, const float*) { return v; }
template <typename T>
inline vf8 round8(vf8 v, const T*) {
  T tmp[kLanes];
  store8(tmp, v);
  return load8(tmp);
}

inline float hsum(vf8 v) {
  float s = 0.f;
  for (int i = 0; i < kLanes; ++i) s += v[i];
  return s;
}
inline float hmax(vf8 v) {
  float m = v[0];
  for (int i = 1; i < kLanes; ++i) m = v[i] > m ? v[i] : m;
  return m;
}

// Lane-wise e^x, max relative error ~2 ulp. Inputs below -87 (including -inf)
// give exactly 0, above 88 are clamped (the kernels only pass x <= 0); NaN
// stays NaN. Cody-Waite range reduction x = n ln2 + r, |r| <= ln2/2, then a
// degree-6 polynomial for e^r and 2^n built in the exponent bits.
inline vf8 exp8(vf8 x) {
  const vi8 underflow = x < -87.0f;
  x = select(x > 88.0f, splat(88.0f), x);
  x = select(underflow, splat(-87.0f), x);
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const vf8 shifted = x * 1.44269504088896341f + magic;
  const vf8 n = shifted - magic;
  const vi8 ni = (vi8)shifted - (vi8)splat(magic);
  vf8 r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  vf8 p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const vf8 y = p * (r * r) + r + 1.0f;
  const vf8 scale = (vf8)((ni + 127) << 23);
  return select(underflow, splat(0.f), y * scale);
}

}  // namespace ENTMTP_ISA_NS
}  // namespace kernels
}  // namespace entmtp
