// The parameter table: every tensor's name (DESIGN §5, mamba-ssm's names), shape and place in
// one flat buffer. Parameters, gradients and optimizer moments share this layout.
#pragma once
#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "model/config.hpp"

namespace mm {

struct ParamInfo {
  std::string name;
  std::vector<int64_t> shape;
  size_t offset = 0, size = 0;
  bool decay = false;  // weight decay applies (matrices), not to norms, biases, A_log, D
};

// Offsets of one layer's tensors in the flat buffer (kNone where the tensor does not exist).
struct LayerIndex {
  static constexpr size_t kNone = size_t(-1);
  size_t norm, in_proj, conv_w, conv_b, x_proj, dt_w, dt_b, A_log, D, out_proj;
  size_t note_norm = kNone, score_w = kNone, score_b = kNone, summary = kNone;
  struct Read { size_t q = kNone, k = kNone, v = kNone, o = kNone, gate_w = kNone, gate_b = kNone; };
  Read read, cross;
};

class ParamTable {
public:
  explicit ParamTable(const Config& cfg);
  const std::vector<ParamInfo>& entries() const { return entries_; }
  size_t total() const { return total_; }
  const ParamInfo* find(const std::string& name) const;
  const LayerIndex& layer(int l) const { return layers_.at(size_t(l)); }
  size_t embedding() const { return embedding_; }
  size_t norm_f() const { return norm_f_; }

private:
  size_t add(const std::string& name, std::vector<int64_t> shape, bool decay);
  std::vector<ParamInfo> entries_;
  std::vector<LayerIndex> layers_;
  size_t total_ = 0, embedding_ = 0, norm_f_ = 0;
};

// Mamba initialisation conventions: A_log = log(1..N), D = 1, Δ bias the inverse softplus of
// a log-uniform draw in [1e-3, 1e-1], out-projections scaled by 1/√n_layer, the note reads'
// output projections zero (the reads start silent; see params.cpp), score biases 2 (scores
// start above τ1), PyTorch's default
// uniform(±1/√fan_in) for other linears, N(0, 0.02) for the embedding.
template <typename T>
void init_params(std::vector<T>& params, const ParamTable& table, const Config& cfg, uint64_t seed);

}  // namespace mm
