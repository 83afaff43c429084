// Causal depthwise conv1d + bias + SiLU. One thread per (channel, run of kSteps time steps):
// the k−1 previous inputs stay in registers as a sliding window. A second kernel, one thread
// per (batch, channel), rewrites the tail to the piece's last k−1 inputs (reaching into the
// old tail when the piece is shorter than k−1); it runs after the first on the same stream.
#include "kernels/cuda/backward.hpp"
#include "kernels/cuda/common.cuh"

namespace mm::cuda {

namespace {

constexpr int kThreads = 128;  // channels per block
constexpr int kSteps = 16;     // time steps per thread
constexpr int kMaxK = 8;

// V consecutive channels per thread (1 or 2), loaded and stored together: a warp then moves
// 32·V elements per row and instruction.
template <int V, typename T> struct Vec;
template <> struct Vec<1, float> {
  static __device__ __forceinline__ void load(float* v, const float* p) { v[0] = __ldg(p); }
  static __device__ __forceinline__ void store(float* p, const float* v) { p[0] = v[0]; }
};
template <> struct Vec<2, float> {
  static __device__ __forceinline__ void load(float* v, const float* p) {
    const float2 x = __ldg(reinterpret_cast<const float2*>(p));
    v[0] = x.x;
    v[1] = x.y;
  }
  static __device__ __forceinline__ void store(float* p, const float* v) {
    *reinterpret_cast<float2*>(p) = make_float2(v[0], v[1]);
  }
};
template <> struct Vec<1, __nv_bfloat16> {
  static __device__ __forceinline__ void load(float* v, const __nv_bfloat16* p) { v[0] = detail::load_f32(p); }
  static __device__ __forceinline__ void store(__nv_bfloat16* p, const float* v) { *p = __float2bfloat16_rn(v[0]); }
};
template <> struct Vec<2, __nv_bfloat16> {
  static __device__ __forceinline__ void load(float* v, const __nv_bfloat16* p) {
    const float2 x = __bfloat1622float2(__ldg(reinterpret_cast<const __nv_bfloat162*>(p)));
    v[0] = x.x;
    v[1] = x.y;
  }
  static __device__ __forceinline__ void store(__nv_bfloat16* p, const float* v) {
    *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(v[0], v[1]);
  }
};

// The input a is in the output's dtype (bf16 on the fast path: in_proj writes bf16).
template <int K, int V, typename OutT>
__global__ void __launch_bounds__(kThreads)
conv1d_silu_kernel(OutT* __restrict__ out, float* __restrict__ out_f32,
                   const float* __restrict__ tail, const OutT* __restrict__ a, int64_t lda,
                   const float* __restrict__ w, const float* __restrict__ bias, int64_t T,
                   int64_t E, int64_t n_tblk, int64_t n_eblk) {
  int64_t blk = blockIdx.x;
  const int64_t eb = blk % n_eblk;
  blk /= n_eblk;
  const int64_t tb = blk % n_tblk;
  const int64_t b = blk / n_tblk;
  const int64_t e = (eb * kThreads + threadIdx.x) * V;
  if (e >= E) return;
  const int64_t t0 = tb * kSteps;
  const int64_t t1 = min(T, t0 + kSteps);
  float wk[V][K], bs[V];
#pragma unroll
  for (int c = 0; c < V; ++c) {
#pragma unroll
    for (int i = 0; i < K; ++i) wk[c][i] = w[(e + c) * K + i];
    bs[c] = bias[e + c];
  }
  float win[K][V];
#pragma unroll
  for (int i = 0; i < K - 1; ++i) {
    const int64_t s = t0 - (K - 1) + i;
    if (s >= 0) {
      Vec<V, OutT>::load(win[i], a + (b * T + s) * lda + e);
    } else {
#pragma unroll
      for (int c = 0; c < V; ++c) win[i][c] = tail[(b * (K - 1) + (K - 1 + s)) * E + e + c];
    }
  }
#pragma unroll 4
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t row = b * T + t;
    Vec<V, OutT>::load(win[K - 1], a + row * lda + e);
    float v[V];
#pragma unroll
    for (int c = 0; c < V; ++c) {
      float acc = bs[c];
#pragma unroll
      for (int i = 0; i < K; ++i) acc = fmaf(wk[c][i], win[i][c], acc);
      v[c] = detail::silu_f(acc);
    }
    Vec<V, OutT>::store(out + row * E + e, v);
    if (out_f32) Vec<V, float>::store(out_f32 + row * E + e, v);
#pragma unroll
    for (int i = 0; i < K - 1; ++i)
#pragma unroll
      for (int c = 0; c < V; ++c) win[i][c] = win[i + 1][c];
  }
}

template <int K, typename InT>
__global__ void conv1d_tail_kernel(float* __restrict__ tail, const InT* __restrict__ a,
                                   int64_t lda, int64_t B, int64_t T, int64_t E) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= B * E) return;
  const int64_t b = i / E, e = i % E;
  float v[K > 1 ? K - 1 : 1];
