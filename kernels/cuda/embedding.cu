// Token embedding: out (M×D) = table[tokens]. One block row per token, threads over features.
// The table's height is not part of the contract, so a token cannot be range-checked against
// it; a negative token writes NaN (caught by any NaN check downstream) instead of reading
// outside the table.
#include <cmath>

#include "kernels/cuda/backward.hpp"
#include "kernels/cuda/common.cuh"

namespace mm::cuda {

namespace {
__global__ void embedding_kernel(float* __restrict__ out, const int32_t* __restrict__ tokens,
                                 const float* __restrict__ table, int64_t M, int64_t D) {
  const int64_t r = blockIdx.x;
  const int32_t tok = tokens[r];
  float* o = out + r * D;
  if (tok < 0) {
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) o[i] = __int_as_float(0x7fc00000);
    return;
  }
  const float* src = table + int64_t(tok) * D;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) o[i] = src[i];
}
}  // namespace

void embedding_forward(float* out, const int32_t* tokens, const float* table, int64_t M, int64_t D) {
  using detail::require;
  require(M > 0 && D > 0, "embedding_forward",
          "sizes must be positive (M=" + std::to_string(M) + ", D=" + std::to_string(D) + ")");
  require(M < (int64_t(1) << 31), "embedding_forward", "M exceeds 2^31 rows");
  require(out && tokens && table, "embedding_forward", "null pointer");
  const int threads = D >= 256 ? 256 : int((D + 31) / 32 * 32);
  embedding_kernel<<<unsigned(M), threads>>>(out, tokens, table, M, D);
  MM_CUDA_LAUNCH_CHECK("embedding_kernel");
}

}  // namespace mm::cuda

// ---- backward ----------------------------------------------------------------------------------
// The vocabulary is tiny (8) and every row adds to one of its rows: each block sums a slice of
// rows into a V×D table in shared memory (thread i owns feature columns i, i+blockDim, …, so
// there are no conflicts), then adds it to dtable once.
namespace mm::cuda {

namespace {
constexpr int64_t kRowsPerBlock = 256;

__global__ void embedding_backward_kernel(float* __restrict__ dtable, const int32_t* __restrict__ tokens,
                                          const float* __restrict__ dx, int64_t M, int64_t D, int64_t V) {
  extern __shared__ float acc[];  // V×D
  for (int64_t i = threadIdx.x; i < V * D; i += blockDim.x) acc[i] = 0.f;
  __syncthreads();
  const int64_t r0 = int64_t(blockIdx.x) * kRowsPerBlock, r1 = min(M, r0 + kRowsPerBlock);
  for (int64_t r = r0; r < r1; ++r) {
    const int32_t t = tokens[r];
    if (t < 0 || t >= V) continue;
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) acc[t * D + i] += dx[r * D + i];
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < V * D; i += blockDim.x)
    if (acc[i] != 0.f) atomicAdd(dtable + i, acc[i]);
}
}  // namespace

void embedding_backward(float* dtable, const int32_t* tokens, const float* dx, int64_t M, int64_t D,
                        int64_t V) {
  using detail::require;
  require(M > 0 && D > 0 && V > 0, "embedding_backward",
          "sizes must be positive (M=" + std::to_string(M) + ", D=" + std::to_string(D) + ")");
  require(V * D * 4 <= 48 * 1024, "embedding_backward", "V·D too large for the shared-memory table");
  require(dtable && tokens && dx, "embedding_backward", "null pointer");
  const int threads = D >= 256 ? 256 : int((D + 31) / 32 * 32);
  embedding_backward_kernel<<<unsigned((M + kRowsPerBlock - 1) / kRowsPerBlock), threads, size_t(V * D) * 4>>>(
      dtable, tokens, dx, M, D, V);
  MM_CUDA_LAUNCH_CHECK("embedding_backward_kernel");
}

}  // namespace mm::cuda
