// linear_forward through cuBLASLt. Row-major out (M×O) = in (M×I) · Wᵀ is, in cuBLAS's
// column-major terms, outᵀ (O×M, ld ld_out) = op_T(W as I×O, ld I) · inᵀ (I×M, ld ld_in).
// fp32 inputs: A/B/C/D fp32 with CUBLAS_COMPUTE_32F (no TF32) — the parity path.
// bf16 inputs: A/B bf16, C/D fp32 or bf16 (out_dt), CUBLAS_COMPUTE_32F. Bias through CUBLASLT_EPILOGUE_BIAS
// (falls back to a separate add when no algorithm takes it); accumulate: beta = 1.
// The handle, a 32 MiB workspace and the chosen algorithm per shape are cached. Shapes whose
// alignment cuBLASLt takes no algorithm for (e.g. odd bf16 row strides) go to cublasGemmEx.
#include <cublasLt.h>
#include <cublas_v2.h>

#include <map>
#include <mutex>
#include <tuple>

#include "kernels/cuda/backward.hpp"
#include "kernels/cuda/common.cuh"

#define MM_CUBLAS_CHECK(call)                                                               \
  do {                                                                                      \
    cublasStatus_t mm_st_ = (call);                                                         \
    if (mm_st_ != CUBLAS_STATUS_SUCCESS)                                                    \
      throw mm::Error(std::string("cuBLASLt: ") + #call + " failed: " +                      \
                      cublasGetStatusName(mm_st_) + ": " + cublasGetStatusString(mm_st_));   \
  } while (0)

namespace mm::cuda {

namespace {

constexpr size_t kWorkspace = size_t(32) << 20;

struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool bias_epilogue = false;
  bool lt = true;  // false: cuBLAS's cublasGemmEx (any alignment), when cuBLASLt has no algorithm
};

using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int, int, int, int, int, int, int>;

struct Lt {
  cublasLtHandle_t handle = nullptr;
  cublasHandle_t blas = nullptr;  // created on first use by the fallback
  void* workspace = nullptr;
  std::mutex mu;
  std::map<Key, Plan> plans;
  Lt() {
    MM_CUBLAS_CHECK(cublasLtCreate(&handle));
    workspace = device_alloc(kWorkspace);
  }
  // Process-lifetime singleton: never destroyed (the CUDA context may already be gone at exit).
};

Lt& lt() {
  static Lt* l = new Lt();
  return *l;
}

int alignment_of(const void* p, int64_t ld, size_t elem) {
  const uintptr_t v = reinterpret_cast<uintptr_t>(p) | uintptr_t(ld * int64_t(elem));
  int a = 256;
  while (a > 1 && (v % uintptr_t(a)) != 0) a /= 2;
  return a;
}

// Builds the descriptors and asks the heuristic for an algorithm; false when none fits.
bool make_plan(Lt& l, Plan& p, int64_t M, int64_t I, int64_t O, int64_t ld_in, int64_t ld_out,
               DType dt, DType out_dt, bool bias, int al_in, int al_w, int al_out, int al_bias) {
  const cudaDataType_t ab = dt == DType::bf16 ? CUDA_R_16BF : CUDA_R_32F;
  const cudaDataType_t cd = out_dt == DType::bf16 ? CUDA_R_16BF : CUDA_R_32F;
  const cublasComputeType_t compute = dt == DType::tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  MM_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.op, compute, CUDA_R_32F));
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  MM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
  MM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
  if (bias) {
    const cublasLtEpilogue_t ep = CUBLASLT_EPILOGUE_BIAS;
    const cudaDataType_t bt = CUDA_R_32F;
    MM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep));
    MM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt));
  }
  MM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, ab, uint64_t(I), uint64_t(O), I));
  MM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, ab, uint64_t(I), uint64_t(M), ld_in));
  MM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.c, cd, uint64_t(O), uint64_t(M), ld_out));

  cublasLtMatmulPreference_t pref = nullptr;
  MM_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = kWorkspace;
  const uint32_t a_al = uint32_t(al_w), b_al = uint32_t(al_in), c_al = uint32_t(al_out);
  MM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
  MM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &a_al, sizeof a_al));
  MM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &b_al, sizeof b_al));
  MM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &c_al, sizeof c_al));
  MM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &c_al, sizeof c_al));
  (void)al_bias;
  cublasLtMatmulHeuristicResult_t res{};
  int found = 0;
  cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(l.handle, p.op, p.a, p.b, p.c, p.c, pref, 1, &res, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || found == 0) {
    cublasLtMatrixLayoutDestroy(p.a);
    cublasLtMatrixLayoutDestroy(p.b);
    cublasLtMatrixLayoutDestroy(p.c);
    cublasLtMatmulDescDestroy(p.op);
    p = Plan{};
    return false;
  }
  p.algo = res.algo;
  p.bias_epilogue = bias;
  return true;
}

