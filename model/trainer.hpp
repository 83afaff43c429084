// The training core the pipelines use: AdamW with linear warmup and cosine decay, global
// gradient-norm clipping, gradient accumulation over micro-batches, and optimizer state that can
// be saved for an exact resume. Deterministic: the same seed and data give bit-identical losses.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "kernels/adamw.hpp"
#include "model/memmamba.hpp"

namespace mm {

struct TrainConfig {
  double lr = 1e-3;
  double min_lr_ratio = 0.1;     // cosine decays to lr · min_lr_ratio
  int64_t warmup_steps = 100;
  int64_t total_steps = 1000;
  double weight_decay = 0.1;
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double clip = 1.0;             // max global gradient norm; 0 = no clipping
  int64_t accumulation = 1;      // micro-batches per optimizer step
};

// Learning rate at optimizer step `step` (1-based): linear warmup, then cosine to the floor.
double learning_rate(const TrainConfig& tc, int64_t step);

// One micro-batch: B sequences of T tokens and their targets (−1 = ignored).
struct Batch {
  std::vector<int32_t> tokens, targets;
  int64_t B = 0, T = 0;
};

struct StepResult {
  double loss = 0;        // mean cross-entropy (nats) over the counted targets of the step
  int64_t targets = 0;
  double grad_norm = 0;   // before clipping
  double lr = 0;
};

// Computes model.grads() += ∂(Σ loss)/∂params for one micro-batch and returns Σ loss, setting
// *counted: the model's own (CPU) forward_backward by default, the CUDA backend's with
// make_cuda_gradient_pass (model/cuda_training.hpp).
template <typename T>
using GradientPass = std::function<double(MemMamba<T>& model, const Batch& batch, int64_t* counted)>;

template <typename T>
class Trainer {
public:
  Trainer(MemMamba<T>& model, TrainConfig tc, GradientPass<T> pass = {});
  // Runs tc.accumulation micro-batches from next_batch(i) and one AdamW step.
  // Throws mm::Error when the loss or the gradient is not finite (the parameters are untouched).
  StepResult step(const std::function<Batch(int64_t micro)>& next_batch);
  int64_t steps_done() const { return step_; }
  const TrainConfig& config() const { return tc_; }

  // Optimizer state (moments and step count) for an exact resume; extra metadata rides along
  // (the data cursor, say). Written atomically.
  void save_state(const std::filesystem::path& path, const std::map<std::string, std::string>& extra) const;
  std::map<std::string, std::string> load_state(const std::filesystem::path& path);

private:
  MemMamba<T>& model_;
  TrainConfig tc_;
  GradientPass<T> pass_;
  std::vector<T> m_, v_;
  int64_t step_ = 0;
};

}  // namespace mm
