// DESIGN §3: the output at t never depends on tokens after t, notes on and off.
#include <gtest/gtest.h>

#include "model/memmamba.hpp"
#include "support/models.hpp"

namespace {

using Model = mm::MemMamba<float>;

// Causality: changing token t changes no output before t (and does change outputs after it).
void check_causality(bool notes) {
  Model m = mmtest::live_model<float>(mmtest::small_config(notes), 21);
  const int64_t T_ = 120, V = m.config().vocab;
  auto tok = mmtest::random_tokens(T_, 8);
  std::vector<float> base(size_t(T_ * V));
  m.forward(tok.data(), 1, T_, base.data());
  for (int64_t t : {1, 8, 37, 64, 119}) {
    auto changed = tok;
    changed[size_t(t)] = changed[size_t(t)] == 1 ? 4 : 1;
    std::vector<float> out(base.size());
    m.forward(changed.data(), 1, T_, out.data());
    for (int64_t i = 0; i < t * V; ++i)
      ASSERT_EQ(out[size_t(i)], base[size_t(i)]) << "token " << t << " changed output " << i / V;
    bool moved = false;
    for (int64_t i = t * V; i < T_ * V; ++i) moved |= out[size_t(i)] != base[size_t(i)];
    EXPECT_TRUE(moved) << "changing token " << t << " changed nothing at or after it";
  }
}

}  // namespace

TEST(Causality, NoOutputDependsOnLaterTokensNotesOn) { check_causality(true); }
TEST(Causality, NoOutputDependsOnLaterTokensNotesOff) { check_causality(false); }
