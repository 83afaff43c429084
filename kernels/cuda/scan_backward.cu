// Backward of the fused selective scan (scan.cu's scan_forward with the SiLU(z) gate), from a
// zero initial state (whole sequences). With a_t = exp(Δ_t A), the adjoint g_t = ∂L/∂h_t obeys
//   g_t = a_{t+1} ⊙ g_{t+1} + C_t dy_t,   dy_t = dout_t · SiLU(z_t),
// a reverse linear recurrence with the forward's decays, chunked over time like the forward:
//   pass 1: each (chunk, channel) runs from a zero state and a zero adjoint carry: its local
//           final state, its local adjoint carry out of the chunk's left end (accumulated
//           forwards as Σ_t (Π_{s≤t} a_s) C_t dy_t), ΣΔ, and a checkpoint of the local state and
//           of ΣΔ so far every kSub steps; the first channel block of each chunk zeroes its rows
//           of dB and dC;
//   pass 2: one thread per (batch, channel, state) carries the state forwards and the adjoint
//           backwards across the chunks: each chunk's start state and the adjoint carried into
//           it from the right;
//   pass 3: each chunk walks its sub-blocks of kSub steps from the right. A sub-block's start
//           state is its checkpoint fixed up with the chunk's true start state (the recurrence is
//           linear: h = h_local + exp(A·ΣΔ_local) h_start); its kSub states are recomputed into
//           shared memory (writing dz on the way), dC is reduced over the block's channels from
//           them, then the sub-block is walked backwards (du, ddt; dA, dD in registers), and dB
//           is reduced over the channels. dB and dC get one atomicAdd per (row, state, channel
//           block), dA_log and dD one per (chunk, batch) and value.
// One thread per channel e holds its N states, like the forward; exp is ex2.approx with log2(e)
// folded into A. No per-step state is kept in global memory: the scratch holds B·⌈T/kSub⌉·E·(N+1)
// floats of checkpoints plus B·nchunks·E·(2N+1) of chunk carries.
#include <algorithm>
#include <cstdlib>
#include <mutex>

#include "kernels/cuda/backward.hpp"
#include "kernels/cuda/common.cuh"

