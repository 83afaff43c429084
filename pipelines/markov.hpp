// A k-mer Markov reference for DNA language models: an order-k model over A/C/G/T contexts with
// Witten-Bell interpolation (or additive smoothing), its bits/base on held-out sequence, and the
// choice of k by validation. Count tables are flat arrays: order j holds 4^(j+1) uint32 counts,
// indexed by (context of the j previous bases, most recent base in the low 2 bits) · 4 + base.
// Tokens other than A/C/G/T (N, BOS, PAD) break contexts: the next base starts with none, and a
// base with fewer than k bases of context is predicted by the model of the order it has.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace mm::pipelines {

enum class MarkovSmoothing {
  witten_bell,  // interpolated Witten-Bell, down to the uniform 1/4
  additive,     // (n(c,x) + alpha) / (n(c) + 4 alpha), no interpolation
};

using TokenSpans = std::vector<std::span<const uint8_t>>;

class MarkovModel {
public:
  static constexpr int kMaxOrder = 13;  // 4^14 counts = 1 GiB
  explicit MarkovModel(MarkovSmoothing smoothing = MarkovSmoothing::witten_bell, double alpha = 1.0);

  int order() const { return int(tables_.size()) - 1; }  // -1: no tables, uniform
  // Adds the table of the next order, counted over `train`. Throws mm::UsageError beyond kMaxOrder.
  void grow(const TokenSpans& train);
  // Drops the highest-order table.
  void shrink();

  // Count of base x after the j-base context `ctx` (most recent base in the low bits; 0 A .. 3 T).
  uint32_t count(int j, uint64_t ctx, int x) const { return tables_.at(size_t(j))[(ctx << 2) | uint64_t(x)]; }
  // P(x | the last `have` bases, packed in ctx); uses order min(have, order()).
  double prob(uint64_t ctx, int have, int x) const;
  // Σ −log2 P over the A/C/G/T tokens of the sequences; *counted gets how many there were.
  double bits(const TokenSpans& seqs, int64_t* counted) const;

private:
  double prob_at(int j, uint64_t ctx, int x) const;
  MarkovSmoothing smoothing_;
  double alpha_;
  std::vector<std::vector<uint32_t>> tables_;
};

struct MarkovResult {
  int order = -1;                   // the chosen k
  double bits_per_base = 0;         // at the chosen k, on the validation sequences
  std::vector<double> by_order;     // bits/base for k = 0, 1, ... as far as tried
  int64_t train_bases = 0, valid_bases = 0;
  std::string smoothing;
  std::string to_json() const;
  static MarkovResult from_json(const std::string& json);
};

// Tries k = 0, 1, ..., max_order, stopping at the first k that is worse on `valid` than the best
// so far; returns the best. The model, when given, ends at the chosen order.
MarkovResult select_markov(const TokenSpans& train, const TokenSpans& valid, int max_order,
                           MarkovSmoothing smoothing = MarkovSmoothing::witten_bell,
                           double alpha = 1.0, MarkovModel* model = nullptr);

}  // namespace mm::pipelines
