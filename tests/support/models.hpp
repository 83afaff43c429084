// Small model configs and random token streams shared by the model tests.
#pragma once
#include <cstdint>
#include <random>
#include <vector>

#include <filesystem>
#include <string>
#include <utility>

#include "model/checkpoint.hpp"
#include "model/config.hpp"
#include "model/memmamba.hpp"

namespace mmtest {

// Small enough for fast tests, large enough that pools fill and replace slots and every layer
// kind (own read, cross-layer read) runs: 3 layers, cross read on layer 1.
inline mm::Config small_config(bool notes = true) {
  mm::Config c;
  c.d_model = 16;
  c.n_layer = 3;
  c.expand = 2;
  c.d_state = 4;
  c.d_conv = 4;
  c.pool_slots = 4;
  c.summary_dim = 8;
  c.note_heads = 2;
  c.memory_chunk = 8;
  c.cross_layer_period = 2;
  c.tau1 = 0.5;
  c.notes = notes;
  return c;
}

// Random A/C/G/T tokens with a few N, starting with BOS.
inline std::vector<int32_t> random_tokens(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = int32_t(1 + rng() % 4);
  for (int64_t i = 7; i < n; i += 37) t[size_t(i)] = 5;
  t[0] = 6;
  return t;
}

// Freshly initialised model whose note reads are live: initialisation zeroes the reads' output
// projections, which would make every read invisible to tests of logits.
template <typename T>
mm::MemMamba<T> live_model(const mm::Config& cfg, uint64_t seed) {
  mm::MemMamba<T> m(cfg, seed);
  std::mt19937_64 rng(seed ^ 0x9e3779b97f4a7c15ull);
  std::uniform_real_distribution<double> u(-0.3, 0.3);
  for (const auto& p : m.table().entries())
    if (p.name.size() > 9 && p.name.compare(p.name.size() - 9, 9, ".o.weight") == 0)
      for (size_t i = 0; i < p.size; ++i) m.params()[p.offset + i] = T(u(rng));
  return m;
}

// n random A/C/G/T letters.
inline std::string random_bases(size_t n, std::mt19937_64& rng) {
  std::string s(n, 'A');
  for (auto& c : s) c = "ACGT"[rng() % 4];
  return s;
}

// A FASTA of (name, sequence) records, 60 bases a line; `description` follows each name.
inline std::string fasta_text(const std::vector<std::pair<std::string, std::string>>& records,
                              const std::string& description = "") {
  std::string text;
  for (const auto& [name, seq] : records) {
    text += '>';
    text += name;
    if (!description.empty()) {
      text += ' ';
      text += description;
    }
    text += '\n';
    for (size_t i = 0; i < seq.size(); i += 60) {
      text += seq.substr(i, 60);
      text += '\n';
    }
  }
  return text;
}

// Saves a model's parameters as a checkpoint at `path` and returns the path.
inline std::filesystem::path save_model(const std::filesystem::path& path, const mm::MemMamba<float>& net) {
  mm::save_checkpoint(path, {net.config(), net.params(), {}});
  return path;
}

}  // namespace mmtest
