// memmamba embed: one vector per FASTA record or per region, from a chosen layer of a model.
// Results in a .npy file (with an <out>.ids.tsv sidecar) or TSV (stdout allowed).
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
#include "model/checkpoint.hpp"
#include "pipelines/embed.hpp"
#include "pipelines/score.hpp"

namespace mm::cli {

namespace {

const char* kNotes = R"(
Each FASTA record (without -r/-R) or each region is one stream: BOS, then its bases (N and other
ambiguity codes are fed as N). The vector is read from the residual stream after --layer L
(0-based), or after the final RMSNorm for 'final', at the positions of the bases (BOS excluded):
  mean  the mean over the positions     last  the last position
Long sequences go through the model in pieces (--piece) with a carried state: the vectors equal
those of one whole pass, and memory stays bounded.
Output format from -O, else from the -o extension (.npy, .tsv; '-' is TSV). npy: NumPy format 1.0,
float32, shape (rows, d_model); beside it <out>.ids.tsv, one line per row: the id, and for regions
chrom, start, end (0-based half-open). TSV: the id then d_model values per line. Ids: the record
name, the -r text, or the BED name column (else chrom:beg-end, 1-based). Output files are written
atomically. -r/-R need an indexed FASTA (a missing .fai is built when the folder is writable).
)";

const std::vector<Option> kOptions = {
    {'m', "model", "FILE", "model checkpoint (.safetensors); MEMMAMBA_MODEL overrides the shipped one", "the shipped model"},
    {'r', "region", "REG", "embed chr:beg-end (1-based inclusive); repeatable, or a comma list", "every record"},
    {'R', "regions", "BED", "embed the intervals of this BED file (0-based half-open)", ""},
    {'o', "output", "FILE", "output file (.npy or .tsv), written atomically ('-': TSV on stdout)", "-"},
    {'O', "output-type", "FMT", "npy or tsv", "from the -o extension"},
    {0, "layer", "L", "0-based layer index, or 'final' (after the final RMSNorm)", "final"},
    {0, "pool", "P", "mean (over the bases) or last (the last base)", "mean"},
    {0, "piece", "INT", "bases per forward pass (memory, not results)", "4096"},
    {'@', "threads", "INT", "worker threads (0: all cores)", "0"},
    {'q', "quiet", "", "no notes on stderr", ""},
};

}  // namespace

int embed_main(int argc, char** argv) {
  Args args("embed", "[options] <in.fa>", kOptions);
  return run("embed", argc, argv, [&] {
    if (!args.parse(argc, argv)) {
      std::cout << args.help() << kNotes;
      return 0;
    }
    const SequenceInputs in = sequence_inputs(args, "embed", "FASTA");
    pipelines::EmbedOptions o;
    o.fasta = in.fasta;
    o.regions = in.regions;
    o.regions_bed = in.regions_bed;
    o.output = in.output;

    std::string fmt = args.has("output-type") ? args.get("output-type") : "";
    if (fmt.empty()) {
      if (ends_with(o.output, ".npy")) fmt = "npy";
      else if (ends_with(o.output, ".tsv") || o.output == "-") fmt = "tsv";
      else throw UsageError("cannot tell the output format from '" + o.output + "': name it .npy or .tsv, or give -O npy|tsv");
    }
    if (fmt == "npy") o.format = pipelines::EmbedFormat::npy;
    else if (fmt == "tsv") o.format = pipelines::EmbedFormat::tsv;
    else throw UsageError("-O/--output-type wants npy or tsv, got '" + fmt + "'");
    if (o.format == pipelines::EmbedFormat::npy && o.output == "-")
      throw UsageError(".npy output wants a file name (-o OUT.npy); use -O tsv for stdout");

    const std::string pool = args.get("pool");
    if (pool == "mean") o.pool = pipelines::EmbedPool::mean;
    else if (pool == "last") o.pool = pipelines::EmbedPool::last;
    else throw UsageError("--pool wants mean or last, got '" + pool + "'");
    o.piece = args.get_int("piece");
    if (o.piece <= 0) throw UsageError("--piece wants a positive number of bases");
    const long threads = args.get_int("threads");
    if (threads < 0) throw UsageError("-@/--threads wants a number >= 0");
    std::unique_ptr<tbb::global_control> limit;
    if (threads > 0)
      limit = std::make_unique<tbb::global_control>(tbb::global_control::max_allowed_parallelism,
                                                    static_cast<size_t>(threads));

    const Reporter rep = stderr_reporter("embed", args.flag("quiet"));
    const std::string model_path = resolve_model_path(args.has("model") ? args.get("model") : "");
    Checkpoint ckpt = load_checkpoint(model_path);
    o.layer = pipelines::parse_layer(args.get("layer"), ckpt.config.n_layer);
    MemMamba<float> model(ckpt.config, std::move(ckpt.params));

    const auto t0 = std::chrono::steady_clock::now();
    const auto stats = pipelines::embed(model, o, rep);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    char line[200];
    std::snprintf(line, sizeof line, "%lld vector(s) of %d values from %lld bases in %.2f s",
                  static_cast<long long>(stats.rows), ckpt.config.d_model,
                  static_cast<long long>(stats.bases), s);
    rep.say(line);
    return 0;
  });
}

}  // namespace mm::cli
