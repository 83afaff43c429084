// Note ops on the GPU. Shapes and row conventions in kernels/cuda/notes.hpp.
//
// pool_evolve is sequential over segments by nature (each chunk's commit depends on the pool
// the previous chunks left): one block per sequence walks them, with the whole pool and candidate
// list in shared memory; tokens that cannot enter (s ≤ τ1, or not above the full pool's minimum
// or the full candidate list's last) are filtered in parallel before the serial list work.
// pool_read is one block per (segment, sequence): slot keys and values staged through shared
// memory in tiles, one thread per (token, head) with an online softmax over the tiles.
#include "kernels/cuda/notes.hpp"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <string>

#include "io/error.hpp"

namespace mm::cuda {

namespace {

void check_launch(const char* what) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw Error(std::string("CUDA launch of ") + what + " failed: " + cudaGetErrorString(e));
}

void require(bool ok, const std::string& what) {
  if (!ok) throw Error("CUDA note op refused: " + what);
}

constexpr int kMaxSlots = 128;  // K the pool kernels hold in shared memory

__global__ void note_scale_kernel(float* n, int64_t ldn, const float* s, const float* m, int64_t ldm,
                                  int64_t M, int64_t S) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= M * S) return;
  const int64_t r = i / S, c = i % S;
  n[r * ldn + c] = s[r] * m[r * ldm + c];
}

__global__ void gather_rows_kernel(float* dst, const float* src, const int32_t* rows, int64_t R, int64_t S) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= R * S) return;
  const int64_t r = i / S, c = i % S;
  const int32_t row = rows[r];
  dst[i] = row >= 0 ? src[int64_t(row) * S + c] : 0.0f;
}

// One warp per sequence. Lane 0 owns the list logic (the lists are at most K long and, past the
// first chunks, few tokens get through the filter); the other lanes load and filter scores.
__global__ void pool_evolve_kernel(int32_t* snap, PoolState st, int32_t* pool_rows, int32_t* cand_rows,
                                   const float* s, int64_t pos0, Segments segs, int B, int T, int K,
                                   float tau) {
  __shared__ int64_t ppos[kMaxSlots], cpos[kMaxSlots];
  __shared__ float pprio[kMaxSlots], cscore[kMaxSlots];
  __shared__ int prow[kMaxSlots], crow[kMaxSlots];
  __shared__ int used, ccount;
  __shared__ float gate;  // tokens must score above this to be worth offering
  const int b = blockIdx.x, lane = threadIdx.x;
  if (lane == 0) {
    used = st.used[b];
    ccount = st.cand_count[b];
  }
  __syncwarp();
  for (int j = lane; j < K; j += 32) {
    ppos[j] = st.pos[b * K + j];
    pprio[j] = st.prio[b * K + j];
    prow[j] = j < used ? b * K + j : -1;
    cpos[j] = st.cand_pos[b * K + j];
    cscore[j] = st.cand_score[b * K + j];
    crow[j] = j < ccount ? B * K + b * K + j : -1;
  }
  __syncwarp();

  auto update_gate = [&]() {  // lane 0 only
    float g = tau;
    if (used == K) {
      float mn = pprio[0];
      for (int j = 1; j < K; ++j) mn = fminf(mn, pprio[j]);
      g = fmaxf(g, mn);
    }
    // A later token of the chunk ties no earlier candidate: it must be strictly above the last.
    if (ccount == K) g = fmaxf(g, cscore[K - 1]);
    gate = g;
  };
  if (lane == 0) update_gate();
  __syncwarp();

  const int64_t row_base = 2 * int64_t(B) * K + int64_t(b) * T;
  for (int64_t i = 0; i < segs.count; ++i) {
    int32_t* out = snap + (i * B + b) * K;
    for (int j = lane; j < K; j += 32) out[j] = j < used ? prow[j] : -1;
    const int t0 = segs.t0[i], t1 = segs.t1[i];
    for (int base = t0; base < t1; base += 32) {
      const int t = base + lane;
      const float sv = t < t1 ? s[int64_t(b) * T + t] : 0.0f;
      __syncwarp();
      unsigned pass = __ballot_sync(0xffffffffu, t < t1 && sv > gate);
      while (pass) {
        const int l = __ffs(pass) - 1;
        pass &= pass - 1;
        const float score = __shfl_sync(0xffffffffu, sv, l);
        if (lane == 0 && score > gate) {
          // Insert (score, pos) into the candidates, best first; ties go to the earlier
          // position, and this token is later than every candidate already there.
          const int64_t pos = pos0 + base + l;
          int at = ccount;
          while (at > 0 && score > cscore[at - 1]) --at;
          if (at < K) {
            const int last = ccount < K ? ccount : K - 1;
            for (int k = last; k > at; --k) {
              cscore[k] = cscore[k - 1];
              cpos[k] = cpos[k - 1];
              crow[k] = crow[k - 1];
            }
            cscore[at] = score;
            cpos[at] = pos;
            crow[at] = int(row_base + base + l);
            if (ccount < K) ++ccount;
            update_gate();
          }
        }
        __syncwarp();
      }
    }
    if (segs.closes[i]) {
      if (lane == 0) {
        for (int c = 0; c < ccount; ++c) {
          if (used < K) {
            ppos[used] = cpos[c];
            pprio[used] = cscore[c];
            prow[used] = crow[c];
            ++used;
            continue;
          }
          int low = 0;
          for (int j = 1; j < K; ++j)
            if (pprio[j] < pprio[low] || (pprio[j] == pprio[low] && ppos[j] < ppos[low])) low = j;
          if (!(cscore[c] > pprio[low])) break;
          ppos[low] = cpos[c];
          pprio[low] = cscore[c];
          prow[low] = crow[c];
        }
        ccount = 0;
        update_gate();
      }
      __syncwarp();
    }
  }
  __syncwarp();
  if (lane == 0) {
    st.used[b] = used;
    st.cand_count[b] = ccount;
  }
  for (int j = lane; j < K; j += 32) {
    st.pos[b * K + j] = j < used ? ppos[j] : -1;
    st.prio[b * K + j] = j < used ? pprio[j] : 0.0f;
    pool_rows[b * K + j] = j < used ? prow[j] : -1;
    st.cand_pos[b * K + j] = j < ccount ? cpos[j] : -1;
    st.cand_score[b * K + j] = j < ccount ? cscore[j] : 0.0f;
    cand_rows[b * K + j] = j < ccount ? crow[j] : -1;
  }
}

