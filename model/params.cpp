#include "model/params.hpp"

#include <cmath>

namespace mm {

size_t ParamTable::add(const std::string& name, std::vector<int64_t> shape, bool decay) {
  ParamInfo p;
  p.name = name;
  p.shape = std::move(shape);
  p.size = 1;
  for (auto s : p.shape) p.size *= size_t(s);
  p.offset = total_;
  p.decay = decay;
  total_ += p.size;
  entries_.push_back(p);
  return p.offset;
}

ParamTable::ParamTable(const Config& c) {
  const int64_t d = c.d_model, E = c.d_inner(), N = c.d_state, R = c.rank(), S = c.summary_dim;
  embedding_ = add("embedding.weight", {c.vocab, d}, true);
  for (int l = 0; l < c.n_layer; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    LayerIndex li{};
    if (c.notes) {
      li.note_norm = add(p + "note.norm.weight", {d}, false);
      li.score_w = add(p + "note.score.weight", {1, d}, true);
      li.score_b = add(p + "note.score.bias", {1}, false);
      li.summary = add(p + "note.summary.weight", {S, d}, true);
      auto read = [&](const std::string& r, LayerIndex::Read& out) {
        out.q = add(p + "note." + r + ".q.weight", {S, d}, true);
        out.k = add(p + "note." + r + ".k.weight", {S, S}, true);
        out.v = add(p + "note." + r + ".v.weight", {S, S}, true);
        out.o = add(p + "note." + r + ".o.weight", {d, S}, true);
        out.gate_w = add(p + "note." + r + ".gate.weight", {d, d}, true);
        out.gate_b = add(p + "note." + r + ".gate.bias", {d}, false);
      };
      read("read", li.read);
      if (c.has_cross(l)) read("cross", li.cross);
    }
    li.norm = add(p + "norm.weight", {d}, false);
    li.in_proj = add(p + "mixer.in_proj.weight", {2 * E, d}, true);
    li.conv_w = add(p + "mixer.conv1d.weight", {E, 1, c.d_conv}, true);
    li.conv_b = add(p + "mixer.conv1d.bias", {E}, false);
    li.x_proj = add(p + "mixer.x_proj.weight", {R + 2 * N, E}, true);
    li.dt_w = add(p + "mixer.dt_proj.weight", {E, R}, true);
    li.dt_b = add(p + "mixer.dt_proj.bias", {E}, false);
    li.A_log = add(p + "mixer.A_log", {E, N}, false);
    li.D = add(p + "mixer.D", {E}, false);
    li.out_proj = add(p + "mixer.out_proj.weight", {d, E}, true);
    layers_.push_back(li);
  }
  norm_f_ = add("norm_f.weight", {d}, false);
}

const ParamInfo* ParamTable::find(const std::string& name) const {
  for (const auto& e : entries_)
    if (e.name == name) return &e;
  return nullptr;
}

template <typename T>
void init_params(std::vector<T>& params, const ParamTable& table, const Config& c, uint64_t seed) {
  params.assign(table.total(), T(0));
  std::mt19937_64 rng(seed);
  auto uniform = [&](size_t off, size_t n, double bound) {
    std::uniform_real_distribution<double> u(-bound, bound);
    for (size_t i = 0; i < n; ++i) params[off + i] = T(u(rng));
  };
  auto fill = [&](size_t off, size_t n, double v) {
    for (size_t i = 0; i < n; ++i) params[off + i] = T(v);
  };
  const double depth = 1.0 / std::sqrt(double(c.n_layer));
  for (const auto& p : table.entries()) {
    const std::string& n = p.name;
    auto ends = [&](const std::string& s) {
      return n.size() >= s.size() && n.compare(n.size() - s.size(), s.size(), s) == 0;
    };
    const double fan_in = p.shape.size() >= 2 ? double(p.shape.back()) : 1.0;
    if (n == "embedding.weight") {
      std::normal_distribution<double> g(0.0, 0.02);
      for (size_t i = 0; i < p.size; ++i) params[p.offset + i] = T(g(rng));
    } else if (ends("norm.weight") || n == "norm_f.weight") {
      fill(p.offset, p.size, 1.0);
    } else if (ends("mixer.A_log")) {
      for (int64_t e = 0; e < p.shape[0]; ++e)
        for (int64_t k = 0; k < p.shape[1]; ++k)
          params[p.offset + size_t(e * p.shape[1] + k)] = T(std::log(double(k + 1)));
    } else if (ends("mixer.D")) {
      fill(p.offset, p.size, 1.0);
    } else if (ends("mixer.dt_proj.weight")) {
      uniform(p.offset, p.size, 1.0 / std::sqrt(double(c.rank())));
    } else if (ends("mixer.dt_proj.bias")) {
      std::uniform_real_distribution<double> u(std::log(1e-3), std::log(1e-1));
      for (size_t i = 0; i < p.size; ++i) {
        double dt = std::max(std::exp(u(rng)), 1e-4);
        params[p.offset + i] = T(dt + std::log(-std::expm1(-dt)));  // inverse softplus
      }
    } else if (ends("mixer.conv1d.weight") || ends("mixer.conv1d.bias")) {
      uniform(p.offset, p.size, 1.0 / std::sqrt(double(c.d_conv)));
    } else if (ends("mixer.out_proj.weight")) {
      uniform(p.offset, p.size, depth / std::sqrt(fan_in));
    } else if (ends(".o.weight")) {
      // The note reads start silent: a random output projection feeds the residual stream noise
      // from whatever the pool holds, the cheapest cure the optimiser finds is to push every
      // score below τ1, and an empty pool returns no gradient to revive it (seen in
      // bench/recall_experiment). From zero, W_o grows only where a read helps.
      fill(p.offset, p.size, 0.0);
    } else if (ends("score.bias")) {
      // Scores start near σ(2) = 0.88, well above τ1: from σ(0) the optimiser pushed layer 1's
      // scores under τ1 within 400 steps of the recall experiment and its pool emptied for good;
      // from 2 the pool stayed full, with key tokens scored above gap tokens (bench/RECALL.md).
      fill(p.offset, p.size, 2.0);
    } else if (ends("gate.bias")) {
      fill(p.offset, p.size, 0.0);
    } else {
      uniform(p.offset, p.size, 1.0 / std::sqrt(fan_in));
    }
  }
}

template void init_params<float>(std::vector<float>&, const ParamTable&, const Config&, uint64_t);
template void init_params<double>(std::vector<double>&, const ParamTable&, const Config&, uint64_t);

}  // namespace mm
