// Note ops on the GPU. Shapes and row conventions in kernels/cuda/notes.hpp.
//
// pool_evolve is sequential over segments by nature (each chunk's commit depends on the pool
// the previous chunks left). Each segment's best K candidates are sorted first, all segments in
// parallel; then one warp per sequence walks the segments with the pool and the carried
// candidates in shared memory, committing in order and stopping at the first candidate that
// cannot enter (later ones score no higher).
// pool_read is one block per (segment, sequence) with the segment's visible slots staged in shared
// memory: d_h 16 on the tensor cores (split-bf16 mma, ~1e-5 relative error), other widths and pools
// too large for shared memory with fp32 FMAs, several tokens a thread (details at the kernels).
#include "kernels/cuda/notes.hpp"

#include <algorithm>
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

// The sequential walk over segments, one warp per sequence. The warp moves in lockstep: `used`,
// `ccount` and `low` are the same in every lane; slot lists live in shared memory. After the
// first chunks the best candidate of a chunk rarely beats the full pool's minimum: the lanes
// test 32 segments at once and write the snapshots of a run of such segments together. When a
// chunk does change the pool, the lanes load its list together and find the lowest slot with a
// warp reduction over copies of the slots held in registers (lane l owns slots l + 32q), so no
// step of it waits on shared memory; a changing segment needs one per replacement plus one.
struct LaneSlots {
  float prio[kMaxSlots / 32];
  int64_t pos[kMaxSlots / 32];
};

