#include "kernels/embedding.hpp"

#include <tbb/parallel_for.h>

#include <algorithm>
#include <cmath>

namespace mm::cpu {

template <typename T>
void embedding_forward(T* out, const int32_t* tokens, const T* table, int64_t M, int64_t D) {
  tbb::parallel_for(int64_t(0), M, [&](int64_t r) {
    std::copy(table + int64_t(tokens[r]) * D, table + int64_t(tokens[r] + 1) * D, out + r * D);
  });
}

template <typename T>
void embedding_backward(T* dtable, const int32_t* tokens, const T* dout, int64_t M, int64_t D) {
  for (int64_t r = 0; r < M; ++r)
    for (int64_t i = 0; i < D; ++i) dtable[int64_t(tokens[r]) * D + i] += dout[r * D + i];
}

template <typename T>
double cross_entropy_forward_backward(T* dlogits, int64_t* counted, const T* logits,
                                      const int32_t* targets, int64_t M, int64_t V, double scale) {
  double loss = 0;
  int64_t n = 0;
  for (int64_t r = 0; r < M; ++r) {
    const T* l = logits + r * V;
    if (targets[r] < 0) {
      if (dlogits) std::fill(dlogits + r * V, dlogits + (r + 1) * V, T(0));
      continue;
    }
    T mx = *std::max_element(l, l + V), sum = 0;
    for (int64_t v = 0; v < V; ++v) sum += std::exp(l[v] - mx);
    loss += double(std::log(sum) + mx - l[targets[r]]);
    ++n;
    if (dlogits)
      for (int64_t v = 0; v < V; ++v)
        dlogits[r * V + v] = (std::exp(l[v] - mx) / sum - T(v == targets[r])) / T(scale);
  }
  if (counted) *counted = n;
  return loss;
}

template void embedding_forward<float>(float*, const int32_t*, const float*, int64_t, int64_t);
template void embedding_forward<double>(double*, const int32_t*, const double*, int64_t, int64_t);
template void embedding_backward<float>(float*, const int32_t*, const float*, int64_t, int64_t);
template void embedding_backward<double>(double*, const int32_t*, const double*, int64_t, int64_t);
template double cross_entropy_forward_backward<float>(float*, int64_t*, const float*, const int32_t*, int64_t, int64_t, double);
template double cross_entropy_forward_backward<double>(double*, int64_t*, const double*, const int32_t*, int64_t, int64_t, double);

}  // namespace mm::cpu
