// `memmamba classify`: a fine-tuned classifier (pipelines/classifier.hpp) applied to sequences
// (FASTA, TSV, BED + reference) or variants (VCF/BCF + reference).
//   sequences  TSV: a '##memmamba' provenance line, the header "id predicted prob_<label>...",
//              then one line per example.
//   variants   the VCF/BCF with every record and header line kept, and per ALT the INFO fields
//              MM_CLASS (predicted label), MM_PROB (binary: the probability of the second label,
//              the positive class; multi-class: the probability of the predicted label) and
//              MM_CLASS_SKIP (why an ALT was not scored: vep's skip reasons).
// Where the inputs carry labels (FASTA description, TSV third column, BED label column, VCF
// --label-key), the metrics of the labelled examples: accuracy, MCC, macro-F1, AUROC (binary).
// A label the classifier does not know is an error.
#pragma once
#include <cstdint>
#include <optional>
#include <string>

#include "io/vcf.hpp"
#include "pipelines/classifier.hpp"
#include "pipelines/labelled.hpp"

namespace mm::pipelines {

struct ClassifyOptions {
  LabelledOptions input;
  std::string output = "-";            // TSV or VCF/BCF; "-": stdout
  io::VcfFormat vcf_format = io::VcfFormat::from_name;
  std::string metrics_file;            // JSON (one object), written atomically; empty: none
  FeatureRun run;
  int64_t batch = 256;                 // VCF records per batch
  std::string version, model_path, command;  // provenance
};

struct ClassifyResult {
  int64_t examples = 0;                // scored examples (sequences or ALTs)
  int64_t skipped = 0;                 // VCF ALTs not scored
  std::optional<Metrics> metrics;      // over the labelled examples, when there are any
};

ClassifyResult classify(const Classifier& c, const ClassifyOptions& o, const Reporter& rep);

// Probabilities (n×C) of examples under a classifier (backbone built from it when it has one).
std::vector<float> classify_probs(const Classifier& c, MemMamba<float>* model, const std::vector<Example>& ex,
                                  const FeatureRun& run, const Reporter& rep);

}  // namespace mm::pipelines
