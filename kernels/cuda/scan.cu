// The fused selective scan (Mamba-1 forward) with Δ = softplus(dt) and the SiLU(z) gate fused:
//   h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t B_t u_t,  out_t = (C_t·h_t + D u_t) ⊙ SiLU(z_t).
// One thread per channel e holds its N states in registers (N is a template parameter).
// Time is split into chunks so that batch 1 fills the GPU:
//   pass 1: each (chunk, channel) runs from a zero state: its local final state and ΣΔ
//           (the chunk's total decay is exp(A·ΣΔ));
//   pass 2: one thread per (batch, channel, state) carries the true state across the chunks
//           sequentially, leaving each chunk's start state in place of its local final state;
//   pass 3: each chunk reruns from its true start state, writes out, and the last chunk
//           writes the state after the piece back to h.
// With a single chunk only pass 3 runs. B_t and C_t (shared by all channels) are staged
// through shared memory in tiles of kTile steps. exp is ex2.approx with log2(e) folded into A.
// u, dt and z stay fp32: a bf16 z (half its bytes) measured slower on the H100 (10.3 against
// 8.4 ms at E = 512, N = 16, L = 2^20, 2026-12-07): pass 3 then stalls longer on its loads.
// Fusing dt_proj into both passes (a rank-16 dot product per step, Δ never written) measured no
// gain either: the passes grew by 0.8-0.9 ms at 2^20, what the product they replace costs.
#include <algorithm>
#include <cstdlib>
#include <mutex>

#include "kernels/cuda/common.cuh"

