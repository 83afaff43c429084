// Scalar activation functions and their derivatives, shared by the CPU ops.
// exp_fast<float> is branch-free and inlinable, so loops that call it vectorise (the scan spends
// E·N exponentials per token); float64 keeps std::exp for the golden and gradient checks.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace mm::cpu {

// exp(x) for float within ~2 ulp (Cephes' expf polynomial on a ln 2 range reduction);
// inputs are clamped to [−87.3, 88.7] (results below FLT_MIN flush towards 0).
inline float exp_fast(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  const float z = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * z + r + 1.0f;
  const int32_t bits = (int32_t(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return y * scale;
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
// PyTorch's softplus (beta 1, threshold 20): linear above the threshold.
template <typename T> inline T softplus(T x) { return x > T(20) ? x : std::log1p(exp_(x)); }
template <typename T> inline T softplus_grad(T x) { return x > T(20) ? T(1) : sigmoid(x); }

}  // namespace mm::cpu