template <typename OutT>
__global__ void add_bias_kernel(OutT* __restrict__ out, int64_t ld, const float* __restrict__ bias,
                                int64_t M, int64_t O) {
  const int64_t n = M * O;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / O, c = i % O;
    detail::store(out + r * ld + c, float(out[r * ld + c]) + bias[c]);
  }
}

}  // namespace

void linear_forward(void* out, int64_t ld_out, const void* in, int64_t ld_in, const void* W,
                    const float* bias, int64_t M, int64_t I, int64_t O, DType dtype, bool accumulate,
                    DType out_dt) {
  using detail::require;
  require(M > 0 && I > 0 && O > 0, "linear_forward",
          "sizes must be positive (M=" + std::to_string(M) + ", I=" + std::to_string(I) +
              ", O=" + std::to_string(O) + ")");
  require(ld_in >= I, "linear_forward", "ld_in " + std::to_string(ld_in) + " < I " + std::to_string(I));
  require(ld_out >= O, "linear_forward", "ld_out " + std::to_string(ld_out) + " < O " + std::to_string(O));
  require(out && in && W, "linear_forward", "null pointer");
  require(out_dt == DType::f32 || (out_dt == DType::bf16 && dtype == DType::bf16), "linear_forward",
          "the output is f32, or bf16 for bf16 inputs");
  require(M < (int64_t(1) << 31) && ld_in < (int64_t(1) << 31) && ld_out < (int64_t(1) << 31),
          "linear_forward", "a dimension exceeds 2^31");
  const size_t eb = dtype_bytes(dtype);
  const int al_in = alignment_of(in, ld_in, eb), al_w = alignment_of(W, I, eb);
  const int al_out = alignment_of(out, ld_out, dtype_bytes(out_dt)), al_bias = bias ? alignment_of(bias, 0, 4) : 256;

  Lt& l = lt();
  std::lock_guard<std::mutex> lk(l.mu);
  const Key key{M, I, O, ld_in, ld_out, int(dtype), int(out_dt), bias ? 1 : 0, al_in, al_w, al_out, al_bias};
  auto it = l.plans.find(key);
  if (it == l.plans.end()) {
    Plan p;
    bool ok = make_plan(l, p, M, I, O, ld_in, ld_out, dtype, out_dt, bias != nullptr, al_in, al_w, al_out, al_bias);
    if (!ok && bias) ok = make_plan(l, p, M, I, O, ld_in, ld_out, dtype, out_dt, false, al_in, al_w, al_out, al_bias);
    if (!ok) p.lt = false;
    it = l.plans.emplace(key, p).first;
  }
  const Plan& p = it->second;
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  if (p.lt) {
    if (p.bias_epilogue)
      MM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    MM_CUBLAS_CHECK(cublasLtMatmul(l.handle, p.op, &alpha, W, p.a, in, p.b, &beta, out, p.c, out, p.c,
                                   &p.algo, l.workspace, kWorkspace, 0));
  } else {
    if (!l.blas) {
      MM_CUBLAS_CHECK(cublasCreate(&l.blas));
      MM_CUBLAS_CHECK(cublasSetStream(l.blas, 0));
      MM_CUBLAS_CHECK(cublasSetMathMode(l.blas, CUBLAS_PEDANTIC_MATH));  // no TF32 for fp32
    }
    const cudaDataType_t ab = dtype == DType::bf16 ? CUDA_R_16BF : CUDA_R_32F;
    MM_CUBLAS_CHECK(cublasGemmEx(l.blas, CUBLAS_OP_T, CUBLAS_OP_N, int(O), int(M), int(I), &alpha, W, ab,
                                 int(I), in, ab, int(ld_in), &beta, out,
                                 out_dt == DType::bf16 ? CUDA_R_16BF : CUDA_R_32F, int(ld_out),
                                 dtype == DType::tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F,
                                 CUBLAS_GEMM_DEFAULT));
  }
  if (bias && !p.bias_epilogue) {
    const int64_t n = M * O;
    const unsigned grid = unsigned(std::min<int64_t>((n + 255) / 256, 65535));
    if (out_dt == DType::bf16)
      add_bias_kernel<<<grid, 256>>>(static_cast<__nv_bfloat16*>(out), ld_out, bias, M, O);
    else
      add_bias_kernel<<<grid, 256>>>(static_cast<float*>(out), ld_out, bias, M, O);
    MM_CUDA_LAUNCH_CHECK("add_bias_kernel");
  }
}

}  // namespace mm::cuda

