// Training data for pretraining: FASTA records and BAM/CRAM/SAM reads turned into training and
// held-out validation intervals (tokens in memory), and the seeded window sampler that draws
// training windows from them.
//
// FASTA: each record is cut to the include regions (-R, whole records when none), minus the
// exclude regions; bases in validation regions or validation contigs go to the validation set
// (minus the exclude regions) and are never in a training interval. Runs of N of kGapRun bases or
// more split intervals; intervals with no A/C/G/T are dropped. BED names may differ by a "chr"
// prefix (chr20 = 20, chrM = MT).
// BAM/CRAM/SAM: reads passing the filters are sequences of their own, joined per file and set
// with a BOS token between reads (BOS breaks Markov contexts and is never a target). A read that
// overlaps a validation region or contig is validation; one that overlaps an exclude region is
// dropped; with include regions, only reads overlapping them (unplaced reads are then dropped).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "io/bam.hpp"
#include "io/error.hpp"

namespace mm::pipelines {

inline constexpr int64_t kGapRun = 100;  // N runs this long split intervals

struct DataOptions {
  std::vector<std::string> inputs;          // FASTA (plain/gz/bgzip, "-" stdin) or .bam/.cram/.sam
  std::string regions_bed, exclude_bed, valid_bed;
  std::vector<std::string> valid_regions;   // chr:beg-end, 1-based inclusive
  std::vector<std::string> valid_contigs;
  io::BamOptions bam;
};

struct Interval {
  std::string source;   // the input file
  std::string contig;   // contig name, or "reads" for joined BAM reads
  int64_t beg0 = 0, end0 = 0;
  std::vector<uint8_t> tokens;  // end0 - beg0 tokens
};

struct DataSet {
  std::vector<Interval> train, valid;
  int64_t train_bases = 0, valid_bases = 0;  // A/C/G/T only
  std::string summary;                       // one line for logs and provenance
};

// Throws mm::Error naming the file for unreadable inputs, regions on unknown contigs or outside
// them (validation regions only; BED include/exclude lines on absent contigs are ignored with a
// note), and when no training A/C/G/T base is left.
DataSet load_training_data(const DataOptions& options, const Reporter& reporter = {});

struct WindowSpec {
  int64_t length = 1024;        // bases per window
  int64_t stride = 1;           // window starts lie on beg0 + i·stride of their interval
  double max_n_fraction = 0.1;  // windows with more N (or BOS) are redrawn
  double rc_prob = 0.5;         // probability of reverse-complementing a window
  uint64_t seed = 1;
};

struct SampledWindow {
  size_t interval = 0;
  int64_t beg0 = 0;             // contig coordinate of the first base (forward strand)
  bool reverse = false;
  std::vector<uint8_t> tokens;  // length tokens
};

// Draws windows uniformly over all valid starts of all intervals. Window number i is a pure
// function of (seed, i): resuming at step s only needs s.
class WindowSampler {
public:
  // Throws mm::Error when no interval is as long as a window (naming the longest one).
  WindowSampler(const std::vector<Interval>& intervals, WindowSpec spec);
  SampledWindow sample(uint64_t index) const;
  const WindowSpec& spec() const { return spec_; }

private:
  const std::vector<Interval>& intervals_;
  WindowSpec spec_;
  std::vector<size_t> which_;       // intervals that can hold a window
  std::vector<uint64_t> cum_;       // cumulative start counts over which_
};

// Validation windows: each interval tiled with non-overlapping windows of `length` (a shorter
// interval is one window of its own length), dropping windows above max_n_fraction; at most
// max_windows of them, evenly spread.
std::vector<SampledWindow> validation_windows(const std::vector<Interval>& valid, int64_t length,
                                              double max_n_fraction, int64_t max_windows);

}  // namespace mm::pipelines
