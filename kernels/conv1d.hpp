// Causal depthwise conv1d over time followed by SiLU (Mamba's conv branch).
// B batch, T length, E channels, k width. Rows are b·T + t; `a` has row stride lda.
// tail (B×(k−1)×E) holds the k−1 inputs before t = 0 (oldest first): zeros for a fresh sequence,
// the end of the previous piece when streaming; it is updated to this piece's last k−1 inputs.
#pragma once
#include <cstdint>

namespace mm::cpu {

// pre (B·T×E) = conv(a) + bias, kept for the backward pass (may be null); out = SiLU(pre).
template <typename T>
void conv1d_silu_forward(T* out, T* pre, T* tail, const T* a, int64_t lda, const T* w,
                         const T* bias, int64_t B, int64_t T_, int64_t E, int64_t k);

// From a fresh (zero) tail: da (row stride ldda) += ∂L/∂a, dw (E×k) += , dbias (E) += .
template <typename T>
void conv1d_silu_backward(T* da, int64_t ldda, T* dw, T* dbias, const T* dout, const T* pre,
                          const T* a, int64_t lda, const T* w, int64_t B, int64_t T_, int64_t E,
                          int64_t k);

}  // namespace mm::cpu
