// MemMamba's forward pass on the CUDA backend: inference over batches and streaming through a
// state kept on the device, for any length (long inputs run as pieces through the same state,
// which the streaming contract makes exact). Matrix products in bf16 with fp32 accumulation
// (DType::bf16) or in fp32 (DType::f32, the parity path). Built only with MEMMAMBA_CUDA.
// B batch, T length, D d_model, E d_inner, N d_state, K pool slots, S summary width, V vocab.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda/ops.hpp"
#include "model/config.hpp"
#include "model/params.hpp"

namespace mm {

class MemMambaCuda {
public:
  // params: the flat float32 parameters of ParamTable(cfg) (a checkpoint's, say).
  MemMambaCuda(const Config& cfg, const std::vector<float>& params, cuda::DType gemm = cuda::DType::bf16);
  ~MemMambaCuda();

  struct State;  // per layer: conv tail, SSM state, pool and candidates, on the device
  std::unique_ptr<State, void (*)(State*)> new_state(int64_t batch) const;

  // logits_host (B×T×V), or null to leave them on the device (benchmarks). Without a state the
  // tokens are whole sequences from position 0.
  void forward(const int32_t* tokens_host, int64_t B, int64_t T, float* logits_host,
               State* state = nullptr);

  // Source positions held by layer l's pool for sequence b (tests, tools).
  std::vector<int64_t> pool_positions(const State& st, int layer, int64_t b) const;
  int64_t position(const State& st) const;

  // Longest piece run at once (tokens per sequence); longer inputs stream through the state.
  int64_t max_piece = int64_t(1) << 20;
  // When set, forward synchronises after each group of ops and adds its seconds here, by group
  // (the per-op breakdown of `memmamba bench`; slows the pass down a little).
  std::vector<std::pair<std::string, double>>* profile = nullptr;
  const Config& config() const { return cfg_; }

  struct Impl;

  // A copy of a stream state on the device (position; per layer conv tail, SSM state, pool and
  // candidates): fed the same tokens, the copy continues exactly as the original would.
  std::unique_ptr<State, void (*)(State*)> copy_state(const State& src) const;

private:
  Config cfg_;
  ParamTable table_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mm
