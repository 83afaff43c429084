// RMSNorm, one warp per row: y = x · rsqrt(mean(x²) + eps) · w (eps inside the sqrt), with the
// note score fused: s = σ(y_f32 · score_w + score_b) from the same normalised row.
#include "kernels/cuda/common.cuh"

namespace mm::cuda {

namespace {

constexpr int kWarps = 8;  // rows per block

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename OutT, bool kScore>
__global__ void __launch_bounds__(kWarps * 32)
rmsnorm_kernel(OutT* __restrict__ y, const float* __restrict__ x, const float* __restrict__ w,
               int64_t M, int64_t D, float eps, float* __restrict__ s,
               const float* __restrict__ sw, const float* __restrict__ sb) {
  const int lane = threadIdx.x & 31;
  const int64_t row = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (row >= M) return;
  const float* xr = x + row * D;
  float ss = 0.f;
  for (int64_t i = lane; i < D; i += 32) {
    const float v = xr[i];
    ss = fmaf(v, v, ss);
  }
  ss = warp_sum(ss);
  // 1/sqrt, correctly rounded division and sqrt as the CPU twin computes it.
  const float rs = 1.0f / sqrtf(ss / float(D) + eps);
  OutT* yr = y + row * D;
  float dot = 0.f;
  for (int64_t i = lane; i < D; i += 32) {
    const float v = xr[i] * rs * w[i];
    detail::store(yr + i, v);
    if constexpr (kScore) dot = fmaf(v, sw[i], dot);
  }
  if constexpr (kScore) {
    dot = warp_sum(dot);
    if (lane == 0) s[row] = 1.0f / (1.0f + expf(-(dot + sb[0])));
  }
}

template <typename OutT>
void launch(void* y, const float* x, const float* w, int64_t M, int64_t D, float eps, float* s,
            const float* sw, const float* sb) {
  const unsigned grid = detail::blocks_for(M, kWarps);
  if (s) {
    rmsnorm_kernel<OutT, true><<<grid, kWarps * 32>>>(static_cast<OutT*>(y), x, w, M, D, eps, s, sw, sb);
    MM_CUDA_LAUNCH_CHECK("rmsnorm_kernel<score>");
  } else {
    rmsnorm_kernel<OutT, false><<<grid, kWarps * 32>>>(static_cast<OutT*>(y), x, w, M, D, eps, s, sw, sb);
    MM_CUDA_LAUNCH_CHECK("rmsnorm_kernel");
  }
}

}  // namespace

void rmsnorm_forward(void* y, DType ydt, const float* x, const float* w, int64_t M, int64_t D,
                     float eps, float* s, const float* score_w, const float* score_b) {
  using detail::require;
  require(M > 0 && D > 0, "rmsnorm_forward",
          "sizes must be positive (M=" + std::to_string(M) + ", D=" + std::to_string(D) + ")");
  require(M / kWarps < (int64_t(1) << 31), "rmsnorm_forward", "too many rows");
  require(y && x && w, "rmsnorm_forward", "null pointer");
  require(eps > 0.f, "rmsnorm_forward", "eps must be positive");
  require((s == nullptr) == (score_w == nullptr) && (s == nullptr) == (score_b == nullptr),
          "rmsnorm_forward", "s, score_w and score_b are given together or not at all");
  if (ydt == DType::tf32) throw Error("rmsnorm: activations are written as f32 or bf16, not tf32");
  if (ydt == DType::f32) launch<float>(y, x, w, M, D, eps, s, score_w, score_b);
  else launch<__nv_bfloat16>(y, x, w, M, D, eps, s, score_w, score_b);
}

}  // namespace mm::cuda
