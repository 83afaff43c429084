// Note ops on the GPU. Shapes and row conventions in kernels/cuda/notes.hpp.
//
// pool_evolve is sequential over segments by nature (each chunk's commit depends on the pool
// the previous chunks left). Each segment's best K candidates are sorted first, all segments in
// parallel; then one warp per sequence walks the segments with the pool and the carried
// candidates in shared memory, committing in order and stopping at the first candidate that
// cannot enter (later ones score no higher).
// pool_read is one block per (segment, sequence): slot keys and values staged through shared
// memory in tiles, one thread per (token, head) with an online softmax over the tiles.
#include "kernels/cuda/notes.hpp"

#include <string>

#include "kernels/cuda/backward.hpp"
#include "kernels/cuda/common.cuh"

namespace mm::cuda {

namespace {

void require(bool ok, const std::string& what) { detail::require(ok, "notes", what); }

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

// Each segment's candidates, best first (ties: earlier position), at most K: one block per
// (segment, sequence), a bitonic sort of (score bits, ~t) keys in shared memory. Scores above
// τ1 ≥ 0 are positive floats, whose bit patterns order like their values.
constexpr int kMaxSegment = 1024;

__global__ void segment_candidates_kernel(PoolScratch out, const float* s, Segments segs, int B, int T,
                                          int K, float tau) {
  __shared__ unsigned long long key[kMaxSegment];
  const int64_t seg = blockIdx.x;
  const int b = blockIdx.y;
  const int t0 = segs.t0[seg], len = segs.t1[seg] - t0;
  int n = 1;
  while (n < len) n <<= 1;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    unsigned long long k = 0;
    if (i < len) {
      const float v = s[int64_t(b) * T + t0 + i];
      if (v > tau) k = (static_cast<unsigned long long>(__float_as_uint(v)) << 32) | (0xffffffffu - unsigned(i));
    }
    key[i] = k;
  }
  __syncthreads();
  for (int size = 2; size <= n; size <<= 1)
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const int j = i ^ stride;
        if (j > i) {
          const bool descending = (i & size) == 0;
          const unsigned long long a = key[i], c = key[j];
          if (descending ? a < c : a > c) {
            key[i] = c;
            key[j] = a;
          }
        }
      }
      __syncthreads();
    }
  const int64_t base = (seg * B + b) * K;
  for (int j = threadIdx.x; j < K; j += blockDim.x) {
    const unsigned long long k = j < n ? key[j] : 0;
    out.score[base + j] = __uint_as_float(unsigned(k >> 32));
    out.t[base + j] = t0 + int(0xffffffffu - unsigned(k & 0xffffffffu));
  }
  if (threadIdx.x == 0) {
    int c = 0;
    while (c < K && c < n && key[c] != 0) ++c;
    out.count[seg * B + b] = c;
  }
}

