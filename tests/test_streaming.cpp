// DESIGN §3: causality and streaming are one contract. Feeding a sequence in any split of pieces
// gives the outputs of one whole pass, with the pools holding the same slots and positions.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <set>

#include "model/memmamba.hpp"
#include "support/compare.hpp"
#include "support/models.hpp"

namespace {

using Model = mm::MemMamba<float>;

std::vector<float> whole_pass(Model& m, const std::vector<int32_t>& tok, int64_t B, int64_t T_,
                              mm::StreamState<float>& st) {
  std::vector<float> logits(size_t(B * T_ * m.config().vocab));
  m.forward(tok.data(), B, T_, logits.data(), &st);
  return logits;
}

// Streams tokens (B×T) in pieces of the given lengths; returns logits laid out as a whole pass.
std::vector<float> streamed(Model& m, const std::vector<int32_t>& tok, int64_t B, int64_t T_,
                            const std::vector<int64_t>& pieces, mm::StreamState<float>& st) {
  const int64_t V = m.config().vocab;
  std::vector<float> logits(size_t(B * T_ * V));
  int64_t t0 = 0;
  for (int64_t len : pieces) {
    std::vector<int32_t> piece(size_t(B * len));
    for (int64_t b = 0; b < B; ++b)
      std::copy_n(tok.begin() + b * T_ + t0, len, piece.begin() + b * len);
    std::vector<float> out(size_t(B * len * V));
    m.forward(piece.data(), B, len, out.data(), &st);
    for (int64_t b = 0; b < B; ++b)
      std::copy_n(out.begin() + b * len * V, len * V, logits.begin() + (b * T_ + t0) * V);
    t0 += len;
  }
  EXPECT_EQ(t0, T_);
  return logits;
}

void expect_same_pools(const mm::StreamState<float>& a, const mm::StreamState<float>& b) {
  ASSERT_EQ(a.layers.size(), b.layers.size());
  for (size_t l = 0; l < a.layers.size(); ++l)
    for (size_t s = 0; s < a.layers[l].pool.size(); ++s) {
      const auto &pa = a.layers[l].pool[s], &pb = b.layers[l].pool[s];
      EXPECT_EQ(std::set<int64_t>(pa.pos.begin(), pa.pos.end()),
                std::set<int64_t>(pb.pos.begin(), pb.pos.end()))
          << "layer " << l << " sequence " << s;
      EXPECT_GT(pa.used(), 0) << "the test should exercise a non-empty pool";
      EXPECT_EQ(a.layers[l].cand[s].pos, b.layers[l].cand[s].pos) << "unfinished-chunk candidates";
    }
}

void check_random_splits(bool notes) {
  Model m = mmtest::live_model<float>(mmtest::small_config(notes), 11);
  const int64_t B = 2, T_ = 203;  // 203: the last chunk (C = 8) is unfinished
  auto tok = mmtest::random_tokens(B * T_, 5);
  auto st_whole = m.new_state(B);
  auto ref = whole_pass(m, tok, B, T_, st_whole);
  std::mt19937_64 rng(17);
  for (int trial = 0; trial < 6; ++trial) {
    std::vector<int64_t> pieces;
    for (int64_t left = T_; left > 0;) {
      int64_t len = std::min<int64_t>(left, 1 + int64_t(rng() % 29));  // splits fall inside chunks
      pieces.push_back(len);
      left -= len;
    }
    auto st = m.new_state(B);
    auto got = streamed(m, tok, B, T_, pieces, st);
    EXPECT_LT(mmtest::rel_error(got, ref), 1e-5) << "trial " << trial;
    EXPECT_EQ(st.position, T_);
    if (notes) expect_same_pools(st, st_whole);
  }
}

}  // namespace

TEST(Streaming, RandomPiecesMatchTheWholePassNotesOn) { check_random_splits(true); }
TEST(Streaming, RandomPiecesMatchTheWholePassNotesOff) { check_random_splits(false); }

TEST(Streaming, OneTokenAtATimeMatchesTheWholePass) {
  Model m = mmtest::live_model<float>(mmtest::small_config(true), 3);
  const int64_t T_ = 70;
  auto tok = mmtest::random_tokens(T_, 9);
  auto st_whole = m.new_state(1);
  auto ref = whole_pass(m, tok, 1, T_, st_whole);
  auto st = m.new_state(1);
  auto got = streamed(m, tok, 1, T_, std::vector<int64_t>(size_t(T_), 1), st);
  EXPECT_LT(mmtest::rel_error(got, ref), 1e-5);
  expect_same_pools(st, st_whole);
}

TEST(Streaming, TrainingPassGivesTheSameLogitsAsInference) {
  Model m = mmtest::live_model<float>(mmtest::small_config(true), 4);
  const int64_t B = 2, T_ = 50;
  auto tok = mmtest::random_tokens(B * T_, 2);
  auto st = m.new_state(B);
  auto ref = whole_pass(m, tok, B, T_, st);
  auto targets = Model::next_token_targets(tok.data(), B, T_);
  std::vector<float> logits(ref.size());
  int64_t n = 0;
  m.forward_backward(tok.data(), targets.data(), B, T_, 1.0, &n, logits.data());
  EXPECT_EQ(logits, ref);
}