// ---- the general product and the linear backward -----------------------------------------------
namespace mm::cuda {

namespace {

// Row-major C (M×N) = op(A)·op(B) is, column-major, Cᵀ (N×M) = op(B)ᵀ·op(A)ᵀ: cuBLAS's first
// operand is B (stored column-major as Bᵀ, so "no transpose" in row-major terms stays N), its
// second is A.
using GemmKey = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, int, int, int, int, int>;

struct GemmPlan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool lt = false;
};

std::map<GemmKey, GemmPlan>& gemm_plans() {
  static auto* m = new std::map<GemmKey, GemmPlan>();
  return *m;
}

bool make_gemm_plan(Lt& l, GemmPlan& p, int64_t M, int64_t N, int64_t K, int64_t lda, bool ta,
                    int64_t ldb, bool tb, int64_t ldc, DType dt, int al_a, int al_b, int al_c) {
  const cublasComputeType_t compute = dt == DType::tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  MM_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.op, compute, CUDA_R_32F));
  const cublasOperation_t opa = tb ? CUBLAS_OP_T : CUBLAS_OP_N, opb = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  MM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
  MM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
  // Stored shapes in column-major terms: B is N×K (or K×N when transposed), A is K×M (or M×K).
  MM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_32F, uint64_t(tb ? K : N), uint64_t(tb ? N : K), ldb));
  MM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_32F, uint64_t(ta ? M : K), uint64_t(ta ? K : M), lda));
  MM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.c, CUDA_R_32F, uint64_t(N), uint64_t(M), ldc));
  cublasLtMatmulPreference_t pref = nullptr;
  MM_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = kWorkspace;
  const uint32_t a_al = uint32_t(al_b), b_al = uint32_t(al_a), c_al = uint32_t(al_c);
  MM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
  MM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &a_al, sizeof a_al));
  MM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &b_al, sizeof b_al));
  MM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &c_al, sizeof c_al));
  MM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &c_al, sizeof c_al));
  cublasLtMatmulHeuristicResult_t res{};
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(l.handle, p.op, p.a, p.b, p.c, p.c, pref, 1, &res, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || found == 0) {
    cublasLtMatrixLayoutDestroy(p.a);
    cublasLtMatrixLayoutDestroy(p.b);
    cublasLtMatrixLayoutDestroy(p.c);
    cublasLtMatmulDescDestroy(p.op);
    p = GemmPlan{};
    return false;
  }
  p.algo = res.algo;
  p.lt = true;
  return true;
}

// db[o] += Σ_r dY[r·ld + o]: 32 columns × 8 row lanes per block, a slice of rows per block.
__global__ void column_sum_kernel(float* __restrict__ db, const float* __restrict__ dY, int64_t ld,
                                  int64_t M, int64_t O, int64_t rows_per_block) {
  __shared__ float part[8][33];
  const int64_t col = int64_t(blockIdx.x) * 32 + threadIdx.x;
  const int64_t r0 = int64_t(blockIdx.y) * rows_per_block, r1 = min(M, r0 + rows_per_block);
  float acc = 0.f;
  if (col < O)
    for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) acc += dY[r * ld + col];
  part[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && col < O) {
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) s += part[i][threadIdx.x];
    atomicAdd(db + col, s);
  }
}


}  // namespace

