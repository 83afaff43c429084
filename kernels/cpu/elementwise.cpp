#include "kernels/elementwise.hpp"

#include <tbb/parallel_for.h>

#include "kernels/cpu/math.hpp"

namespace mm::cpu {

template <typename T>
void gate_silu_forward(T* out, const T* y, const T* z, int64_t ldz, int64_t M, int64_t D) {
  tbb::parallel_for(int64_t(0), M, [&](int64_t r) {
    for (int64_t i = 0; i < D; ++i) out[r * D + i] = y[r * D + i] * silu(z[r * ldz + i]);
  });
}

template <typename T>
void gate_silu_backward(T* dy, T* dz, int64_t lddz, const T* dout, const T* y, const T* z,
                        int64_t ldz, int64_t M, int64_t D) {
  tbb::parallel_for(int64_t(0), M, [&](int64_t r) {
    for (int64_t i = 0; i < D; ++i) {
      const T zi = z[r * ldz + i], go = dout[r * D + i];
      dy[r * D + i] += go * silu(zi);
      dz[r * lddz + i] += go * y[r * D + i] * silu_grad(zi);
    }
  });
}

template <typename T>
void gated_residual_forward(T* x, const T* g, const T* c, int64_t M, int64_t D) {
  tbb::parallel_for(int64_t(0), M, [&](int64_t r) {
    for (int64_t i = 0; i < D; ++i) x[r * D + i] += sigmoid(g[r * D + i]) * c[r * D + i];
  });
}

template <typename T>
void gated_residual_backward(T* dg, T* dc, const T* dx, const T* g, const T* c, int64_t M, int64_t D) {
  tbb::parallel_for(int64_t(0), M, [&](int64_t r) {
    for (int64_t i = 0; i < D; ++i) {
      const T s = sigmoid(g[r * D + i]), d = dx[r * D + i];
      dg[r * D + i] = d * c[r * D + i] * s * (T(1) - s);
      dc[r * D + i] = d * s;
    }
  });
}

template void gate_silu_forward<float>(float*, const float*, const float*, int64_t, int64_t, int64_t);
template void gate_silu_forward<double>(double*, const double*, const double*, int64_t, int64_t, int64_t);
template void gate_silu_backward<float>(float*, float*, int64_t, const float*, const float*, const float*, int64_t, int64_t, int64_t);
template void gate_silu_backward<double>(double*, double*, int64_t, const double*, const double*, const double*, int64_t, int64_t, int64_t);
template void gated_residual_forward<float>(float*, const float*, const float*, int64_t, int64_t);
template void gated_residual_forward<double>(double*, const double*, const double*, int64_t, int64_t);
template void gated_residual_backward<float>(float*, float*, const float*, const float*, const float*, int64_t, int64_t);
template void gated_residual_backward<double>(double*, double*, const double*, const double*, const double*, int64_t, int64_t);

}  // namespace mm::cpu
