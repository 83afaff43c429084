// RMSNorm, one warp per row: y = x · rsqrt(mean(x²) + eps) · w (eps inside the sqrt), with the
// note score fused: s = σ(y_f32 · score_w + score_b) from the same normalised row.
#include "kernels/cuda/backward.hpp"
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

// The note reads' gated residuals fused in front of the norm: x += σ(g_i + b_i) ⊙ c_i for each
// read (in order, as the CPU model adds them), written back once, then normalised. G is g and
// c's element type; b_i is the gate's fp32 bias (null: g_i already holds it). Adding the bias
// here spares the gate product a bias pass over M×D bf16 values: cuBLASLt offers no bias
// epilogue for a bf16 output with an fp32 bias, and the separate pass cost 0.89 ms per gate at
// 1 M tokens on the H100 (2026-12-07).
template <typename OutT, typename G, int NRES>
__global__ void __launch_bounds__(kWarps * 32)
residual_rmsnorm_kernel(OutT* __restrict__ y, float* __restrict__ x, const G* __restrict__ g0,
                        const float* __restrict__ b0, const G* __restrict__ c0, const G* __restrict__ g1,
                        const float* __restrict__ b1, const G* __restrict__ c1, const float* __restrict__ w,
                        int64_t M, int64_t D, float eps) {
  const int lane = threadIdx.x & 31;
  const int64_t row = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (row >= M) return;
  float* xr = x + row * D;
  float ss = 0.f;
  for (int64_t i = lane; i < D; i += 32) {
    const int64_t k = row * D + i;
    float v = xr[i];
    v += detail::gated_f(float(c0[k]), b0 ? float(g0[k]) + b0[i] : float(g0[k]));
    if constexpr (NRES == 2) v += detail::gated_f(float(c1[k]), b1 ? float(g1[k]) + b1[i] : float(g1[k]));
    xr[i] = v;
    ss = fmaf(v, v, ss);
  }
  ss = warp_sum(ss);
  const float rs = 1.0f / sqrtf(ss / float(D) + eps);
  OutT* yr = y + row * D;
  // Reads back the values this lane has just written.
  for (int64_t i = lane; i < D; i += 32) detail::store(yr + i, xr[i] * rs * w[i]);
}

template <typename OutT, typename G>
void launch_residual(void* y, float* x, const void* const* g, const float* const* gb, const void* const* c,
                     int nres, const float* w, int64_t M, int64_t D, float eps) {
  const unsigned grid = detail::blocks_for(M, kWarps);
  const G* g0 = static_cast<const G*>(g[0]);
  const G* c0 = static_cast<const G*>(c[0]);
  const float* b0 = gb ? gb[0] : nullptr;
  if (nres == 2) {
    residual_rmsnorm_kernel<OutT, G, 2><<<grid, kWarps * 32>>>(static_cast<OutT*>(y), x, g0, b0, c0,
                                                               static_cast<const G*>(g[1]), gb ? gb[1] : nullptr,
                                                               static_cast<const G*>(c[1]), w, M, D, eps);
  } else {
    residual_rmsnorm_kernel<OutT, G, 1><<<grid, kWarps * 32>>>(static_cast<OutT*>(y), x, g0, b0, c0, nullptr, nullptr,
                                                               nullptr, w, M, D, eps);
  }
  MM_CUDA_LAUNCH_CHECK("residual_rmsnorm_kernel");
}

}  // namespace