// The sequential walk over segments, one warp per sequence: lane 0 owns the lists (at most K
// long); after the first chunks the best candidate of a chunk rarely beats the full pool's
// minimum, so most segments cost a snapshot and one comparison.
__global__ void pool_walk_kernel(int32_t* snap, PoolState st, int32_t* pool_rows, int32_t* cand_rows,
                                 PoolScratch sc, int64_t pos0, Segments segs, int B, int T, int K) {
  __shared__ int64_t ppos[kMaxSlots], cpos[kMaxSlots], mpos[kMaxSlots];
  __shared__ float pprio[kMaxSlots], cscore[kMaxSlots], mscore[kMaxSlots];
  __shared__ int prow[kMaxSlots], crow[kMaxSlots], mrow[kMaxSlots];
  __shared__ int used, ccount;
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
  const int64_t row_base = 2 * int64_t(B) * K + int64_t(b) * T;
  // Lane 0 keeps the full pool's lowest slot (recomputed only after a replacement) and has the
  // next segment's count and best score in flight while it works on this one.
  int low = -1;
  auto find_low = [&]() {
    low = 0;
    for (int j = 1; j < K; ++j)
      if (pprio[j] < pprio[low] || (pprio[j] == pprio[low] && ppos[j] < ppos[low])) low = j;
  };
  // Every 32 segments the lanes fetch the next 32 segments' count, best score and chunk end in
  // one go; lane 0 takes them by shuffle, so the walk waits on memory once per 32 segments.
  int pf_n = 0, pf_closes = 0;
  float pf_best = 0.0f;
  for (int64_t i = 0; i < segs.count; ++i) {
    if ((i & 31) == 0) {
      const int64_t k = i + lane;
      pf_n = k < segs.count ? sc.count[k * B + b] : 0;
      pf_best = k < segs.count ? sc.score[(k * B + b) * K] : 0.0f;
      pf_closes = k < segs.count ? segs.closes[k] : 0;
    }
    const int n = __shfl_sync(0xffffffffu, pf_n, int(i & 31));
    const float best = __shfl_sync(0xffffffffu, pf_best, int(i & 31));
    const bool closes = __shfl_sync(0xffffffffu, pf_closes, int(i & 31)) != 0;
    int32_t* out = snap + (i * B + b) * K;
    for (int j = lane; j < K; j += 32) out[j] = j < used ? prow[j] : -1;
    __syncwarp();
    if (lane == 0) {
      const int64_t base = (i * B + b) * K;
      bool nothing_enters = false;  // the common case: the chunk's best cannot beat the full pool
      if (closes && ccount == 0 && used == K) {
        if (low < 0) find_low();
        nothing_enters = n == 0 || !(best > pprio[low]);
      }
      if (!nothing_enters) {
        // The candidates this chunk has so far: the carried ones merged with this segment's.
        const float* ls = sc.score + base;
        const int32_t* lt = sc.t + base;
        const float* list_s;
        const int64_t* list_p = nullptr;
        const int* list_r = nullptr;
        int m = 0;
        if (ccount == 0) {
          list_s = ls;
          m = n;
        } else {
          int x = 0, y = 0;
          while (m < K && (x < ccount || y < n)) {
            // Carried candidates are earlier than this segment's: they win ties.
            if (y >= n || (x < ccount && cscore[x] >= ls[y])) {
              mscore[m] = cscore[x];
              mpos[m] = cpos[x];
              mrow[m] = crow[x];
              ++x;
            } else {
              mscore[m] = ls[y];
              mpos[m] = pos0 + lt[y];
              mrow[m] = int(row_base + lt[y]);
              ++y;
            }
            ++m;
          }
          list_s = mscore;
          list_p = mpos;
          list_r = mrow;
        }
        if (closes) {
          for (int c = 0; c < m; ++c) {
            const float sc_c = list_s[c];
            const int64_t pc = list_p ? list_p[c] : pos0 + lt[c];
            const int rc = list_r ? list_r[c] : int(row_base + lt[c]);
            if (used < K) {
              ppos[used] = pc;
              pprio[used] = sc_c;
              prow[used] = rc;
              ++used;
              low = -1;
              continue;
            }
            if (low < 0) find_low();
            if (!(sc_c > pprio[low])) break;
            ppos[low] = pc;
            pprio[low] = sc_c;
            prow[low] = rc;
            low = -1;
          }
          ccount = 0;
        } else {
          for (int c = 0; c < m; ++c) {
            cscore[c] = list_s[c];
            cpos[c] = list_p ? list_p[c] : pos0 + lt[c];
            crow[c] = list_r ? list_r[c] : int(row_base + lt[c]);
          }
          ccount = m;
        }
      }
    }
    __syncwarp();
  }
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


constexpr int kTile = 32;  // slots per shared-memory tile

// resident: every slot of the segment is staged once (the usual case, the pools fit in shared
// memory); otherwise one tile at a time, again for each batch of (token, head) pairs.
template <int DH, typename OutT>
__global__ void pool_read_kernel(OutT* o, const float* q, int64_t ldq, Sources src, int nsrc,
                                 Segments segs, int B, int T, int K, int H, int resident) {
  extern __shared__ float4 tile_storage[];  // 16-byte aligned: cap × 2S values, then cap flags
  float* tiles = reinterpret_cast<float*>(tile_storage);
  __shared__ int32_t rows[kTile];
  __shared__ int from[kTile];
  const int S = H * DH;
  const int64_t seg = blockIdx.x;
  const int b = blockIdx.y;
  const int t0 = segs.t0[seg], t1 = segs.t1[seg];
  const int pairs = (t1 - t0) * H;
  const int total_slots = nsrc * K;
  const int ntiles = (total_slots + kTile - 1) / kTile;
  const int cap = resident ? ntiles * kTile : kTile;
  float* valids = tiles + cap * 2 * S;
  const float scale = rsqrtf(float(DH));
  // Stages tile ti into its place: the slot rows first (one lookup per slot), then their keys
  // and values as float4.
  auto stage = [&](int ti) {
    const int p0 = ti * kTile;
    float* tile = resident ? tiles + p0 * 2 * S : tiles;
    float* valid = resident ? valids + p0 : valids;
    __syncthreads();
    if (threadIdx.x < kTile) {
      const int p = p0 + threadIdx.x;
      int32_t r = -1;
      if (p < total_slots) r = src.snap[p / K][(seg * B + b) * K + p % K];
      rows[threadIdx.x] = r;
      from[threadIdx.x] = p < total_slots ? p / K : 0;
      valid[threadIdx.x] = r >= 0 ? 1.0f : 0.0f;
    }
    __syncthreads();
    const int row4 = S / 2;  // float4s in a slot's 2S values
    for (int idx = threadIdx.x; idx < kTile * row4; idx += blockDim.x) {
      const int slot = idx / row4, c4 = idx - slot * row4;
      const int32_t r = rows[slot];
      float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (r >= 0) v = reinterpret_cast<const float4*>(src.kv[from[slot]] + int64_t(r) * 2 * S)[c4];
      reinterpret_cast<float4*>(tile)[idx] = v;
    }
    __syncthreads();
  };
  if (resident)
    for (int ti = 0; ti < ntiles; ++ti) stage(ti);
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
    for (int ti = 0; ti < ntiles; ++ti) {
      if (!resident) stage(ti);
      const float* tile = resident ? tiles + ti * kTile * 2 * S : tiles;
      const float* valid = resident ? valids + ti * kTile : valids;
      float sc[kTile];
      float tmax = -INFINITY;
#pragma unroll
      for (int j = 0; j < kTile; ++j) {
        // 16-byte shared loads: DH and S are multiples of 4, so every head's slice is aligned.
        const float4* k4 = reinterpret_cast<const float4*>(tile + j * 2 * S + h * DH);
        float a = 0.0f;
#pragma unroll
        for (int i = 0; i < DH / 4; ++i) {
          const float4 k = k4[i];
          a += qv[4 * i] * k.x + qv[4 * i + 1] * k.y + qv[4 * i + 2] * k.z + qv[4 * i + 3] * k.w;
        }
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
        const float4* v4 = reinterpret_cast<const float4*>(tile + j * 2 * S + S + h * DH);
#pragma unroll
        for (int i = 0; i < DH / 4; ++i) {
          const float4 v = v4[i];
          acc[4 * i] += w * v.x;
          acc[4 * i + 1] += w * v.y;
          acc[4 * i + 2] += w * v.z;
          acc[4 * i + 3] += w * v.w;
        }
      }
      mx = nmx;
    }
    if (active) {
      const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
#pragma unroll
      for (int i = 0; i < DH; ++i) detail::store(o + row * S + h * DH + i, acc[i] * inv);
    }
  }
}

