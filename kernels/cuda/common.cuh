// Shared by the CUDA ops: error checks that throw mm::Error, argument checks, bf16 stores,
// fast math helpers. Every op runs on the legacy default stream (stream 0).
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "io/error.hpp"
#include "kernels/cuda/ops.hpp"

namespace mm::cuda::detail {

[[noreturn]] inline void cuda_fail(const char* call, cudaError_t err, const char* file, int line) {
  throw mm::Error(std::string("CUDA: ") + call + " failed: " + cudaGetErrorName(err) + ": " +
                  cudaGetErrorString(err) + " (" + file + ":" + std::to_string(line) + ")");
}

// Argument check of a launcher: throws rather than compute a wrong answer.
inline void require(bool ok, const char* op, const std::string& what) {
  if (!ok) throw mm::Error(std::string("mm::cuda::") + op + ": " + what);
}

inline unsigned blocks_for(int64_t n, int threads) {
  return static_cast<unsigned>((n + threads - 1) / threads);
}

int sm_count();  // multiprocessors of the current device (cached)

}  // namespace mm::cuda::detail

#define MM_CUDA_CHECK(call)                                                                \
  do {                                                                                     \
    cudaError_t mm_err_ = (call);                                                          \
    if (mm_err_ != cudaSuccess) ::mm::cuda::detail::cuda_fail(#call, mm_err_, __FILE__, __LINE__); \
  } while (0)

// After every kernel launch: launch-configuration errors (and earlier asynchronous ones).
#define MM_CUDA_LAUNCH_CHECK(kernel_name)                                                  \
  do {                                                                                     \
    cudaError_t mm_err_ = cudaGetLastError();                                              \
    if (mm_err_ != cudaSuccess)                                                            \
      ::mm::cuda::detail::cuda_fail("launch of " kernel_name, mm_err_, __FILE__, __LINE__);  \
  } while (0)

namespace mm::cuda::detail {

// Stores an fp32 value as the output dtype (bf16: round to nearest even).
template <typename OutT> __device__ __forceinline__ void store(OutT* p, float v);
template <> __device__ __forceinline__ void store<float>(float* p, float v) { *p = v; }
template <> __device__ __forceinline__ void store<__nv_bfloat16>(__nv_bfloat16* p, float v) {
  *p = __float2bfloat16_rn(v);
}

// A load through the read-only data path (ld.global.nc), as fp32: for inputs that no kernel
// writes while the reading kernel runs, of either element type.
__device__ __forceinline__ float load_f32(const float* p) { return __ldg(p); }
__device__ __forceinline__ float load_f32(const __nv_bfloat16* p) {
  return __bfloat162float(__ushort_as_bfloat16(__ldg(reinterpret_cast<const unsigned short*>(p))));
}

// 2^x through the SFU (ex2.approx, ~2 ulp; flushes denormals).
__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ float sigmoid_f(float x) { return 1.0f / (1.0f + __expf(-x)); }
__device__ __forceinline__ float silu_f(float x) { return x / (1.0f + __expf(-x)); }
// A note read's gated residual term σ(g)·c, as one division (the form every kernel adds).
__device__ __forceinline__ float gated_f(float c, float g) { return c / (1.0f + __expf(-g)); }
// PyTorch's softplus (beta 1, threshold 20).
__device__ __forceinline__ float softplus_f(float x) { return x > 20.0f ? x : log1pf(__expf(x)); }

}  // namespace mm::cuda::detail
