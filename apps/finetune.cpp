// memmamba finetune: argument parsing for pipelines/finetune (CPU).
#include <tbb/global_control.h>

#include <csignal>
#include <iostream>
#include <memory>
#include <sstream>
#include <thread>

#include "apps/cli.hpp"
#include "apps/commands.hpp"
#include "apps/model_path.hpp"
#include "memmamba/version.hpp"
#include "model/checkpoint.hpp"
#include "pipelines/finetune.hpp"

namespace mm::cli {

namespace {

volatile std::sig_atomic_t g_stop = 0;
extern "C" void on_finetune_signal(int sig) {
  if (g_stop) {
    std::signal(sig, SIG_DFL);
    std::raise(sig);
    return;
  }
  g_stop = sig;
}

const char* kNotes = R"(
Inputs (-I, else from the name): FASTA with the label after the id ('>id label'); TSV
'id<TAB>sequence<TAB>label'; BED with the label in --label-column plus -f REF; VCF/BCF with the
label in INFO --label-key plus -f REF (every ALT one example). Labels are one word (no white space,
',', ';' or '='); two or more classes. Sequences of any length are fed whole (BOS + bases), examples
of similar length batched together.
Features: the final hidden states pooled over the bases (--pool mean|last; --strand both averages
the sequence and its reverse complement). Variants: pooled(ALT window) - pooled(REF window) plus
the zero-shot MM_LLR of 'memmamba vep' (windows --upstream/--downstream as in vep).
--freeze: features computed once, only the head trains (fast). Otherwise full fine-tuning: a
linear probe of the head first (20 epochs on frozen features), then backbone and head together,
whole sequences forward and backward (memory grows with length: prefer --freeze for long ones).
--baseline kmer: k-mer frequencies (--k) and a logistic-regression head, no model.
Validation: --valid FILE, else a seeded stratified split (--valid-fraction); the best epoch by
--metric is kept, training stops after --patience epochs without improvement. Output: one
classifier checkpoint (backbone + head, labels and the fine-tuning record in its metadata) for
'memmamba classify'; metrics as JSON lines, one per epoch.
)";

const std::vector<Option> kOptions = {
    {'m', "model", "FILE", "pretrained model, or a classifier whose backbone to start from; MEMMAMBA_MODEL overrides the shipped one", "the shipped model"},
    {'o', "output", "FILE", "classifier checkpoint to write (.safetensors)", ""},
    {'I', "input-type", "T", "fasta, tsv, bed or vcf", "from the input name"},
    {'f', "reference", "FASTA", "reference for BED and VCF inputs (indexed)", ""},
    {0, "label-column", "INT", "BED: 1-based column of the label", "4"},
    {0, "label-key", "KEY", "VCF: INFO field holding the label", ""},
    {0, "valid", "FILE", "validation data (same type and options as the training data)", ""},
    {0, "valid-fraction", "F", "without --valid: hold out this fraction (stratified, seeded; 0: none)", "0.1"},
    {0, "freeze", "", "keep the backbone frozen: train the head on features computed once", ""},
    {0, "baseline", "NAME", "kmer: k-mer frequency logistic regression instead of the model", ""},
    {0, "k", "INT", "k-mer length of the baseline (1..8)", "4"},
    {0, "pool", "P", "mean (over the bases) or last (the last base)", "mean"},
    {0, "strand", "S", "fwd, or both (average with the reverse complement)", "fwd"},
    {0, "upstream", "INT", "VCF: bases before the variant in its window", "1024"},
    {0, "downstream", "INT", "VCF: bases after the REF allele in its window", "128"},
    {0, "epochs", "INT", "most epochs", "100 with --freeze or --baseline, else 5"},
    {0, "batch", "INT", "examples per optimizer step", "32 with --freeze or --baseline, else 8"},
    {0, "lr", "FLOAT", "backbone peak learning rate (full fine-tuning; warmup + cosine)", "0.0001"},
    {0, "warmup", "INT", "backbone warmup steps", "a tenth of the steps, at most 100"},
    {0, "head-lr", "FLOAT", "head learning rate (AdamW)", "0.001"},
    {0, "weight-decay", "FLOAT", "AdamW weight decay", "0.01"},
    {0, "clip", "FLOAT", "max global gradient norm (full fine-tuning; 0: none)", "1"},
    {0, "metric", "M", "early-stopping metric: loss, accuracy, mcc, f1 or auroc", "loss"},
    {0, "patience", "INT", "stop after this many epochs without improvement (0: never)", "10"},
    {0, "class-weights", "W", "none, balanced, or LABEL:WEIGHT,... (loss weight per class)", "none"},
    {0, "seed", "INT", "seed of the split and the data order", "1"},
    {0, "batch-tokens", "INT", "padded tokens per batch of the feature passes", "65536"},
    {0, "piece", "INT", "tokens per forward call of the feature passes (memory only)", "4096"},
    {0, "metrics", "FILE", "JSON-lines metrics, one per epoch", "OUT without .safetensors + .metrics.jsonl"},
    {'@', "threads", "INT", "worker threads (0: all cores)", "0"},
    {0, "device", "DEV", "auto or cpu (fine-tuning runs on the CPU backend)", "auto"},
    {'q', "quiet", "", "no notes on stderr", ""},
};

int64_t nonneg(const Args& a, const std::string& name) {
  const long v = a.get_int(name);
  if (v < 0) throw UsageError("--" + name + " must not be negative");
  return v;
}

}  // namespace