namespace mm::cuda {

namespace {

constexpr int kThreads = 128;         // channels per block
constexpr int kSub = 8;               // steps per sub-block: checkpoint interval, history length
constexpr int kTile = 32;             // pass 1: steps of B/C staged in shared memory
constexpr int kRow = kThreads + 4;    // padded row of the shared history: the reductions read
                                      // rows as float4 without bank conflicts
constexpr int64_t kMinChunk = 256;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
static_assert(kTile % kSub == 0, "pass 1 writes a checkpoint at the start of each group");

struct Args {
  float* du;
  int64_t ld_du;
  float* ddt;
  float* dz;
  int64_t ld_dz;
  float* dBm;
  float* dCm;
  int64_t ld_dbc;
  float* dA_log;
  float* dD;
  const float* dout;
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
  int64_t chunk, nchunks, n_eblk, nsub;  // nsub = ⌈T / kSub⌉
  float* ck;   // B×nsub×E×N: state before each sub-block, local to its chunk (zero at its start)
  float* hc;   // B×nchunks×E×N: pass 1 local final state; after pass 2 the chunk's start state
  float* gc;   // B×nchunks×E×N: pass 1 local adjoint carry out of the chunk's left end; after
               //   pass 2 the adjoint carried into the chunk from its right
  float* cks;  // B×nsub×E: ΣΔ from the chunk's start to each sub-block's start
  float* sd;   // B×nchunks×E: ΣΔ over the chunk
};

// Component i (a constant once unrolled) of a float4: B_t and C_t are read from shared memory four
// states per (broadcast) load.
__device__ __forceinline__ float comp(const float4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

template <int N>
__device__ __forceinline__ void load_tile(float* __restrict__ s, const float* __restrict__ src,
                                          int64_t ld, int64_t row0, int nsteps, int rows) {
  for (int idx = threadIdx.x; idx < rows * N; idx += kThreads) {
    const int i = idx / N, n = idx % N;
    s[idx] = i < nsteps ? __ldg(src + (row0 + i) * ld + n) : 0.f;
  }
}

template <int N>
__global__ void __launch_bounds__(kThreads, N <= 16 ? 4 : 2) scanb_pass1(Args a) {
  __shared__ __align__(16) float Bs[kTile * N];
  __shared__ __align__(16) float Cs[kTile * N];
  const int64_t b = blockIdx.y;
  const int64_t c = blockIdx.x / a.n_eblk;
  const int64_t eblk = blockIdx.x % a.n_eblk;
  const int64_t e = eblk * kThreads + threadIdx.x;
  const bool active = e < a.E;
  const int64_t t0 = c * a.chunk, t1 = min(a.T, t0 + a.chunk);
  if (eblk == 0) {  // pass 3 adds into dB and dC
    for (int64_t i = threadIdx.x; i < (t1 - t0) * N; i += kThreads) {
      const int64_t row = b * a.T + t0 + i / N;
      a.dBm[row * a.ld_dbc + i % N] = 0.f;
      a.dCm[row * a.ld_dbc + i % N] = 0.f;
    }
  }
  float A2[N], h[N], P[N], q[N];
#pragma unroll
  for (int n = 0; n < N; ++n) {
    A2[n] = active ? -expf(a.A_log[e * N + n]) * kLog2e : 0.f;
    h[n] = 0.f;
    P[n] = 1.f;
    q[n] = 0.f;
  }
  float S = 0.f;
  for (int64_t ts = t0; ts < t1; ts += kTile) {
    const int nsteps = int(min(int64_t(kTile), t1 - ts));
    __syncthreads();
    load_tile<N>(Bs, a.Bm, a.ld_bc, b * a.T + ts, nsteps, kTile);
    load_tile<N>(Cs, a.Cm, a.ld_bc, b * a.T + ts, nsteps, kTile);
    __syncthreads();
    if (!active) continue;
    for (int g = 0; g < nsteps; g += kSub) {
      // Checkpoint: the local state before step ts + g (a sub-block start: chunks and tiles
      // start at multiples of kSub).
      const int64_t cb = (b * a.nsub + (ts + g) / kSub) * a.E + e;
      float4* dst = reinterpret_cast<float4*>(a.ck + cb * N);
#pragma unroll
      for (int n = 0; n < N; n += 4) dst[n / 4] = make_float4(h[n], h[n + 1], h[n + 2], h[n + 3]);
      a.cks[cb] = S;
      float uu[kSub], dd[kSub], zz[kSub], oo[kSub];
#pragma unroll
      for (int k = 0; k < kSub; ++k) {
        if (g + k < nsteps) {
          const int64_t row = b * a.T + ts + g + k;
          uu[k] = __ldg(a.u + row * a.E + e);
          dd[k] = __ldg(a.dt + row * a.E + e);
          zz[k] = __ldg(a.z + row * a.ldz + e);
          oo[k] = __ldg(a.dout + row * a.E + e);
        }
      }
#pragma unroll
      for (int k = 0; k < kSub; ++k) {
        if (g + k < nsteps) {
          const float delta = detail::softplus_f(dd[k]);
          const float x = delta * uu[k];
          const float dy = oo[k] * detail::silu_f(zz[k]);
          const float4* B4 = reinterpret_cast<const float4*>(Bs + (g + k) * N);
          const float4* C4 = reinterpret_cast<const float4*>(Cs + (g + k) * N);
          S += delta;
#pragma unroll
          for (int n4 = 0; n4 < N / 4; ++n4) {
            const float4 bq = B4[n4], cq = C4[n4];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              const int n = 4 * n4 + i;
              const float ak = detail::ex2(delta * A2[n]);
              h[n] = fmaf(ak, h[n], x * comp(bq, i));
              P[n] *= ak;
              q[n] = fmaf(P[n], comp(cq, i) * dy, q[n]);
            }
          }
        }
      }
    }
  }
  if (!active) return;
  const int64_t base = (b * a.nchunks + c) * a.E + e;
  float4* hd = reinterpret_cast<float4*>(a.hc + base * N);
  float4* gd = reinterpret_cast<float4*>(a.gc + base * N);
#pragma unroll
  for (int n = 0; n < N; n += 4) {
    hd[n / 4] = make_float4(h[n], h[n + 1], h[n + 2], h[n + 3]);
    gd[n / 4] = make_float4(q[n], q[n + 1], q[n + 2], q[n + 3]);
  }
  a.sd[base] = S;
}

// One thread per (b, e, n): the start state of each chunk in place of its local final state
// (forwards from zero), and the adjoint carried into each chunk from its right in place of its
// local carry (backwards from zero after the last chunk).
__global__ void scanb_pass2(Args a, int64_t B, int N) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t EN = a.E * N;
  if (idx >= B * EN) return;
  const int64_t b = idx / EN, en = idx % EN, e = en / N;
  const float A2 = -expf(a.A_log[en]) * kLog2e;
  constexpr int G = 16;
  float H = 0.f;
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
  float X = 0.f;
  for (int64_t c1 = a.nchunks - 1; c1 >= 0; c1 -= G) {  // chunks c1, c1 − 1, …, c1 − G + 1
    float loc[G], s[G];
#pragma unroll
    for (int j = 0; j < G; ++j) {
      if (c1 - j >= 0) {
        loc[j] = a.gc[(b * a.nchunks + c1 - j) * EN + en];
        s[j] = a.sd[(b * a.nchunks + c1 - j) * a.E + e];
      }
    }
#pragma unroll
    for (int j = 0; j < G; ++j) {
      if (c1 - j >= 0) {
        a.gc[(b * a.nchunks + c1 - j) * EN + en] = X;
        X = fmaf(detail::ex2(A2 * s[j]), X, loc[j]);
      }
    }
  }
}

// Dynamic shared memory of pass 3, in floats: the history (kSub·N rows of kRow), dy (kSub rows
// of kRow), B and C of the sub-block (kSub·N each).
template <int N>
constexpr int pass3_smem_floats() {
  return kSub * N * kRow + kSub * kRow + 2 * kSub * N;
}

template <int N>
__global__ void __launch_bounds__(kThreads, N <= 16 ? 3 : 1) scanb_pass3(Args a) {
  extern __shared__ __align__(16) float smem[];
  float* hist = smem;                     // row k·N + n: h_t[n], then g_t[n]·Δ_t u_t (by channel)
  float* dys = hist + kSub * N * kRow;    // row k: dy_t (by channel)
  float* Bs = dys + kSub * kRow;          // [k][n]
  float* Cs = Bs + kSub * N;
  const int tid = threadIdx.x;
  const int64_t b = blockIdx.y;
  const int64_t c = blockIdx.x / a.n_eblk;
  const int64_t e = (blockIdx.x % a.n_eblk) * kThreads + tid;
  const bool active = e < a.E;
  const int64_t t0 = c * a.chunk, t1 = min(a.T, t0 + a.chunk);
  const int64_t cb = ((b * a.nchunks + c) * a.E + e) * N;  // this chunk's carries
  float A2[N], gcar[N], dA[N];
#pragma unroll
  for (int n = 0; n < N; ++n) {
    A2[n] = active ? -expf(a.A_log[e * N + n]) * kLog2e : 0.f;
    gcar[n] = active ? a.gc[cb + n] : 0.f;
    dA[n] = 0.f;
  }
  const float De = active ? a.D[e] : 0.f;
  float dDe = 0.f;
  const int64_t j0 = t0 / kSub, j1 = (t1 + kSub - 1) / kSub;
  for (int64_t j = j1 - 1; j >= j0; --j) {
    const int64_t s0 = j * kSub, row0 = b * a.T + s0;
    const int len = int(min(int64_t(kSub), t1 - s0));
    // Stage B and C (the previous sub-block's walk is over: it synchronised before its dB sum).
    load_tile<N>(Bs, a.Bm, a.ld_bc, row0, len, kSub);
    load_tile<N>(Cs, a.Cm, a.ld_bc, row0, len, kSub);
    // Inactive channels run on zeros: every value they put in shared memory is 0.
    float uu[kSub], dd[kSub], zz[kSub], oo[kSub];
#pragma unroll
    for (int k = 0; k < kSub; ++k) {
      uu[k] = dd[k] = zz[k] = oo[k] = 0.f;
      if (active && k < len) {
        const int64_t row = row0 + k;
        uu[k] = __ldg(a.u + row * a.E + e);
        dd[k] = __ldg(a.dt + row * a.E + e);
        zz[k] = __ldg(a.z + row * a.ldz + e);
        oo[k] = __ldg(a.dout + row * a.E + e);
      }
    }
    // The state before the sub-block: its chunk-local checkpoint plus the decayed start state.
    float hprev0[N];
    {
      const int64_t kb = (b * a.nsub + j) * a.E + e;
      const float S = active ? a.cks[kb] : 0.f;
#pragma unroll
      for (int n = 0; n < N; ++n)
        hprev0[n] = active ? fmaf(detail::ex2(A2[n] * S), a.hc[cb + n], a.ck[kb * N + n]) : 0.f;
    }
    __syncthreads();  // B, C staged; the previous dB sum has read the history
    // Forwards over the sub-block: h_t into the history, dz out.
    float dlt[kSub], spg[kSub], dyv[kSub];
    {
      float h[N];
#pragma unroll
      for (int n = 0; n < N; ++n) h[n] = hprev0[n];
#pragma unroll
      for (int k = 0; k < kSub; ++k) {
        dlt[k] = spg[k] = dyv[k] = 0.f;
        if (k < len) {
          dlt[k] = detail::softplus_f(dd[k]);
          spg[k] = dd[k] > 20.0f ? 1.0f : detail::sigmoid_f(dd[k]);
          const float x = dlt[k] * uu[k];
          const float4* B4 = reinterpret_cast<const float4*>(Bs + k * N);
          const float4* C4 = reinterpret_cast<const float4*>(Cs + k * N);
          float acc = 0.f;
#pragma unroll
          for (int n4 = 0; n4 < N / 4; ++n4) {
            const float4 bq = B4[n4], cq = C4[n4];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              const int n = 4 * n4 + i;
              h[n] = fmaf(detail::ex2(dlt[k] * A2[n]), h[n], x * comp(bq, i));
              hist[(k * N + n) * kRow + tid] = h[n];
              acc = fmaf(h[n], comp(cq, i), acc);
            }
          }
          const float y = fmaf(De, uu[k], acc);
          const float sz = detail::sigmoid_f(zz[k]);
          dyv[k] = oo[k] * zz[k] * sz;
          dys[k * kRow + tid] = dyv[k];
          if (active) a.dz[(row0 + k) * a.ld_dz + e] = oo[k] * y * sz * (1.0f + zz[k] * (1.0f - sz));
        }
      }
    }
    __syncthreads();
    // dC_t[n] = Σ_e dy_t h_t[n].
    for (int p = tid; p < len * N; p += kThreads) {
      const float4* hr = reinterpret_cast<const float4*>(hist + p * kRow);
      const float4* dr = reinterpret_cast<const float4*>(dys + (p / N) * kRow);
      float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
#pragma unroll 4
      for (int i = 0; i < kThreads / 4; ++i) {
        const float4 hv = hr[i], dv = dr[i];
        s0 = fmaf(dv.x, hv.x, s0);
        s1 = fmaf(dv.y, hv.y, s1);
        s2 = fmaf(dv.z, hv.z, s2);
        s3 = fmaf(dv.w, hv.w, s3);
      }
      atomicAdd(a.dCm + (row0 + p / N) * a.ld_dbc + p % N, (s0 + s1) + (s2 + s3));
    }
    __syncthreads();
    // Backwards over the sub-block: step k reads row k − 1 (h_{t−1}; the state before the
    // sub-block for k = 0) and overwrites row k (h_t, read by step k + 1) with g_t Δ_t u_t.
#pragma unroll
    for (int k = kSub - 1; k >= 0; --k) {
      if (k < len) {
        const float x = dlt[k] * uu[k];
        const float4* B4 = reinterpret_cast<const float4*>(Bs + k * N);
        const float4* C4 = reinterpret_cast<const float4*>(Cs + k * N);
        float sa = 0.f, sB = 0.f;
#pragma unroll
        for (int n4 = 0; n4 < N / 4; ++n4) {
          const float4 bq = B4[n4], cq = C4[n4];
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const int n = 4 * n4 + i;
            const float hp = k == 0 ? hprev0[n] : hist[((k - 1) * N + n) * kRow + tid];
            const float ak = detail::ex2(dlt[k] * A2[n]);
            const float g = fmaf(comp(cq, i), dyv[k], gcar[n]);
            const float w = g * (ak * hp);  // g_t a_t h_{t−1}
            dA[n] = fmaf(w, dlt[k], dA[n]);
            sa = fmaf(w, A2[n], sa);
            sB = fmaf(g, comp(bq, i), sB);
            hist[(k * N + n) * kRow + tid] = g * x;
            gcar[n] = ak * g;
          }
        }
        if (active) {
          const int64_t row = row0 + k;
          a.du[row * a.ld_du + e] = fmaf(dlt[k], sB, De * dyv[k]);
          a.ddt[row * a.E + e] = fmaf(sa, kLn2, uu[k] * sB) * spg[k];
        }
        dDe = fmaf(dyv[k], uu[k], dDe);
      }
    }
    __syncthreads();
    // dB_t[n] = Σ_e g_t[n] Δ_t u_t.
    for (int p = tid; p < len * N; p += kThreads) {
      const float4* hr = reinterpret_cast<const float4*>(hist + p * kRow);
      float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
#pragma unroll 4
      for (int i = 0; i < kThreads / 4; ++i) {
        const float4 v = hr[i];
        s0 += v.x;
        s1 += v.y;
        s2 += v.z;
        s3 += v.w;
      }
      atomicAdd(a.dBm + (row0 + p / N) * a.ld_dbc + p % N, (s0 + s1) + (s2 + s3));
    }
  }
  if (!active) return;
