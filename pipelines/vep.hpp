// `memmamba vep`: variant effect scores of a causal MemMamba, as INFO fields added to a VCF/BCF.
//
// Scoring rule (also in `memmamba vep --help`). A record at 0-based position p has REF allele r
// (length lr) and ALT alleles a (length la). U = --upstream, W = --downstream. The local window is
// clamped at the contig ends: s = max(0, p − U), e = min(contig length, p + lr + W).
//   REF sequence: BOS + ref[s, p) + r + ref[p + lr, e)
//   ALT sequence: BOS + ref[s, p) + a + ref[p + lr, e)
//   MM_LLR = Σ ln P(base_i | bases before i) over the ALT sequence's bases from p to its end
//          − Σ the same over the REF sequence's bases from p to its end
// (natural log; the model's distribution over A/C/G/T renormalised, as in `score`). Bases before
// p are identical in the two sequences and cancel. For SNVs and MNVs the two sums cover the same
// positions [p, p + lr + W). For indels the downstream window is aligned to the END of the
// allele: REF sums lr + W' terms and ALT sums la + W' terms (W' = e − p − lr, the same reference
// bases in both); the counts differ by la − lr on purpose: the score is the log-likelihood ratio
// of the whole local haplotype. N inside the window is fed to the model but adds no term; an
// allele (REF or ALT) containing anything but A/C/G/T is not scored (n_context).
// --strand both: the mean of the forward LLR and the reverse LLR, where the reverse pass reads
// the reverse complement of the same window [s, e): its stream is BOS + rc(ref[p + lr, e)), then
// rc(allele), then rc(ref[s, p)); the terms summed are those of rc(allele) and everything after it
// (rc of the upstream bases), the downstream ones being identical and cancelling.
// Multi-allelic records: one value per ALT; the REF pass and the shared upstream prefix are run
// once per record.
//
// Upstream context U = all (kUpstreamAll): s = 0, the whole contig prefix. Two computations give
// the same values (within float rounding; test_vep checks 1e-4):
//   stream (the default for U = all): one pass per contig over BOS + the reference, stopping at
//     each variant position p to fork the stream's state (conv tails, SSM states, note pools and
//     chunk candidates of every layer); the REF and ALT continuations (allele + downstream) run
//     from forks of that state, which are then dropped, and the main stream goes on. Cost: the
//     contig up to its last variant, plus variants × (REF + ALTs) × (allele + W). Needs the
//     records to score sorted by position within each contig, each contig in one block (bcftools
//     sort order); otherwise an error naming the record (no fallback: a record out of order
//     would cost its whole prefix again). Forward strand only.
//   window: every record's own stream from the contig start (cost: p per variant); any order.
// A finite U is always the window computation (the stream's state holds the whole prefix).
//
// Skips (MM_SKIP, no MM_LLR value): for the whole record contig_missing (contig not in the
// FASTA), ref_mismatch (REF differs from the FASTA; an error with --strict), n_context (REF holds
// a base other than A/C/G/T); per ALT symbolic (<DEL>, ...), breakend, spanning_deletion ('*'),
// missing_alt ('.'), n_context (ALT holds a base other than A/C/G/T). A record-level skip is one
// MM_SKIP value; ALT-level skips give MM_SKIP one entry per ALT ('.' for the scored ones) and
// MM_LLR a missing value ('.') at the skipped ALTs (no MM_LLR at all when no ALT is scored).
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "io/error.hpp"
#include "io/vcf.hpp"
#include "model/memmamba.hpp"
#include "model/stream_model.hpp"

