// RMSNorm: y = x · rsqrt(mean(x²) + eps) · w.   M rows, D features.
#pragma once
#include <cstdint>

namespace mm::cpu {

// y (M×D), rstd (M) kept for the backward pass (may be null at inference).
template <typename T>
void rmsnorm_forward(T* y, T* rstd, const T* x, const T* w, int64_t M, int64_t D, double eps);

// dx (M×D) += ∂L/∂x;  dw (D) += ∂L/∂w.
template <typename T>
void rmsnorm_backward(T* dx, T* dw, const T* dy, const T* x, const T* w, const T* rstd, int64_t M,
                      int64_t D);

}  // namespace mm::cpu