void gated_residual_rmsnorm_forward(void* y, DType ydt, float* x, const void* const* g, const float* const* g_bias,
                                    const void* const* c, int nres, DType gdt, const float* w, int64_t M, int64_t D,
                                    float eps) {
  using detail::require;
  require(M > 0 && D > 0, "gated_residual_rmsnorm_forward",
          "sizes must be positive (M=" + std::to_string(M) + ", D=" + std::to_string(D) + ")");
  require(M / kWarps < (int64_t(1) << 31), "gated_residual_rmsnorm_forward", "too many rows");
  require(nres == 1 || nres == 2, "gated_residual_rmsnorm_forward", "one or two gated residuals");
  require(y && x && w && g && c, "gated_residual_rmsnorm_forward", "null pointer");
  for (int i = 0; i < nres; ++i) require(g[i] && c[i], "gated_residual_rmsnorm_forward", "null pointer");
  for (int i = 0; g_bias && i < nres; ++i)
    require(g_bias[i] != nullptr, "gated_residual_rmsnorm_forward", "a null gate bias (pass no bias array instead)");
  require(eps > 0.f, "gated_residual_rmsnorm_forward", "eps must be positive");
  require(ydt == DType::f32 || ydt == DType::bf16, "gated_residual_rmsnorm_forward", "y is f32 or bf16");
  require(gdt == DType::f32 || gdt == DType::bf16, "gated_residual_rmsnorm_forward", "g and c are f32 or bf16");
  if (ydt == DType::f32) {
    if (gdt == DType::f32) launch_residual<float, float>(y, x, g, g_bias, c, nres, w, M, D, eps);
    else launch_residual<float, __nv_bfloat16>(y, x, g, g_bias, c, nres, w, M, D, eps);
  } else {
    if (gdt == DType::f32) launch_residual<__nv_bfloat16, float>(y, x, g, g_bias, c, nres, w, M, D, eps);
    else launch_residual<__nv_bfloat16, __nv_bfloat16>(y, x, g, g_bias, c, nres, w, M, D, eps);
  }
}

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

// ---- backward ----------------------------------------------------------------------------------
// One warp per row (rows strided over the grid), with dw collected per block in shared memory and
// added once per block: dx = r·(dy⊙w) − x·r³·Σ(dy⊙w⊙x)/D, dw += Σ_rows dy⊙x·r.
namespace mm::cuda {

namespace {

constexpr int kMaxBackwardD = 4096;

__device__ __forceinline__ float warp_sum_b(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__global__ void __launch_bounds__(kWarps * 32)
rmsnorm_backward_kernel(float* __restrict__ dx, bool accumulate, float* __restrict__ dw,
                        const float* __restrict__ dy, const float* __restrict__ x,
                        const float* __restrict__ w, int64_t M, int64_t D, float eps) {
  extern __shared__ float dw_part[];  // D
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) dw_part[i] = 0.f;
  __syncthreads();
  const int lane = threadIdx.x & 31;
  for (int64_t row = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5); row < M;
       row += int64_t(gridDim.x) * kWarps) {
    const float* xr = x + row * D;
    const float* dyr = dy + row * D;
    float ss = 0.f, dot = 0.f;
    for (int64_t i = lane; i < D; i += 32) {
      const float v = xr[i];
      ss = fmaf(v, v, ss);
      dot = fmaf(dyr[i] * w[i], v, dot);
    }
    ss = warp_sum_b(ss);
    dot = warp_sum_b(dot);
    const float rs = 1.0f / sqrtf(ss / float(D) + eps);
    const float c = dot * rs * rs * rs / float(D);
    float* dxr = dx + row * D;
    for (int64_t i = lane; i < D; i += 32) {
      const float v = dyr[i] * w[i] * rs - xr[i] * c;
      dxr[i] = accumulate ? dxr[i] + v : v;
      atomicAdd(dw_part + i, dyr[i] * xr[i] * rs);
    }
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) atomicAdd(dw + i, dw_part[i]);
}

}  // namespace

void rmsnorm_backward(float* dx, bool accumulate, float* dw, const float* dy, const float* x,
                      const float* w, int64_t M, int64_t D, float eps) {
  using detail::require;
  require(M > 0 && D > 0 && D <= kMaxBackwardD, "rmsnorm_backward",
          "sizes M=" + std::to_string(M) + ", D=" + std::to_string(D) + " (D at most 4096)");
  require(dx && dw && dy && x && w, "rmsnorm_backward", "null pointer");
  require(eps > 0.f, "rmsnorm_backward", "eps must be positive");
  const unsigned grid = unsigned(std::min<int64_t>((M + kWarps - 1) / kWarps, int64_t(detail::sm_count()) * 8));
  rmsnorm_backward_kernel<<<grid, kWarps * 32, size_t(D) * sizeof(float)>>>(dx, accumulate, dw, dy, x, w, M, D, eps);
  MM_CUDA_LAUNCH_CHECK("rmsnorm_backward_kernel");
}

}  // namespace mm::cuda
