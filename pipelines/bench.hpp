// `memmamba bench`: the figures of DESIGN §8 measured on this machine: model inference and
// training tokens/s, the scan kernel's time and bandwidth, the GEMM ceiling and peak memory.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "io/error.hpp"
#include "model/config.hpp"

namespace mm::pipelines {

struct BenchOptions {
  Config config = Config::tiny();
  std::vector<int64_t> infer_lengths;  // tokens, batch 1
  int64_t train_length = 0;            // tokens per training step (batch 1)
  int64_t scan_length = 0;             // L of the scan kernel benchmark (E = 512, N = 16)
  int repeats = 3;                     // timed runs per figure (the median is reported)
  uint64_t seed = 1;
};

struct BenchRow {
  std::string what, size;
  double value;       // the figure
  std::string unit;
  std::string note;   // e.g. the fraction of a ceiling
};

struct BenchReport {
  std::string device, date, config_json;
  std::vector<BenchRow> rows;
  double peak_memory_bytes = 0;
};

// Model FLOPs per token of the forward pass spent in matrix products (the projections, the tied
// head and the pool attention at full pools), so achieved rates can be set against the GEMM ceiling.
double forward_gemm_flops_per_token(const Config& c);

// CPU figures (TBB over all cores, OpenBLAS).
BenchReport bench_cpu(const BenchOptions& o, const Reporter& rep);

// CUDA figures (bf16 matrix products, fp32 accumulation); only in builds with the CUDA backend.
bool cuda_built();
BenchReport bench_cuda(const BenchOptions& o, const Reporter& rep);

std::string format_report(const BenchReport& r);

}  // namespace mm::pipelines