#pragma unroll
  for (int n = 0; n < N; ++n) atomicAdd(a.dA_log + e * N + n, dA[n] * (A2[n] * kLn2));
  atomicAdd(a.dD + e, dDe);
}

// Grow-only scratch for the checkpoints and chunk carries (stream-ordered reuse on the default
// stream).
std::mutex g_scratch_mu;
Buffer<float>& scratch() {
  static Buffer<float>* s = new Buffer<float>();
  return *s;
}

// Blocks of pass 3 per SM aimed for when choosing the number of chunks (read once, for
// benchmarks: MM_CUDA_SCANB_BLOCKS_PER_SM).
int blocks_per_sm() {
  static const int b = [] {
    const char* v = std::getenv("MM_CUDA_SCANB_BLOCKS_PER_SM");
    return v && *v ? std::max(1, std::atoi(v)) : 12;
  }();
  return b;
}

template <int N>
void run(Args a, int64_t B) {
  const int64_t T = a.T, E = a.E;
  a.n_eblk = (E + kThreads - 1) / kThreads;
  // About four waves of pass 3 (three blocks fit on an SM), no chunk shorter than kMinChunk.
  const int64_t target_blocks = int64_t(detail::sm_count()) * blocks_per_sm();
  int64_t nchunks = std::max<int64_t>(1, (target_blocks + B * a.n_eblk - 1) / (B * a.n_eblk));
  nchunks = std::min(nchunks, (T + kMinChunk - 1) / kMinChunk);
  a.chunk = (T + nchunks - 1) / nchunks;
  a.chunk = (a.chunk + kTile - 1) / kTile * kTile;
  a.nchunks = (T + a.chunk - 1) / a.chunk;
  a.nsub = (T + kSub - 1) / kSub;
  detail::require(a.nchunks * a.n_eblk < (int64_t(1) << 31), "scan_backward", "too long (T·E)");
  const dim3 grid(unsigned(a.nchunks * a.n_eblk), unsigned(B));

  std::unique_lock<std::mutex> lk(g_scratch_mu);
  const int64_t ck_n = B * a.nsub * E * N, hc_n = B * a.nchunks * E * N;
  const int64_t cks_n = B * a.nsub * E, sd_n = B * a.nchunks * E;
  scratch().reserve(size_t(ck_n + 2 * hc_n + cks_n + sd_n));
  a.ck = scratch().data();
  a.hc = a.ck + ck_n;
  a.gc = a.hc + hc_n;
  a.cks = a.gc + hc_n;
  a.sd = a.cks + cks_n;

  scanb_pass1<N><<<grid, kThreads>>>(a);
  MM_CUDA_LAUNCH_CHECK("scanb_pass1");
  scanb_pass2<<<detail::blocks_for(B * E * N, 256), 256>>>(a, B, N);
  MM_CUDA_LAUNCH_CHECK("scanb_pass2");
  const size_t smem = size_t(pass3_smem_floats<N>()) * sizeof(float);
  MM_CUDA_CHECK(cudaFuncSetAttribute(scanb_pass3<N>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     int(smem)));
  scanb_pass3<N><<<grid, kThreads, smem>>>(a);
  MM_CUDA_LAUNCH_CHECK("scanb_pass3");
}

}  // namespace