#pragma unroll
  for (int j = 0; j < K - 1; ++j) {
    const int64_t s = T - (K - 1) + j;
    v[j] = s >= 0 ? float(a[(b * T + s) * lda + e]) : tail[(b * (K - 1) + (K - 1 + s)) * E + e];
  }
#pragma unroll
  for (int j = 0; j < K - 1; ++j) tail[(b * (K - 1) + j) * E + e] = v[j];
}

template <int K, typename OutT>
void launch(void* out, float* out_f32, float* tail, const void* a, int64_t lda, const float* w,
            const float* bias, int64_t B, int64_t T, int64_t E) {
  // Two channels per thread where every row of a, out and out_f32 starts on a pair boundary.
  auto aligned = [](const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; };
  const bool pairs = E % 2 == 0 && lda % 2 == 0 && aligned(a, 2 * sizeof(OutT)) && aligned(out, 2 * sizeof(OutT)) &&
                     aligned(out_f32, 2 * sizeof(float));
  const int V = pairs ? 2 : 1;
  const int64_t n_tblk = (T + kSteps - 1) / kSteps, n_eblk = (E + kThreads * V - 1) / (kThreads * V);
  const int64_t blocks = B * n_tblk * n_eblk;
  detail::require(blocks < (int64_t(1) << 31), "conv1d_silu_forward", "too large (B·T·E)");
  if (pairs)
    conv1d_silu_kernel<K, 2, OutT><<<unsigned(blocks), kThreads>>>(
        static_cast<OutT*>(out), out_f32, tail, static_cast<const OutT*>(a), lda, w, bias, T, E, n_tblk, n_eblk);
  else
    conv1d_silu_kernel<K, 1, OutT><<<unsigned(blocks), kThreads>>>(
        static_cast<OutT*>(out), out_f32, tail, static_cast<const OutT*>(a), lda, w, bias, T, E, n_tblk, n_eblk);
  MM_CUDA_LAUNCH_CHECK("conv1d_silu_kernel");
  if (K > 1) {
    conv1d_tail_kernel<K, OutT><<<detail::blocks_for(B * E, 256), 256>>>(tail, static_cast<const OutT*>(a), lda, B, T, E);
    MM_CUDA_LAUNCH_CHECK("conv1d_tail_kernel");
  }
}

template <int K>
void dispatch_dtype(void* out, DType odt, float* out_f32, float* tail, const void* a, int64_t lda,
                    const float* w, const float* bias, int64_t B, int64_t T, int64_t E) {
  if (odt == DType::tf32) throw Error("conv1d: activations are written as f32 or bf16, not tf32");
  if (odt == DType::f32) launch<K, float>(out, out_f32, tail, a, lda, w, bias, B, T, E);
  else launch<K, __nv_bfloat16>(out, out_f32, tail, a, lda, w, bias, B, T, E);
}

}  // namespace

