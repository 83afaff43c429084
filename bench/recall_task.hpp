// The DNA passkey-recall task of bench/recall_experiment (DESIGN §3, "Evidence this design learns").
// A sequence of total length L: BOS, a 16-base random key (A/C/G/T), a random A/C/G/T gap, BOS,
// the same 16-base key. Only the second key's bases are targets (teacher forcing): position t
// predicts token t+1 for t = L−17 .. L−2; every other target is −1.
#pragma once
#include <cstdint>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace mm::recall {

inline constexpr int kKeyLen = 16;
inline constexpr int32_t kBos = 6;
inline constexpr int kMinLength = 2 * (kKeyLen + 1);  // no gap at all

// Where things are in a sequence of length L.
struct Layout {
  int64_t L = 0;
  int64_t key0() const { return 1; }                       // first key base
  int64_t gap0() const { return 1 + kKeyLen; }             // first gap base
  int64_t query_bos() const { return L - kKeyLen - 1; }     // second BOS
  int64_t gap1() const { return query_bos(); }             // one past the last gap base
  // Positions whose next-token prediction is scored: query_bos() .. L−2.
  int64_t first_scored() const { return query_bos(); }
  bool is_key(int64_t pos) const { return pos >= key0() && pos < key0() + kKeyLen; }
  bool is_gap(int64_t pos) const { return pos >= gap0() && pos < gap1(); }
};

// B sequences of length L into tokens (B×L) and targets (B×L).
inline void make_batch(std::mt19937_64& rng, int64_t B, int64_t L, std::vector<int32_t>& tokens,
                       std::vector<int32_t>& targets) {
  if (L < kMinLength) throw std::invalid_argument("recall: length " + std::to_string(L) +
                                                  " is shorter than " + std::to_string(kMinLength));
  const Layout lay{L};
  tokens.assign(size_t(B * L), 0);
  targets.assign(size_t(B * L), -1);
  std::uniform_int_distribution<int32_t> base(1, 4);
  for (int64_t b = 0; b < B; ++b) {
    int32_t* tok = tokens.data() + b * L;
    int32_t key[kKeyLen];
    for (int i = 0; i < kKeyLen; ++i) key[i] = base(rng);
    tok[0] = kBos;
    for (int i = 0; i < kKeyLen; ++i) tok[lay.key0() + i] = key[i];
    for (int64_t t = lay.gap0(); t < lay.gap1(); ++t) tok[t] = base(rng);
    tok[lay.query_bos()] = kBos;
    for (int i = 0; i < kKeyLen; ++i) tok[lay.query_bos() + 1 + i] = key[i];
    for (int64_t t = lay.first_scored(); t + 1 < L; ++t) targets[size_t(b * L + t)] = tok[t + 1];
  }
}

// Argmax over A/C/G/T (tokens 1..4) of one row of logits.
template <typename T>
int32_t argmax_base(const T* logits_row) {
  int32_t best = 1;
  for (int32_t v = 2; v <= 4; ++v)
    if (logits_row[v] > logits_row[best]) best = v;
  return best;
}

}  // namespace mm::recall
