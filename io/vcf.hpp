// VCF/BCF through htslib: a reader (VCF, VCF.gz, BCF, stdin "-") that classifies every ALT and
// checks REF against a reference, and a writer that keeps every input record and header line and
// adds INFO fields. File outputs are atomic (temp file in the same folder, renamed on close).
#pragma once
#include "io/output_target.hpp"
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "io/sequence_source.hpp"

struct bcf1_t;
struct bcf_hdr_t;

namespace mm::io {

enum class AltKind {
  snv,                // one base replaced (after trimming shared prefix/suffix)
  mnv,                // several bases replaced, same length
  insertion,          // bases added only
  deletion,           // bases removed only
  complex,            // length change together with substitution
  symbolic,           // <DEL>, <DUP>, <*>, <NON_REF>, ...
  breakend,           // G]17:198982], .A, ...
  spanning_deletion,  // '*': overlapped by a deletion given in another record
  missing,            // ALT '.': no alternative allele
  no_change,          // ALT equal to REF
};
std::string_view to_string(AltKind k);
AltKind classify_alt(std::string_view ref, std::string_view alt);

class VcfRecord {
public:
  VcfRecord();
  ~VcfRecord();
  VcfRecord(VcfRecord&&) noexcept;
  VcfRecord& operator=(VcfRecord&&) noexcept;

  std::string contig;
  int64_t pos0 = 0;               // 0-based position of REF
  std::string id, ref;
  std::vector<std::string> alts;  // ALT '.' appears as one alt "." of kind missing
  std::vector<AltKind> kinds;     // one per alt
  long line = 0;                  // line in a text VCF; 0 for BCF
  bool ref_mismatch = false;      // set under RefCheck::flag
  bool multiallelic() const { return alts.size() > 1; }
  std::string where() const { return contig + ":" + std::to_string(pos0 + 1); }

  bcf1_t* raw() const { return rec_; }

private:
  bcf1_t* rec_;
};

enum class RefCheck { none, error, flag };

struct VcfReadOptions {
  const SequenceSource* reference = nullptr;  // REF is checked against it when given
  RefCheck ref_check = RefCheck::error;
};

class VcfReader {
public:
  explicit VcfReader(std::string path, VcfReadOptions options = {});  // "-": stdin
  ~VcfReader();
  VcfReader(const VcfReader&) = delete;
  VcfReader& operator=(const VcfReader&) = delete;

  bool next(VcfRecord& rec);
  const std::string& path() const { return path_; }
  bcf_hdr_t* header() const;

private:
  struct Handles;
  void check_ref(VcfRecord& rec) const;
  std::string path_;
  VcfReadOptions options_;
  std::unique_ptr<Handles> h_;
};

enum class VcfFormat { from_name, vcf, vcf_gz, bcf };

struct InfoDef {
  std::string id;
  std::string number;  // "A", "R", "G", ".", "0" (flag), "1", ...
  std::string type;    // Float, Integer, String, Flag, Character
  std::string description;
};

class VcfWriter {
public:
  // Header: `input`'s, in order, followed by `added`. "-": stdout (format VCF unless given).
  VcfWriter(std::string path, const VcfReader& input, const std::vector<InfoDef>& added,
            VcfFormat format = VcfFormat::from_name);
  ~VcfWriter();  // without close(): removes the temp file, leaving no output
  VcfWriter(const VcfWriter&) = delete;
  VcfWriter& operator=(const VcfWriter&) = delete;

  void set_floats(VcfRecord& rec, const std::string& id, std::span<const float> values);
  void set_ints(VcfRecord& rec, const std::string& id, std::span<const int32_t> values);
  void set_flag(VcfRecord& rec, const std::string& id, bool on);
  void set_string(VcfRecord& rec, const std::string& id, const std::string& value);
  void write(VcfRecord& rec);
  void close();  // flush and move the output into place

private:
  struct Handles;
  void sync_header();
  std::string path_;
  std::unique_ptr<OutputTarget> target_;  // null for stdout
  const VcfReader& input_;
  VcfFormat format_;
  std::unique_ptr<Handles> h_;
};

}  // namespace mm::io
