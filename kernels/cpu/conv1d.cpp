#include "kernels/conv1d.hpp"

#include <tbb/parallel_for.h>

#include <cmath>
#include <vector>

#include "kernels/cpu/math.hpp"

namespace mm::cpu {

template <typename T>
void conv1d_silu_forward(T* out, T* pre, T* tail, const T* a, int64_t lda, const T* w,
                         const T* bias, int64_t B, int64_t T_, int64_t E, int64_t k) {
  tbb::parallel_for(int64_t(0), B * T_, [&](int64_t row) {
    int64_t b = row / T_, t = row % T_;
    for (int64_t e = 0; e < E; ++e) {
      T acc = bias[e];
      for (int64_t i = 0; i < k; ++i) {
        int64_t s = t - (k - 1) + i;  // source time
        T v = s >= 0 ? a[(b * T_ + s) * lda + e] : tail[(b * (k - 1) + (k - 1 + s)) * E + e];
        acc += w[e * k + i] * v;
      }
      if (pre) pre[row * E + e] = acc;
      out[row * E + e] = silu(acc);
    }
  });
  // New tail: the last k−1 inputs, reaching into the old tail when the piece is short.
  std::vector<T> fresh(size_t(B * (k - 1) * E));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < k - 1; ++j) {
      int64_t s = T_ - (k - 1) + j;
      for (int64_t e = 0; e < E; ++e)
        fresh[(b * (k - 1) + j) * E + e] =
            s >= 0 ? a[(b * T_ + s) * lda + e] : tail[(b * (k - 1) + (k - 1 + s)) * E + e];
    }
  std::copy(fresh.begin(), fresh.end(), tail);
}

template <typename T>
void conv1d_silu_backward(T* da, int64_t ldda, T* dw, T* dbias, const T* dout, const T* pre,
                          const T* a, int64_t lda, const T* w, int64_t B, int64_t T_, int64_t E,
                          int64_t k) {
  // Parallel over channels: each channel's dw/dbias is then owned by one task.
  tbb::parallel_for(int64_t(0), E, [&](int64_t e) {
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T_; ++t) {
        int64_t row = b * T_ + t;
        T g = dout[row * E + e] * silu_grad(pre[row * E + e]);
        dbias[e] += g;
        for (int64_t i = 0; i < k; ++i) {
          int64_t s = t - (k - 1) + i;
          if (s < 0) continue;
          dw[e * k + i] += g * a[(b * T_ + s) * lda + e];
          da[(b * T_ + s) * ldda + e] += g * w[e * k + i];
        }
      }
  });
}

template void conv1d_silu_forward<float>(float*, float*, float*, const float*, int64_t, const float*, const float*, int64_t, int64_t, int64_t, int64_t);
template void conv1d_silu_forward<double>(double*, double*, double*, const double*, int64_t, const double*, const double*, int64_t, int64_t, int64_t, int64_t);
template void conv1d_silu_backward<float>(float*, int64_t, float*, float*, const float*, const float*, const float*, int64_t, const float*, int64_t, int64_t, int64_t, int64_t);
template void conv1d_silu_backward<double>(double*, int64_t, double*, double*, const double*, const double*, const double*, int64_t, const double*, int64_t, int64_t, int64_t, int64_t);

}  // namespace mm::cpu
