// memmamba vep: variant effect scores (MM_LLR) of a MemMamba model added to a VCF/BCF.
// Records and header lines pass through unchanged and in order; notes and progress on stderr.
#include <tbb/global_control.h>
#include <unistd.h>

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
#include "pipelines/vep.hpp"

// OpenBLAS's own thread pool: vep runs records in parallel (TBB), and the model's products are
// small (a window of ~1 k tokens), where OpenBLAS threads spin in sched_yield and halve the speed
// (measured: 7.7 -> 16.5 SNVs/s, d_model 64). Weak, so another BLAS simply leaves it alone.
extern "C" void openblas_set_num_threads(int) __attribute__((weak));

namespace mm::cli {

namespace {

const char* kNotes = R"(
Adds to every record (all records and header lines are kept, in order):
  MM_LLR   (Number=A, Float) ln P(sequence with ALT) - ln P(sequence with REF), natural log
  MM_SKIP  (Number=., String) why the record or an ALT was not scored
and a ##memmamba header line (version, model, command line).
Scoring rule. A variant at 0-based position p with REF r (length lr): the window is the
--upstream U bases before p and the --downstream W bases after the REF allele, clamped at the
contig ends. REF sequence = BOS + upstream + r + downstream; ALT sequence = BOS + upstream +
ALT + the same downstream bases. MM_LLR = sum of ln P(base | bases before it) over the ALT
sequence's bases from p to its end, minus the same over the REF sequence (upstream terms are
identical and cancel). SNV/MNV: both sums cover [p, p+lr+W). Indels: the downstream window is
aligned to the end of the allele, so the sums cover len(allele)+W bases each and differ in
count by len(ALT)-len(REF): the value is the log-likelihood ratio of the whole local haplotype.
Probabilities are over A/C/G/T (logits renormalised), as in 'memmamba score'. N in the window
is fed to the model but adds no term. --strand both: the mean of the forward value and the
value of the reverse complement of the same window (read from its downstream end; summed over
the reverse-complemented allele and the upstream bases after it in that direction).
Multi-allelic records get one value per ALT (the REF pass is shared).
--upstream all: the context is the whole contig prefix (the window starts at the contig start).
It runs, by default (--mode stream), as one pass per contig over the reference that stops at
each variant, copies the model's state there (conv tails, SSM states, note pools) and scores
REF and ALTs from the copies: the cost is the contig up to its last variant plus variants x
(allele + W): less than windows of a finite U once variants are denser than one per U bases
(a whole-genome call set: about one per 1 kb), with all the context before each. It needs records
sorted by position within each contig and each contig in one block (bcftools sort); an
unsorted record is an error. --mode window computes the same values (within float rounding)
with one stream per record from the contig start, in any order, at a cost of p per variant
(short contigs, tests). A finite --upstream always uses windows.
MM_SKIP reasons: contig_missing, ref_mismatch (an error with --strict), n_context (REF or ALT
with a base other than A/C/G/T), and per ALT symbolic, breakend, spanning_deletion ('*'),
missing_alt ('.'). Per-ALT skips give one MM_SKIP entry per ALT ('.' = scored) and a missing
MM_LLR value at that ALT.
Input: VCF, VCF.gz, BCF or '-' (stdin). Output: -o FILE (written atomically, none on failure)
or stdout; format from -O, else from the -o name (.bcf, .gz), else VCF.
)";

const std::vector<Option> kOptions = {
    {'f', "fasta-ref", "FILE", "reference FASTA (plain or bgzip, indexed; a missing .fai is built)", ""},
    {'m', "model", "FILE", "model checkpoint (.safetensors); MEMMAMBA_MODEL overrides the shipped one", "the shipped model"},
    {'o', "output", "FILE", "output file, written atomically ('-': stdout)", "-"},
    {'O', "output-type", "T", "v (VCF), z (bgzip VCF) or b (BCF)", "from the -o name, else v"},
    {0, "upstream", "INT|all", "bases of context before the variant (0 .. 1000000), or all: the whole contig prefix", "1024"},
    {0, "downstream", "INT", "bases scored after the REF allele (0 .. 1000000)", "128"},
    {0, "strand", "S", "fwd, or both (mean of forward and reverse-complement values; not with --mode stream)", "fwd"},
    {0, "mode", "M", "auto (stream with --upstream all, else window), stream (one pass per contig, forked at each variant; needs --upstream all and a sorted VCF) or window (one stream per record)", "auto"},
    {0, "strict", "", "a REF that does not match the FASTA is an error (default: MM_SKIP=ref_mismatch)", ""},
    {0, "batch", "INT", "records scored in parallel between writes", "64"},
    {'@', "threads", "INT", "worker threads (0: all cores)", "0"},
    {0, "device", "DEV", "auto, cpu or cuda (auto: cuda when built with it and a GPU is present)", "auto"},
    {'q', "quiet", "", "no notes on stderr", ""},
};

}  // namespace

