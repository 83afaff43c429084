// The note ops on the GPU (forward): note summaries, the pool's evolution over a piece's
// segments, and the pool read. Plain C++ declarations; see kernels/notes.hpp for the CPU twins.
//
// Rows of the "extended" summary matrix n_ext of a layer (row stride S) for a piece of B×T tokens:
//   [0, B·K)          the pool carried into the piece (sequence b, slot j at b·K + j)
//   [B·K, 2·B·K)      the candidates carried from the unfinished chunk (B·K + b·K + j)
//   [2·B·K, +B·T)     the piece's own tokens (2·B·K + b·T + t)
// Pools and candidates refer to their summaries by row; a read gathers keys and values by row.
#pragma once
#include <cstdint>

#include "kernels/cuda/ops.hpp"

namespace mm::cuda {

// n (M×S, row stride ldn) = s (M) ⊙ m (M×S, row stride ldm).
void note_scale_forward(float* n, int64_t ldn, const float* s, const float* m, int64_t ldm,
                        int64_t M, int64_t S);

// One layer's pool and unfinished-chunk candidates for B sequences, on the device.
struct PoolState {
  int64_t* pos;          // B×K source positions (−1: empty)
  float* prio;           // B×K
  int32_t* used;         // B
  int64_t* cand_pos;     // B×K, sorted best first
  float* cand_score;     // B×K
  int32_t* cand_count;   // B
};

// A piece's segments: rows [t0, t1) of each sequence lie in one memory chunk; closes = the chunk
// ends there (its candidates are committed after it). Device arrays of nseg entries.
struct Segments {
  const int32_t* t0;
  const int32_t* t1;
  const uint8_t* closes;
  int64_t count;
};

// Walks the segments in order for each sequence (one warp each): records the rows of the pool
// each segment reads (snap, nseg×B×K, −1 empty), offers the segment's tokens with s > tau as
// candidates, commits them at chunk ends (DESIGN §3 rules, identical to the CPU's). Updates
// `state` in place (positions, priorities, counts) and writes the rows now holding the pool's
// and the candidates' summaries (pool_rows, cand_rows: B×K, −1 empty) for gather_rows.
// scratch: nseg×B×K floats and ints, nseg×B ints (each segment's best candidates, found in
// parallel before the sequential walk). Segments must be at most 1024 rows (memory_chunk ≤ 1024).
struct PoolScratch {
  float* score;
  int32_t* t;
  int32_t* count;
};
// stream: a cudaStream_t to run on (null: the default stream), e.g. a SideStream's handle.
void pool_evolve(int32_t* snap, PoolState state, int32_t* pool_rows, int32_t* cand_rows,
                 const float* s, int64_t pos0, Segments segs, int64_t B, int64_t T, int64_t K,
                 float tau, PoolScratch scratch, void* stream = nullptr);
// pool_evolve's two steps, for callers that run them on different streams: every segment's best
// candidates into scratch (all segments in parallel), then the sequential walk that reads them.
void pool_candidates(PoolScratch scratch, const float* s, Segments segs, int64_t B, int64_t T, int64_t K, float tau,
                     void* stream = nullptr);
void pool_walk(int32_t* snap, PoolState state, int32_t* pool_rows, int32_t* cand_rows, int64_t pos0, Segments segs,
               int64_t B, int64_t T, int64_t K, PoolScratch scratch, void* stream = nullptr);

// dst (R×S) = src[rows[r]] (row stride S), zeros where rows[r] < 0.
void gather_rows(float* dst, const float* src, const int32_t* rows, int64_t R, int64_t S,
                 void* stream = nullptr);

// One pool (or one layer's share of the cross-layer union) a read attends to.
struct ReadSource {
  const float* kv;       // n_ext rows × 2S: keys in [0, S), values in [S, 2S)
  const int32_t* snap;   // nseg×B×K rows of kv each segment reads (−1 empty)
};
inline constexpr int kMaxReadSources = 8;

// o (M×S, odt) = per head softmax(q·k/√d_h) v over the union of the sources' slots that each
// segment reads; zero where no slot is visible. q (M×S fp32, row stride ldq).
void pool_read_forward(void* o, DType odt, const float* q, int64_t ldq, const ReadSource* sources,
                       int nsources, Segments segs, int64_t B, int64_t T, int64_t K, int64_t H,
                       int64_t dh);

}  // namespace mm::cuda