namespace mm::pipelines {

// The scoring core. `stream` has run BOS + a prefix; `last` is the logits row of its last token
// (the prediction of the first token of every continuation). Each continuation runs from its own
// fork of `stream`, which is left as it is. Returns, per continuation, Σ ln p(token | everything
// before it) over the continuation's A/C/G/T tokens (double). Tokens: io::tok codes (A C G T N).
// `piece` bounds the tokens per forward call; `fed` (optional) is increased by the tokens run.
std::vector<double> score_forks(const StreamModel& stream, std::span<const float> last,
                                const std::vector<std::vector<uint8_t>>& continuations,
                                int64_t piece = 16384, int64_t* fed = nullptr);

// Resets `model`, runs BOS + prefix through it in pieces, then score_forks from there.
std::vector<double> score_continuations(StreamModel& model, std::span<const uint8_t> prefix,
                                        const std::vector<std::vector<uint8_t>>& continuations,
                                        int64_t piece = 16384, int64_t* fed = nullptr);
std::vector<double> score_continuations(MemMamba<float>& model, std::span<const uint8_t> prefix,
                                        const std::vector<std::vector<uint8_t>>& continuations,
                                        int64_t piece = 16384, int64_t* fed = nullptr);

// One record's local window, letters as in the FASTA (any case).
struct LocalWindow {
  std::string upstream;          // ref[s, p)
  std::string ref;               // REF allele
  std::vector<std::string> alts; // ALT alleles to score (A/C/G/T only)
  std::string downstream;        // ref[p + lr, e)
};

enum class VepStrand { fwd, both };

// MM_LLR of every ALT of one window under the rule above (the window computation); `model` is
// reset and used as the window's stream.
std::vector<double> score_window(StreamModel& model, const LocalWindow& w, VepStrand strand,
                                 int64_t piece = 16384, int64_t* fed = nullptr);
std::vector<double> score_window(MemMamba<float>& model, const LocalWindow& w, VepStrand strand,
                                 int64_t piece = 16384, int64_t* fed = nullptr);

// The forward MM_LLR of every ALT of `w` from a stream that has run BOS + the upstream bases
// (w.upstream is not read): the stream computation's step at one variant. `last` as in score_forks.
std::vector<double> score_fork(const StreamModel& stream, std::span<const float> last, const LocalWindow& w,
                               int64_t piece = 16384, int64_t* fed = nullptr);

inline constexpr int64_t kUpstreamAll = -1;  // VepOptions::upstream: the whole contig prefix

enum class VepMode { stream, window };

struct VepOptions {
  std::string fasta;                 // indexed FASTA (plain or bgzip)
  std::string input = "-";           // VCF, VCF.gz, BCF or "-" (stdin)
  std::string output = "-";          // "-": stdout
  io::VcfFormat format = io::VcfFormat::from_name;
  int64_t upstream = 1024;           // U, 0 .. 1 000 000, or kUpstreamAll
  int64_t downstream = 128;          // W, 0 .. 1 000 000
  VepStrand strand = VepStrand::fwd;
  VepMode mode = VepMode::window;    // stream: needs upstream = kUpstreamAll and strand fwd
  bool strict = false;               // REF mismatch: error instead of a skip
  int64_t batch = 64;                // records scored in parallel between writes
  int64_t piece = 16384;             // tokens per forward call
  std::string version, model_path, command_line;  // the ##memmamba header line
};

struct VepStats {
  int64_t records = 0;
  int64_t alts_scored = 0;
  int64_t alts_skipped = 0;     // ALT-level and record-level skips, counted per ALT
  int64_t records_skipped = 0;  // record-level skips
  int64_t fed = 0;              // tokens through the model
  int64_t contigs_streamed = 0; // stream mode: contig passes
};

// Runs the whole command on `model` (its stream is reset and used; records run on forks of it,
// in parallel when model.concurrent()). Throws mm::Error (bad input, naming file and line) /
// mm::UsageError; a failed run leaves no output file (stdout is streamed as it goes).
VepStats vep(StreamModel& model, const VepOptions& o, const Reporter& rep);
VepStats vep(MemMamba<float>& model, const VepOptions& o, const Reporter& rep);  // on the CPU

}  // namespace mm::pipelines
