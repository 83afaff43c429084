// `memmamba score`: per-base values of a causal MemMamba over a reference, streamed in one pass
// per region or contig in constant memory (DESIGN §3 "causality and streaming are one contract").
//
// The stream of a region is BOS, then the context bases, then the region's bases. The model
// predicts token t+1 from tokens ≤ t, so the value of a base is read from the logits of the token
// before it (BOS for the first base of a stream). Values use the predicted distribution over
// A/C/G/T only (the logits of A, C, G, T renormalised):
//   logp    = ln p(observed base | bases before it), in nats
//   entropy = −Σ_b p(b) ln p(b) over b ∈ {A,C,G,T}, in nats
// N runs: N (every IUPAC ambiguity code) gets no value (NaN = missing), but its token is fed to
// the model like any other (the model saw N in training), so the stream and its state continue
// through the run and the base after it is predicted from everything before, N included.
// Reverse strand: the reverse complement of [beg, end + context) is streamed right to left and
// each value is put back at the forward coordinate of its base (the value of position i is the
// prediction of complement(base i) from the bases to its right). Both strands: the mean of the
// two values at each position.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "io/error.hpp"
#include "model/memmamba.hpp"
#include "model/stream_model.hpp"

namespace mm::pipelines {

// Scores one stream piece by piece: feed() any split of the bases gives the values of one whole
// forward pass over BOS + all of them (within float rounding of the model's streaming contract).
class StreamScorer {
public:
  // `piece`: most tokens per forward call (bounds memory; any value gives the same results).
  explicit StreamScorer(StreamModel& model, int64_t piece = 16384);
  explicit StreamScorer(MemMamba<float>& model, int64_t piece = 16384);  // on the CPU
  // Starts a new stream: the next feed() begins with BOS.
  void reset();
  // Feeds n tokens (A C G T N; no BOS) and writes, for each, ln p(token) and the entropy of its
  // predicted A/C/G/T distribution; NaN for tokens that are not A/C/G/T. Either output may be null.
  void feed(const uint8_t* tokens, size_t n, float* logp, float* entropy);
  int64_t fed() const { return fed_; }  // tokens fed since reset (BOS excluded)

private:
  void start();
  void run(const int32_t* tk, int64_t n);  // forward over tk into logits_
  std::unique_ptr<StreamModel> owned_;  // the CPU wrapper when built from a MemMamba
  StreamModel* model_;
  int64_t piece_;
  bool started_ = false;
  int64_t fed_ = 0;
  std::vector<float> pending_;  // logits row of the last token fed (predicts the next)
  std::vector<float> logits_;
  std::vector<int32_t> tk_;
};

// Values of one A/C/G/T distribution from a logits row (V entries; A..T at tokens 1..4).
void row_values(const float* logits_row, uint8_t token, float* logp, float* entropy);

enum class ScoreValue { logp, entropy, both };
enum class ScoreStrand { fwd, rev, both };
enum class ScoreFormat { bedgraph, bigwig, tsv };

struct ScoreOptions {
  std::string fasta;                 // reference: FASTA, bgzip FASTA, or (forward whole contigs) gz / "-"
  std::vector<std::string> regions;  // -r texts, 1-based inclusive
  std::string regions_bed;           // -R BED file (0-based half-open)
  ScoreValue value = ScoreValue::logp;
  ScoreStrand strand = ScoreStrand::fwd;
  ScoreFormat format = ScoreFormat::bedgraph;
  std::string output = "-";
  int64_t context = 0;               // bases read before a region (after it on the reverse strand)
  int64_t piece = 16384;             // bases per forward call
  std::string version, command_line; // provenance written into the output header
  std::string model;                 // the checkpoint used (provenance)
};

struct ScoreStats {
  int64_t streams = 0;   // regions or contigs scored
  int64_t bases = 0;     // positions written (missing included)
  int64_t missing = 0;   // of which without a value (N)
  int64_t fed = 0;       // tokens through the model (context and both strands included)
};

// Parses -r values: each may be a comma-separated list; a comma followed by exactly three digits
// (and then '-', ',' or the end) is a thousands separator, not a list separator.
std::vector<std::string> split_region_list(const std::string& text);

// Runs the whole command. Throws mm::Error / mm::UsageError; a failed run leaves no output file
// (stdout is streamed as it goes).
ScoreStats score(StreamModel& model, const ScoreOptions& o, const Reporter& rep);
ScoreStats score(MemMamba<float>& model, const ScoreOptions& o, const Reporter& rep);

}  // namespace mm::pipelines
