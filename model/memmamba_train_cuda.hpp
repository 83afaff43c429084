// MemMamba's training pass on the CUDA backend: forward over whole sequences keeping only each
// layer's input (and the summaries and pool snapshots the reads need), then the backward pass
// layer by layer, each layer recomputed from its input (DESIGN §4), so a 1 M-token step fits on
// one GPU. Activations and gradients in fp32; matrix products in TF32 (fast) or fp32 (parity).
// Built only with MEMMAMBA_CUDA.
// B batch, T length, M = B·T rows, D d_model, E d_inner, N d_state, S summary width, V vocab.
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

class MemMambaCudaTraining {
public:
  // products: DType::tf32 (the fast path) or DType::f32 (parity with the CPU).
  explicit MemMambaCudaTraining(const Config& cfg, cuda::DType products = cuda::DType::tf32);
  ~MemMambaCudaTraining();

  // Copies the flat float32 parameters (ParamTable layout) to the device.
  void set_params(const std::vector<float>& params);

  // One pass over B whole sequences of T tokens: grads (ParamTable layout, host) +=
  // ∂(Σ loss / scale)/∂params. targets (B×T): the next token or −1. Returns Σ loss (nats);
  // *counted = targets counted. logits (B×T×V, host) when not null.
  double forward_backward(const int32_t* tokens, const int32_t* targets, int64_t B, int64_t T,
                          double scale, int64_t* counted, float* grads, float* logits = nullptr);

  // When set, each group of ops is timed (synchronising after it) and its seconds added here.
  std::vector<std::pair<std::string, double>>* profile = nullptr;
  const Config& config() const { return cfg_; }

  struct Impl;

private:
  Config cfg_;
  ParamTable table_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mm
