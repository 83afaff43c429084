#include "kernels/adamw.hpp"

#include <tbb/parallel_for.h>

#include <cmath>

namespace mm::cpu {

template <typename T>
void adamw_update(T* p, const T* g, T* m, T* v, int64_t n, const AdamWHyper& h, double weight_decay,
                  int64_t step, double grad_scale) {
  const double c1 = 1.0 - std::pow(h.beta1, double(step));
  const double c2 = 1.0 - std::pow(h.beta2, double(step));
  tbb::parallel_for(int64_t(0), n, [&](int64_t i) {
    const double gi = double(g[i]) * grad_scale;
    const double mi = h.beta1 * double(m[i]) + (1.0 - h.beta1) * gi;
    const double vi = h.beta2 * double(v[i]) + (1.0 - h.beta2) * gi * gi;
    m[i] = T(mi);
    v[i] = T(vi);
    const double upd = (mi / c1) / (std::sqrt(vi / c2) + h.eps) + weight_decay * double(p[i]);
    p[i] = T(double(p[i]) - h.lr * upd);
  });
}

template void adamw_update<float>(float*, const float*, float*, float*, int64_t, const AdamWHyper&, double, int64_t, double);
template void adamw_update<double>(double*, const double*, double*, double*, int64_t, const AdamWHyper&, double, int64_t, double);

}  // namespace mm::cpu