template <typename OutT>
void launch_read(OutT* o, const float* q, int64_t ldq, const Sources& src, int nsrc, Segments segs,
                 int64_t B, int64_t T, int64_t K, int64_t H, int64_t dh) {
  const int S = int(H * dh);
  const int64_t ntiles = (nsrc * K + kTile - 1) / kTile;
  const size_t resident_smem = (size_t(ntiles * kTile) * 2 * S + size_t(ntiles * kTile)) * sizeof(float);
  const int resident = resident_smem <= 160 * 1024 ? 1 : 0;
  const size_t smem = resident ? resident_smem : (size_t(kTile) * 2 * S + kTile) * sizeof(float);
  dim3 grid(unsigned(segs.count), unsigned(B));
  const int threads = 256;
#define MM_READ(D)                                                                                  \
  if (dh == D) {                                                                                    \
    if (smem > 48 * 1024) {                                                                         \
      MM_CUDA_CHECK(cudaFuncSetAttribute(pool_read_kernel<D, OutT>,                                \
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));  \
    }                                                                                               \
    pool_read_kernel<D, OutT><<<grid, threads, smem>>>(o, q, ldq, src, nsrc, segs, int(B), int(T), \
                                                       int(K), int(H), resident);                   \
    MM_CUDA_LAUNCH_CHECK("pool_read");                                                                      \
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
  MM_CUDA_LAUNCH_CHECK("note_scale");
}

void gather_rows(float* dst, const float* src, const int32_t* rows, int64_t R, int64_t S, void* stream) {
  require(R >= 0 && S > 0, "gather_rows sizes");
  if (R == 0) return;
  gather_rows_kernel<<<unsigned((R * S + 255) / 256), 256, 0, static_cast<cudaStream_t>(stream)>>>(dst, src, rows, R, S);
  MM_CUDA_LAUNCH_CHECK("gather_rows");
}

void pool_evolve(int32_t* snap, PoolState state, int32_t* pool_rows, int32_t* cand_rows,
                 const float* s, int64_t pos0, Segments segs, int64_t B, int64_t T, int64_t K,
                 float tau, PoolScratch scratch, void* stream) {
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  require(K > 0 && K <= kMaxSlots, "pool_slots " + std::to_string(K) + " (at most " + std::to_string(kMaxSlots) + ")");
  require(B > 0 && T >= 0 && 2 * B * K + B * T < (int64_t(1) << 31), "piece too large for 32-bit row indices");
  if (segs.count > 0) {
    dim3 grid(unsigned(segs.count), unsigned(B));
    segment_candidates_kernel<<<grid, 256, 0, st>>>(scratch, s, segs, int(B), int(T), int(K), tau);
    MM_CUDA_LAUNCH_CHECK("segment_candidates");
  }
  pool_walk_kernel<<<unsigned(B), 32, 0, st>>>(snap, state, pool_rows, cand_rows, scratch, pos0, segs, int(B), int(T), int(K));
  MM_CUDA_LAUNCH_CHECK("pool_walk");
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
  if (odt == DType::tf32) throw Error("notes: activations are written as f32 or bf16, not tf32");
  if (odt == DType::f32)
    launch_read(static_cast<float*>(o), q, ldq, src, nsources, segs, B, T, K, H, dh);
  else
    launch_read(static_cast<__nv_bfloat16*>(o), q, ldq, src, nsources, segs, B, T, K, H, dh);
}

}  // namespace mm::cuda