int finetune_main(int argc, char** argv) {
  Args args("finetune", "[options] -o OUT.safetensors <train.fa|train.tsv|train.bed|train.vcf.gz>", kOptions);
  return run("finetune", argc, argv, [&] {
    if (!args.parse(argc, argv)) {
      std::cout << args.help() << kNotes;
      return 0;
    }
    const auto& pos = args.positional();
    if (pos.size() != 1)
      throw UsageError(pos.empty() ? "give the training data (see 'memmamba finetune --help')"
                                   : "give one training file; extra argument '" + pos[1] + "'");
    const std::string dev = args.get("device");
    if (dev != "auto" && dev != "cpu")
      throw UsageError("--device " + dev + ": fine-tuning runs on the CPU backend in this build; use auto or cpu");
    pipelines::FinetuneOptions o;
    o.train.path = pos[0];
    if (args.has("input-type")) o.train.format = pipelines::parse_labelled_format(args.get("input-type"));
    else if (auto f = pipelines::labelled_format_from_name(o.train.path)) o.train.format = *f;
    else throw UsageError("cannot tell the input type of '" + o.train.path + "': give -I fasta|tsv|bed|vcf");
    o.train.reference = args.get("reference");
    o.train.label_column = int(nonneg(args, "label-column"));
    o.train.label_key = args.get("label-key");
    o.train.upstream = nonneg(args, "upstream");
    o.train.downstream = nonneg(args, "downstream");
    if (o.train.upstream > 1000000 || o.train.downstream > 1000000)
      throw UsageError("--upstream and --downstream want 0 .. 1000000 bases");
    o.valid_path = args.get("valid");
    o.valid_fraction = args.get_double("valid-fraction");
    o.output = args.get("output");
    if (o.output.empty()) throw UsageError("give the classifier file with -o/--output");

    o.spec.input = o.train.format == pipelines::LabelledFormat::vcf ? pipelines::InputKind::variant
                                                                     : pipelines::InputKind::sequence;
    o.spec.upstream = o.train.upstream;
    o.spec.downstream = o.train.downstream;
    const std::string baseline = args.get("baseline");
    if (!baseline.empty() && baseline != "kmer") throw UsageError("--baseline wants kmer, got '" + baseline + "'");
    if (baseline == "kmer") {
      o.spec.kind = pipelines::FeatureKind::kmer;
      const long k = args.get_int("k");
      if (k < 1 || k > 8) throw UsageError("--k wants 1..8");
      o.spec.k = int(k);
      if (args.has("model")) throw UsageError("--baseline kmer uses no model: leave out -m");
    } else if (args.has("k")) {
      throw UsageError("--k is for --baseline kmer");
    }
    const std::string pool = args.get("pool");
    if (pool == "mean") o.spec.pool = pipelines::EmbedPool::mean;
    else if (pool == "last") o.spec.pool = pipelines::EmbedPool::last;
    else throw UsageError("--pool wants mean or last, got '" + pool + "'");
    const std::string strand = args.get("strand");
    if (strand != "fwd" && strand != "both") throw UsageError("--strand wants fwd or both, got '" + strand + "'");
    o.spec.both_strands = strand == "both";
    o.freeze = args.flag("freeze");
    o.epochs = args.has("epochs") ? nonneg(args, "epochs") : 0;
    o.batch = args.has("batch") ? nonneg(args, "batch") : 0;
    if (args.has("epochs") && o.epochs < 1) throw UsageError("--epochs must be at least 1");
    if (args.has("batch") && o.batch < 1) throw UsageError("--batch must be at least 1");
    o.lr = args.get_double("lr");
    o.warmup = args.has("warmup") ? nonneg(args, "warmup") : -1;
    o.head_lr = args.get_double("head-lr");
    o.weight_decay = args.get_double("weight-decay");
    o.clip = args.get_double("clip");
    o.metric = args.get("metric");
    o.patience = nonneg(args, "patience");
    const std::string cw = args.get("class-weights");
    if (cw == "none") {
      o.weighting = pipelines::ClassWeighting::none;
    } else if (cw == "balanced") {
      o.weighting = pipelines::ClassWeighting::balanced;
    } else {
      o.weighting = pipelines::ClassWeighting::given;
      std::stringstream ss(cw);
      std::string item;
      while (std::getline(ss, item, ',')) {
        const auto colon = item.rfind(':');
        if (colon == std::string::npos || colon == 0)
          throw UsageError("--class-weights wants none, balanced or LABEL:WEIGHT,..., got '" + cw + "'");
        char* end = nullptr;
        const std::string w = item.substr(colon + 1);
        const double v = std::strtod(w.c_str(), &end);
        if (w.empty() || *end) throw UsageError("--class-weights: '" + w + "' is not a number");
        o.class_weights[item.substr(0, colon)] = v;
      }
    }
    o.seed = uint64_t(nonneg(args, "seed"));
    o.run.batch_tokens = nonneg(args, "batch-tokens");
    o.run.piece = nonneg(args, "piece");
    if (o.run.batch_tokens < 1 || o.run.piece < 1) throw UsageError("--batch-tokens and --piece must be positive");
    o.metrics = args.has("metrics") ? args.get("metrics") : "";
    o.command = command_line(argc, argv);

    const long threads = args.get_int("threads");
    if (threads < 0) throw UsageError("-@/--threads must not be negative");
    tbb::global_control limit(tbb::global_control::max_allowed_parallelism,
                              threads > 0 ? size_t(threads) : std::max(1u, std::thread::hardware_concurrency()));
    g_stop = 0;
    std::signal(SIGINT, on_finetune_signal);
    std::signal(SIGTERM, on_finetune_signal);
    o.should_stop = [] { return g_stop != 0; };

    const Reporter rep = stderr_reporter("finetune", args.flag("quiet"));
    std::optional<Checkpoint> base;
    if (o.spec.kind == pipelines::FeatureKind::backbone) {
      o.model_path = resolve_model_path(args.has("model") ? args.get("model") : "");
      if (pipelines::checkpoint_format(o.model_path) == pipelines::kClassifierFormat) {
        pipelines::Classifier c = pipelines::load_classifier(o.model_path);
        if (!c.has_backbone) throw Error("a k-mer baseline classifier has no backbone to fine-tune", o.model_path);
        rep.say("starting from the backbone of the classifier " + o.model_path + " (its head is replaced)");
        base = Checkpoint{c.config, std::move(c.backbone), {}};
      } else {
        base = load_checkpoint(o.model_path);
      }
    }
    const auto r = pipelines::finetune(base ? &*base : nullptr, o, rep);
    std::string say = "wrote " + o.output.string() + " (" + std::to_string(r.labels.size()) + " classes, " +
                      std::to_string(r.epochs) + " epoch(s), best epoch " + std::to_string(r.best_epoch) + ")";
    if (r.valid) {
      char b[200];
      std::snprintf(b, sizeof b, "; validation: accuracy %.4f, MCC %.4f, macro-F1 %.4f", r.valid->accuracy,
                    r.valid->mcc, r.valid->macro_f1);
      say += b;
      if (r.valid->auroc) {
        std::snprintf(b, sizeof b, ", AUROC %.4f", *r.valid->auroc);
        say += b;
      }
    }
    rep.say(say);
    if (r.interrupted) return 128 + int(g_stop);
    return 0;
  });
}

}  // namespace mm::cli
