#include "kernels/rmsnorm.hpp"

#include <tbb/parallel_for.h>

#include <cmath>
#include <vector>

namespace mm::cpu {

template <typename T>
void rmsnorm_forward(T* y, T* rstd, const T* x, const T* w, int64_t M, int64_t D, double eps) {
  tbb::parallel_for(int64_t(0), M, [&](int64_t r) {
    const T* xr = x + r * D;
    T ss = 0;
    for (int64_t i = 0; i < D; ++i) ss += xr[i] * xr[i];
    T rs = T(1) / std::sqrt(ss / T(D) + T(eps));
    if (rstd) rstd[r] = rs;
    T* yr = y + r * D;
    for (int64_t i = 0; i < D; ++i) yr[i] = xr[i] * rs * w[i];
  });
}

template <typename T>
void rmsnorm_backward(T* dx, T* dw, const T* dy, const T* x, const T* w, const T* rstd, int64_t M,
                      int64_t D) {
  // dw is a reduction over rows: accumulate serially over row blocks to stay deterministic.
  tbb::parallel_for(int64_t(0), M, [&](int64_t r) {
    const T *xr = x + r * D, *dyr = dy + r * D;
    T rs = rstd[r], dot = 0;
    for (int64_t i = 0; i < D; ++i) dot += dyr[i] * w[i] * xr[i];
    T c = dot * rs * rs * rs / T(D);
    T* dxr = dx + r * D;
    for (int64_t i = 0; i < D; ++i) dxr[i] += dyr[i] * w[i] * rs - xr[i] * c;
  });
  for (int64_t r = 0; r < M; ++r)
    for (int64_t i = 0; i < D; ++i) dw[i] += dy[r * D + i] * x[r * D + i] * rstd[r];
}

template void rmsnorm_forward<float>(float*, float*, const float*, const float*, int64_t, int64_t, double);
template void rmsnorm_forward<double>(double*, double*, const double*, const double*, int64_t, int64_t, double);
template void rmsnorm_backward<float>(float*, float*, const float*, const float*, const float*, const float*, int64_t, int64_t);
template void rmsnorm_backward<double>(double*, double*, const double*, const double*, const double*, const double*, int64_t, int64_t);

}  // namespace mm::cpu