// ---- backward ----------------------------------------------------------------------------------
// note_score and note_scale: one warp per row. pool_read: one block per (segment, sequence), in
// two phases. Phase A, one thread per (token, head): the softmax statistics (log-sum-exp), δ =
// Σ_j P_j (dout·v_j) = dout·o, and dq = scale·Σ_j P_j (dout·v_j − δ) k_j. Phase B, one thread per
// (slot, head): dk_j = scale·Σ_t P_tj (dout_t·v_j − δ_t) q_t and dv_j = Σ_t P_tj dout_t over the
// segment's tokens, added to the slot's row once (atomics: later segments read the same rows).
namespace mm::cuda {

namespace {

__device__ __forceinline__ float warp_sum_n(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

constexpr int kRowWarps = 8;

__global__ void note_score_backward_kernel(float* __restrict__ dv, float* __restrict__ dw, float* __restrict__ db,
                                           const float* __restrict__ ds, const float* __restrict__ s,
                                           const float* __restrict__ v, const float* __restrict__ w,
                                           int64_t M, int64_t D) {
  extern __shared__ float dw_part[];  // D, then db
  for (int64_t i = threadIdx.x; i <= D; i += blockDim.x) dw_part[i] = 0.f;
  __syncthreads();
  const int lane = threadIdx.x & 31;
  for (int64_t row = int64_t(blockIdx.x) * kRowWarps + (threadIdx.x >> 5); row < M;
       row += int64_t(gridDim.x) * kRowWarps) {
    const float sr = s[row];
    const float dl = ds[row] * sr * (1.0f - sr);
    if (dl == 0.0f) continue;
    for (int64_t i = lane; i < D; i += 32) {
      dv[row * D + i] += dl * w[i];
      atomicAdd(dw_part + i, dl * v[row * D + i]);
    }
    if (lane == 0) atomicAdd(dw_part + D, dl);
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) atomicAdd(dw + i, dw_part[i]);
  if (threadIdx.x == 0) atomicAdd(db, dw_part[D]);
}

__global__ void note_scale_backward_kernel(float* __restrict__ dm, int64_t lddm, float* __restrict__ ds,
                                           const float* __restrict__ dn, int64_t ldn, const float* __restrict__ s,
                                           const float* __restrict__ m, int64_t ldm, int64_t M, int64_t S) {
  const int lane = threadIdx.x & 31;
  const int64_t row = int64_t(blockIdx.x) * kRowWarps + (threadIdx.x >> 5);
  if (row >= M) return;
  const float sr = s[row];
  float acc = 0.f;
  for (int64_t c = lane; c < S; c += 32) {
    const float g = dn[row * ldn + c];
    dm[row * lddm + c] = sr * g;
    acc = fmaf(g, m[row * ldm + c], acc);
  }
  acc = warp_sum_n(acc);
  if (lane == 0) ds[row] = acc;
}

constexpr int kReadBwdThreads = 256;

struct GradSources {
  float* kv[kMaxReadSources];
};
constexpr int kMaxReadSlots = kMaxReadSources * kMaxSlots;

template <int DH>
__global__ void __launch_bounds__(kReadBwdThreads)
pool_read_backward_kernel(float* __restrict__ dq, int64_t lddq, GradSources dsrc, const float* __restrict__ dout,
                          const float* __restrict__ q, int64_t ldq, Sources src, int nsrc, Segments segs,
                          int B, int T, int K, int H) {
  extern __shared__ float stats[];  // rows×H log-sum-exp, then rows×H δ
  __shared__ int32_t rows[kMaxReadSlots];
  const int S = H * DH;
  const int64_t seg = blockIdx.x;
  const int b = blockIdx.y;
  const int t0 = segs.t0[seg], t1 = segs.t1[seg], len = t1 - t0;
  const int total = nsrc * K;
  const float scale = rsqrtf(float(DH));
  for (int p = threadIdx.x; p < total; p += blockDim.x) rows[p] = src.snap[p / K][(seg * B + b) * K + p % K];
  __syncthreads();
  bool any = false;
  for (int p = 0; p < total && !any; ++p) any = rows[p] >= 0;
  const int pairs = len * H;
  float* lse = stats;
  float* delta = stats + pairs;
  if (!any) {  // nothing visible: o = 0, no gradient flows
    for (int pair = threadIdx.x; pair < pairs; pair += blockDim.x) {
      const int h = pair / len, t = t0 + pair % len;
      const int64_t row = int64_t(b) * T + t;
#pragma unroll
      for (int i = 0; i < DH; ++i) dq[row * lddq + h * DH + i] = 0.f;
    }
    return;
  }
  // Phase A: per (token, head).
  for (int pair = threadIdx.x; pair < pairs; pair += blockDim.x) {
    const int h = pair / len, t = t0 + pair % len;
    const int64_t row = int64_t(b) * T + t;
    float qv[DH], go[DH];
#pragma unroll
    for (int i = 0; i < DH; ++i) {
      qv[i] = q[row * ldq + h * DH + i] * scale;
      go[i] = dout[row * S + h * DH + i];
    }
    float mx = -INFINITY;
    for (int p = 0; p < total; ++p) {
      if (rows[p] < 0) continue;
      const float* k = src.kv[p / K] + int64_t(rows[p]) * 2 * S + h * DH;
      float a = 0.f;
#pragma unroll
      for (int i = 0; i < DH; ++i) a = fmaf(qv[i], k[i], a);
      mx = fmaxf(mx, a);
    }
    float sum = 0.f, dsum = 0.f;
    for (int p = 0; p < total; ++p) {
      if (rows[p] < 0) continue;
      const float* k = src.kv[p / K] + int64_t(rows[p]) * 2 * S + h * DH;
      float a = 0.f, dp = 0.f;
#pragma unroll
      for (int i = 0; i < DH; ++i) {
        a = fmaf(qv[i], k[i], a);
        dp = fmaf(go[i], k[S + i], dp);
      }
      const float e = __expf(a - mx);
      sum += e;
      dsum = fmaf(e, dp, dsum);
    }
    const float l = mx + __logf(sum), dl = dsum / sum;
    lse[pair] = l;
    delta[pair] = dl;
    float gq[DH];
#pragma unroll
    for (int i = 0; i < DH; ++i) gq[i] = 0.f;
    for (int p = 0; p < total; ++p) {
      if (rows[p] < 0) continue;
      const float* k = src.kv[p / K] + int64_t(rows[p]) * 2 * S + h * DH;
      float a = 0.f, dp = 0.f;
#pragma unroll
      for (int i = 0; i < DH; ++i) {
        a = fmaf(qv[i], k[i], a);
        dp = fmaf(go[i], k[S + i], dp);
      }
      const float g = __expf(a - l) * (dp - dl);
#pragma unroll
      for (int i = 0; i < DH; ++i) gq[i] = fmaf(g, k[i], gq[i]);
    }
#pragma unroll
    for (int i = 0; i < DH; ++i) dq[row * lddq + h * DH + i] = gq[i] * scale;
  }
  __syncthreads();
  // Phase B: per (slot, head).
  for (int idx = threadIdx.x; idx < total * H; idx += blockDim.x) {
    const int p = idx / H, h = idx % H;
    if (rows[p] < 0) continue;
    const float* kv = src.kv[p / K] + int64_t(rows[p]) * 2 * S;
    float kk[DH], vv[DH], gk[DH], gv[DH];
#pragma unroll
    for (int i = 0; i < DH; ++i) {
      kk[i] = kv[h * DH + i];
      vv[i] = kv[S + h * DH + i];
      gk[i] = 0.f;
      gv[i] = 0.f;
    }
    for (int t = t0; t < t1; ++t) {
      const int64_t row = int64_t(b) * T + t;
      const int pair = h * len + (t - t0);
      const float* qr = q + row * ldq + h * DH;
      const float* gr = dout + row * S + h * DH;
      float a = 0.f, dp = 0.f;
#pragma unroll
      for (int i = 0; i < DH; ++i) {
        a = fmaf(qr[i], kk[i], a);
        dp = fmaf(gr[i], vv[i], dp);
      }
      const float P = __expf(a * scale - lse[pair]);
      const float g = P * (dp - delta[pair]) * scale;
#pragma unroll
      for (int i = 0; i < DH; ++i) {
        gk[i] = fmaf(g, qr[i], gk[i]);
        gv[i] = fmaf(P, gr[i], gv[i]);
      }
    }
    float* d = dsrc.kv[p / K] + int64_t(rows[p]) * 2 * S;
#pragma unroll
    for (int i = 0; i < DH; ++i) {
      atomicAdd(d + h * DH + i, gk[i]);
      atomicAdd(d + S + h * DH + i, gv[i]);
    }
  }
}

}  // namespace

void note_score_backward(float* dv, float* dw, float* db, const float* ds, const float* s, const float* v,
                         const float* w, int64_t M, int64_t D) {
  require(M > 0 && D > 0 && D <= 4096, "note_score_backward sizes");
  require(dv && dw && db && ds && s && v && w, "note_score_backward: null pointer");
  const unsigned grid = unsigned(std::min<int64_t>((M + kRowWarps - 1) / kRowWarps, int64_t(detail::sm_count()) * 8));
  note_score_backward_kernel<<<grid, kRowWarps * 32, size_t(D + 1) * 4>>>(dv, dw, db, ds, s, v, w, M, D);
  MM_CUDA_LAUNCH_CHECK("note_score_backward");
}

void note_scale_backward(float* dm, int64_t lddm, float* ds, const float* dn, int64_t ldn, const float* s,
                         const float* m, int64_t ldm, int64_t M, int64_t S) {
  require(M > 0 && S > 0 && lddm >= S && ldn >= S && ldm >= S, "note_scale_backward sizes");
  require(dm && ds && dn && s && m, "note_scale_backward: null pointer");
  note_scale_backward_kernel<<<detail::blocks_for(M, kRowWarps), kRowWarps * 32>>>(dm, lddm, ds, dn, ldn, s, m, ldm, M, S);
  MM_CUDA_LAUNCH_CHECK("note_scale_backward");
}

void pool_read_backward(float* dq, int64_t lddq, float* const* dkv, const float* dout, const float* q,
                        int64_t ldq, const ReadSource* sources, int nsources, Segments segs, int64_t B,
                        int64_t T, int64_t K, int64_t H, int64_t dh) {
  require(nsources >= 1 && nsources <= kMaxReadSources, "read sources " + std::to_string(nsources));
  require(K > 0 && K <= kMaxSlots, "pool_slots " + std::to_string(K));
  require(ldq >= H * dh && lddq >= H * dh && B > 0, "pool_read_backward sizes");
  require(dq && dkv && dout && q && sources, "pool_read_backward: null pointer");
  for (int i = 0; i < nsources; ++i) require(dkv[i] && sources[i].kv && sources[i].snap, "pool_read_backward: null source");
  if (segs.count == 0) return;
  Sources src{};
  GradSources dsrc{};
  for (int i = 0; i < nsources; ++i) {
    src.kv[i] = sources[i].kv;
    src.snap[i] = sources[i].snap;
    dsrc.kv[i] = dkv[i];
  }
  // Segments live on the device; their bound (a memory chunk, at most kMaxSegment rows, as
  // pool_evolve requires) sizes the statistics: 2·rows·H floats.
  const size_t smem = size_t(2 * kMaxSegment * H) * sizeof(float);
  require(smem <= 200 * 1024, "pool_read_backward: too many heads for the shared statistics");
  dim3 grid(unsigned(segs.count), unsigned(B));
#define MM_READ_BWD(D)                                                                                   \
  if (dh == D) {                                                                                         \
    if (smem > 48 * 1024)                                                                                \
      MM_CUDA_CHECK(cudaFuncSetAttribute(pool_read_backward_kernel<D>,                                   \
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));       \
    pool_read_backward_kernel<D><<<grid, kReadBwdThreads, smem>>>(dq, lddq, dsrc, dout, q, ldq, src,     \
                                                                  nsources, segs, int(B), int(T), int(K), \
                                                                  int(H));                               \
    MM_CUDA_LAUNCH_CHECK("pool_read_backward");                                                          \
    return;                                                                                              \
  }
  MM_READ_BWD(4)
  MM_READ_BWD(8)
  MM_READ_BWD(16)
  MM_READ_BWD(32)
#undef MM_READ_BWD
  require(false, "note head width " + std::to_string(dh) + " (supported: 4, 8, 16, 32)");
}

}  // namespace mm::cuda