// The full pool's lowest slot by (priority, position) and its priority; every lane gets both.
__device__ __forceinline__ int warp_lowest_slot(const LaneSlots& mine, int K, int lane, float& low_prio) {
  int best = -1;
  float bp = 0.0f;
  long long bpos = 0;
#pragma unroll
  for (int q = 0; q < kMaxSlots / 32; ++q) {
    const int j = lane + 32 * q;
    if (j < K && (best < 0 || mine.prio[q] < bp || (mine.prio[q] == bp && mine.pos[q] < bpos))) {
      best = j;
      bp = mine.prio[q];
      bpos = mine.pos[q];
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const int ob = __shfl_xor_sync(0xffffffffu, best, o);
    const float op = __shfl_xor_sync(0xffffffffu, bp, o);
    const long long opos = __shfl_xor_sync(0xffffffffu, bpos, o);
    if (ob >= 0 && (best < 0 || op < bp || (op == bp && opos < bpos))) {
      best = ob;
      bp = op;
      bpos = opos;
    }
  }
  low_prio = bp;
  return best;
}

// The first n entries of the candidate list at `base` into registers: lane c % 32 gets entry c.
__device__ __forceinline__ void fetch_list(float* pf_s, int* pf_t, const PoolScratch& sc, int64_t base, int n,
                                           int lane) {
#pragma unroll
  for (int q = 0; q < kMaxSlots / 32; ++q) {
    const int c = lane + 32 * q;
    if (c < n) {
      pf_s[q] = sc.score[base + c];
      pf_t[q] = sc.t[base + c];
    }
  }
}

// The counts, best scores and chunk ends of the 32 segments from k0 on (lane l: segment k0 + l).
__device__ __forceinline__ void load_window(const PoolScratch& sc, const Segments& segs, int64_t k0, int B, int b,
                                            int K, int lane, int& n, float& best, int& closes) {
  const int64_t k = k0 + lane;
  n = k < segs.count ? sc.count[k * B + b] : 0;
  best = k < segs.count ? sc.score[(k * B + b) * K] : 0.0f;
  closes = k < segs.count ? segs.closes[k] : 0;
}

__global__ void pool_walk_kernel(int32_t* snap, PoolState st, int32_t* pool_rows, int32_t* cand_rows,
                                 PoolScratch sc, int64_t pos0, Segments segs, int B, int T, int K) {
  __shared__ int64_t ppos[kMaxSlots], cpos[kMaxSlots], mpos[kMaxSlots];
  __shared__ float pprio[kMaxSlots], cscore[kMaxSlots], mscore[kMaxSlots];
  __shared__ int prow[kMaxSlots], crow[kMaxSlots], mrow[kMaxSlots];
  const int b = blockIdx.x, lane = threadIdx.x;
  int used = st.used[b], ccount = st.cand_count[b];
  for (int j = lane; j < K; j += 32) {
    ppos[j] = st.pos[b * K + j];
    pprio[j] = st.prio[b * K + j];
    prow[j] = j < used ? b * K + j : -1;
    cpos[j] = st.cand_pos[b * K + j];
    cscore[j] = st.cand_score[b * K + j];
    crow[j] = j < ccount ? B * K + b * K + j : -1;
  }
  __syncwarp();
  LaneSlots mine;
#pragma unroll
  for (int q = 0; q < kMaxSlots / 32; ++q) {
    const int j = lane + 32 * q;
    mine.prio[q] = j < K ? pprio[j] : 0.0f;
    mine.pos[q] = j < K ? ppos[j] : -1;
  }
  const int64_t row_base = 2 * int64_t(B) * K + int64_t(b) * T;
  int low = -1;  // the full pool's lowest slot, or -1 after a change
  float low_prio = 0.0f;
  // The lanes hold the count, best score and chunk end of the 32 segments from `window` on;
  // the next window's are loaded a window ahead (runs stop at a window's end, so windows follow
  // each other 32 segments apart).
  int64_t window = 0;
  int w_n, w_closes, nx_n, nx_closes;
  float w_best, nx_best;
  load_window(sc, segs, 0, B, b, K, lane, w_n, w_best, w_closes);
  load_window(sc, segs, 32, B, b, K, lane, nx_n, nx_best, nx_closes);
  // A candidate list fetched before it is needed, so its memory latency hides behind other work:
  // that of the segment that ends a quiet run (behind the run's snapshots), or that of the
  // segment after a changing one (behind its commit). Lane c % 32 holds entry c.
  int64_t pf_seg = -1;
  float pf_s[kMaxSlots / 32];
  int pf_t[kMaxSlots / 32];
  for (int64_t i = 0; i < segs.count;) {
    if (i >= window + 32) {
      window += 32;
      w_n = nx_n, w_best = nx_best, w_closes = nx_closes;
      load_window(sc, segs, window + 32, B, b, K, lane, nx_n, nx_best, nx_closes);
    }
    if (ccount == 0 && used == K) {
      // The common case: a closing segment whose best cannot beat the full pool's lowest slot
      // leaves the pool as it is. The lanes test the window's segments at once; the run of
      // such segments from i on gets its snapshots (all the current pool) written together.
      if (low < 0) low = warp_lowest_slot(mine, K, lane, low_prio);
      const int64_t k = window + lane;
      const bool quiet = k < segs.count && w_closes != 0 && (w_n == 0 || !(w_best > low_prio));
      const unsigned stop = __ballot_sync(0xffffffffu, k >= i && !quiet);
      const int64_t run = (stop ? __ffs(int(stop)) - 1 : 32) - (i - window);
      if (run > 0) {
        const int64_t next = i + run;
        if (next < window + 32 && next < segs.count) {
          fetch_list(pf_s, pf_t, sc, (next * B + b) * K, __shfl_sync(0xffffffffu, w_n, int(next - window)), lane);
          pf_seg = next;
        }
        for (int j = lane; j < K; j += 32) {
          const int r = prow[j];
          for (int64_t q = 0; q < run; ++q) snap[((i + q) * B + b) * K + j] = r;
        }
        i += run;
        continue;
      }
    }
    // Segment i changes the pool or the carried candidates.
    const int at = int(i - window);
    const int n = __shfl_sync(0xffffffffu, w_n, at);
    const bool closes = __shfl_sync(0xffffffffu, w_closes, at) != 0;
    int32_t* out = snap + (i * B + b) * K;
    for (int j = lane; j < K; j += 32) out[j] = j < used ? prow[j] : -1;
    // The candidates this chunk has so far, best first: this segment's, merged behind the
    // carried ones when a chunk spans pieces (carried candidates are earlier: they win ties).
    const int64_t base = (i * B + b) * K;
    const float* ls = sc.score + base;
    const int32_t* lt = sc.t + base;
    int m = 0;
    if (ccount == 0) {
      if (pf_seg == i) {
#pragma unroll
        for (int q = 0; q < kMaxSlots / 32; ++q) {
          const int c = lane + 32 * q;
          if (c < n) {
            mscore[c] = pf_s[q];
            mpos[c] = pos0 + pf_t[q];
            mrow[c] = int(row_base + pf_t[q]);
          }
        }
      } else {
        for (int c = lane; c < n; c += 32) {
          mscore[c] = ls[c];
          mpos[c] = pos0 + lt[c];
          mrow[c] = int(row_base + lt[c]);
        }
      }
      m = n;
    } else {
      if (lane == 0) {
        int x = 0, y = 0;
        while (m < K && (x < ccount || y < n)) {
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
      }
      m = __shfl_sync(0xffffffffu, m, 0);
    }
    if (i + 1 < segs.count) {  // the next segment's list, in case it changes the pool too
      fetch_list(pf_s, pf_t, sc, ((i + 1) * B + b) * K, K, lane);
      pf_seg = i + 1;
    }
    __syncwarp();
    if (closes) {  // commit in order: fill free slots, then replace the lowest while it is lower
      for (int c = 0; c < m; ++c) {
        const float sc_c = mscore[c];
        int slot;
        if (used < K) {
          slot = used++;
        } else {
          if (low < 0) low = warp_lowest_slot(mine, K, lane, low_prio);
          if (!(sc_c > low_prio)) break;
          slot = low;
        }
        if (lane == slot % 32) {  // the slot's owner updates its register copy
#pragma unroll
          for (int q = 0; q < kMaxSlots / 32; ++q)
            if (q == slot / 32) {
              mine.prio[q] = sc_c;
              mine.pos[q] = mpos[c];
            }
        }
        __syncwarp();  // every lane has read the slots before lane 0 rewrites one
        if (lane == 0) {
          ppos[slot] = mpos[c];
          pprio[slot] = sc_c;
          prow[slot] = mrow[c];
        }
        low = -1;
        __syncwarp();
      }
      ccount = 0;
    } else {  // the chunk goes on in the next piece: carry its candidates
      for (int c = lane; c < m; c += 32) {
        cscore[c] = mscore[c];
        cpos[c] = mpos[c];
        crow[c] = mrow[c];
      }
      ccount = m;
    }
    __syncwarp();
    ++i;
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


// ---- forward read ----------------------------------------------------------------------------
// Both kernels start alike: one block per (segment, sequence) lists the segment's visible slots
// (source, row) in slot order (empty slots dropped, so they cost nothing), then stages their keys
// and values in shared memory.
// pool_read_mma_kernel (d_h 16, all slots resident): one warp per (16 tokens, head) at a time,
// FlashAttention-style on the tensor cores: scores = Q·Kᵀ and O = P·V with mma.sync m16n8k16,
// each operand split in two bf16 terms (x = hi + lo, 16 significant bits) and the products
// hi·hi + hi·lo + lo·hi summed in fp32 (3 mma per product: a relative error ≈ 2⁻¹⁶ per score and
// weight, fp32 accumulation); an online softmax over tiles of 32 slots in registers.
// pool_read_kernel (any head width; resident, or streamed through shared memory in chunks of
// slots for pools that do not fit): fp32 FMA, each thread holds TB tokens of one head (q and the
// accumulators in registers), a warp shares one head so each key and value is one broadcast
// shared-memory load reused TB times; an online softmax over tiles of NJ slots.
constexpr int kReadThreads = 256;
constexpr int kReadVisibleMax = kMaxReadSources * kMaxSlots;
constexpr float kLog2e = 1.4426950408889634f;

// Lists the visible slots of (segment seg, sequence b) over all sources, in order: rows[i] (the
// kv row) and from[i] (its source). Returns their count. Every thread of the block calls it.
__device__ int list_visible(int32_t* rows, uint8_t* from, const Sources& src, int nsrc, int64_t seg, int b,
                            int B, int K) {
  __shared__ int warp_n[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int total = nsrc * K;
  int count = 0;
  for (int base = 0; base < total; base += blockDim.x) {
    const int p = base + threadIdx.x;
    int32_t r = -1;
    int s = 0;
    if (p < total) {
      s = p / K;
      r = src.snap[s][(seg * B + b) * K + (p - s * K)];
    }
    const unsigned vis = __ballot_sync(0xffffffffu, r >= 0);
    if (lane == 0) warp_n[warp] = __popc(vis);
    __syncthreads();
    int before = count, all = count;
    for (int w = 0; w < nwarps; ++w) {
      const int c = warp_n[w];
      before += w < warp ? c : 0;
      all += c;
    }
    if (r >= 0) {
      const int at = before + __popc(vis & ((1u << lane) - 1u));
      rows[at] = r;
      from[at] = uint8_t(s);
    }
    count = all;
    __syncthreads();
  }
  return count;
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

__device__ __forceinline__ int round_up_to(int n, int m) { return (n + m - 1) / m * m; }

// Stores 4 consecutive outputs (16 bytes fp32, 8 bytes bf16; p aligned to that).
__device__ __forceinline__ void store4(float* p, float a, float b, float c, float d) {
  *reinterpret_cast<float4*>(p) = make_float4(a, b, c, d);
}
__device__ __forceinline__ void store4(__nv_bfloat16* p, float a, float b, float c, float d) {
  const __nv_bfloat162 lo = __floats2bfloat162_rn(a, b), hi = __floats2bfloat162_rn(c, d);
  uint2 u;
  u.x = *reinterpret_cast<const uint32_t*>(&lo);
  u.y = *reinterpret_cast<const uint32_t*>(&hi);
  *reinterpret_cast<uint2*>(p) = u;
}
// Stores 2 consecutive outputs (8 bytes fp32, 4 bytes bf16; p aligned to that).
__device__ __forceinline__ void store2(float* p, float a, float b) { *reinterpret_cast<float2*>(p) = make_float2(a, b); }
__device__ __forceinline__ void store2(__nv_bfloat16* p, float a, float b) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
}

// ---- fp32 FMA kernel ----
// Copies the keys and values of visible slots [c0, c0 + n) into kvs (slot-major, 2S floats a
// slot) and zeroes slots [n, n_pad). The caller synchronizes the block afterwards.
__device__ void stage_f32(float* kvs, const int32_t* rows, const uint8_t* from, const Sources& src, int c0, int n,
                          int n_pad, int S) {
  const int row4 = S / 2;  // float4s in a slot's 2S values
  for (int idx = threadIdx.x; idx < n_pad * row4; idx += blockDim.x) {
    const int j = idx / row4, c4 = idx - j * row4;
    float4* dst = reinterpret_cast<float4*>(kvs) + idx;
    if (j < n)
      cp_async16(dst, reinterpret_cast<const float4*>(src.kv[from[c0 + j]] + int64_t(rows[c0 + j]) * 2 * S) + c4);
    else
      *dst = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  }
  cp_async_wait_all();
}

// NJ staged slots [j0, j0 + NJ) for TB tokens of head h (kTail: slots ≥ n are padding). Scores
// are in the log2 domain (q carries scale·log2 e).
template <int DH, int TB, int NJ, bool kTail>
__device__ __forceinline__ void read_tile(const float* kvs, int S, int h, int j0, int n, const float (&qv)[TB][DH],
                                          float (&acc)[TB][DH], float (&mx)[TB], float (&sum)[TB]) {
  float sc[TB][NJ];
#pragma unroll
  for (int jj = 0; jj < NJ; ++jj) {
    // 16-byte shared loads: DH and S are multiples of 4, so every head's slice is aligned.
    const float4* k4 = reinterpret_cast<const float4*>(kvs + (j0 + jj) * 2 * S + h * DH);
    float a[TB];
#pragma unroll
    for (int t = 0; t < TB; ++t) a[t] = 0.0f;
#pragma unroll
    for (int i = 0; i < DH / 4; ++i) {
      const float4 k = k4[i];
#pragma unroll
      for (int t = 0; t < TB; ++t) {
        a[t] = fmaf(qv[t][4 * i], k.x, a[t]);
        a[t] = fmaf(qv[t][4 * i + 1], k.y, a[t]);
        a[t] = fmaf(qv[t][4 * i + 2], k.z, a[t]);
        a[t] = fmaf(qv[t][4 * i + 3], k.w, a[t]);
      }
    }
#pragma unroll
    for (int t = 0; t < TB; ++t) sc[t][jj] = (kTail && j0 + jj >= n) ? -INFINITY : a[t];
  }
#pragma unroll
  for (int t = 0; t < TB; ++t) {
    float tmax = sc[t][0];
#pragma unroll
    for (int jj = 1; jj < NJ; ++jj) tmax = fmaxf(tmax, sc[t][jj]);
    if (tmax > mx[t]) {  // a tile holds at least one visible slot: tmax is finite
      const float corr = detail::ex2(mx[t] - tmax);  // mx = −inf at first: corr = 0
      sum[t] *= corr;
#pragma unroll
      for (int i = 0; i < DH; ++i) acc[t][i] *= corr;
      mx[t] = tmax;
    }
  }
#pragma unroll
  for (int jj = 0; jj < NJ; ++jj) {
    float p[TB];
#pragma unroll
    for (int t = 0; t < TB; ++t) {
      p[t] = detail::ex2(sc[t][jj] - mx[t]);  // −inf → 0
      sum[t] += p[t];
    }
    const float4* v4 = reinterpret_cast<const float4*>(kvs + (j0 + jj) * 2 * S + S + h * DH);
#pragma unroll
    for (int i = 0; i < DH / 4; ++i) {
      const float4 v = v4[i];
#pragma unroll
      for (int t = 0; t < TB; ++t) {
        acc[t][4 * i] = fmaf(p[t], v.x, acc[t][4 * i]);
        acc[t][4 * i + 1] = fmaf(p[t], v.y, acc[t][4 * i + 1]);
        acc[t][4 * i + 2] = fmaf(p[t], v.z, acc[t][4 * i + 2]);
        acc[t][4 * i + 3] = fmaf(p[t], v.w, acc[t][4 * i + 3]);
      }
    }
  }
}

// cap: slots the dynamic shared memory holds (a multiple of NJ). A segment with at most cap
// visible slots stages them once; otherwise they stream through in chunks of cap, again for
// each batch of the block's (token group, head) pairs.
template <int DH, int TB, int NJ, int MINB, typename OutT>
__global__ void __launch_bounds__(kReadThreads, MINB)
pool_read_kernel(OutT* __restrict__ o, const float* __restrict__ q, int64_t ldq, Sources src, int nsrc,
                 Segments segs, int B, int T, int K, int H, int cap) {
  extern __shared__ float4 kv_storage[];  // cap × 2S floats
  float* kvs = reinterpret_cast<float*>(kv_storage);
  __shared__ int32_t rows[kReadVisibleMax];
  __shared__ uint8_t from[kReadVisibleMax];
  const int S = H * DH;
  const int64_t seg = blockIdx.x;
  const int b = blockIdx.y;
  const int t0 = segs.t0[seg], L = segs.t1[seg] - t0;
  if (L <= 0) return;
  const int nvis = list_visible(rows, from, src, nsrc, seg, b, B, K);
  const bool resident = nvis <= cap;
  if (resident) {
    stage_f32(kvs, rows, from, src, 0, nvis, round_up_to(nvis, NJ), S);
    __syncthreads();
  }
  // Token groups per head, a multiple of 32 so a warp shares one head: thread (h, g) takes the
  // tokens g, g + G, ..., g + (TB−1)·G of the segment.
  const int G = round_up_to((L + TB - 1) / TB, 32);
  const int pairs = H * G;
  const float qscale = rsqrtf(float(DH)) * kLog2e;
  const bool qvec = ((reinterpret_cast<uintptr_t>(q) | uintptr_t(ldq * 4)) & 15) == 0;
  const bool ovec = (reinterpret_cast<uintptr_t>(o) & 15) == 0;
  for (int pair0 = 0; pair0 < pairs; pair0 += blockDim.x) {
    const int pair = pair0 + threadIdx.x;
    const int h = pair < pairs ? pair / G : 0;
    const int g = pair - (pair / G) * G;
    float qv[TB][DH], acc[TB][DH], mx[TB], sum[TB];
#pragma unroll
    for (int t = 0; t < TB; ++t) {
      const int tok = g + t * G;
      const bool active = pair < pairs && tok < L;
      const float* qr = q + (int64_t(b) * T + t0 + (active ? tok : 0)) * ldq + h * DH;
      if (qvec) {
#pragma unroll
        for (int i = 0; i < DH / 4; ++i) {
          const float4 v = active ? reinterpret_cast<const float4*>(qr)[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
          qv[t][4 * i] = v.x * qscale;
          qv[t][4 * i + 1] = v.y * qscale;
          qv[t][4 * i + 2] = v.z * qscale;
          qv[t][4 * i + 3] = v.w * qscale;
        }
      } else {
#pragma unroll
        for (int i = 0; i < DH; ++i) qv[t][i] = active ? qr[i] * qscale : 0.0f;
      }
#pragma unroll
      for (int i = 0; i < DH; ++i) acc[t][i] = 0.0f;
      mx[t] = -INFINITY;
      sum[t] = 0.0f;
    }
    for (int c0 = 0; c0 < nvis; c0 += cap) {  // one pass when resident
      const int n = min(cap, nvis - c0);
      if (!resident) {
        __syncthreads();  // the previous chunk is read
        stage_f32(kvs, rows, from, src, c0, n, round_up_to(n, NJ), S);
        __syncthreads();
      }
      int j0 = 0;
      for (; j0 + NJ <= n; j0 += NJ) read_tile<DH, TB, NJ, false>(kvs, S, h, j0, n, qv, acc, mx, sum);
      if (j0 < n) read_tile<DH, TB, NJ, true>(kvs, S, h, j0, n, qv, acc, mx, sum);
    }
#pragma unroll
    for (int t = 0; t < TB; ++t) {
      const int tok = g + t * G;
      if (pair >= pairs || tok >= L) continue;
      const float inv = sum[t] > 0.0f ? 1.0f / sum[t] : 0.0f;  // no visible slot: o = 0
      OutT* orow = o + (int64_t(b) * T + t0 + tok) * S + h * DH;
      if (ovec) {
#pragma unroll
        for (int i = 0; i < DH / 4; ++i)
          store4(orow + 4 * i, acc[t][4 * i] * inv, acc[t][4 * i + 1] * inv, acc[t][4 * i + 2] * inv,
                 acc[t][4 * i + 3] * inv);
      } else {
#pragma unroll
        for (int i = 0; i < DH; ++i) detail::store(orow + i, acc[t][i] * inv);
      }
    }
  }
}

// ---- tensor-core kernel (d_h 16) ----
__device__ __forceinline__ uint32_t pack_bf16(float lo_k, float hi_k) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo_k, hi_k);  // .x (low half) = lo_k
  return *reinterpret_cast<const uint32_t*>(&v);
}
// (x0, x1) = hi + lo, both bf16x2.
__device__ __forceinline__ void split_bf16(float x0, float x1, uint32_t& hi, uint32_t& lo) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(x0, x1);
  const float2 f = __bfloat1622float2(h);
  hi = *reinterpret_cast<const uint32_t*>(&h);
  lo = pack_bf16(x0 - f.x, x1 - f.y);
}
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const void* p) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

constexpr int kMmaSlotTile = 32;  // slots per online-softmax step (4 score n-tiles, 2 P·V k-steps)

// Shared memory: every visible slot's row lands by cp.async (all in flight at once) in a slot-major
// row of RS = 4S + 8 bf16 (2S + 4 floats), then each warp splits rows in place into
// [K hi | K lo | V hi | V lo] (S bf16 each; the 16-byte pad keeps ldmatrix's 8 rows on distinct
// banks). Each warp loads the next task's q while it computes the current one.
template <int THREADS, int MINB, typename OutT>
__global__ void __launch_bounds__(THREADS, MINB)
pool_read_mma_kernel(OutT* __restrict__ o, const float* __restrict__ q, int64_t ldq, Sources src, int nsrc,
                      Segments segs, int B, int T, int K, int H) {
  constexpr int DH = 16;
  extern __shared__ float4 kv_storage[];
  __shared__ int32_t rows[kReadVisibleMax];
  __shared__ uint8_t from[kReadVisibleMax];
  const int S = H * DH, rsf = 2 * S + 4, RS = 2 * rsf;
  float* kvf = reinterpret_cast<float*>(kv_storage);
  const __nv_bfloat16* kvb = reinterpret_cast<const __nv_bfloat16*>(kv_storage);
  const int64_t seg = blockIdx.x;
  const int b = blockIdx.y;
  const int t0 = segs.t0[seg], L = segs.t1[seg] - t0;
  if (L <= 0) return;
  const int nvis = list_visible(rows, from, src, nsrc, seg, b, B, K);
  const int npad = round_up_to(nvis, kMmaSlotTile);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = THREADS / 32;
  {
    const int row4 = S / 2;  // float4s in a slot's 2S values
    for (int idx = threadIdx.x; idx < npad * row4; idx += THREADS) {
      const int j = idx / row4, c4 = idx - j * row4;
      float4* dst = reinterpret_cast<float4*>(kvf + j * rsf) + c4;
      if (j < nvis)
        cp_async16(dst, reinterpret_cast<const float4*>(src.kv[from[j]] + int64_t(rows[j]) * 2 * S) + c4);
      else
        *dst = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    cp_async_wait_all();
    __syncthreads();
    // In place: a warp reads a whole row (S ≤ 256: at most 4 float4s a lane), then writes it split.
    for (int j = warp; j < npad; j += nwarps) {
      const float4* r4 = reinterpret_cast<const float4*>(kvf + j * rsf);
      float4 v[4];
#pragma unroll
      for (int u = 0; u < 4; ++u)
        if (lane + 32 * u < row4) v[u] = r4[lane + 32 * u];
      __syncwarp();
      __nv_bfloat16* rb = reinterpret_cast<__nv_bfloat16*>(kvf + j * rsf);
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int i = lane + 32 * u;
        if (i >= row4) continue;
        const int c = 4 * i;
        uint2 hi, lo;
        split_bf16(v[u].x, v[u].y, hi.x, lo.x);
        split_bf16(v[u].z, v[u].w, hi.y, lo.y);
        const int at = c < S ? c : S + c;  // keys: hi at c, lo at S + c; values (c = S + d): 2S + d, 3S + d
        *reinterpret_cast<uint2*>(rb + at) = hi;
        *reinterpret_cast<uint2*>(rb + at + S) = lo;
      }
      __syncwarp();
    }
  }
  __syncthreads();
  const int g = lane >> 2, tq = lane & 3;
  const float qscale = rsqrtf(float(DH)) * kLog2e;
  const bool qvec = ((reinterpret_cast<uintptr_t>(q) | uintptr_t(ldq * 4)) & 7) == 0;
  const bool ovec = (reinterpret_cast<uintptr_t>(o) & 7) == 0;
  const int ntok = (L + 15) / 16, ntasks = ntok * H;
  const int mi = lane >> 3, mr = lane & 7;
  const int k_off = ((mi >> 1) * 8 + mr) * RS + (mi & 1) * 8;  // K: slots +0/+8, dims +0/+8
  const int v_off = ((mi & 1) * 8 + mr) * RS + (mi >> 1) * 8;  // V: slots +0/+8, dims +0/+8
  // q of a task's rows r0 = 16·tt + g and r1 = r0 + 8, dims 2tq, 2tq+1, 2tq+8, 2tq+9 (raw).
  auto load_q = [&](int task, float2 (&x)[2][2]) {
    const int h = task / ntok, tt = task - h * ntok;
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
      const int r = tt * 16 + g + 8 * rr;
      x[rr][0] = x[rr][1] = make_float2(0.0f, 0.0f);
      if (r < L) {
        const float* qr = q + (int64_t(b) * T + t0 + r) * ldq + h * DH + 2 * tq;
        if (qvec) {
          x[rr][0] = *reinterpret_cast<const float2*>(qr);
          x[rr][1] = *reinterpret_cast<const float2*>(qr + 8);
        } else {
          x[rr][0] = make_float2(qr[0], qr[1]);
          x[rr][1] = make_float2(qr[8], qr[9]);
        }
      }
    }
  };
  float2 xq[2][2];
  if (warp < ntasks) load_q(warp, xq);
  for (int task = warp; task < ntasks; task += nwarps) {
    const int h = task / ntok, tt = task - h * ntok;
    const int r0 = tt * 16 + g, r1 = r0 + 8;
    uint32_t qh[4], ql[4];
    split_bf16(xq[0][0].x * qscale, xq[0][0].y * qscale, qh[0], ql[0]);
    split_bf16(xq[1][0].x * qscale, xq[1][0].y * qscale, qh[1], ql[1]);
    split_bf16(xq[0][1].x * qscale, xq[0][1].y * qscale, qh[2], ql[2]);
    split_bf16(xq[1][1].x * qscale, xq[1][1].y * qscale, qh[3], ql[3]);
    if (task + nwarps < ntasks) load_q(task + nwarps, xq);  // in flight while this task computes
    float acc[2][4] = {};  // O: dims 0-7 / 8-15; (r0, 2tq), (r0, 2tq+1), (r1, 2tq), (r1, 2tq+1)
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
    const __nv_bfloat16* kbase = kvb + h * DH + k_off;
    const __nv_bfloat16* vbase = kvb + 2 * S + h * DH + v_off;
    for (int j0 = 0; j0 < nvis; j0 += kMmaSlotTile) {
      float sc[4][4];
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        uint32_t kh[4], kl[4];
        const __nv_bfloat16* kp = kbase + (j0 + half * 16) * RS;
        ldsm_x4(kh, kp);
        ldsm_x4(kl, kp + S);
#pragma unroll
        for (int nn = 0; nn < 2; ++nn) {
          float* c = sc[half * 2 + nn];
          c[0] = c[1] = c[2] = c[3] = 0.0f;
          mma_bf16(sc[half * 2 + nn], ql, kh[2 * nn], kh[2 * nn + 1]);
          mma_bf16(sc[half * 2 + nn], qh, kl[2 * nn], kl[2 * nn + 1]);
          mma_bf16(sc[half * 2 + nn], qh, kh[2 * nn], kh[2 * nn + 1]);
        }
      }
      if (j0 + kMmaSlotTile > nvis) {
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          const int j = j0 + nt * 8 + 2 * tq;
          if (j >= nvis) sc[nt][0] = sc[nt][2] = -INFINITY;
          if (j + 1 >= nvis) sc[nt][1] = sc[nt][3] = -INFINITY;
        }
      }
      float t0m = fmaxf(sc[0][0], sc[0][1]), t1m = fmaxf(sc[0][2], sc[0][3]);
#pragma unroll
      for (int nt = 1; nt < 4; ++nt) {
        t0m = fmaxf(t0m, fmaxf(sc[nt][0], sc[nt][1]));
        t1m = fmaxf(t1m, fmaxf(sc[nt][2], sc[nt][3]));
      }
#pragma unroll
      for (int x = 1; x <= 2; x <<= 1) {
        t0m = fmaxf(t0m, __shfl_xor_sync(0xffffffffu, t0m, x));
        t1m = fmaxf(t1m, __shfl_xor_sync(0xffffffffu, t1m, x));
      }
      t0m = fmaxf(m0, t0m);
      t1m = fmaxf(m1, t1m);
      {
        const float c0 = detail::ex2(m0 - t0m), c1 = detail::ex2(m1 - t1m);
        l0 *= c0;
        l1 *= c1;
#pragma unroll
        for (int dn = 0; dn < 2; ++dn) {
          acc[dn][0] *= c0;
          acc[dn][1] *= c0;
          acc[dn][2] *= c1;
          acc[dn][3] *= c1;
        }
        m0 = t0m;
        m1 = t1m;
      }
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        sc[nt][0] = detail::ex2(sc[nt][0] - m0);
        sc[nt][1] = detail::ex2(sc[nt][1] - m0);
        sc[nt][2] = detail::ex2(sc[nt][2] - m1);
        sc[nt][3] = detail::ex2(sc[nt][3] - m1);
        l0 += sc[nt][0] + sc[nt][1];
        l1 += sc[nt][2] + sc[nt][3];
      }
#pragma unroll
      for (int kk = 0; kk < 2; ++kk) {
        uint32_t ph[4], pl[4];
        split_bf16(sc[2 * kk][0], sc[2 * kk][1], ph[0], pl[0]);
        split_bf16(sc[2 * kk][2], sc[2 * kk][3], ph[1], pl[1]);
        split_bf16(sc[2 * kk + 1][0], sc[2 * kk + 1][1], ph[2], pl[2]);
        split_bf16(sc[2 * kk + 1][2], sc[2 * kk + 1][3], ph[3], pl[3]);
        uint32_t vh[4], vl[4];
        const __nv_bfloat16* vp = vbase + (j0 + kk * 16) * RS;
        ldsm_x4_trans(vh, vp);
        ldsm_x4_trans(vl, vp + S);
#pragma unroll
        for (int dn = 0; dn < 2; ++dn) {
          mma_bf16(acc[dn], pl, vh[2 * dn], vh[2 * dn + 1]);
          mma_bf16(acc[dn], ph, vl[2 * dn], vl[2 * dn + 1]);
          mma_bf16(acc[dn], ph, vh[2 * dn], vh[2 * dn + 1]);
        }
      }
    }
