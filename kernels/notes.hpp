// The note ops of MemMamba (DESIGN §3): write (score, summary), the pool of K slots and its
// chunk-end update, and the read (attention of queries over the pool's slots).
// M rows, D d_model, S summary width d_s = H heads × d_h, m slots read.
#pragma once
#include <cstdint>
#include <vector>

namespace mm::cpu {

// ---- write --------------------------------------------------------------------------------
// s (M) = σ(v · w + b).
template <typename T>
void note_score_forward(T* s, const T* v, const T* w, const T* b, int64_t M, int64_t D);
// dv (M×D) += , dw (D) += , db (1) +=   from ds (M).
template <typename T>
void note_score_backward(T* dv, T* dw, T* db, const T* ds, const T* s, const T* v, const T* w,
                         int64_t M, int64_t D);

// n (M×S) = s ⊙ m: the summary carries its score, which is what lets the scorer learn.
template <typename T>
void note_scale_forward(T* n, const T* s, const T* m, int64_t M, int64_t S);
// dm (M×S) += s·dn;  ds (M) += dn·m.
template <typename T>
void note_scale_backward(T* dm, T* ds, const T* dn, const T* s, const T* m, int64_t M, int64_t S);

// ---- pool ---------------------------------------------------------------------------------
// A slot: the summary n, its priority (the score when written) and its absolute source position.
template <typename T>
struct Pool {
  int64_t capacity = 0, width = 0;  // K slots of S values
  std::vector<int64_t> pos;         // used slots' source positions
  std::vector<T> priority;
  std::vector<T> values;            // used × S
  int64_t used() const { return int64_t(pos.size()); }
};

// The best candidates of the chunk being read (at most K can ever enter the pool).
template <typename T>
struct Candidates {
  std::vector<int64_t> pos;
  std::vector<T> score;
  std::vector<T> values;  // count × S
  int64_t count() const { return int64_t(pos.size()); }
  void clear() { pos.clear(); score.clear(); values.clear(); }
};

// Offers token `pos` (score s, summary n of S values) as a candidate: kept when s > tau and it
// ranks among the K best of the chunk so far (higher score first, ties: earlier position).
template <typename T>
void candidates_offer(Candidates<T>& c, int64_t K, int64_t S, int64_t pos, T s, const T* n, double tau);

// End of a chunk: candidates enter in decreasing score (ties: earlier position), appended while
// fewer than K slots are used, else replacing the lowest-priority slot (ties: earliest source
// position) when their score is strictly higher. Clears the candidates.
template <typename T>
void pool_commit(Pool<T>& pool, Candidates<T>& c);

// ---- read ---------------------------------------------------------------------------------
// Per head h: o_t^h = Σ_j softmax_j(q_t^h · k_j^h / √d_h) v_j^h over m slots.
// q (R×S, row stride ldq), keys/vals (m×S); o (R×S) overwritten, P (R×H×m) kept for backward.
// m = 0 gives o = 0.
template <typename T>
void pool_attention_forward(T* o, T* P, const T* q, int64_t ldq, const T* keys, const T* vals,
                            int64_t R, int64_t m, int64_t H, int64_t dh);
// dq (R×S, row stride lddq) += , dkeys (m×S) += , dvals (m×S) += .
template <typename T>
void pool_attention_backward(T* dq, int64_t lddq, T* dkeys, T* dvals, const T* dout, const T* q,
                             int64_t ldq, const T* keys, const T* vals, const T* P, int64_t R,
                             int64_t m, int64_t H, int64_t dh);

}  // namespace mm::cpu
