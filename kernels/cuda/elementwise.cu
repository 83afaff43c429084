// The note-read fusion: x (M×D) += σ(g) ⊙ c.
#include "kernels/cuda/backward.hpp"
#include "kernels/cuda/common.cuh"

namespace mm::cuda {

namespace {
__global__ void gated_residual_kernel(float* __restrict__ x, const float* __restrict__ g,
                                      const float* __restrict__ c, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    x[i] += detail::gated_f(c[i], g[i]);
}
}  // namespace

void gated_residual_forward(float* x, const float* g, const float* c, int64_t M, int64_t D) {
  using detail::require;
  require(M > 0 && D > 0, "gated_residual_forward",
          "sizes must be positive (M=" + std::to_string(M) + ", D=" + std::to_string(D) + ")");
  require(x && g && c, "gated_residual_forward", "null pointer");
  const int64_t n = M * D;
  const unsigned grid = unsigned(std::min<int64_t>((n + 255) / 256, int64_t(detail::sm_count()) * 32));
  gated_residual_kernel<<<grid, 256>>>(x, g, c, n);
  MM_CUDA_LAUNCH_CHECK("gated_residual_kernel");
}

}  // namespace mm::cuda

// ---- backward ----------------------------------------------------------------------------------
namespace mm::cuda {

namespace {
__global__ void gated_residual_backward_kernel(float* __restrict__ dg, float* __restrict__ dc,
                                               const float* __restrict__ dx, const float* __restrict__ g,
                                               const float* __restrict__ c, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float sg = 1.0f / (1.0f + __expf(-g[i]));
    dc[i] = dx[i] * sg;
    dg[i] = dx[i] * c[i] * sg * (1.0f - sg);
  }
}

// One thread per row: V is the (small) vocabulary. Loss and count are summed per block and
// added once per block.
__global__ void cross_entropy_kernel(float* __restrict__ dlogits, double* __restrict__ loss,
                                     unsigned long long* __restrict__ counted,
                                     const float* __restrict__ logits, const int32_t* __restrict__ targets,
                                     int64_t M, int64_t V, float inv_scale) {
  __shared__ double part[256];
  __shared__ unsigned part_n[256];
  const int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  double l = 0;
  unsigned n = 0;
  if (r < M) {
    const float* lr = logits + r * V;
    float* dr = dlogits + r * V;
    const int32_t t = targets[r];
    if (t < 0 || t >= V) {
      for (int64_t v = 0; v < V; ++v) dr[v] = 0.f;
    } else {
      float mx = lr[0];
      for (int64_t v = 1; v < V; ++v) mx = fmaxf(mx, lr[v]);
      float sum = 0.f;
      for (int64_t v = 0; v < V; ++v) sum += expf(lr[v] - mx);
      l = double(logf(sum) + mx - lr[t]);
      n = 1;
      const float inv = 1.0f / sum;
      for (int64_t v = 0; v < V; ++v) dr[v] = (expf(lr[v] - mx) * inv - (v == t ? 1.0f : 0.0f)) * inv_scale;
    }
  }
  part[threadIdx.x] = l;
  part_n[threadIdx.x] = n;
  __syncthreads();
  for (int s = 128; s > 0; s >>= 1) {
    if (int(threadIdx.x) < s) {
      part[threadIdx.x] += part[threadIdx.x + s];
      part_n[threadIdx.x] += part_n[threadIdx.x + s];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    atomicAdd(loss, part[0]);
    atomicAdd(counted, static_cast<unsigned long long>(part_n[0]));
  }
}
}  // namespace

void gated_residual_backward(float* dg, float* dc, const float* dx, const float* g, const float* c,
                             int64_t M, int64_t D) {
  using detail::require;
  require(M > 0 && D > 0, "gated_residual_backward",
          "sizes must be positive (M=" + std::to_string(M) + ", D=" + std::to_string(D) + ")");
  require(dg && dc && dx && g && c, "gated_residual_backward", "null pointer");
  const int64_t n = M * D;
  const unsigned grid = unsigned(std::min<int64_t>((n + 255) / 256, int64_t(detail::sm_count()) * 32));
  gated_residual_backward_kernel<<<grid, 256>>>(dg, dc, dx, g, c, n);
  MM_CUDA_LAUNCH_CHECK("gated_residual_backward_kernel");
}

double cross_entropy_forward_backward(float* dlogits, int64_t* counted, const float* logits,
                                      const int32_t* targets, int64_t M, int64_t V, float scale) {
  using detail::require;
  require(M > 0 && V > 0 && V <= 1024, "cross_entropy", "sizes M=" + std::to_string(M) + ", V=" + std::to_string(V));
  require(dlogits && logits && targets, "cross_entropy", "null pointer");
  require(scale > 0.f, "cross_entropy", "scale must be positive");
  struct Acc {
    double loss;
    unsigned long long n;
  };
  // One small device accumulator for the process (no allocation per step); calls are serialised
  // by the host copy at the end, which synchronises.
  static Acc* d = static_cast<Acc*>(device_alloc(sizeof(Acc)));
  Acc h{};
  fill_zero(d, sizeof(Acc));
  cross_entropy_kernel<<<detail::blocks_for(M, 256), 256>>>(dlogits, &d->loss, &d->n, logits, targets, M, V, 1.0f / scale);
  MM_CUDA_LAUNCH_CHECK("cross_entropy_kernel");
  copy_to_host(&h, d, sizeof(Acc));
  if (counted) *counted = int64_t(h.n);
  return h.loss;
}

}  // namespace mm::cuda
