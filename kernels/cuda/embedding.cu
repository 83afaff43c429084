// Token embedding: out (M×D) = table[tokens]. One block row per token, threads over features.
// The table's height is not part of the contract, so a token cannot be range-checked against
// it; a negative token writes NaN (caught by any NaN check downstream) instead of reading
// outside the table.
#include <cmath>

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