int vep_main(int argc, char** argv) {
  Args args("vep", "[options] -f <ref.fa> <in.vcf|->", kOptions);
  return run("vep", argc, argv, [&] {
    if (!args.parse(argc, argv)) {
      std::cout << args.help() << kNotes;
      return 0;
    }
    if (args.positional().size() != 1)
      throw UsageError(args.positional().empty() ? "give the input VCF/BCF or '-' (see 'memmamba vep --help')"
                                                 : "give one input VCF; extra argument '" + args.positional()[1] + "'");
    pipelines::VepOptions o;
    o.input = args.positional()[0];
    o.fasta = args.get("fasta-ref");
    if (o.fasta.empty()) throw UsageError("give the reference FASTA with -f/--fasta-ref");
    o.output = args.get("output");
    if (o.output.empty()) throw UsageError("-o/--output wants a file name or '-'");
    if (args.has("output-type")) {
      const std::string t = args.get("output-type");
      if (t == "v" || t == "vcf") o.format = io::VcfFormat::vcf;
      else if (t == "z" || t == "vcf.gz") o.format = io::VcfFormat::vcf_gz;
      else if (t == "b" || t == "bcf") o.format = io::VcfFormat::bcf;
      else throw UsageError("-O/--output-type wants v, z or b, got '" + t + "'");
    }
    if (args.get("upstream") == "all") {
      o.upstream = pipelines::kUpstreamAll;
    } else {
      o.upstream = args.get_int("upstream");
      if (o.upstream < 0 || o.upstream > 1000000) throw UsageError("--upstream wants 0 .. 1000000 bases, or all");
    }
    o.downstream = args.get_int("downstream");
    if (o.downstream < 0 || o.downstream > 1000000) throw UsageError("--downstream wants 0 .. 1000000 bases");
    const std::string strand = args.get("strand");
    if (strand == "fwd" || strand == "+") o.strand = pipelines::VepStrand::fwd;
    else if (strand == "both") o.strand = pipelines::VepStrand::both;
    else throw UsageError("--strand wants fwd or both, got '" + strand + "'");
    const std::string mode = args.get("mode");
    const bool all = o.upstream == pipelines::kUpstreamAll;
    if (mode == "stream") {
      if (!all) throw UsageError("--mode stream scores with the whole contig prefix as context: it needs --upstream all");
      if (o.strand != pipelines::VepStrand::fwd)
        throw UsageError("--mode stream scores the forward strand only; use --mode window with --strand both");
      o.mode = pipelines::VepMode::stream;
    } else if (mode == "window") {
      o.mode = pipelines::VepMode::window;
    } else if (mode == "auto") {
      if (all && o.strand == pipelines::VepStrand::both)
        throw UsageError("--upstream all with --strand both: the reverse pass would read the whole contig "
                         "prefix per variant; give --mode window to run it anyway, or a finite --upstream");
      o.mode = all ? pipelines::VepMode::stream : pipelines::VepMode::window;
    } else {
      throw UsageError("--mode wants auto, stream or window, got '" + mode + "'");
    }
    o.strict = args.flag("strict");
    o.batch = args.get_int("batch");
    if (o.batch <= 0) throw UsageError("--batch wants a positive number of records");
    const long threads = args.get_int("threads");
    if (threads < 0) throw UsageError("-@/--threads wants a number >= 0");
    const std::string dev = stream_device(args);
    // The GPU wants long pieces (the stream mode's pass between sparse variants); results do not
    // depend on the piece length.
    if (dev == "cuda") o.piece = int64_t(1) << 20;

    std::unique_ptr<tbb::global_control> limit;
    if (threads > 0)
      limit = std::make_unique<tbb::global_control>(tbb::global_control::max_allowed_parallelism,
                                                    static_cast<size_t>(threads));

    if (openblas_set_num_threads) openblas_set_num_threads(1);

    const bool quiet = args.flag("quiet");
    Reporter rep = stderr_reporter("vep", quiet);
    // The number of records is not known ahead (stdin, BCF): progress is a running count.
    if (!quiet && isatty(STDERR_FILENO))
      rep.progress = [](double done, double, std::string_view unit) {
        std::fprintf(stderr, "\r%.0f %.*s", done, static_cast<int>(unit.size()), unit.data());
        std::fflush(stderr);
      };
    const OpenedModel opened = open_stream_model(args, dev);
    const std::string& model_path = opened.path;
    rep.say("device: " + dev + ", mode: " + (o.mode == pipelines::VepMode::stream ? "stream" : "window"));
    o.version = kVersion;
    o.model_path = model_path;
    o.command_line = command_line(argc, argv);

    const auto t0 = std::chrono::steady_clock::now();
    const auto st = pipelines::vep(*opened.stream, o, rep);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (rep.progress) std::fputc('\n', stderr);
    char line[320];
    std::snprintf(line, sizeof line,
                  "%lld records: %lld ALTs scored, %lld not (%lld whole records skipped); %lld tokens "
                  "through the model in %.2f s (%.1f records/s)",
                  static_cast<long long>(st.records), static_cast<long long>(st.alts_scored),
                  static_cast<long long>(st.alts_skipped), static_cast<long long>(st.records_skipped),
                  static_cast<long long>(st.fed), s, s > 0 ? double(st.records) / s : 0.0);
    rep.say(line);
    return 0;
  });
}

}  // namespace mm::cli
