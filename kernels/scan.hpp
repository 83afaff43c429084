// Selective scan (Mamba-1), with Δ's softplus fused in.
// B batch, T length, E channels (d_inner), N d_state. Rows are b·T + t.
//   Δ_t = softplus(dt_t);  A = −exp(A_log)
//   h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t B_t u_t;   y_t = h_t C_t + D ⊙ u_t
// Bm and Cm are N-wide column slices of a wider row (x_proj's output): row stride ld_bc.
#pragma once
#include <cstdint>

namespace mm::cpu {

// y (B·T×E) = scan; h (B×E×N): the state before the piece, updated to the state after it
// (zeros for a fresh sequence; one call with T = 1 is the streaming step).
template <typename T>
void scan_forward(T* y, T* h, const T* u, int64_t ld_u, const T* dt, const T* A_log, const T* Bm,
                  const T* Cm, int64_t ld_bc, const T* D, int64_t B, int64_t T_, int64_t E,
                  int64_t N);

// From a zero initial state. Accumulates (+=) du (row stride ld_du), dA_log (E×N), dBm, dCm
// (row stride ld_dbc), dD (E); writes ddt (B·T×E). Recomputes the states block by block
// instead of storing B·T·E·N of them.
template <typename T>
void scan_backward(T* du, int64_t ld_du, T* ddt, T* dA_log, T* dBm, T* dCm, int64_t ld_dbc, T* dD,
                   const T* dy, const T* u, int64_t ld_u, const T* dt, const T* A_log,
                   const T* Bm, const T* Cm, int64_t ld_bc, const T* D, int64_t B, int64_t T_,
                   int64_t E, int64_t N);

}  // namespace mm::cpu
