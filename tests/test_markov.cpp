// The k-mer Markov reference: counts, Witten-Bell and additive probabilities checked by hand,
// bits/base, and the choice of the order by validation.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "io/error.hpp"
#include "io/tokenizer.hpp"
#include "pipelines/markov.hpp"

using mm::pipelines::MarkovModel;
using mm::pipelines::MarkovSmoothing;
using mm::pipelines::TokenSpans;

namespace {

std::vector<uint8_t> toks(const std::string& s) { return mm::io::encode(s); }
enum : uint64_t { A = 0, C = 1, G = 2, T = 3 };

}  // namespace

TEST(Markov, CountsKmersAndNBreaksContexts) {
  auto s = toks("ACGTACGTNAC");
  MarkovModel m;
  m.grow({s});  // order 0
  m.grow({s});  // order 1
  EXPECT_EQ(m.order(), 1);
  EXPECT_EQ(m.count(0, 0, A), 3u);
  EXPECT_EQ(m.count(0, 0, C), 3u);
  EXPECT_EQ(m.count(0, 0, G), 2u);
  EXPECT_EQ(m.count(0, 0, T), 2u);
  EXPECT_EQ(m.count(1, A, C), 3u);  // AC twice before the N, once after
  EXPECT_EQ(m.count(1, C, G), 2u);
  EXPECT_EQ(m.count(1, G, T), 2u);
  EXPECT_EQ(m.count(1, T, A), 1u);  // TN and NA are no dinucleotides
  EXPECT_EQ(m.count(1, T, C), 0u);
  m.grow({s});  // order 2: context packed with the most recent base in the low bits
  EXPECT_EQ(m.count(2, (A << 2) | C, G), 2u);
  EXPECT_EQ(m.count(2, (G << 2) | T, A), 1u);
}

TEST(Markov, AdditiveSmoothingBitsByHand) {
  // Order 0 with alpha 1 on AAAC: P(A) = 4/8, P(C) = 2/8, P(G) = P(T) = 1/8.
  auto train = toks("AAAC"), valid = toks("ACGN");
  MarkovModel m(MarkovSmoothing::additive, 1.0);
  m.grow({train});
  EXPECT_DOUBLE_EQ(m.prob(0, 0, A), 0.5);
  EXPECT_DOUBLE_EQ(m.prob(0, 0, G), 0.125);
  int64_t n = 0;
  EXPECT_DOUBLE_EQ(m.bits({valid}, &n), 1.0 + 2.0 + 3.0);  // the N is not scored
  EXPECT_EQ(n, 3);
}

TEST(Markov, WittenBellInterpolationByHand) {
  // AAAC. Order 0: n = A3 C1, 2 types: P0(x) = (n(x) + 2/4) / 6.
  // Order 1 after A: AA twice, AC once, 2 types: P1(x|A) = (n(Ax) + 2 P0(x)) / 5.
  auto train = toks("AAAC");
  MarkovModel m;
  m.grow({train});
  m.grow({train});
  EXPECT_NEAR(m.prob(0, 0, A), 3.5 / 6, 1e-15);
  EXPECT_NEAR(m.prob(0, 0, G), 0.5 / 6, 1e-15);
  EXPECT_NEAR(m.prob(A, 1, A), (2 + 2 * 3.5 / 6) / 5, 1e-15);
  EXPECT_NEAR(m.prob(A, 1, G), (2 * 0.5 / 6) / 5, 1e-15);
  EXPECT_NEAR(m.prob(C, 1, A), 3.5 / 6, 1e-15);  // unseen context: order 0
  EXPECT_NEAR(m.prob(A, 0, A), 3.5 / 6, 1e-15);  // no context yet: order 0
  for (uint64_t ctx = 0; ctx < 4; ++ctx) {
    double sum = 0;
    for (int x = 0; x < 4; ++x) sum += m.prob(ctx, 1, x);
    EXPECT_NEAR(sum, 1.0, 1e-12);
  }
  // Bits of "AA": the first A at order 0, the second after context A.
  int64_t n = 0;
  auto v = toks("AA");
  EXPECT_NEAR(m.bits({v}, &n), -std::log2(3.5 / 6) - std::log2((2 + 2 * 3.5 / 6) / 5), 1e-12);
}

TEST(Markov, UniformWithoutTablesIsTwoBitsPerBase) {
  MarkovModel m;
  auto v = toks("ACGTTTGCA");
  int64_t n = 0;
  EXPECT_DOUBLE_EQ(m.bits({v}, &n), 18.0);
  EXPECT_EQ(n, 9);
}

TEST(Markov, SelectsTheOrderByValidationAndStopsWhenItWorsens) {
  // A period-5 sequence is fully predictable from 1 base of context after a few: order >= 1 wins.
  std::string periodic;
  for (int i = 0; i < 2000; ++i) periodic += "ACGGT"[i % 5];
  auto tr = toks(periodic), va = toks(periodic.substr(0, 500));
  auto r = mm::pipelines::select_markov({tr}, {va}, 8);
  EXPECT_GE(r.order, 2);
  EXPECT_NEAR(r.by_order[0], -(3 * 0.2 * std::log2(0.2) + 0.4 * std::log2(0.4)), 0.01);
  EXPECT_LT(r.bits_per_base, 0.05);
  EXPECT_EQ(r.valid_bases, 500);
  EXPECT_EQ(r.train_bases, 2000);
  // i.i.d. bases: higher orders only overfit, so the search stops early near 2 bits/base.
  std::mt19937_64 rng(3);
  std::string iid;
  for (int i = 0; i < 20000; ++i) iid += "ACGT"[rng() % 4];
  auto a = toks(iid.substr(0, 15000)), b = toks(iid.substr(15000));
  mm::pipelines::MarkovModel m;
  auto q = mm::pipelines::select_markov({a}, {b}, 12, MarkovSmoothing::witten_bell, 1.0, &m);
  EXPECT_LE(q.order, 2);
  EXPECT_EQ(int(q.by_order.size()), q.order + 2);  // one order past the best was tried
  EXPECT_EQ(m.order(), q.order);
  EXPECT_NEAR(q.bits_per_base, 2.0, 0.02);
  auto back = mm::pipelines::MarkovResult::from_json(q.to_json());
  EXPECT_EQ(back.order, q.order);
  EXPECT_EQ(back.by_order, q.by_order);
}

TEST(Markov, RefusesEmptyDataAndOrdersBeyondTheMaximum) {
  auto n = toks("NNNN"), ok = toks("ACGT");
  EXPECT_THROW(mm::pipelines::select_markov({n}, {ok}, 3), mm::Error);
  EXPECT_THROW(mm::pipelines::select_markov({ok}, {n}, 3), mm::Error);
  EXPECT_THROW(mm::pipelines::select_markov({ok}, {ok}, MarkovModel::kMaxOrder + 1), mm::UsageError);
}
