// Sequence and variant classifiers on top of a MemMamba (or on k-mer frequencies, the baseline):
// labelled examples, their feature vectors, a softmax head, the metrics, and the classifier
// checkpoint that `memmamba finetune` writes and `memmamba classify` reads.
//
// Features (FeatureSpec):
//   backbone, sequence  the final hidden states (after norm_f) of BOS + the bases, pooled over the
//                       bases (BOS excluded): mean, or the last base. Strand both: the mean of the
//                       vectors of the sequence and of its reverse complement. d_model values.
//   backbone, variant   pooled(ALT window) − pooled(REF window) (windows as in `memmamba vep`:
//                       U bases upstream, the allele, W bases downstream, clamped at the contig
//                       ends), then the zero-shot MM_LLR of vep's rule (pipelines/vep.hpp). d_model + 1.
//   kmer, sequence      k-mer frequencies over the A/C/G/T k-mers (k-mers with N skipped);
//                       strand both counts the reverse complement too. 4^k values.
//   kmer, variant       frequencies(ALT window) − frequencies(REF window).
// The head standardises the features with the training set's mean and standard deviation
// (features that do not vary are ignored), then logits = W·x + b, probabilities = softmax.
//
// Long sequences go through the model in pieces with a carried state (memory bounded, results of
// one whole pass); examples of similar length run together as one padded batch ("batched by
// length"): padding follows the bases, and the model is causal, so it changes nothing.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "io/error.hpp"
#include "model/config.hpp"
#include "model/memmamba.hpp"
#include "pipelines/embed.hpp"
#include "pipelines/vep.hpp"

namespace mm::pipelines {

inline constexpr const char* kClassifierFormat = "memmamba-classifier-1";

// One labelled (or unlabelled) example.
struct Example {
  std::string id;
  std::string label;        // empty: no label
  std::string file;         // where it was read, for messages
  long line = 0;
  std::string seq;          // sequence inputs: the bases as read
  LocalWindow window;       // variant inputs: REF, exactly one ALT, the flanks
  size_t length() const;    // bases of the longest stream it feeds the model
};

// Throws mm::Error (at file:line) when a label is empty or holds white space, ',', ';' or '='.
void check_label(const std::string& label, const std::string& file, long line);

enum class FeatureKind { backbone, kmer };
enum class InputKind { sequence, variant };

struct FeatureSpec {
  FeatureKind kind = FeatureKind::backbone;
  InputKind input = InputKind::sequence;
  EmbedPool pool = EmbedPool::mean;
  bool both_strands = false;
  int k = 4;                        // kmer only
  int64_t upstream = 1024, downstream = 128;  // variant windows
  int64_t dim(int d_model) const;   // feature width
  std::string to_json() const;
  static FeatureSpec from_json(const std::string& json, const std::string& where);
};

// How features are computed (memory and speed, never results).
struct FeatureRun {
  int64_t batch_tokens = 65536;  // padded tokens per batch
  int64_t piece = 4096;          // tokens per forward call
};

// n × dim features of the examples (row i = examples[i]). `model` may be null for kmer features.
std::vector<float> compute_features(MemMamba<float>* model, const FeatureSpec& spec,
                                    const std::vector<Example>& examples, const FeatureRun& run,
                                    const Reporter& rep);

// Groups of example indices (sorted by length) whose padded streams fit `batch_tokens` and that
// hold at most `max_examples` examples (0: no limit).
std::vector<std::vector<size_t>> length_batches(const std::vector<Example>& examples,
                                                const FeatureSpec& spec, int64_t batch_tokens,
                                                int64_t max_examples);

// One stream a group of examples feeds the model: BOS + bases; the example's feature gets
// coef × pooled(stream) (strand both: 0.5 each; variants: + ALT, − REF).
struct StreamRow {
  std::vector<int32_t> tokens;
  size_t example;  // index into the group
  float coef;
};
std::vector<StreamRow> stream_rows(const FeatureSpec& spec, const std::vector<const Example*>& group);

// The zero-shot MM_LLR of each variant example (vep's rule, same strands as the features).
std::vector<double> variant_llrs(MemMamba<float>& model, const FeatureSpec& spec,
                                 const std::vector<const Example*>& examples, int64_t piece);

// The softmax head: standardisation, then a linear layer.
struct Head {
  int64_t F = 0, C = 0;
  std::vector<float> mean, scale;  // F each
  std::vector<float> W, b;         // C×F, C
  void init(int64_t features, int64_t classes);
  // Sets mean/scale from the rows of x (n×F).
  void fit_standardisation(const std::vector<float>& x, int64_t n);
  // logits (C) of one feature row; z (F, optional) receives the standardised row.
  void forward(const float* x, float* logits, float* z = nullptr) const;
};

// Softmax in place; returns the log-sum-exp.
double softmax(float* v, int64_t n);

struct Metrics {
  int64_t n = 0;
  double loss = 0;                 // mean cross-entropy (unweighted)
  double accuracy = 0, mcc = 0, macro_f1 = 0;
  std::optional<double> auroc;     // binary, both classes present
  std::vector<std::vector<int64_t>> confusion;  // [true][predicted]
  std::string to_json(const std::vector<std::string>& labels) const;
};

// y: true class indices; probs: n×C probabilities. MCC: Gorodkin's multi-class form (the usual
// MCC for two classes). Macro-F1 over the classes present in the truth or the predictions.
// AUROC: binary only, the probability of class 1 as the score, ties counted half.
Metrics evaluate_metrics(const std::vector<int>& y, const std::vector<float>& probs, int64_t C);

// A fine-tuned classifier: backbone (absent for the k-mer baseline) + head + what it means.
struct Classifier {
  bool has_backbone = true;
  Config config;                 // backbone only
  std::vector<float> backbone;   // backbone only, laid out by ParamTable(config)
  FeatureSpec spec;
  std::vector<std::string> labels;  // class names, class index order
  Head head;
  std::map<std::string, std::string> metadata;
};

// Safetensors: the backbone's tensors under their checkpoint names, head.{mean,scale,weight,bias};
// metadata: format, memmamba.config, memmamba.classifier (labels, features), memmamba.version and
// whatever `metadata` holds (memmamba.finetune, memmamba.command, ...). Written atomically.
void save_classifier(const std::filesystem::path& path, const Classifier& c);

// Refuses, naming the file: not a classifier (a plain checkpoint gets its own message), a head
// that does not fit the backbone and features (head/backbone mismatch), bad tensors.
Classifier load_classifier(const std::filesystem::path& path);

// The format string of a safetensors file's metadata ("" when none); throws on unreadable files.
std::string checkpoint_format(const std::filesystem::path& path);

}  // namespace mm::pipelines
