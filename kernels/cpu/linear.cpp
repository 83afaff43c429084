// Linear through BLAS (OpenBLAS cblas_?gemm): the matrix products are nearly all of the model's
// FLOPs, and a tuned sgemm beats anything hand-written here by a wide margin.
#include "kernels/linear.hpp"

#include <cblas.h>

namespace mm::cpu {

namespace {
void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t m, int64_t n, int64_t k, float alpha,
          const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t m, int64_t n, int64_t k, double alpha,
          const double* a, int64_t lda, const double* b, int64_t ldb, double beta, double* c,
          int64_t ldc) {
  cblas_dgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
}  // namespace

template <typename T>
void linear_forward(T* out, int64_t ld_out, const T* in, int64_t ld_in, const T* W, const T* bias,
                    int64_t M, int64_t I, int64_t O) {
  if (M == 0) return;
  if (bias) {
    for (int64_t r = 0; r < M; ++r)
      for (int64_t o = 0; o < O; ++o) out[r * ld_out + o] = bias[o];
  }
  gemm(CblasNoTrans, CblasTrans, M, O, I, T(1), in, ld_in, W, I, bias ? T(1) : T(0), out, ld_out);
}

template <typename T>
void linear_backward(T* din, int64_t ld_din, T* dW, T* dbias, const T* dout, int64_t ld_dout,
                     const T* in, int64_t ld_in, const T* W, int64_t M, int64_t I, int64_t O) {
  if (M == 0) return;
  if (din) gemm(CblasNoTrans, CblasNoTrans, M, I, O, T(1), dout, ld_dout, W, I, T(1), din, ld_din);
  if (dW) gemm(CblasTrans, CblasNoTrans, O, I, M, T(1), dout, ld_dout, in, ld_in, T(1), dW, I);
  if (dbias)
    for (int64_t r = 0; r < M; ++r)
      for (int64_t o = 0; o < O; ++o) dbias[o] += dout[r * ld_dout + o];
}

template void linear_forward<float>(float*, int64_t, const float*, int64_t, const float*,
                                    const float*, int64_t, int64_t, int64_t);
template void linear_forward<double>(double*, int64_t, const double*, int64_t, const double*,
                                     const double*, int64_t, int64_t, int64_t);
template void linear_backward<float>(float*, int64_t, float*, float*, const float*, int64_t,
                                     const float*, int64_t, const float*, int64_t, int64_t, int64_t);
template void linear_backward<double>(double*, int64_t, double*, double*, const double*, int64_t,
                                      const double*, int64_t, const double*, int64_t, int64_t,
                                      int64_t);

}  // namespace mm::cpu