void conv1d_silu_forward(void* out, DType odt, float* out_f32, float* tail, const void* a,
                         int64_t lda, const float* w, const float* bias, int64_t B, int64_t T,
                         int64_t E, int64_t k) {
  using detail::require;
  require(B > 0 && T > 0 && E > 0, "conv1d_silu_forward",
          "sizes must be positive (B=" + std::to_string(B) + ", T=" + std::to_string(T) +
              ", E=" + std::to_string(E) + ")");
  require(k >= 1 && k <= kMaxK, "conv1d_silu_forward",
          "conv width k=" + std::to_string(k) + " not supported (1.." + std::to_string(kMaxK) + ")");
  require(lda >= E, "conv1d_silu_forward", "lda " + std::to_string(lda) + " < E " + std::to_string(E));
  require(out && a && w && bias, "conv1d_silu_forward", "null pointer");
  require(k == 1 || tail, "conv1d_silu_forward", "tail is required when k > 1");
  switch (k) {
    case 1: return dispatch_dtype<1>(out, odt, out_f32, tail, a, lda, w, bias, B, T, E);
    case 2: return dispatch_dtype<2>(out, odt, out_f32, tail, a, lda, w, bias, B, T, E);
    case 3: return dispatch_dtype<3>(out, odt, out_f32, tail, a, lda, w, bias, B, T, E);
    case 4: return dispatch_dtype<4>(out, odt, out_f32, tail, a, lda, w, bias, B, T, E);
    case 5: return dispatch_dtype<5>(out, odt, out_f32, tail, a, lda, w, bias, B, T, E);
    case 6: return dispatch_dtype<6>(out, odt, out_f32, tail, a, lda, w, bias, B, T, E);
    case 7: return dispatch_dtype<7>(out, odt, out_f32, tail, a, lda, w, bias, B, T, E);
    case 8: return dispatch_dtype<8>(out, odt, out_f32, tail, a, lda, w, bias, B, T, E);
  }
}

}  // namespace mm::cuda