#pragma unroll
    for (int x = 1; x <= 2; x <<= 1) {
      l0 += __shfl_xor_sync(0xffffffffu, l0, x);
      l1 += __shfl_xor_sync(0xffffffffu, l1, x);
    }
    const float i0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, i1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;  // none visible: 0
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
      const int r = rr ? r1 : r0;
      if (r >= L) continue;
      const float inv = rr ? i1 : i0;
      OutT* orow = o + (int64_t(b) * T + t0 + r) * S + h * DH + 2 * tq;
#pragma unroll
      for (int dn = 0; dn < 2; ++dn) {
        const float a = acc[dn][2 * rr] * inv, c = acc[dn][2 * rr + 1] * inv;
        if (ovec) {
          store2(orow + dn * 8, a, c);
        } else {
          detail::store(orow + dn * 8, a);
          detail::store(orow + dn * 8 + 1, c);
        }
      }
    }
  }
}

template <typename Kern>
void allow_smem(Kern kern, size_t smem) {
  if (smem > 48 * 1024)
    MM_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
}

constexpr size_t kReadSmemMax = 200 * 1024;       // dynamic shared memory a read block asks for at most
constexpr size_t kReadResidentMax = 160 * 1024;   // the FMA kernel keeps every slot resident up to this
constexpr size_t kReadChunkBytes = 64 * 1024;     // else it streams chunks of about this size