void scan_backward(float* du, int64_t ld_du, float* ddt, float* dz, int64_t ld_dz, float* dBm,
                   float* dCm, int64_t ld_dbc, float* dA_log, float* dD, const float* dout,
                   const float* u, const float* dt, const float* A_log, const float* Bm,
                   const float* Cm, int64_t ld_bc, const float* D, const float* z, int64_t ldz,
                   int64_t B, int64_t T, int64_t E, int64_t N) {
  using detail::require;
  const char* op = "scan_backward";
  require(B > 0 && T > 0 && E > 0, op,
          "sizes must be positive (B=" + std::to_string(B) + ", T=" + std::to_string(T) +
              ", E=" + std::to_string(E) + ")");
  require(B <= 65535, op, "batch " + std::to_string(B) + " > 65535");
  require(N == 4 || N == 8 || N == 16 || N == 32, op,
          "d_state N=" + std::to_string(N) + " not supported (4, 8, 16 or 32)");
  require(ld_bc >= N, op, "ld_bc " + std::to_string(ld_bc) + " < N " + std::to_string(N));
  require(ld_dbc >= N, op, "ld_dbc " + std::to_string(ld_dbc) + " < N " + std::to_string(N));
  require(ldz >= E, op, "ldz " + std::to_string(ldz) + " < E " + std::to_string(E));
  require(ld_du >= E, op, "ld_du " + std::to_string(ld_du) + " < E " + std::to_string(E));
  require(ld_dz >= E, op, "ld_dz " + std::to_string(ld_dz) + " < E " + std::to_string(E));
  require(du && ddt && dz && dBm && dCm && dA_log && dD && dout && u && dt && A_log && Bm && Cm &&
              D && z,
          op, "null pointer");
  Args a{du, ld_du, ddt, dz, ld_dz, dBm, dCm, ld_dbc, dA_log, dD, dout, u, dt, A_log, Bm, Cm,
         ld_bc, D, z, ldz, T, E, 0, 0, 0, 0, nullptr, nullptr, nullptr, nullptr, nullptr};
  switch (N) {
    case 4: return run<4>(a, B);
    case 8: return run<8>(a, B);
    case 16: return run<16>(a, B);
    default: return run<32>(a, B);
  }
}

}  // namespace mm::cuda
