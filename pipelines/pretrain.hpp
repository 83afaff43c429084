// memmamba pretrain: causal-LM pretraining of a MemMamba on FASTA/BAM data (CPU or CUDA backend),
// with held-out validation, a k-mer Markov reference, atomic checkpoints that keep the last k,
// exact resume, JSON-lines metrics and a clean stop on request (SIGINT/SIGTERM in the app).
//
// Output folder: step-<8 digits>.safetensors (model + provenance metadata), beside it
// step-<N>.state.safetensors (AdamW moments, step count, data cursor) and step-<N>.md (model card).
// Each training sample is BOS followed by one window of `window` bases; window i of the run is a
// pure function of (seed, i), so the data cursor is the step count.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>

#include "model/config.hpp"
#include "model/trainer.hpp"
#include "pipelines/markov.hpp"
#include "pipelines/training_data.hpp"

namespace mm::pipelines {

struct PretrainOptions {
  DataOptions data;
  Config model = Config::tiny();
  bool model_given = false;      // config came from flags or --config: must match on --resume
  TrainConfig train;             // total_steps = --steps
  WindowSpec windows;            // length, stride, N filter, rc_prob, seed
  int64_t batch = 8;
  bool cuda = false;             // train and validate on the CUDA backend (else the CPU)
  std::filesystem::path output;  // checkpoint folder (created when missing)
  std::filesystem::path metrics; // JSON lines; empty: <output>/metrics.jsonl (appended on resume)
  int64_t save_every = 1000, keep = 3, eval_every = 1000, valid_windows = 64;
  std::string resume;            // checkpoint file or folder (its latest checkpoint)
  int64_t stop_at = 0;           // stop after this step as if interrupted (0: run to --steps)
  bool markov = true, markov_only = false;
  int markov_max_order = 12;
  MarkovSmoothing markov_smoothing = MarkovSmoothing::witten_bell;
  std::string command;           // the command line, for provenance
  std::function<bool()> should_stop;  // checked between steps
  // Test hook (the app reads MEMMAMBA_TEST_POISON_STEP): sets a parameter to NaN before this
  // step, so that the step's loss is not finite.
  int64_t poison_step = 0;
};

struct PretrainResult {
  int64_t steps = 0;             // optimizer steps done in total
  bool interrupted = false;      // stopped by should_stop or stop_at before --steps
  std::filesystem::path last_checkpoint;
  std::optional<MarkovResult> markov;
  double valid_bits_per_base = -1;  // last evaluation; < 0 when none
};

PretrainResult pretrain(const PretrainOptions& options, const Reporter& reporter);

// The checkpoint to resume from: a file as given, or a folder's highest step-N.safetensors that
// has its state file. Throws mm::Error when there is none.
std::filesystem::path find_resume_checkpoint(const std::filesystem::path& file_or_dir);
// step-N.safetensors -> step-N.state.safetensors / step-N.md
std::filesystem::path state_path(const std::filesystem::path& checkpoint);
std::filesystem::path card_path(const std::filesystem::path& checkpoint);

}  // namespace mm::pipelines
