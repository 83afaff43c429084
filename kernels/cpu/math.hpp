// Scalar activation functions and their derivatives, shared by the CPU ops.
#pragma once
#include <cmath>

namespace mm::cpu {

template <typename T> inline T sigmoid(T x) { return T(1) / (T(1) + std::exp(-x)); }
template <typename T> inline T silu(T x) { return x * sigmoid(x); }
template <typename T> inline T silu_grad(T x) {
  T s = sigmoid(x);
  return s * (T(1) + x * (T(1) - s));
}
// PyTorch's softplus (beta 1, threshold 20): linear above the threshold.
template <typename T> inline T softplus(T x) { return x > T(20) ? x : std::log1p(std::exp(x)); }
template <typename T> inline T softplus_grad(T x) { return x > T(20) ? T(1) : sigmoid(x); }

}  // namespace mm::cpu
