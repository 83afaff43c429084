// Elementwise gates of the layer. M rows, D features; ld* are row strides.
#pragma once
#include <cstdint>

namespace mm::cpu {

// Mamba's output gate: out (M×D) = y ⊙ SiLU(z).
template <typename T>
void gate_silu_forward(T* out, const T* y, const T* z, int64_t ldz, int64_t M, int64_t D);
// dy (M×D) += , dz (row stride lddz) += .
template <typename T>
void gate_silu_backward(T* dy, T* dz, int64_t lddz, const T* dout, const T* y, const T* z,
                        int64_t ldz, int64_t M, int64_t D);

// The note-read fusion: x (M×D) += σ(g) ⊙ c, with g the gate's pre-activation.
template <typename T>
void gated_residual_forward(T* x, const T* g, const T* c, int64_t M, int64_t D);
// dg (M×D) = dx ⊙ c ⊙ σ'(g);  dc (M×D) = dx ⊙ σ(g).  (dx passes through to x unchanged.)
template <typename T>
void gated_residual_backward(T* dg, T* dc, const T* dx, const T* g, const T* c, int64_t M, int64_t D);

}  // namespace mm::cpu
