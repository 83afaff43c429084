// Scalar activation functions and their derivatives, shared by the CPU ops.
// exp_fast<float> is branch-free and inlinable, so loops that call it vectorise (the scan spends
// E·N exponentials per token); float64 keeps std::exp for the golden and gradient checks.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace mm::cpu {

// exp(x) for float within ~2 ulp (Cephes' expf polynomial on a ln 2 range reduction). Written
// without float ternaries, std::floor or fmin/fmax, none of which GCC vectorises without
// -ffast-math: the floor is a conversion, and the clamp is on the integer exponent (below
// 2^-126 the result is 0, above 2^127 it is inf).
inline float exp_fast(float x) {
  const float y0 = x * 1.44269504088896341f + 0.5f;
  int32_t i = int32_t(y0);
  i -= int32_t(y0 < float(i));  // floor
  const float n = float(i);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  const float z = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * z + r + 1.0f;
  i = std::min(std::max(i, -127), 128);
  const int32_t bits = (i + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return y * scale;
}

// log(x) for float x > 0 within ~2 ulp (Cephes' logf polynomial), branch-free so it vectorises.
inline float log_fast(float x) {
  int32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  int32_t e = ((bits >> 23) & 0xff) - 126;
  bits = (bits & int32_t(0x807fffff)) | 0x3f000000;  // mantissa in [0.5, 1)
  float m;
  std::memcpy(&m, &bits, sizeof m);
  const int32_t low = int32_t(m < 0.707106781186547524f);
  e -= low;
  m = m - 1.0f + float(low) * m;  // below √½: 2m − 1 with the exponent one lower
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  const float fe = float(e);
  y += -2.12194440e-4f * fe;
  y += -0.5f * z;
  return m + y + 0.693359375f * fe;
}

template <typename T> inline T exp_(T x) {
  if constexpr (std::is_same_v<T, float>) return exp_fast(x);
  else return std::exp(x);
}

template <typename T> inline T sigmoid(T x) { return T(1) / (T(1) + exp_(-x)); }
template <typename T> inline T silu(T x) { return x * sigmoid(x); }
template <typename T> inline T silu_grad(T x) {
  T s = sigmoid(x);
  return s * (T(1) + x * (T(1) - s));
}
// PyTorch's softplus (beta 1, threshold 20): linear above the threshold. The float form is
// max(x, 0) + log1p(exp(−|x|)) with log1p(y) = log(1 + y)·y / ((1 + y) − 1), accurate even where
// 1 + y rounds to 1, and branch-free.
template <typename T> inline T softplus(T x) {
  if constexpr (std::is_same_v<T, float>) {
    // Above 20, x + log1p(e^−x) rounds to x in float, so PyTorch's threshold needs no branch.
    // log1p(y) = log(u)·y/(u − 1) with u = 1 + y; where u rounds to 1 (y < 6e-8) it gives 0
    // instead of y, an absolute error below 6e-8.
    const float y = exp_fast(-std::fabs(x));
    const float u = 1.0f + y;
    const float l1p = log_fast(u) * (y / ((u - 1.0f) + 1e-30f));
    return 0.5f * (x + std::fabs(x)) + l1p;
  } else {
    return x > T(20) ? x : std::log1p(std::exp(x));
  }
}
template <typename T> inline T softplus_grad(T x) { return x > T(20) ? T(1) : sigmoid(x); }

}  // namespace mm::cpu
