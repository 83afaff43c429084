// The note-read fusion: x (M×D) += σ(g) ⊙ c.
#include "kernels/cuda/common.cuh"

namespace mm::cuda {

namespace {
__global__ void gated_residual_kernel(float* __restrict__ x, const float* __restrict__ g,
                                      const float* __restrict__ c, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    x[i] += c[i] / (1.0f + __expf(-g[i]));
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