struct Sources {
  const float* kv[kMaxReadSources];
  const int32_t* snap[kMaxReadSources];
};

template <typename OutT>
__device__ inline void store(OutT* p, float v);
template <>
__device__ inline void store<float>(float* p, float v) { *p = v; }
template <>
__device__ inline void store<__nv_bfloat16>(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }

constexpr int kTile = 32;  // slots per shared-memory tile

template <int DH, typename OutT>
__global__ void pool_read_kernel(OutT* o, const float* q, int64_t ldq, Sources src, int nsrc,
                                 Segments segs, int B, int T, int K, int H) {
  extern __shared__ float tile[];  // kTile × 2S, then kTile validity flags
  const int S = H * DH;
  float* valid = tile + kTile * 2 * S;
  const int64_t seg = blockIdx.x;
  const int b = blockIdx.y;
  const int t0 = segs.t0[seg], t1 = segs.t1[seg];
  const int pairs = (t1 - t0) * H;
  const int total_slots = nsrc * K;
  const float scale = rsqrtf(float(DH));
  for (int pair0 = 0; pair0 < pairs; pair0 += blockDim.x) {
    const int pair = pair0 + threadIdx.x;
    const bool active = pair < pairs;
    // Consecutive threads take consecutive tokens of one head, so a warp reads one key row.
    const int h = active ? pair / (t1 - t0) : 0;
    const int t = active ? t0 + pair % (t1 - t0) : t0;
    const int64_t row = int64_t(b) * T + t;
    float qv[DH], acc[DH];
#pragma unroll
    for (int i = 0; i < DH; ++i) {
      qv[i] = active ? q[row * ldq + h * DH + i] * scale : 0.0f;
      acc[i] = 0.0f;
    }
    float mx = -INFINITY, sum = 0.0f;
    for (int p0 = 0; p0 < total_slots; p0 += kTile) {
      __syncthreads();
      for (int idx = threadIdx.x; idx < kTile * 2 * S; idx += blockDim.x) {
        const int slot = idx / (2 * S), col = idx % (2 * S), p = p0 + slot;
        int32_t r = -1;
        if (p < total_slots) r = src.snap[p / K][(seg * B + b) * K + p % K];
        tile[idx] = r >= 0 ? src.kv[p / K][int64_t(r) * 2 * S + col] : 0.0f;
        if (col == 0) valid[slot] = r >= 0 ? 1.0f : 0.0f;
      }
      __syncthreads();
      float sc[kTile];
      float tmax = -INFINITY;
#pragma unroll
      for (int j = 0; j < kTile; ++j) {
        float a = 0.0f;
#pragma unroll
        for (int i = 0; i < DH; ++i) a += qv[i] * tile[j * 2 * S + h * DH + i];
        sc[j] = valid[j] != 0.0f ? a : -INFINITY;
        tmax = fmaxf(tmax, sc[j]);
      }
      if (tmax == -INFINITY) continue;  // nothing visible in this tile
      const float nmx = fmaxf(mx, tmax);
      const float corr = __expf(mx - nmx);  // mx = −inf at first: corr = 0
      sum *= corr;
#pragma unroll
      for (int i = 0; i < DH; ++i) acc[i] *= corr;
#pragma unroll
      for (int j = 0; j < kTile; ++j) {
        const float w = __expf(sc[j] - nmx);  // −inf → 0
        sum += w;
#pragma unroll
        for (int i = 0; i < DH; ++i) acc[i] += w * tile[j * 2 * S + S + h * DH + i];
      }
      mx = nmx;
    }
    if (active) {
      const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
#pragma unroll
      for (int i = 0; i < DH; ++i) store(o + row * S + h * DH + i, acc[i] * inv);
    }
  }
}

