// The training core: schedule, clipping, accumulation, determinism, resume, divergence.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "io/error.hpp"
#include "model/checkpoint.hpp"
#include "model/trainer.hpp"
#include "support/fixtures.hpp"
#include "support/models.hpp"

namespace {

template <typename T>
mm::Batch batch_of(uint64_t seed, int64_t B, int64_t T_) {
  mm::Batch b;
  b.B = B;
  b.T = T_;
  b.tokens = mmtest::random_tokens(B * T_, seed);
  b.targets = mm::MemMamba<T>::next_token_targets(b.tokens.data(), B, T_);
  return b;
}

// A learnable stream: a repeated 7-mer, so the loss must fall well below log 4.
mm::Batch periodic(int64_t B, int64_t T_) {
  mm::Batch b;
  b.B = B;
  b.T = T_;
  const int32_t motif[] = {1, 3, 3, 2, 4, 1, 2};
  for (int64_t i = 0; i < B * T_; ++i) b.tokens.push_back(motif[(i + i / T_) % 7]);
  b.targets = mm::MemMamba<float>::next_token_targets(b.tokens.data(), B, T_);
  return b;
}

std::vector<double> run(uint64_t seed, int steps) {
  mm::MemMamba<float> m(mmtest::small_config(), seed);
  mm::TrainConfig tc;
  tc.warmup_steps = 2;
  tc.total_steps = steps;
  mm::Trainer<float> tr(m, tc);
  std::vector<double> losses;
  for (int s = 0; s < steps; ++s)
    losses.push_back(tr.step([&](int64_t) { return batch_of<float>(100 + uint64_t(s), 2, 40); }).loss);
  return losses;
}

}  // namespace

TEST(Training, ScheduleWarmsUpLinearlyThenDecaysByCosine) {
  mm::TrainConfig tc;
  tc.lr = 1.0;
  tc.min_lr_ratio = 0.1;
  tc.warmup_steps = 10;
  tc.total_steps = 110;
  EXPECT_DOUBLE_EQ(mm::learning_rate(tc, 1), 0.1);
  EXPECT_DOUBLE_EQ(mm::learning_rate(tc, 10), 1.0);
  EXPECT_NEAR(mm::learning_rate(tc, 60), 0.55, 1e-12);  // halfway down the cosine
  EXPECT_NEAR(mm::learning_rate(tc, 110), 0.1, 1e-12);
  EXPECT_NEAR(mm::learning_rate(tc, 500), 0.1, 1e-12);  // stays at the floor
}

TEST(Training, SameSeedGivesBitIdenticalLosses) {
  auto a = run(42, 4), b = run(42, 4), c = run(43, 4);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
}

TEST(Training, LossFallsOnALearnableSequence) {
  mm::MemMamba<float> m(mmtest::small_config(), 1);
  mm::TrainConfig tc;
  tc.lr = 1e-2;
  tc.warmup_steps = 5;
  tc.total_steps = 100;
  mm::Trainer<float> tr(m, tc);
  double first = 0, last = 0;
  for (int s = 0; s < 100; ++s) {
    auto r = tr.step([&](int64_t) { return periodic(2, 64); });
    if (s == 0) first = r.loss;
    last = r.loss;
    EXPECT_GT(r.lr, 0);
  }
  EXPECT_GT(first, 1.2);
  EXPECT_LT(last, 0.1) << "a repeated 7-mer should be learned";
}

TEST(Training, AccumulationEqualsOneLargerBatch) {
  // float64 so that the only difference is summation order.
  auto cfg = mmtest::small_config();
  mm::MemMamba<double> one(cfg, 5), two(cfg, 5);
  mm::TrainConfig tc;
  tc.clip = 0.5;  // clipping applies to the accumulated gradient
  mm::Trainer<double> big(one, tc);
  tc.accumulation = 2;
  mm::Trainer<double> acc(two, tc);
  auto a = batch_of<double>(1, 1, 48), b = batch_of<double>(2, 1, 48);
  mm::Batch both = a;
  both.B = 2;
  both.tokens.insert(both.tokens.end(), b.tokens.begin(), b.tokens.end());
  both.targets.insert(both.targets.end(), b.targets.begin(), b.targets.end());
  auto r1 = big.step([&](int64_t) { return both; });
  auto r2 = acc.step([&](int64_t i) { return i == 0 ? a : b; });
  EXPECT_NEAR(r1.loss, r2.loss, 1e-12);
  EXPECT_NEAR(r1.grad_norm, r2.grad_norm, 1e-12);
  EXPECT_EQ(r1.targets, r2.targets);
  double worst = 0;
  for (size_t i = 0; i < one.params().size(); ++i)
    worst = std::max(worst, std::abs(one.params()[i] - two.params()[i]));
  EXPECT_LT(worst, 1e-12);
}

TEST(Training, ClippingBoundsTheUpdateDirectionNotTheReportedNorm) {
  mm::MemMamba<float> m(mmtest::small_config(), 9);
  mm::TrainConfig tc;
  tc.clip = 1e-3;
  mm::Trainer<float> tr(m, tc);
  auto r = tr.step([&](int64_t) { return batch_of<float>(3, 2, 40); });
  EXPECT_GT(r.grad_norm, tc.clip) << "the reported norm is the one before clipping";
}

TEST(Training, ResumeFromSavedStateContinuesExactly) {
  auto dir = mmtest::scratch("training_resume");
  auto cfg = mmtest::small_config();
  mm::TrainConfig tc;
  tc.warmup_steps = 1;
  tc.total_steps = 4;
  auto data = [](int s) { return [s](int64_t) { return batch_of<float>(200 + uint64_t(s), 2, 32); }; };
  mm::MemMamba<float> straight(cfg, 8);
  mm::Trainer<float> ts(straight, tc);
  std::vector<double> want;
  for (int s = 0; s < 4; ++s) want.push_back(ts.step(data(s)).loss);

  mm::MemMamba<float> first(cfg, 8);
  mm::Trainer<float> tf(first, tc);
  std::vector<double> got;
  for (int s = 0; s < 2; ++s) got.push_back(tf.step(data(s)).loss);
  mm::save_checkpoint(dir / "m.safetensors", {cfg, first.params(), {}});
  tf.save_state(dir / "m.optim.safetensors", {{"data.cursor", "2"}});

  auto ck = mm::load_checkpoint(dir / "m.safetensors");
  mm::MemMamba<float> resumed(ck.config, ck.params);
  mm::Trainer<float> tr(resumed, tc);
  auto meta = tr.load_state(dir / "m.optim.safetensors");
  EXPECT_EQ(meta.at("data.cursor"), "2");
  EXPECT_EQ(tr.steps_done(), 2);
  for (int s = 2; s < 4; ++s) got.push_back(tr.step(data(s)).loss);
  EXPECT_EQ(got, want);
  EXPECT_EQ(resumed.params(), straight.params());
}

TEST(Training, NonFiniteLossStopsWithoutTouchingTheParameters) {
  mm::MemMamba<float> m(mmtest::small_config(), 2);
  m.params()[m.table().find("layers.0.mixer.D")->offset] = NAN;
  auto before = m.params();
  mm::Trainer<float> tr(m, {});
  EXPECT_THROW(tr.step([&](int64_t) { return batch_of<float>(4, 1, 32); }), mm::Error);
  EXPECT_EQ(std::memcmp(before.data(), m.params().data(), before.size() * sizeof(float)), 0);
}
