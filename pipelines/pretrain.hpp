// memmamba pretrain: causal-LM pretraining of a MemMamba on FASTA/BAM data (CPU or CUDA backend),
// with held-out validation, a k-mer Markov reference, atomic checkpoints that keep the last k,
// exact resume, JSON-lines metrics and a clean stop on request (SIGINT/SIGTERM in the app).
//
// Output folder: step-<8 digits>.safetensors (model + provenance metadata), beside it
// step-<N>.state.safetensors (AdamW moments, step count, data cursor) and step-<N>.md (model card).
// Each training sample is BOS followed by one window of `window` bases; window i of the run is a
// pure function of (seed, i), so the data cursor is the step count.
//
// Data parallelism: with a Collective of N ranks (one process each, see pipelines/ranks.hpp),
// every optimizer step still covers the same batch × accumulate windows; rank r computes the
// gradients of its contiguous share of them (rank_windows), in micro-batches of at most `batch`
// windows, the gradients and losses are summed across ranks, and every rank applies the same
// AdamW step. Rank 0 alone computes the Markov reference, validates and writes checkpoints,
// cards and metrics. The checkpoint, optimizer state and data cursor do not depend on N, so a
// run resumes with any number of ranks; results equal the one-process run up to the order of
// floating-point summation.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <utility>

#include "model/collective.hpp"
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
  // The ranks this process trains with (not owned); null: this process alone.
  Collective* collective = nullptr;
  // Test hook (the app reads MEMMAMBA_TEST_FAIL_RANK=R:S): rank R throws mm::Error before step S,
  // as a rank that fails mid-run.
  int fail_rank = -1;
  int64_t fail_step = 0;
};

struct PretrainResult {
  int64_t steps = 0;             // optimizer steps done in total
  bool interrupted = false;      // stopped by should_stop or stop_at before --steps
  std::filesystem::path last_checkpoint;
  std::optional<MarkovResult> markov;
  double valid_bits_per_base = -1;  // last evaluation; < 0 when none
};

PretrainResult pretrain(const PretrainOptions& options, const Reporter& reporter);

// The option checks pretrain() starts with, for a launcher to run before it starts `ranks`
// processes: throws UsageError (bad values; fewer windows per step than ranks).
void check_pretrain_options(const PretrainOptions& options, int ranks = 1);

// Rank `rank` of `ranks` computes the step's windows [first, last) (offsets within the step's
// batch × accumulate windows; window offset j of step s has index (s−1)·batch·accumulate + j):
// contiguous shares in rank order whose sizes differ by at most one.
std::pair<int64_t, int64_t> rank_windows(int64_t step_windows, int rank, int ranks);

// The checkpoint to resume from: a file as given, or a folder's highest step-N.safetensors that
// has its state file. Throws mm::Error when there is none.
std::filesystem::path find_resume_checkpoint(const std::filesystem::path& file_or_dir);
// step-N.safetensors -> step-N.state.safetensors / step-N.md
std::filesystem::path state_path(const std::filesystem::path& checkpoint);
std::filesystem::path card_path(const std::filesystem::path& checkpoint);

}  // namespace mm::pipelines