template <int DH, int TB, int MINB, typename OutT>
void launch_read_fma(OutT* o, const float* q, int64_t ldq, const Sources& src, int nsrc, Segments segs,
                     int64_t B, int64_t T, int64_t K, int64_t H) {
  constexpr int NJ = 8;
  const int64_t S = H * DH, slot_bytes = 2 * S * 4;
  int64_t cap = (nsrc * K + NJ - 1) / NJ * NJ;
  if (size_t(cap * slot_bytes) > kReadResidentMax) cap = std::max<int64_t>(NJ, int64_t(kReadChunkBytes) / slot_bytes / NJ * NJ);
  const size_t smem = size_t(cap * slot_bytes);
  require(smem <= kReadSmemMax, "pool_read: summary width " + std::to_string(S) + " too large for shared memory");
  auto kern = pool_read_kernel<DH, TB, NJ, MINB, OutT>;
  allow_smem(kern, smem);
  kern<<<dim3(unsigned(segs.count), unsigned(B)), kReadThreads, smem>>>(o, q, ldq, src, nsrc, segs, int(B), int(T),
                                                                       int(K), int(H), int(cap));
  MM_CUDA_LAUNCH_CHECK("pool_read");
}

template <typename OutT>
void launch_read(OutT* o, const float* q, int64_t ldq, const Sources& src, int nsrc, Segments segs,
                 int64_t B, int64_t T, int64_t K, int64_t H, int64_t dh) {
  // d_h 16 on the tensor cores when every slot fits in shared memory (the tiny model's reads: 64
  // and 256 slots); 512 threads when a block has the SM to itself (more than 128 slots).
  if (dh == 16 && H <= 16) {
    const int64_t cap = (nsrc * K + kMmaSlotTile - 1) / kMmaSlotTile * kMmaSlotTile;
    const size_t smem = size_t(cap * (8 * H * 16 + 16));  // cap rows of 4S + 8 bf16
    if (smem <= kReadSmemMax) {
      const dim3 grid(unsigned(segs.count), unsigned(B));
      if (cap > 128) {
        auto kern = pool_read_mma_kernel<512, 1, OutT>;
        allow_smem(kern, smem);
        kern<<<grid, 512, smem>>>(o, q, ldq, src, nsrc, segs, int(B), int(T), int(K), int(H));
      } else {
        auto kern = pool_read_mma_kernel<256, 3, OutT>;
        allow_smem(kern, smem);
        kern<<<grid, 256, smem>>>(o, q, ldq, src, nsrc, segs, int(B), int(T), int(K), int(H));
      }
      MM_CUDA_LAUNCH_CHECK("pool_read (mma)");
      return;
    }
  }
  switch (dh) {
    case 4: return launch_read_fma<4, 4, 2>(o, q, ldq, src, nsrc, segs, B, T, K, H);
    case 8: return launch_read_fma<8, 4, 1>(o, q, ldq, src, nsrc, segs, B, T, K, H);
    case 16: return launch_read_fma<16, 2, 2>(o, q, ldq, src, nsrc, segs, B, T, K, H);
    case 32: return launch_read_fma<32, 2, 1>(o, q, ldq, src, nsrc, segs, B, T, K, H);
    default: break;
  }
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

void pool_candidates(PoolScratch scratch, const float* s, Segments segs, int64_t B, int64_t T, int64_t K, float tau,
                     void* stream) {
  require(K > 0 && K <= kMaxSlots, "pool_slots " + std::to_string(K) + " (at most " + std::to_string(kMaxSlots) + ")");
  require(B > 0 && T >= 0, "pool_candidates sizes");
  if (segs.count == 0) return;
  dim3 grid(unsigned(segs.count), unsigned(B));
  segment_candidates_kernel<<<grid, 256, 0, static_cast<cudaStream_t>(stream)>>>(scratch, s, segs, int(B), int(T),
                                                                                   int(K), tau);
  MM_CUDA_LAUNCH_CHECK("segment_candidates");
}

void pool_evolve(int32_t* snap, PoolState state, int32_t* pool_rows, int32_t* cand_rows,
                 const float* s, int64_t pos0, Segments segs, int64_t B, int64_t T, int64_t K,
                 float tau, PoolScratch scratch, void* stream) {
  pool_candidates(scratch, s, segs, B, T, K, tau, stream);
  pool_walk(snap, state, pool_rows, cand_rows, pos0, segs, B, T, K, scratch, stream);
}

void pool_walk(int32_t* snap, PoolState state, int32_t* pool_rows, int32_t* cand_rows, int64_t pos0, Segments segs,
               int64_t B, int64_t T, int64_t K, PoolScratch scratch, void* stream) {
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  require(K > 0 && K <= kMaxSlots, "pool_slots " + std::to_string(K) + " (at most " + std::to_string(kMaxSlots) + ")");
  require(B > 0 && T >= 0 && 2 * B * K + B * T < (int64_t(1) << 31), "piece too large for 32-bit row indices");
  // The walk is one latency-bound warp per sequence, overlapped with products on the main
  // stream. Sharing a multiprocessor with their blocks slowed it (its span at 1 M tokens: 13.5 ms
  // sharing, 12.3 ms with the SM to itself; H100, 2026-12-07), so each walk block asks for (and
  // leaves unused) nearly all of its multiprocessor's shared memory: no other block fits beside
  // it. The attribute is set for the device current at the first call (one device per process).
  static const int reserve = [] {
    int dev = 0, optin = 0;
    MM_CUDA_CHECK(cudaGetDevice(&dev));
    MM_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    cudaFuncAttributes attr{};
    MM_CUDA_CHECK(cudaFuncGetAttributes(&attr, pool_walk_kernel));
    const int bytes = std::max(0, optin - int(attr.sharedSizeBytes));
    MM_CUDA_CHECK(cudaFuncSetAttribute(pool_walk_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    return bytes;
  }();
  pool_walk_kernel<<<unsigned(B), 32, size_t(reserve), st>>>(snap, state, pool_rows, cand_rows, scratch, pos0, segs,
                                                             int(B), int(T), int(K));
  MM_CUDA_LAUNCH_CHECK("pool_walk");
}

void pool_read_forward(void* o, DType odt, const float* q, int64_t ldq, const ReadSource* sources,
                       int nsources, Segments segs, int64_t B, int64_t T, int64_t K, int64_t H,
                       int64_t dh) {
  require(nsources >= 1 && nsources <= kMaxReadSources, "read sources " + std::to_string(nsources));
  require(ldq >= H * dh && K > 0 && B > 0 && H > 0, "pool_read sizes");
  require(K <= kMaxSlots, "pool_slots " + std::to_string(K) + " (at most " + std::to_string(kMaxSlots) + ")");
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