namespace mm::cuda {

namespace {

constexpr int kThreads = 128;   // channels per block
constexpr int kTile = 32;       // time steps of B/C staged in shared memory
constexpr int kGroup = 8;       // time steps whose u/dt/z loads are issued together
constexpr int64_t kMinChunk = 256;
constexpr float kLog2e = 1.4426950408889634f;

// 2^x for x <= 0 on the FMA pipe (degree-5 minimax on [-0.5, 0.5], rel. error < 1e-7): the
// scan is bound by the SFU's exponentials, so every P-th state's decay is computed here instead.
__device__ __forceinline__ float ex2_poly(float x) {
  x = fmaxf(x, -125.0f);
  const float t = x + 12582912.0f;  // 1.5·2^23: rounds x to the nearest integer j in t's low bits
  const float j = t - 12582912.0f;
  const float f = x - j;  // [-0.5, 0.5]
  float p = 1.3276356039568782e-3f;
  p = fmaf(p, f, 9.675508365035057e-3f);
  p = fmaf(p, f, 5.550713464617729e-2f);
  p = fmaf(p, f, 2.4022120237350464e-1f);
  p = fmaf(p, f, 6.931469440460205e-1f);
  p = fmaf(p, f, 1.0000001192092896f);
  return __int_as_float(__float_as_int(p) + (__float_as_int(t) << 23));
}

// The decay of state n: SFU, or the polynomial for every P-th state (P = 0: never).
template <int P>
__device__ __forceinline__ float decay(float x, int n) {
  if constexpr (P > 0) {
    if (n % P == P - 1) return ex2_poly(x);
  }
  return detail::ex2(x);
}

struct Args {
  void* out;
  float* h;
  const float* u;
  const float* dt;
  const float* A_log;
  const float* Bm;
  const float* Cm;
  int64_t ld_bc;
  const float* D;
  const float* z;
  int64_t ldz;
  int64_t T, E;
  int64_t chunk, nchunks, n_eblk;
  float* hc;  // B×nchunks×E×N: pass 1 local final states, then (pass 2) chunk start states
  float* sd;  // B×nchunks×E: ΣΔ per chunk
};

// Stages B (and C) of kTile steps through shared memory. With PF, the next tile's values are
// loaded into registers before the current tile is computed, so their latency is hidden.
template <int N, bool PF>
struct Stager {
  static constexpr int kPer = (kTile * N + kThreads - 1) / kThreads;
  float r[kPer];
  __device__ __forceinline__ void fetch(const float* __restrict__ src, int64_t ld, int64_t row0,
                                        int nsteps) {
#pragma unroll
    for (int q = 0; q < kPer; ++q) {
      const int idx = threadIdx.x + q * kThreads;
      const int i = idx / N, n = idx % N;
      r[q] = (idx < kTile * N && i < nsteps) ? __ldg(src + (row0 + i) * ld + n) : 0.f;
    }
  }
  __device__ __forceinline__ void commit(float* __restrict__ s) const {
#pragma unroll
    for (int q = 0; q < kPer; ++q) {
      const int idx = threadIdx.x + q * kThreads;
      if (idx < kTile * N) s[idx] = r[q];
    }
  }
};

template <int N>
__device__ __forceinline__ void load_tile(float* __restrict__ s, const float* __restrict__ src,
                                          int64_t ld, int64_t row0, int nsteps) {
  for (int idx = threadIdx.x; idx < kTile * N; idx += kThreads) {
    const int i = idx / N, n = idx % N;
    s[idx] = i < nsteps ? src[(row0 + i) * ld + n] : 0.f;
  }
}

template <int N, int P, bool PF>
__global__ void __launch_bounds__(kThreads, 4) scan_pass1(Args a) {
  __shared__ __align__(16) float Bs[kTile * N];
  const int64_t b = blockIdx.y;
  const int64_t c = blockIdx.x / a.n_eblk;
  const int64_t e = (blockIdx.x % a.n_eblk) * kThreads + threadIdx.x;
  const bool active = e < a.E;
  const int64_t t0 = c * a.chunk, t1 = min(a.T, t0 + a.chunk);
  float A2[N], h[N];
#pragma unroll
  for (int n = 0; n < N; ++n) {
    A2[n] = active ? -expf(a.A_log[e * N + n]) * kLog2e : 0.f;
    h[n] = 0.f;
  }
  float S = 0.f;
  Stager<N, PF> sb;
  if constexpr (PF) sb.fetch(a.Bm, a.ld_bc, b * a.T + t0, int(min(int64_t(kTile), t1 - t0)));
  for (int64_t ts = t0; ts < t1; ts += kTile) {
    const int nsteps = int(min(int64_t(kTile), t1 - ts));
    __syncthreads();
    if constexpr (PF) {
      sb.commit(Bs);
      __syncthreads();
      if (ts + kTile < t1)
        sb.fetch(a.Bm, a.ld_bc, b * a.T + ts + kTile, int(min(int64_t(kTile), t1 - ts - kTile)));
    } else {
      load_tile<N>(Bs, a.Bm, a.ld_bc, b * a.T + ts, nsteps);
      __syncthreads();
    }
    if (!active) continue;
    for (int g = 0; g < nsteps; g += kGroup) {
      float uu[kGroup], dd[kGroup];
#pragma unroll
      for (int j = 0; j < kGroup; ++j) {
        if (g + j < nsteps) {
          const int64_t row = b * a.T + ts + g + j;
          uu[j] = __ldg(a.u + row * a.E + e);
          dd[j] = __ldg(a.dt + row * a.E + e);
        }
      }
#pragma unroll
      for (int j = 0; j < kGroup; ++j) {
        if (g + j < nsteps) {
          const float delta = detail::softplus_f(dd[j]);
          const float du = delta * uu[j];
          const float* Bt = Bs + (g + j) * N;
          S += delta;
#pragma unroll
          for (int n = 0; n < N; ++n) h[n] = fmaf(decay<P>(delta * A2[n], n), h[n], du * Bt[n]);
        }
      }
    }
  }
  if (!active) return;
  const int64_t base = (b * a.nchunks + c) * a.E + e;
  float4* dst = reinterpret_cast<float4*>(a.hc + base * N);
#pragma unroll
  for (int n = 0; n < N; n += 4) dst[n / 4] = make_float4(h[n], h[n + 1], h[n + 2], h[n + 3]);
  a.sd[base] = S;
}

// One thread per (b, e, n): start state of each chunk, in place of its local final state.
__global__ void scan_pass2(Args a, int64_t B, int N) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t EN = a.E * N;
  if (idx >= B * EN) return;
  const int64_t b = idx / EN, en = idx % EN, e = en / N;
  const float A2 = -expf(a.A_log[en]) * kLog2e;
  float H = a.h[idx];
  constexpr int G = 16;
  for (int64_t c0 = 0; c0 < a.nchunks; c0 += G) {
    float loc[G], s[G];
#pragma unroll
    for (int j = 0; j < G; ++j) {
      if (c0 + j < a.nchunks) {
        loc[j] = a.hc[(b * a.nchunks + c0 + j) * EN + en];
        s[j] = a.sd[(b * a.nchunks + c0 + j) * a.E + e];
      }
    }
#pragma unroll
    for (int j = 0; j < G; ++j) {
      if (c0 + j < a.nchunks) {
        a.hc[(b * a.nchunks + c0 + j) * EN + en] = H;
        H = fmaf(detail::ex2(A2 * s[j]), H, loc[j]);
      }
    }
  }
}

template <int N, int P, bool PF, typename OutT>
__global__ void __launch_bounds__(kThreads, 4) scan_pass3(Args a) {
  __shared__ __align__(16) float Bs[kTile * N];
  __shared__ __align__(16) float Cs[kTile * N];
  const int64_t b = blockIdx.y;
  const int64_t c = blockIdx.x / a.n_eblk;
  const int64_t e = (blockIdx.x % a.n_eblk) * kThreads + threadIdx.x;
  const bool active = e < a.E;
  const int64_t t0 = c * a.chunk, t1 = min(a.T, t0 + a.chunk);
  OutT* out = static_cast<OutT*>(a.out);
  float A2[N], h[N];
  const float* h0 = a.nchunks > 1 ? a.hc + ((b * a.nchunks + c) * a.E + e) * N : a.h + (b * a.E + e) * N;
#pragma unroll
  for (int n = 0; n < N; ++n) {
    A2[n] = active ? -expf(a.A_log[e * N + n]) * kLog2e : 0.f;
    h[n] = active ? h0[n] : 0.f;
  }
  const float De = active ? a.D[e] : 0.f;
  Stager<N, PF> sb, sc;
  if constexpr (PF) {
    const int n0 = int(min(int64_t(kTile), t1 - t0));
    sb.fetch(a.Bm, a.ld_bc, b * a.T + t0, n0);
    sc.fetch(a.Cm, a.ld_bc, b * a.T + t0, n0);
  }
  for (int64_t ts = t0; ts < t1; ts += kTile) {
    const int nsteps = int(min(int64_t(kTile), t1 - ts));
    __syncthreads();
    if constexpr (PF) {
      sb.commit(Bs);
      sc.commit(Cs);
      __syncthreads();
      if (ts + kTile < t1) {
        const int nn = int(min(int64_t(kTile), t1 - ts - kTile));
        sb.fetch(a.Bm, a.ld_bc, b * a.T + ts + kTile, nn);
        sc.fetch(a.Cm, a.ld_bc, b * a.T + ts + kTile, nn);
      }
    } else {
      load_tile<N>(Bs, a.Bm, a.ld_bc, b * a.T + ts, nsteps);
      load_tile<N>(Cs, a.Cm, a.ld_bc, b * a.T + ts, nsteps);
      __syncthreads();
    }
    if (!active) continue;
    for (int g = 0; g < nsteps; g += kGroup) {
      float uu[kGroup], dd[kGroup], zz[kGroup];
#pragma unroll
      for (int j = 0; j < kGroup; ++j) {
        if (g + j < nsteps) {
          const int64_t row = b * a.T + ts + g + j;
          uu[j] = __ldg(a.u + row * a.E + e);
          dd[j] = __ldg(a.dt + row * a.E + e);
          zz[j] = __ldg(a.z + row * a.ldz + e);
        }
      }
#pragma unroll
      for (int j = 0; j < kGroup; ++j) {
        if (g + j < nsteps) {
          const float delta = detail::softplus_f(dd[j]);
          const float du = delta * uu[j];
          const float* Bt = Bs + (g + j) * N;
          const float* Ct = Cs + (g + j) * N;
          float acc = 0.f;
#pragma unroll
          for (int n = 0; n < N; ++n) {
            h[n] = fmaf(decay<P>(delta * A2[n], n), h[n], du * Bt[n]);
            acc = fmaf(h[n], Ct[n], acc);
          }
          const float y = fmaf(De, uu[j], acc);
          const int64_t row = b * a.T + ts + g + j;
          detail::store(out + row * a.E + e, y * detail::silu_f(zz[j]));
        }
      }
    }
  }
  if (active && c == a.nchunks - 1) {
    float* hf = a.h + (b * a.E + e) * N;
#pragma unroll
    for (int n = 0; n < N; ++n) hf[n] = h[n];
  }
}

// Grow-only scratch for the chunk states (stream-ordered reuse on the default stream).
std::mutex g_scratch_mu;
Buffer<float>& scratch() {
  static Buffer<float>* s = new Buffer<float>();
  return *s;
}

// Tuning knobs, read once (for benchmarks): MM_CUDA_SCAN_POLY = P (0 or 4: every P-th state's
// exp on the FMA pipe; measured slower on the H100, so off), MM_CUDA_SCAN_PREFETCH (1: the
// next B/C tile is loaded during the current one), MM_CUDA_SCAN_BLOCKS_PER_SM = blocks per SM aimed for when
// choosing the number of chunks.
int env_int(const char* name, int dflt) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : dflt;
}
int poly_every() {
  static const int p = env_int("MM_CUDA_SCAN_POLY", 0);
  return p;
}
bool prefetch() {
  static const bool p = env_int("MM_CUDA_SCAN_PREFETCH", 1) != 0;
  return p;
}
int blocks_per_sm() {
  static const int b = std::max(1, env_int("MM_CUDA_SCAN_BLOCKS_PER_SM", 64));
  return b;
}

