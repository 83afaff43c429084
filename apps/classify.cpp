// memmamba classify: argument parsing for pipelines/classify.
#include <tbb/global_control.h>

#include <cstdio>
#include <iostream>
#include <memory>

#include "apps/cli.hpp"
#include "apps/commands.hpp"
#include "memmamba/version.hpp"
#include "pipelines/classify.hpp"

namespace mm::cli {

namespace {

const char* kNotes = R"(
-m is a classifier written by 'memmamba finetune' (backbone + head, or the k-mer baseline).
Inputs as for finetune (-I, else from the name): FASTA ('>id [label]'), TSV
'id<TAB>sequence[<TAB>label]', BED + -f REF (label in --label-column; 0: none), VCF/BCF + -f REF
(label in INFO --label-key when given). Labels are optional; a label the classifier does not know
is an error.
Sequences: TSV out: a '##memmamba classify' provenance line, then 'id predicted prob_<label>...'.
VCF: every record and header line kept; per ALT MM_CLASS (predicted label), MM_PROB (binary: the
probability of the second label; else of the predicted one), MM_CLASS_SKIP (why not classified).
With labels: accuracy, MCC, macro-F1 and AUROC (binary) on stderr, or as JSON to --metrics.
)";

const std::vector<Option> kOptions = {
    {'m', "model", "FILE", "classifier checkpoint from 'memmamba finetune'", ""},
    {'o', "output", "FILE", "TSV, or VCF/BCF for variant inputs, written atomically ('-': stdout)", "-"},
    {'O', "output-type", "T", "VCF output: v (VCF), z (bgzip VCF) or b (BCF)", "from the -o name, else v"},
    {'I', "input-type", "T", "fasta, tsv, bed or vcf", "from the input name"},
    {'f', "reference", "FASTA", "reference for BED and VCF inputs (indexed)", ""},
    {0, "label-column", "INT", "BED: 1-based column of the label (0: none)", "4"},
    {0, "label-key", "KEY", "VCF: INFO field holding the label", ""},
    {0, "metrics", "FILE", "write the metrics as JSON here instead of stderr", ""},
    {0, "batch-tokens", "INT", "padded tokens per batch", "65536"},
    {0, "piece", "INT", "tokens per forward call (memory only)", "4096"},
    {'@', "threads", "INT", "worker threads (0: all cores)", "0"},
    {0, "device", "DEV", "auto or cpu", "auto"},
    {'q', "quiet", "", "no notes on stderr", ""},
};

}  // namespace

int classify_main(int argc, char** argv) {
  Args args("classify", "[options] -m CLASSIFIER <in.fa|in.tsv|in.bed|in.vcf.gz>", kOptions);
  return run("classify", argc, argv, [&] {
    if (!args.parse(argc, argv)) {
      std::cout << args.help() << kNotes;
      return 0;
    }
    const auto& pos = args.positional();
    if (pos.size() != 1)
      throw UsageError(pos.empty() ? "give the input (see 'memmamba classify --help')"
                                   : "give one input; extra argument '" + pos[1] + "'");
    if (!args.has("model")) throw UsageError("give the classifier with -m (written by 'memmamba finetune')");
    const std::string dev = args.get("device");
    if (dev != "auto" && dev != "cpu") throw UsageError("--device wants auto or cpu in this build, got '" + dev + "'");
    pipelines::ClassifyOptions o;
    o.input.path = pos[0];
    if (args.has("input-type")) o.input.format = pipelines::parse_labelled_format(args.get("input-type"));
    else if (auto f = pipelines::labelled_format_from_name(o.input.path)) o.input.format = *f;
    else throw UsageError("cannot tell the input type of '" + o.input.path + "': give -I fasta|tsv|bed|vcf");
    o.input.reference = args.get("reference");
    const long col = args.get_int("label-column");
    if (col < 0) throw UsageError("--label-column must not be negative");
    o.input.label_column = int(col);
    o.input.label_key = args.get("label-key");
    o.output = args.get("output");
    if (o.output.empty()) throw UsageError("-o/--output wants a file name or '-'");
    if (args.has("output-type")) {
      const std::string t = args.get("output-type");
      if (t == "v" || t == "vcf") o.vcf_format = io::VcfFormat::vcf;
      else if (t == "z" || t == "vcf.gz") o.vcf_format = io::VcfFormat::vcf_gz;
      else if (t == "b" || t == "bcf") o.vcf_format = io::VcfFormat::bcf;
      else throw UsageError("-O/--output-type wants v, z or b, got '" + t + "'");
    }
    o.metrics_file = args.get("metrics");
    o.run.batch_tokens = args.get_int("batch-tokens");
    o.run.piece = args.get_int("piece");
    if (o.run.batch_tokens < 1 || o.run.piece < 1) throw UsageError("--batch-tokens and --piece must be positive");
    o.version = kVersion;
    o.model_path = args.get("model");
    o.command = command_line(argc, argv);
    const long threads = args.get_int("threads");
    if (threads < 0) throw UsageError("-@/--threads must not be negative");
    std::unique_ptr<tbb::global_control> limit;
    if (threads > 0)
      limit = std::make_unique<tbb::global_control>(tbb::global_control::max_allowed_parallelism, size_t(threads));

    const Reporter rep = stderr_reporter("classify", args.flag("quiet"));
    const pipelines::Classifier c = pipelines::load_classifier(o.model_path);
    const auto r = pipelines::classify(c, o, rep);
    std::string say = "classified " + std::to_string(r.examples) + " example(s)";
    if (r.skipped) say += ", " + std::to_string(r.skipped) + " ALT(s) not scored (MM_CLASS_SKIP)";
    rep.say(say);
    if (r.metrics && o.metrics_file.empty()) {
      // Metrics are results the user asked for by giving labels: printed even with -q.
      char b[256];
      std::snprintf(b, sizeof b, "n %lld  accuracy %.4f  MCC %.4f  macro-F1 %.4f", static_cast<long long>(r.metrics->n),
                    r.metrics->accuracy, r.metrics->mcc, r.metrics->macro_f1);
      std::string line = std::string("[memmamba classify] metrics: ") + b;
      if (r.metrics->auroc) {
        std::snprintf(b, sizeof b, "  AUROC %.4f", *r.metrics->auroc);
        line += b;
      }
      std::cerr << line << "\n";
    }
    return 0;
  });
}

}  // namespace mm::cli
