// The CPU model against ../shared/reference (copied to tests/data/reference): an independent
// float64 implementation of DESIGN §3. float64 must agree within 1e-9, float32 within 1e-4.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "io/safetensors.hpp"
#include "model/memmamba.hpp"
#include "support/compare.hpp"
#include "support/fixtures.hpp"

namespace {

struct Reference {
  mm::io::SafetensorsFile file;
  mm::Config cfg;
  std::vector<int32_t> tokens;
};

Reference load() {
  auto f = mm::io::SafetensorsFile::read(mmtest::data("reference/memmamba-tiny-reference.safetensors"));
  Reference r{f, mm::Config::from_json(f.metadata().at("memmamba.config")), {}};
  for (auto t : f.as_i64("input.tokens")) r.tokens.push_back(int32_t(t));
  return r;
}

template <typename T>
void check(double tol) {
  Reference ref = load();
  EXPECT_EQ(ref.file.metadata().at("format"), "memmamba-reference-1");
  mm::ParamTable table(ref.cfg);
  std::vector<T> params(table.total());
  for (const auto& p : table.entries()) {
    ASSERT_TRUE(ref.file.has("param." + p.name)) << p.name;
    auto v = ref.file.as_f64("param." + p.name);
    ASSERT_EQ(v.size(), p.size) << p.name;
    std::copy(v.begin(), v.end(), params.begin() + p.offset);
  }
  // Every reference parameter is one of ours: nothing is silently left out.
  for (const auto& n : ref.file.names()) {
    if (n.rfind("param.", 0) == 0) {
      EXPECT_NE(table.find(n.substr(6)), nullptr) << n;
    }
  }

  mm::MemMamba<T> model(ref.cfg, params);
  const int64_t T_ = int64_t(ref.tokens.size()), V = ref.cfg.vocab;
  auto targets = mm::MemMamba<T>::next_token_targets(ref.tokens.data(), 1, T_);
  std::vector<T> logits(size_t(T_ * V));
  mm::Taps<T> taps;
  int64_t counted = 0;
  model.zero_grads();
  // scale = the number of counted targets makes the loss (and gradients) a mean.
  int64_t n = 0;
  for (auto t : targets) n += t >= 0;
  double loss = model.forward_backward(ref.tokens.data(), targets.data(), 1, T_, double(n), &counted,
                                       logits.data(), &taps) / double(n);
  EXPECT_EQ(counted, n);

  EXPECT_LT(mmtest::rel_error(logits, ref.file.as_f64("output.logits")), tol) << "logits";
  double worst = 0;
  for (const auto& p : table.entries()) worst = std::max(worst, mmtest::rel_error(model.grads().data() + p.offset, ref.file.as_f64("grad." + p.name).data(), p.size));
  std::printf("%s: logits rel error %.3g, worst gradient rel error %.3g\n", sizeof(T) == 8 ? "float64" : "float32", mmtest::rel_error(logits, ref.file.as_f64("output.logits")), worst);
  EXPECT_NEAR(loss, ref.file.as_f64("output.loss")[0], tol * std::abs(loss)) << "loss";
  for (const auto& p : table.entries()) {
    auto g = ref.file.as_f64("grad." + p.name);
    EXPECT_LT(mmtest::rel_error(model.grads().data() + p.offset, g.data(), p.size), tol) << "grad." << p.name;
  }
  for (int l = 0; l < ref.cfg.n_layer; ++l) {
    const std::string pre = "act.layers." + std::to_string(l) + ".";
    const auto& tap = taps.layers[size_t(l)];
    EXPECT_LT(mmtest::rel_error(tap.score, ref.file.as_f64(pre + "note.score")), tol) << pre << "note.score";
    EXPECT_LT(mmtest::rel_error(tap.after_notes, ref.file.as_f64(pre + "after_notes")), tol) << pre << "after_notes";
    EXPECT_LT(mmtest::rel_error(tap.output, ref.file.as_f64(pre + "output")), tol) << pre << "output";
    // Pool membership per chunk: the set of source positions, slot order not part of the contract.
    auto idx = ref.file.as_i64(pre + "note.pool_index");
    const auto& shape = ref.file.info(pre + "note.pool_index").shape;
    ASSERT_EQ(int64_t(tap.pool_read.size()), shape[0]) << pre;
    for (int64_t c = 0; c < shape[0]; ++c) {
      std::set<int64_t> want, got(tap.pool_read[size_t(c)].begin(), tap.pool_read[size_t(c)].end());
      for (int64_t j = 0; j < shape[1]; ++j)
        if (idx[size_t(c * shape[1] + j)] >= 0) want.insert(idx[size_t(c * shape[1] + j)]);
      EXPECT_EQ(got, want) << pre << "pool_index chunk " << c;
    }
  }
}

}  // namespace

TEST(Golden, Float64MatchesReferenceWithin1e9) { check<double>(1e-9); }
TEST(Golden, Float32MatchesReferenceWithin1e4) { check<float>(1e-4); }