void gemm(float* C, int64_t ldc, const float* A, int64_t lda, bool transA, const float* B,
          int64_t ldb, bool transB, int64_t M, int64_t N, int64_t K, DType dt, float beta) {
  using detail::require;
  require(M > 0 && N > 0 && K > 0, "gemm",
          "sizes must be positive (M=" + std::to_string(M) + ", N=" + std::to_string(N) +
              ", K=" + std::to_string(K) + ")");
  require(dt == DType::f32 || dt == DType::tf32, "gemm", "fp32 operands only (f32 or tf32)");
  require(ldc >= N, "gemm", "ldc " + std::to_string(ldc) + " < N " + std::to_string(N));
  require(lda >= (transA ? M : K), "gemm", "lda " + std::to_string(lda) + " too small");
  require(ldb >= (transB ? K : N), "gemm", "ldb " + std::to_string(ldb) + " too small");
  require(C && A && B, "gemm", "null pointer");
  require(M < (int64_t(1) << 31) && N < (int64_t(1) << 31) && K < (int64_t(1) << 31) &&
              lda < (int64_t(1) << 31) && ldb < (int64_t(1) << 31) && ldc < (int64_t(1) << 31),
          "gemm", "a dimension exceeds 2^31");
  const int al_a = alignment_of(A, lda, 4), al_b = alignment_of(B, ldb, 4), al_c = alignment_of(C, ldc, 4);
  Lt& l = lt();
  std::lock_guard<std::mutex> lk(l.mu);
  const GemmKey key{M, N, K, lda, ldb, ldc, (transA ? 1 : 0) | (transB ? 2 : 0), int(dt), al_a, al_b, al_c, 0};
  auto& plans = gemm_plans();
  auto it = plans.find(key);
  if (it == plans.end()) {
    GemmPlan p;
    make_gemm_plan(l, p, M, N, K, lda, transA, ldb, transB, ldc, dt, al_a, al_b, al_c);
    it = plans.emplace(key, p).first;
  }
  const GemmPlan& p = it->second;
  const float alpha = 1.0f;
  if (p.lt) {
    MM_CUBLAS_CHECK(cublasLtMatmul(l.handle, p.op, &alpha, B, p.a, A, p.b, &beta, C, p.c, C, p.c, &p.algo,
                                   l.workspace, kWorkspace, 0));
    return;
  }
  if (!l.blas) {
    MM_CUBLAS_CHECK(cublasCreate(&l.blas));
    MM_CUBLAS_CHECK(cublasSetStream(l.blas, 0));
    MM_CUBLAS_CHECK(cublasSetMathMode(l.blas, CUBLAS_PEDANTIC_MATH));
  }
  MM_CUBLAS_CHECK(cublasGemmEx(l.blas, transB ? CUBLAS_OP_T : CUBLAS_OP_N, transA ? CUBLAS_OP_T : CUBLAS_OP_N,
                               int(N), int(M), int(K), &alpha, B, CUDA_R_32F, int(ldb), A, CUDA_R_32F, int(lda),
                               &beta, C, CUDA_R_32F, int(ldc),
                               dt == DType::tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F,
                               CUBLAS_GEMM_DEFAULT));
}

void linear_backward(float* dX, int64_t ld_dx, bool accumulate_dx, float* dW, float* db,
                     const float* dY, int64_t ld_dy, const float* X, int64_t ld_x, const float* W,
                     int64_t M, int64_t I, int64_t O, DType dt) {
  using detail::require;
  require(M > 0 && I > 0 && O > 0, "linear_backward",
          "sizes must be positive (M=" + std::to_string(M) + ", I=" + std::to_string(I) +
              ", O=" + std::to_string(O) + ")");
  require(dY && X && W && dW, "linear_backward", "null pointer");
  require(ld_dy >= O && ld_x >= I && (!dX || ld_dx >= I), "linear_backward", "row stride smaller than the row");
  if (dX) gemm(dX, ld_dx, dY, ld_dy, false, W, I, false, M, I, O, dt, accumulate_dx ? 1.0f : 0.0f);  // M×O · O×I
  gemm(dW, I, dY, ld_dy, true, X, ld_x, false, O, I, M, dt, 1.0f);                                // O×M · M×I
  if (db) {
    const int64_t rows_per_block = 2048;
    const dim3 grid(unsigned((O + 31) / 32), unsigned((M + rows_per_block - 1) / rows_per_block));
    column_sum_kernel<<<grid, dim3(32, 8)>>>(db, dY, ld_dy, M, O, rows_per_block);
    MM_CUDA_LAUNCH_CHECK("column_sum_kernel");
  }
}


}  // namespace mm::cuda
