// memmamba score: per-base log-probability and entropy of a reference under a MemMamba model.
// Results on stdout or -o FILE (bedGraph, bigWig, TSV); notes and progress on stderr.
#include <tbb/global_control.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "apps/cli.hpp"
#include "apps/commands.hpp"
#include "apps/model_path.hpp"
#include "apps/stream_model_cli.hpp"
#include "memmamba/version.hpp"
#include "pipelines/score.hpp"

namespace mm::cli {

namespace {

const char* kNotes = R"(
Values (natural log, nats), per base, from the model's prediction of that base from the bases
before it, over A/C/G/T only (the logits of A, C, G, T renormalised):
  logp     ln p(observed base | bases before it)
  entropy  -sum_b p(b) ln p(b), b in A,C,G,T (0 = certain, ln 4 = 1.386 = uniform)
  both     the two as columns (TSV only)
Each region (or whole contig) is one stream: BOS, then --context bases upstream of the region
start (never past the contig start), then the region. The context bases are read but get no
value; with --context 0 the first bases of a region are predicted from BOS alone (cold).
N and other ambiguity codes get no value: skipped in bedGraph and bigWig, '.' in TSV. Their
tokens are still fed to the model (it saw N in training), so the stream continues through an
N run and the bases after it are predicted from everything before, N included.
--strand rev streams the reverse complement from the region end leftwards (context: the bases
downstream of the region end) and puts each value back at the forward coordinate of its base;
--strand both writes the mean of the fwd and rev values. rev and both keep the reverse values
of the current region in a temporary file (8 bytes per base, in $TMPDIR or /tmp).
Memory stays constant whatever the region length: bases are read and scored in pieces (--piece).
bedGraph: 0-based half-open, equal neighbouring values merged, version and command line in the
'track' line's description. TSV: '#' header lines, then chrom, start, end (0-based half-open),
base and the value columns. Output format from -O, else from the -o extension (.bw/.bigwig,
.tsv), else bedGraph. Without -r/-R every contig is scored; forward whole-contig bedGraph/TSV
works on any FASTA (gzip, '-' for stdin), everything else needs an indexed FASTA (a missing .fai
is built when the folder is writable). -r takes comma lists (a comma before three digits is a
thousands separator: chr1:1,000,000-2,000,000) and may be repeated.
)";

const std::vector<Option> kOptions = {
    {'m', "model", "FILE", "model checkpoint (.safetensors); MEMMAMBA_MODEL overrides the shipped one", "the shipped model"},
    {'r', "region", "REG", "score chr:beg-end (1-based inclusive); repeatable, or a comma list", "every contig"},
    {'R', "regions", "BED", "score the intervals of this BED file (0-based half-open)", ""},
    {'o', "output", "FILE", "output file, written atomically ('-': stdout)", "-"},
    {'O', "output-type", "FMT", "bedgraph, bigwig or tsv", "from the -o extension, else bedgraph"},
    {0, "value", "WHAT", "logp, entropy or both (both: TSV only)", "logp"},
    {0, "strand", "S", "fwd, rev (reverse complement, values at forward coordinates) or both (mean of fwd and rev)", "fwd"},
    {0, "context", "INT", "bases read upstream of each region (downstream on rev) before values are written", "0"},
    {0, "piece", "INT", "bases per forward pass (memory, not results) [cuda: 1048576]", "16384"},
    {'@', "threads", "INT", "worker threads (0: all cores)", "0"},
    {0, "device", "DEV", "auto, cpu or cuda (auto: cuda when built with it and a GPU is present)", "auto"},
    {'q', "quiet", "", "no notes on stderr", ""},
};

}  // namespace

int score_main(int argc, char** argv) {
  Args args("score", "[options] <ref.fa>", kOptions);
  return run("score", argc, argv, [&] {
    if (!args.parse(argc, argv)) {
      std::cout << args.help() << kNotes;
      return 0;
    }
    const SequenceInputs in = sequence_inputs(args, "score", "reference FASTA");
    pipelines::ScoreOptions o;
    o.fasta = in.fasta;
    o.regions = in.regions;
    o.regions_bed = in.regions_bed;
    o.output = in.output;

    std::string fmt = args.has("output-type") ? args.get("output-type") : "";
    if (fmt.empty()) {
      if (ends_with(o.output, ".bw") || ends_with(o.output, ".bigwig") || ends_with(o.output, ".bigWig")) fmt = "bigwig";
      else if (ends_with(o.output, ".tsv")) fmt = "tsv";
      else fmt = "bedgraph";
    }
    if (fmt == "bedgraph" || fmt == "bedGraph") o.format = pipelines::ScoreFormat::bedgraph;
    else if (fmt == "bigwig" || fmt == "bigWig") o.format = pipelines::ScoreFormat::bigwig;
    else if (fmt == "tsv") o.format = pipelines::ScoreFormat::tsv;
    else throw UsageError("-O/--output-type wants bedgraph, bigwig or tsv, got '" + fmt + "'");

    const std::string value = args.get("value");
    if (value == "logp") o.value = pipelines::ScoreValue::logp;
    else if (value == "entropy") o.value = pipelines::ScoreValue::entropy;
    else if (value == "both") o.value = pipelines::ScoreValue::both;
    else throw UsageError("--value wants logp, entropy or both, got '" + value + "'");

    const std::string strand = args.get("strand");
    if (strand == "fwd" || strand == "+") o.strand = pipelines::ScoreStrand::fwd;
    else if (strand == "rev" || strand == "-") o.strand = pipelines::ScoreStrand::rev;
    else if (strand == "both") o.strand = pipelines::ScoreStrand::both;
    else throw UsageError("--strand wants fwd, rev or both, got '" + strand + "'");

    o.context = args.get_int("context");
    if (o.context < 0) throw UsageError("--context wants a number of bases >= 0");
    o.piece = args.get_int("piece");
    if (o.piece <= 0) throw UsageError("--piece wants a positive number of bases");
    const long threads = args.get_int("threads");
    if (threads < 0) throw UsageError("-@/--threads wants a number >= 0");
    const std::string dev = stream_device(args);
    // The GPU wants long pieces; results do not depend on the piece length.
    if (dev == "cuda" && !args.has("piece")) o.piece = int64_t(1) << 20;

    std::unique_ptr<tbb::global_control> limit;
    if (threads > 0)
      limit = std::make_unique<tbb::global_control>(tbb::global_control::max_allowed_parallelism,
                                                    static_cast<size_t>(threads));

    const Reporter rep = stderr_reporter("score", args.flag("quiet"));
    const OpenedModel opened = open_stream_model(args, dev);
    const std::string& model_path = opened.path;
    rep.say("device: " + dev);
    o.version = kVersion;
    o.command_line = command_line(argc, argv);
    o.model = model_path;

    const auto t0 = std::chrono::steady_clock::now();
    const auto stats = pipelines::score(*opened.stream, o, rep);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    char line[256];
    std::snprintf(line, sizeof line,
                  "%lld bases in %lld stream(s), %lld without a value (N); %lld tokens through the "
                  "model in %.2f s (%.0f bases/s)",
                  static_cast<long long>(stats.bases), static_cast<long long>(stats.streams),
                  static_cast<long long>(stats.missing), static_cast<long long>(stats.fed), s,
                  s > 0 ? double(stats.fed) / s : 0.0);
    rep.say(line);
    return 0;
  });
}

}  // namespace mm::cli
