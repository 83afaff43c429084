// `memmamba finetune`: a classifier (softmax head on pooled hidden states, or on k-mer
// frequencies for the baseline) trained on labelled sequences or variants (pipelines/labelled.hpp),
// written as one classifier checkpoint (pipelines/classifier.hpp) holding backbone and head, the
// label names and the fine-tuning record.
//
// Modes:
//   frozen (--freeze)  the backbone is left as it is: features are computed once, then only the
//                      head is trained (fast).
//   full               the head is first fitted on the frozen features (a linear probe of
//                      kProbeEpochs epochs), then backbone and head train together: each optimizer
//                      step runs one length batch of whole sequences forward and backward
//                      (MemMamba::forward_backward_hidden), memory growing with the length.
//                      Variant inputs: the MM_LLR feature is recomputed with the current backbone at
//                      every epoch and carries no gradient.
//   k-mer baseline     k-mer frequency features and a logistic-regression (softmax) head; no model.
// Validation: --valid FILE, else a seeded stratified split of the training data (fraction); the
// metric (loss, accuracy, mcc, f1, auroc) is evaluated after every epoch, the best epoch's weights
// are kept, and training stops after `patience` epochs without improvement. Class weights scale
// each example's loss (balanced: n / (classes · n_class)).
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>

#include "model/checkpoint.hpp"
#include "pipelines/classifier.hpp"
#include "pipelines/labelled.hpp"

namespace mm::pipelines {

inline constexpr int64_t kProbeEpochs = 20;

enum class ClassWeighting { none, balanced, given };

struct FinetuneOptions {
  LabelledOptions train;
  std::string valid_path;            // empty: split the training data
  double valid_fraction = 0.1;       // 0: no validation (no early stopping)
  FeatureSpec spec;
  bool freeze = false;
  int64_t epochs = 0;                // 0: 100 for frozen / baseline, 5 for full fine-tuning
  int64_t batch = 0;                 // examples per step; 0: 32 frozen / baseline, 8 full
  double lr = 1e-4;                  // backbone (full fine-tuning): warmup + cosine
  int64_t warmup = -1;               // backbone warmup steps; -1: a tenth of the steps (at most 100)
  double head_lr = 1e-3;
  double weight_decay = 0.01;        // AdamW, backbone matrices and the head's weights
  double clip = 1.0;                 // global gradient norm (full fine-tuning); 0: none
  std::string metric = "loss";       // loss, accuracy, mcc, f1, auroc
  int64_t patience = 10;             // epochs without improvement before stopping; 0: never stop
  ClassWeighting weighting = ClassWeighting::none;
  std::map<std::string, double> class_weights;  // weighting == given: label -> weight
  uint64_t seed = 1;
  FeatureRun run;
  std::filesystem::path output;      // classifier checkpoint (.safetensors)
  std::filesystem::path metrics;     // JSON lines; empty: <output stem>.metrics.jsonl
  std::string command, model_path;   // provenance
  std::function<bool()> should_stop; // checked between steps
};

struct FinetuneResult {
  std::vector<std::string> labels;
  int64_t n_train = 0, n_valid = 0, epochs = 0, best_epoch = 0, steps = 0;
  bool stopped_early = false, interrupted = false;
  std::optional<Metrics> valid;      // of the kept weights
  double train_loss = 0;             // last epoch
  std::filesystem::path metrics_path;
};

// base: the pretrained model (null for the k-mer baseline). Throws mm::Error / UsageError; a failed
// run leaves no checkpoint.
FinetuneResult finetune(const Checkpoint* base, const FinetuneOptions& o, const Reporter& rep);

// The example counts of each label (label order), for messages and records.
std::map<std::string, int64_t> label_counts(const std::vector<Example>& ex);

}  // namespace mm::pipelines
