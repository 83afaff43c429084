// Linear layer (no autograd): out = in · Wᵀ (+ bias), W stored out×in as PyTorch does.
// M rows, I in-features, O out-features; ld* are row strides (elements) so column slices of a
// wider matrix (e.g. the a/z halves of in_proj's output) can be used in place.
#pragma once
#include <cstdint>

namespace mm::cpu {

// out (M×O, ld_out) = in (M×I, ld_in) · Wᵀ (O×I) + bias (O or null); overwrites out.
template <typename T>
void linear_forward(T* out, int64_t ld_out, const T* in, int64_t ld_in, const T* W, const T* bias,
                    int64_t M, int64_t I, int64_t O);

// din (M×I) += dout · W;  dW (O×I) += doutᵀ · in;  dbias (O) += Σ_rows dout. Null outputs skipped.
template <typename T>
void linear_backward(T* din, int64_t ld_din, T* dW, T* dbias, const T* dout, int64_t ld_dout,
                     const T* in, int64_t ld_in, const T* W, int64_t M, int64_t I, int64_t O);

}  // namespace mm::cpu