template <int N, int P, bool PF>
void launch_passes(const Args& a, DType odt, int64_t B, const dim3& grid) {
  if (a.nchunks > 1) {
    scan_pass1<N, P, PF><<<grid, kThreads>>>(a);
    MM_CUDA_LAUNCH_CHECK("scan_pass1");
    scan_pass2<<<detail::blocks_for(B * a.E * N, 256), 256>>>(a, B, N);
    MM_CUDA_LAUNCH_CHECK("scan_pass2");
  }
  if (odt == DType::tf32) throw Error("scan: activations are written as f32 or bf16, not tf32");
  if (odt == DType::f32) scan_pass3<N, P, PF, float><<<grid, kThreads>>>(a);
  else scan_pass3<N, P, PF, __nv_bfloat16><<<grid, kThreads>>>(a);
  MM_CUDA_LAUNCH_CHECK("scan_pass3");
}

template <int N>
void run(void* out, DType odt, float* h, const float* u, const float* dt, const float* A_log,
         const float* Bm, const float* Cm, int64_t ld_bc, const float* D, const float* z,
         int64_t ldz, int64_t B, int64_t T, int64_t E) {
  Args a{out, h, u, dt, A_log, Bm, Cm, ld_bc, D, z, ldz, T, E, 0, 0, 0, nullptr, nullptr};
  a.n_eblk = (E + kThreads - 1) / kThreads;
  // Enough chunks for several waves of blocks, none shorter than kMinChunk.
  const int64_t target_blocks = int64_t(detail::sm_count()) * blocks_per_sm();
  int64_t nchunks = std::max<int64_t>(1, (target_blocks + B * a.n_eblk - 1) / (B * a.n_eblk));
  nchunks = std::min(nchunks, (T + kMinChunk - 1) / kMinChunk);
  a.chunk = (T + nchunks - 1) / nchunks;
  a.chunk = (a.chunk + kTile - 1) / kTile * kTile;
  a.nchunks = (T + a.chunk - 1) / a.chunk;
  detail::require(a.nchunks * a.n_eblk < (int64_t(1) << 31), "scan_forward", "too long (T·E)");
  const dim3 grid(unsigned(a.nchunks * a.n_eblk), unsigned(B));

  std::unique_lock<std::mutex> lk(g_scratch_mu);
  if (a.nchunks > 1) {
    const int64_t hc_n = B * a.nchunks * E * N, sd_n = B * a.nchunks * E;
    scratch().reserve(size_t(hc_n + sd_n));
    a.hc = scratch().data();
    a.sd = a.hc + hc_n;
  }
  // N = 32 keeps no registers to spare for the prefetch (it would spill).
  if constexpr (N <= 16) {
    if (prefetch()) {
      if (poly_every() == 4) return launch_passes<N, 4, true>(a, odt, B, grid);
      return launch_passes<N, 0, true>(a, odt, B, grid);
    }
  }
  if (poly_every() == 4) return launch_passes<N, 4, false>(a, odt, B, grid);
  return launch_passes<N, 0, false>(a, odt, B, grid);
}

}  // namespace

