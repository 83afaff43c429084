// The CUDA backend's backward ops (the training path). Plain C++ declarations, like ops.hpp.
// Activations and gradients are fp32; matrix products run in fp32 (DType::f32, the parity path)
// or TF32 on the tensor cores (DType::tf32, the fast path). Parameter gradients accumulate (+=)
// so that several micro-batches and several uses of one weight add up; activation gradients are
// written (=) unless a flag says accumulate. Every launcher checks its arguments and throws
// mm::Error rather than compute a wrong answer.
// B batch, T length, M = B·T rows, D d_model, E d_inner, N d_state, S summary width, V vocab.
#pragma once
#include <cstdint>

#include "kernels/cuda/notes.hpp"
#include "kernels/cuda/ops.hpp"

namespace mm::cuda {

// Row-major product: C (M×N, ldc) = op(A)·op(B) + beta·C, with op(A) M×K and op(B) K×N;
// A is stored M×K (lda) or, transposed, K×M; B is stored K×N (ldb) or, transposed, N×K.
// cuBLASLt (cublasGemmEx where it takes no algorithm); dt: f32 or tf32.
void gemm(float* C, int64_t ldc, const float* A, int64_t lda, bool transA, const float* B,
          int64_t ldb, bool transB, int64_t M, int64_t N, int64_t K, DType dt, float beta);

// Backward of out = X·Wᵀ + b (X M×I, W O×I): dX (M×I, ld_dx) = dY·W, or += with accumulate_dx
// (dX may be null: not needed); dW (O×I) += dYᵀ·X; db (O) += Σ_rows dY (db may be null).
void linear_backward(float* dX, int64_t ld_dx, bool accumulate_dx, float* dW, float* db,
                     const float* dY, int64_t ld_dy, const float* X, int64_t ld_x, const float* W,
                     int64_t M, int64_t I, int64_t O, DType dt);

// y = x · rsqrt(mean(x²) + eps) · w: dx (M×D) = (or += with accumulate) ∂L/∂x; dw (D) += .
void rmsnorm_backward(float* dx, bool accumulate, float* dw, const float* dy, const float* x,
                      const float* w, int64_t M, int64_t D, float eps);

// s = σ(v·w + b): dv (M×D) += ds·s(1−s)·w; dw (D) += ; db (1) += .
void note_score_backward(float* dv, float* dw, float* db, const float* ds, const float* s,
                         const float* v, const float* w, int64_t M, int64_t D);

// n = s ⊙ m (m row stride ldm, dn row stride ldn): dm (M×S, row stride lddm) = s·dn;
// ds (M) = Σ_c dn·m.
void note_scale_backward(float* dm, int64_t lddm, float* ds, const float* dn, int64_t ldn,
                         const float* s, const float* m, int64_t ldm, int64_t M, int64_t S);

// x += σ(g) ⊙ c: dg (M×D) = dx ⊙ c ⊙ σ'(g), dc (M×D) = dx ⊙ σ(g).
void gated_residual_backward(float* dg, float* dc, const float* dx, const float* g,
                             const float* c, int64_t M, int64_t D);

// out = SiLU(conv(a) + bias) from a zero tail (whole sequences): da (row stride ldda) = ∂L/∂a
// (written); dw (E×k) += ; dbias (E) += . a has row stride lda; dout is M×E.
void conv1d_silu_backward(float* da, int64_t ldda, float* dw, float* dbias, const float* dout,
                          const float* a, int64_t lda, const float* w, const float* bias,
                          int64_t B, int64_t T, int64_t E, int64_t k);

// dtable (V×D) += Σ over rows with tokens[r] = v of dx[r].
void embedding_backward(float* dtable, const int32_t* tokens, const float* dx, int64_t M,
                        int64_t D, int64_t V);

// Cross-entropy of logits (M×V) against targets (M, −1 = ignored): dlogits (M×V) =
// (softmax − onehot)/scale on counted rows, 0 on ignored ones (as the CPU twin). Returns Σ loss (nats, unscaled)
// and sets *counted (host values: the call synchronises).
double cross_entropy_forward_backward(float* dlogits, int64_t* counted, const float* logits,
                                      const int32_t* targets, int64_t M, int64_t V, float scale);

// Backward of pool_read_forward (fp32 output): given dout (M×S) = ∂L/∂o, dq (M×S, row stride
// lddq) = ∂L/∂q (written); dkv[i] (source i's rows × 2S, keys then values) += ∂L/∂kv (atomics:
// a slot is read by many segments; zero them first). Softmax statistics are recomputed.
void pool_read_backward(float* dq, int64_t lddq, float* const* dkv, const float* dout,
                        const float* q, int64_t ldq, const ReadSource* sources, int nsources,
                        Segments segs, int64_t B, int64_t T, int64_t K, int64_t H, int64_t dh);

// Backward of scan_forward with the gate fused (out = y ⊙ SiLU(z)), from a zero initial state
// (whole sequences). Given dout (M×E) = ∂L/∂out:
//   du (row stride ld_du) = ∂L/∂u            (written)
//   ddt (M×E)             = ∂L/∂dt (through the softplus)   (written)
//   dz (row stride ld_dz) = ∂L/∂z            (written)
//   dBm, dCm (row stride ld_dbc) = ∂L/∂B, ∂L/∂C   (written)
//   dA_log (E×N), dD (E) += .
// Inputs as scan_forward's (u row stride E, z row stride ldz, B/C row stride ld_bc).
void scan_backward(float* du, int64_t ld_du, float* ddt, float* dz, int64_t ld_dz, float* dBm,
                   float* dCm, int64_t ld_dbc, float* dA_log, float* dD, const float* dout,
                   const float* u, const float* dt, const float* A_log, const float* Bm,
                   const float* Cm, int64_t ld_bc, const float* D, const float* z, int64_t ldz,
                   int64_t B, int64_t T, int64_t E, int64_t N);

}  // namespace mm::cuda
