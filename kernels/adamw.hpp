// AdamW (decoupled weight decay) over a flat range of n parameters.
#pragma once
#include <cstdint>

namespace mm::cpu {

struct AdamWHyper {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};

// p -= lr·(m̂ / (√v̂ + eps) + wd·p) with bias-corrected moments; `step` counts from 1.
// grad_scale multiplies g first (gradient clipping and accumulation averaging).
template <typename T>
void adamw_update(T* p, const T* g, T* m, T* v, int64_t n, const AdamWHyper& h, double weight_decay,
                  int64_t step, double grad_scale);

}  // namespace mm::cpu
