// The model's shape and hyper-parameters (DESIGN §3), read from and written to JSON.
// d d_model, E d_inner = expand·d, N d_state, R dt_rank, k d_conv, K pool_slots,
// d_s summary_dim (H note_heads of d_h), C memory_chunk, p cross_layer_period.
#pragma once
#include <cstdint>
#include <string>

namespace mm {

struct Config {
  int vocab = 8;
  int d_model = 256;
  int n_layer = 8;
  int expand = 2;
  int d_state = 16;
  int d_conv = 4;
  int dt_rank = 0;            // 0: ceil(d_model / 16)
  int pool_slots = 64;
  int summary_dim = 64;
  int note_heads = 4;
  int memory_chunk = 256;
  int cross_layer_period = 4; // 0: no cross-layer reads
  double tau1 = 0.5;
  double rms_eps = 1e-5;
  bool notes = true;          // false: plain Mamba, no note tensors at all

  int d_inner() const { return expand * d_model; }
  int rank() const { return dt_rank > 0 ? dt_rank : (d_model + 15) / 16; }
  int head_dim() const { return summary_dim / note_heads; }
  // Layer l reads the union of the pools of layers l-p+1..l.
  bool has_cross(int l) const {
    return notes && cross_layer_period > 0 && (l + 1) % cross_layer_period == 0;
  }

  // Throws mm::Error naming the field when the shapes are impossible.
  void validate() const;
  std::string to_json() const;
  // Missing fields keep their defaults; unknown fields and bad values are refused.
  static Config from_json(const std::string& json, const std::string& where = "config");
  static Config tiny() { return Config{}; }
};

}  // namespace mm
