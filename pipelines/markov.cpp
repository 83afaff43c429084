#include "pipelines/markov.hpp"

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "io/error.hpp"
#include "io/tokenizer.hpp"

namespace mm::pipelines {

namespace {
inline int base_of(uint8_t t) { return (t >= io::tok::A && t <= io::tok::T) ? int(t) - 1 : -1; }
// Calls f(ctx, have, x) for every A/C/G/T base x of the spans: ctx holds the preceding bases two
// bits each (most recent lowest), have how many of them there are (capped at 64); N restarts it.
template <typename F>
void for_each_base(const TokenSpans& spans, F&& f) {
  for (const auto& s : spans) {
    uint64_t ctx = 0;
    int have = 0;
    for (uint8_t tok : s) {
      const int x = base_of(tok);
      if (x < 0) {
        have = 0;
        ctx = 0;
        continue;
      }
      f(ctx, have, x);
      ctx = (ctx << 2) | uint64_t(x);
      if (have < 64) ++have;
    }
  }
}

}  // namespace

MarkovModel::MarkovModel(MarkovSmoothing smoothing, double alpha) : smoothing_(smoothing), alpha_(alpha) {
  if (!(alpha > 0)) throw UsageError("the additive smoothing constant must be positive");
}

void MarkovModel::grow(const TokenSpans& train) {
  const int j = order() + 1;
  if (j > kMaxOrder)
    throw UsageError("Markov order " + std::to_string(j) + " is above the maximum " + std::to_string(kMaxOrder));
  std::vector<uint32_t> t(size_t(1) << (2 * (j + 1)), 0);
  const uint64_t mask = (uint64_t(1) << (2 * j)) - 1;
  for_each_base(train, [&](uint64_t ctx, int have, int x) {
    if (have >= j) ++t[((ctx & mask) << 2) | uint64_t(x)];
  });
  tables_.push_back(std::move(t));
}

void MarkovModel::shrink() {
  if (!tables_.empty()) tables_.pop_back();
}

double MarkovModel::prob_at(int j, uint64_t ctx, int x) const {
  if (j < 0) return 0.25;
  const uint64_t c = ctx & ((uint64_t(1) << (2 * j)) - 1);
  const uint32_t* row = tables_[size_t(j)].data() + (c << 2);
  const double total = double(row[0]) + row[1] + row[2] + row[3];
  if (smoothing_ == MarkovSmoothing::additive) return (row[x] + alpha_) / (total + 4 * alpha_);
  if (total == 0) return prob_at(j - 1, ctx, x);
  const double types = double((row[0] > 0) + (row[1] > 0) + (row[2] > 0) + (row[3] > 0));
  return (row[x] + types * prob_at(j - 1, ctx, x)) / (total + types);
}

double MarkovModel::prob(uint64_t ctx, int have, int x) const {
  return prob_at(std::min(have, order()), ctx, x);
}

double MarkovModel::bits(const TokenSpans& seqs, int64_t* counted) const {
  double sum = 0;
  int64_t n = 0;
  const int k = order();
  for_each_base(seqs, [&](uint64_t ctx, int have, int x) {
    sum -= std::log2(prob_at(std::min(have, k), ctx, x));
    ++n;
  });
  if (counted) *counted = n;
  return sum;
}

std::string MarkovResult::to_json() const {
  nlohmann::json j;
  j["order"] = order;
  j["bits_per_base"] = bits_per_base;
  j["bits_per_base_by_order"] = by_order;
  j["train_bases"] = train_bases;
  j["valid_bases"] = valid_bases;
  j["smoothing"] = smoothing;
  return j.dump();
}

MarkovResult MarkovResult::from_json(const std::string& text) {
  MarkovResult r;
  try {
    auto j = nlohmann::json::parse(text);
    r.order = j.at("order").get<int>();
    r.bits_per_base = j.at("bits_per_base").get<double>();
    r.by_order = j.at("bits_per_base_by_order").get<std::vector<double>>();
    r.train_bases = j.at("train_bases").get<int64_t>();
    r.valid_bases = j.at("valid_bases").get<int64_t>();
    r.smoothing = j.at("smoothing").get<std::string>();
  } catch (const std::exception& e) {
    throw Error(std::string("bad Markov reference metadata: ") + e.what());
  }
  return r;
}

MarkovResult select_markov(const TokenSpans& train, const TokenSpans& valid, int max_order,
                           MarkovSmoothing smoothing, double alpha, MarkovModel* out) {
  if (max_order < 0 || max_order > MarkovModel::kMaxOrder)
    throw UsageError("the Markov order must lie in 0.." + std::to_string(MarkovModel::kMaxOrder));
  MarkovModel local(smoothing, alpha);
  MarkovModel& m = out ? *out : local;
  m = MarkovModel(smoothing, alpha);
  MarkovResult r;
  r.smoothing = smoothing == MarkovSmoothing::additive ? "additive(" + std::to_string(alpha) + ")" : "witten-bell";
  for (const auto& s : train)
    for (uint8_t t : s) r.train_bases += base_of(t) >= 0;
  if (r.train_bases == 0) throw Error("no A/C/G/T bases to count for the Markov reference");
  double best = std::numeric_limits<double>::infinity();
  for (int k = 0; k <= max_order; ++k) {
    m.grow(train);
    int64_t n = 0;
    const double b = m.bits(valid, &n);
    if (n == 0) throw Error("no A/C/G/T bases in the validation data for the Markov reference");
    r.valid_bases = n;
    const double bpb = b / double(n);
    r.by_order.push_back(bpb);
    if (bpb < best) {
      best = bpb;
      r.order = k;
      r.bits_per_base = bpb;
    } else {
      m.shrink();
      break;
    }
  }
  return r;
}

}  // namespace mm::pipelines
