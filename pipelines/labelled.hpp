// Labelled inputs of `memmamba finetune` and `memmamba classify`:
//   FASTA  >id label        (the header's description is the label; none: unlabelled)
//   TSV    id<TAB>sequence<TAB>label   (the label column may be absent: unlabelled; '#' lines
//          and a first line "id<TAB>sequence[<TAB>label]" are skipped)
//   BED    chrom start end ... with the label in column --label-column (1-based, default 4),
//          bases from the reference FASTA (-f); id: the name column (4) when the label is
//          elsewhere, else chrom:beg-end (1-based)
//   VCF/BCF  every ALT of a record is one example (id: the record's ID, else chrom:pos:ref:alt),
//          windows as in `memmamba vep` from the reference (-f); the label from the INFO key
//          --label-key (String, Integer, Float or Flag; Number=A gives one label per ALT).
// Labels are one word (no white space, ',', ';' or '='). Sequences must hold bases.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "io/error.hpp"
#include "io/fasta.hpp"
#include "io/vcf.hpp"
#include "pipelines/classifier.hpp"

namespace mm::pipelines {

enum class LabelledFormat { fasta, tsv, bed, vcf };

// From the file name (.fa .fasta .fna .fas [.gz], .tsv .txt [.gz], .bed [.gz], .vcf [.gz] .bcf);
// nullopt when it cannot be told.
std::optional<LabelledFormat> labelled_format_from_name(const std::string& path);
// "fasta", "tsv", "bed", "vcf"; throws UsageError for anything else.
LabelledFormat parse_labelled_format(const std::string& name);

struct LabelledOptions {
  std::string path;                 // "-": stdin (FASTA, TSV, VCF)
  LabelledFormat format = LabelledFormat::fasta;
  std::string reference;            // BED and VCF: indexed FASTA
  int label_column = 4;             // BED: 1-based column of the label; 0: no labels
  std::string label_key;            // VCF: INFO key of the label; empty: no labels
  int64_t upstream = 1024, downstream = 128;  // VCF windows
};

struct LabelledSet {
  std::vector<Example> examples;
  int64_t records_skipped = 0;      // VCF: records or ALTs that cannot be scored
  int64_t unlabelled = 0;           // VCF: scorable ALTs without a label value
};

// Reads every example. Throws mm::Error naming file and line: empty sequences, bad letters,
// labels with white space, a TSV line with more than 3 fields (a tab in a label), a label key that
// the VCF header does not declare. `need_labels`: an example without a label is an error (VCF:
// an ALT without a label value is skipped and counted instead).
LabelledSet read_labelled(const LabelledOptions& o, bool need_labels, const Reporter& rep);

// A VCF record made ready to score: the record-level skip reason (contig_missing, ref_mismatch,
// n_context) or, per ALT, its skip reason (symbolic, breakend, spanning_deletion, missing_alt,
// n_context) or its window (one ALT). Reason strings as vep's MM_SKIP.
struct PreparedVariant {
  std::string record_skip;
  std::vector<std::string> alt_skip;     // per ALT; empty when scorable
  std::vector<LocalWindow> windows;      // per ALT; meaningful where alt_skip is empty
};
PreparedVariant prepare_variant(const io::VcfRecord& rec, const io::IndexedFasta& fasta,
                                int64_t upstream, int64_t downstream);

// The label of each ALT from INFO key `key` (empty where the record has none). Throws mm::Error
// for a key the header does not declare as INFO and for labels that check_label refuses.
std::vector<std::string> info_labels(const io::VcfReader& reader, io::VcfRecord& rec, const std::string& key);
// Throws mm::Error unless the header declares INFO `key`.
void check_label_key(const io::VcfReader& reader, const std::string& key);

}  // namespace mm::pipelines
