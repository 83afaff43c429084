// `memmamba embed`: one vector per sequence (FASTA record) or per region, from a chosen layer of
// a MemMamba, pooled over the sequence's positions.
//
// Each sequence is one stream: BOS, then its bases (every IUPAC code fed as its token, N included).
// The vector is read from the residual stream after layer `layer` (0-based), or after the final
// RMSNorm (norm_f) for the default `final`, at the positions of the bases (BOS excluded):
//   mean  the mean of those rows (accumulated in double)
//   last  the row of the last base
// Long sequences are fed in pieces through a StreamState, so memory stays bounded and the result
// equals one whole forward pass (DESIGN §3 "causality and streaming are one contract").
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "io/error.hpp"
#include "model/memmamba.hpp"

namespace mm::pipelines {

enum class EmbedPool { mean, last };
enum class EmbedFormat { npy, tsv };

inline constexpr int kFinalLayer = -1;

// Embeds one stream piece by piece: any split of feed() calls gives the vector of one whole
// forward pass over BOS + all the tokens.
class StreamEmbedder {
public:
  // layer: 0..n_layer-1, or kFinalLayer. piece: most tokens per forward call (memory only).
  StreamEmbedder(MemMamba<float>& model, int layer, EmbedPool pool, int64_t piece = 4096);
  void reset();                                // a new stream: the next feed() begins with BOS
  void feed(const uint8_t* tokens, size_t n);  // tokens A C G T N (no BOS)
  int64_t fed() const { return fed_; }         // tokens since reset (BOS excluded)
  // The pooled vector (d_model values). Throws mm::Error when nothing was fed.
  std::vector<float> result() const;

private:
  MemMamba<float>& model_;
  int layer_;
  EmbedPool pool_;
  int64_t piece_;
  StreamState<float> state_;
  bool started_ = false;
  int64_t fed_ = 0;
  std::vector<double> sum_;
  std::vector<float> last_, logits_, normed_;
  std::vector<int32_t> tk_;
};

// "final" → kFinalLayer, else a 0-based index; throws UsageError naming the model's layer count.
int parse_layer(const std::string& text, int n_layer);

struct EmbedOptions {
  std::string fasta;                 // FASTA (any, "-" for stdin) or, with regions, indexed FASTA
  std::vector<std::string> regions;  // -r texts, 1-based inclusive
  std::string regions_bed;           // -R BED file (0-based half-open)
  int layer = kFinalLayer;
  EmbedPool pool = EmbedPool::mean;
  EmbedFormat format = EmbedFormat::npy;
  std::string output = "-";          // .npy file (and <output>.ids.tsv), or TSV file / "-"
  int64_t piece = 4096;
};

struct EmbedStats {
  int64_t rows = 0;   // vectors written
  int64_t bases = 0;  // tokens through the model (BOS excluded)
};

// NumPy .npy (format 1.0) bytes of an n×d little-endian float32 matrix (header padded to 64).
std::string npy_bytes(const float* data, int64_t n, int64_t d);

// Runs the whole command. Throws mm::Error / mm::UsageError; a failed run leaves no output file.
EmbedStats embed(MemMamba<float>& model, const EmbedOptions& o, const Reporter& rep);

}  // namespace mm::pipelines