// ---- backward ----------------------------------------------------------------------------------
// From a zero tail. pre_t = bias + Σ_i w_i a_{t−(k−1)+i}, out_t = SiLU(pre_t). One thread per
// (channel, run of kBackSteps steps): dpre over the run and the k−1 steps after it (recomputed
// from a), then da_s = Σ_i w_i dpre_{s+(k−1)−i}; dw and dbias are summed over the run and added
// once per thread.
namespace mm::cuda {

namespace {

constexpr int kBackSteps = 64;

template <int K>
__global__ void __launch_bounds__(kThreads)
conv1d_silu_backward_kernel(float* __restrict__ da, int64_t ldda, float* __restrict__ dw,
                            float* __restrict__ dbias, const float* __restrict__ dout,
                            const float* __restrict__ a, int64_t lda, const float* __restrict__ w,
                            const float* __restrict__ bias, int64_t T, int64_t E, int64_t n_tblk,
                            int64_t n_eblk) {
  int64_t blk = blockIdx.x;
  const int64_t eb = blk % n_eblk;
  blk /= n_eblk;
  const int64_t tb = blk % n_tblk;
  const int64_t b = blk / n_tblk;
  const int64_t e = eb * kThreads + threadIdx.x;
  if (e >= E) return;
  const int64_t t0 = tb * kBackSteps, t1 = min(T, t0 + kBackSteps);
  float wk[K];
#pragma unroll
  for (int i = 0; i < K; ++i) wk[i] = w[e * K + i];
  const float bs = bias[e];
  auto in = [&](int64_t s) { return s >= 0 && s < T ? a[(b * T + s) * lda + e] : 0.0f; };
  // dpre at time t (0 outside [0, T)), recomputing pre from the inputs.
  auto dpre_at = [&](int64_t t) {
    if (t >= T) return 0.0f;
    float acc = bs;
#pragma unroll
    for (int i = 0; i < K; ++i) acc = fmaf(wk[i], in(t - (K - 1) + i), acc);
    const float sg = 1.0f / (1.0f + __expf(-acc));
    return dout[(b * T + t) * E + e] * sg * (1.0f + acc * (1.0f - sg));
  };
  // Window of dpre_{s}, …, dpre_{s+K−1} for the current s, sliding forward.
  float win[K];
#pragma unroll
  for (int i = 0; i < K; ++i) win[i] = dpre_at(t0 + i);
  float gw[K], gb = 0.f;
#pragma unroll
  for (int i = 0; i < K; ++i) gw[i] = 0.f;
  for (int64_t s = t0; s < t1; ++s) {
    // da_s: input s feeds pre_{s+(K−1)−i} through w_i.
    float acc = 0.f;
#pragma unroll
    for (int i = 0; i < K; ++i) acc = fmaf(wk[i], win[K - 1 - i], acc);
    da[(b * T + s) * ldda + e] = acc;
    // dw, dbias from pre_s (= win[0]).
    const float d = win[0];
    gb += d;
#pragma unroll
    for (int i = 0; i < K; ++i) gw[i] = fmaf(d, in(s - (K - 1) + i), gw[i]);
#pragma unroll
    for (int i = 0; i < K - 1; ++i) win[i] = win[i + 1];
    win[K - 1] = dpre_at(s + K);
  }
#pragma unroll
  for (int i = 0; i < K; ++i) atomicAdd(dw + e * K + i, gw[i]);
  atomicAdd(dbias + e, gb);
}

template <int K>
void launch_backward(float* da, int64_t ldda, float* dw, float* dbias, const float* dout, const float* a,
                     int64_t lda, const float* w, const float* bias, int64_t B, int64_t T, int64_t E) {
  const int64_t n_tblk = (T + kBackSteps - 1) / kBackSteps, n_eblk = (E + kThreads - 1) / kThreads;
  const int64_t blocks = B * n_tblk * n_eblk;
  detail::require(blocks < (int64_t(1) << 31), "conv1d_silu_backward", "too large (B·T·E)");
  conv1d_silu_backward_kernel<K><<<unsigned(blocks), kThreads>>>(da, ldda, dw, dbias, dout, a, lda, w, bias,
                                                                 T, E, n_tblk, n_eblk);
  MM_CUDA_LAUNCH_CHECK("conv1d_silu_backward_kernel");
}

}  // namespace

void conv1d_silu_backward(float* da, int64_t ldda, float* dw, float* dbias, const float* dout,
                          const float* a, int64_t lda, const float* w, const float* bias,
                          int64_t B, int64_t T, int64_t E, int64_t k) {
  using detail::require;
  require(B > 0 && T > 0 && E > 0, "conv1d_silu_backward",
          "sizes must be positive (B=" + std::to_string(B) + ", T=" + std::to_string(T) +
              ", E=" + std::to_string(E) + ")");
  require(k >= 1 && k <= kMaxK, "conv1d_silu_backward",
          "conv width k=" + std::to_string(k) + " not supported (1.." + std::to_string(kMaxK) + ")");
  require(lda >= E && ldda >= E, "conv1d_silu_backward", "row stride smaller than E");
  require(da && dw && dbias && dout && a && w && bias, "conv1d_silu_backward", "null pointer");
  switch (k) {
    case 1: return launch_backward<1>(da, ldda, dw, dbias, dout, a, lda, w, bias, B, T, E);
    case 2: return launch_backward<2>(da, ldda, dw, dbias, dout, a, lda, w, bias, B, T, E);
    case 3: return launch_backward<3>(da, ldda, dw, dbias, dout, a, lda, w, bias, B, T, E);
    case 4: return launch_backward<4>(da, ldda, dw, dbias, dout, a, lda, w, bias, B, T, E);
    case 5: return launch_backward<5>(da, ldda, dw, dbias, dout, a, lda, w, bias, B, T, E);
    case 6: return launch_backward<6>(da, ldda, dw, dbias, dout, a, lda, w, bias, B, T, E);
    case 7: return launch_backward<7>(da, ldda, dw, dbias, dout, a, lda, w, bias, B, T, E);
    case 8: return launch_backward<8>(da, ldda, dw, dbias, dout, a, lda, w, bias, B, T, E);
  }
}

}  // namespace mm::cuda