void scan_forward(void* out, DType odt, float* h, const float* u, const float* dt,
                  const float* A_log, const float* Bm, const float* Cm, int64_t ld_bc,
                  const float* D, const float* z, int64_t ldz, int64_t B, int64_t T, int64_t E,
                  int64_t N) {
  using detail::require;
  require(B > 0 && T > 0 && E > 0, "scan_forward",
          "sizes must be positive (B=" + std::to_string(B) + ", T=" + std::to_string(T) +
              ", E=" + std::to_string(E) + ")");
  require(B <= 65535, "scan_forward", "batch " + std::to_string(B) + " > 65535");
  require(ld_bc >= N, "scan_forward", "ld_bc " + std::to_string(ld_bc) + " < N " + std::to_string(N));
  require(ldz >= E, "scan_forward", "ldz " + std::to_string(ldz) + " < E " + std::to_string(E));
  require(out && h && u && dt && A_log && Bm && Cm && D && z, "scan_forward", "null pointer");
  switch (N) {
    case 4: return run<4>(out, odt, h, u, dt, A_log, Bm, Cm, ld_bc, D, z, ldz, B, T, E);
    case 8: return run<8>(out, odt, h, u, dt, A_log, Bm, Cm, ld_bc, D, z, ldz, B, T, E);
    case 16: return run<16>(out, odt, h, u, dt, A_log, Bm, Cm, ld_bc, D, z, ldz, B, T, E);
    case 32: return run<32>(out, odt, h, u, dt, A_log, Bm, Cm, ld_bc, D, z, ldz, B, T, E);
    default:
      throw mm::Error("mm::cuda::scan_forward: d_state N=" + std::to_string(N) +
                      " not supported (4, 8, 16 or 32)");
  }
}

}  // namespace mm::cuda