template <typename OutT>
void launch_read(OutT* o, const float* q, int64_t ldq, const Sources& src, int nsrc, Segments segs,
                 int64_t B, int64_t T, int64_t K, int64_t H, int64_t dh) {
  const int S = int(H * dh);
  const size_t smem = (size_t(kTile) * 2 * S + kTile) * sizeof(float);
  dim3 grid(unsigned(segs.count), unsigned(B));
  const int threads = 256;
#define MM_READ(D)                                                                                  \
  if (dh == D) {                                                                                    \
    if (smem > 48 * 1024)                                                                           \
      cudaFuncSetAttribute(pool_read_kernel<D, OutT>, cudaFuncAttributeMaxDynamicSharedMemorySize, \
                           int(smem));                                                              \
    pool_read_kernel<D, OutT><<<grid, threads, smem>>>(o, q, ldq, src, nsrc, segs, int(B), int(T), \
                                                       int(K), int(H));                             \
    check_launch("pool_read");                                                                      \
    return;                                                                                         \
  }
  MM_READ(4)
  MM_READ(8)
  MM_READ(16)
  MM_READ(32)
#undef MM_READ
  require(false, "note head width " + std::to_string(dh) + " (supported: 4, 8, 16, 32)");
}

}  // namespace

void note_scale_forward(float* n, int64_t ldn, const float* s, const float* m, int64_t ldm,
                        int64_t M, int64_t S) {
  require(M >= 0 && S > 0 && ldn >= S && ldm >= S, "note_scale sizes");
  if (M == 0) return;
  const int64_t total = M * S;
  note_scale_kernel<<<unsigned((total + 255) / 256), 256>>>(n, ldn, s, m, ldm, M, S);
  check_launch("note_scale");
}

void gather_rows(float* dst, const float* src, const int32_t* rows, int64_t R, int64_t S) {
  require(R >= 0 && S > 0, "gather_rows sizes");
  if (R == 0) return;
  gather_rows_kernel<<<unsigned((R * S + 255) / 256), 256>>>(dst, src, rows, R, S);
  check_launch("gather_rows");
}

void pool_evolve(int32_t* snap, PoolState state, int32_t* pool_rows, int32_t* cand_rows,
                 const float* s, int64_t pos0, Segments segs, int64_t B, int64_t T, int64_t K,
                 float tau) {
  require(K > 0 && K <= kMaxSlots, "pool_slots " + std::to_string(K) + " (at most " + std::to_string(kMaxSlots) + ")");
  require(B > 0 && T >= 0 && 2 * B * K + B * T < (int64_t(1) << 31), "piece too large for 32-bit row indices");
  pool_evolve_kernel<<<unsigned(B), 32>>>(snap, state, pool_rows, cand_rows, s, pos0, segs, int(B),
                                          int(T), int(K), tau);
  check_launch("pool_evolve");
}

void pool_read_forward(void* o, DType odt, const float* q, int64_t ldq, const ReadSource* sources,
                       int nsources, Segments segs, int64_t B, int64_t T, int64_t K, int64_t H,
                       int64_t dh) {
  require(nsources >= 1 && nsources <= kMaxReadSources, "read sources " + std::to_string(nsources));
  require(ldq >= H * dh && K > 0 && B > 0, "pool_read sizes");
  if (segs.count == 0) return;
  Sources src{};
  for (int i = 0; i < nsources; ++i) {
    src.kv[i] = sources[i].kv;
    src.snap[i] = sources[i].snap;
  }
  if (odt == DType::f32)
    launch_read(static_cast<float*>(o), q, ldq, src, nsources, segs, B, T, K, H, dh);
  else
    launch_read(static_cast<__nv_bfloat16*>(o), q, ldq, src, nsources, segs, B, T, K, H, dh);
}

}  // namespace mm::cuda
