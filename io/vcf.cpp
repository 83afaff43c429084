// VcfReader / VcfWriter over htslib. Text VCF is read line by line (hts_getline + vcf_parse) so
// that errors can name the line; BCF goes through bcf_read.
#include "io/vcf.hpp"

#include <htslib/bgzf.h>
#include <htslib/hts.h>
#include <htslib/kseq.h>
#include <htslib/kstring.h>
#include <htslib/vcf.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "io/error.hpp"

namespace mm::io {

// ---- classification ----

std::string_view to_string(AltKind k) {
  switch (k) {
    case AltKind::snv: return "snv";
    case AltKind::mnv: return "mnv";
    case AltKind::insertion: return "insertion";
    case AltKind::deletion: return "deletion";
    case AltKind::complex: return "complex";
    case AltKind::symbolic: return "symbolic";
    case AltKind::breakend: return "breakend";
    case AltKind::spanning_deletion: return "spanning_deletion";
    case AltKind::missing: return "missing";
    case AltKind::no_change: return "no_change";
  }
  return "?";
}

AltKind classify_alt(std::string_view ref, std::string_view alt) {
  if (alt == "." || alt.empty()) return AltKind::missing;
  if (alt == "*") return AltKind::spanning_deletion;
  if (alt.front() == '<') return AltKind::symbolic;
  if (alt.find_first_of("[]") != std::string_view::npos || alt.front() == '.' || alt.back() == '.')
    return AltKind::breakend;
  auto same = [](char a, char b) { return std::toupper(a) == std::toupper(b); };
  // Shared suffix first, then prefix: the usual VCF left-anchoring convention.
  while (!ref.empty() && !alt.empty() && same(ref.back(), alt.back())) {
    ref.remove_suffix(1);
    alt.remove_suffix(1);
  }
  while (!ref.empty() && !alt.empty() && same(ref.front(), alt.front())) {
    ref.remove_prefix(1);
    alt.remove_prefix(1);
  }
  if (ref.empty() && alt.empty()) return AltKind::no_change;
  if (ref.empty()) return AltKind::insertion;
  if (alt.empty()) return AltKind::deletion;
  if (ref.size() != alt.size()) return AltKind::complex;
  return ref.size() == 1 ? AltKind::snv : AltKind::mnv;
}

// ---- record ----

VcfRecord::VcfRecord() : rec_(bcf_init()) {}
VcfRecord::~VcfRecord() { if (rec_) bcf_destroy(rec_); }
// The moved-from record keeps a valid (fresh) htslib record, so it can be read into again.
VcfRecord::VcfRecord(VcfRecord&& o) noexcept : rec_(bcf_init()) { *this = std::move(o); }
VcfRecord& VcfRecord::operator=(VcfRecord&& o) noexcept {
  std::swap(contig, o.contig);
  std::swap(pos0, o.pos0);
  std::swap(id, o.id);
  std::swap(ref, o.ref);
  std::swap(alts, o.alts);
  std::swap(kinds, o.kinds);
  std::swap(line, o.line);
  std::swap(ref_mismatch, o.ref_mismatch);
  std::swap(rec_, o.rec_);
  return *this;
}

// ---- reader ----

namespace {

// What htslib lets through leniently but a VCF line must have: 8 columns and a numeric POS.
// Empty when fine.
std::string column_problem(const kstring_t& line) {
  const std::string_view s(line.s, line.l);
  if (std::count(s.begin(), s.end(), '\t') < 7) return "fewer than 8 tab-separated columns";
  const size_t a = s.find('\t') + 1, b = s.find('\t', a);
  const std::string_view pos = s.substr(a, b - a);
  if (pos.empty() || pos.find_first_not_of("0123456789") != std::string_view::npos || pos == "0")
    return "POS '" + std::string(pos) + "' is not a positive integer";
  return {};
}

std::string parse_problem(int errcode) {
  if (errcode & BCF_ERR_NCOLS) return ": wrong number of columns";
  if (errcode & BCF_ERR_LIMITS) return ": a value is beyond htslib's limits";
  if (errcode & BCF_ERR_CHAR) return ": invalid character";
  if (errcode & BCF_ERR_CTG_INVALID) return ": invalid contig name";
  if (errcode & BCF_ERR_TAG_INVALID) return ": invalid INFO/FORMAT tag";
  return "";
}

}  // namespace

struct VcfReader::Handles {
  htsFile* fp = nullptr;
  bcf_hdr_t* hdr = nullptr;
  kstring_t line = KS_INITIALIZE;
  bool text = false;
  // hts_getline on a damaged bgzip stream may report a plain end: the stream's error state tells.
  bool damaged() const { return fp->format.compression != no_compression && fp->fp.bgzf->errcode; }
  bool pending = false;  // `line` holds the first record, read while looking for the header's end
  long lineno = 0;
  ~Handles() {
    ks_free(&line);
    if (hdr) bcf_hdr_destroy(hdr);
    if (fp) hts_close(fp);
  }
};

VcfReader::VcfReader(std::string path, VcfReadOptions options)
    : path_(std::move(path)), options_(options), h_(std::make_unique<Handles>()) {
  h_->fp = hts_open(path_.c_str(), "r");
  if (!h_->fp) throw Error(std::string("cannot open VCF: ") + std::strerror(errno), path_);
  const htsFormat* fmt = hts_get_format(h_->fp);
  if (fmt->format == bcf) {
    h_->hdr = bcf_hdr_read(h_->fp);
    if (!h_->hdr) throw Error("cannot read the BCF header (truncated or corrupt)", path_);
    return;
  }
  if (fmt->format != vcf) throw Error("not a VCF or BCF file", path_);
  h_->text = true;
  kstring_t text = KS_INITIALIZE;
  int r;
  bool chrom_line = false;
  while ((r = hts_getline(h_->fp, KS_SEP_LINE, &h_->line)) >= 0) {
    ++h_->lineno;
    if (h_->line.l == 0 || h_->line.s[0] != '#') {
      h_->pending = true;
      break;
    }
    kputsn(h_->line.s, h_->line.l, &text);
    kputc('\n', &text);
    if (std::strncmp(h_->line.s, "#CHROM", 6) == 0) chrom_line = true;
  }
  if (r < -1 || h_->damaged()) {
    ks_free(&text);
    throw Error("cannot read (truncated or corrupt compressed file)", path_, h_->lineno + 1);
  }
  if (!chrom_line || std::strncmp(text.s ? text.s : "", "##fileformat=VCF", 16) != 0) {
    ks_free(&text);
    throw Error("not a VCF: the header needs a ##fileformat line first and ends with #CHROM", path_);
  }
  h_->hdr = bcf_hdr_init("r");
  const int ok = bcf_hdr_parse(h_->hdr, text.s);
  ks_free(&text);
  if (ok < 0) throw Error("cannot parse the VCF header", path_);
}

VcfReader::~VcfReader() = default;

bcf_hdr_t* VcfReader::header() const { return h_->hdr; }

bool VcfReader::next(VcfRecord& rec) {
  bcf1_t* b = rec.raw();
  if (h_->text) {
    if (!h_->pending) {
      const int r = hts_getline(h_->fp, KS_SEP_LINE, &h_->line);
      if (r < -1 || h_->damaged())
        throw Error("cannot read (truncated or corrupt compressed file)", path_, h_->lineno + 1);
      if (r == -1) return false;
      ++h_->lineno;
    }
    h_->pending = false;
    rec.line = h_->lineno;
    if (h_->line.l == 0) throw Error("empty line in the VCF body", path_, rec.line);
    if (auto problem = column_problem(h_->line); !problem.empty())
      throw Error("malformed VCF record: " + problem, path_, rec.line);
    // Undefined contigs and tags are only warnings: htslib extends the header, as bcftools does.
    const int ok = vcf_parse(&h_->line, h_->hdr, b);
    if (ok < 0 || (b->errcode & ~(BCF_ERR_CTG_UNDEF | BCF_ERR_TAG_UNDEF)))
      throw Error("malformed VCF record" + parse_problem(b->errcode), path_, rec.line);
  } else {
    const int r = bcf_read(h_->fp, h_->hdr, b);
    if (r == -1) return false;
    if (r < -1 || (b->errcode & ~(BCF_ERR_CTG_UNDEF | BCF_ERR_TAG_UNDEF)))
      throw Error("truncated or corrupt BCF record" + parse_problem(b->errcode), path_);
    rec.line = 0;
  }
  if (bcf_unpack(b, BCF_UN_STR) < 0) throw Error("malformed VCF record", path_, rec.line);
  rec.contig = bcf_seqname_safe(h_->hdr, b);
  rec.pos0 = b->pos;
  rec.id = b->d.id;
  rec.ref = b->d.allele[0];
  rec.alts.clear();
  rec.kinds.clear();
  for (int i = 1; i < b->n_allele; ++i) rec.alts.emplace_back(b->d.allele[i]);
  if (rec.alts.empty()) rec.alts.emplace_back(".");
  for (const auto& a : rec.alts) rec.kinds.push_back(classify_alt(rec.ref, a));
  rec.ref_mismatch = false;
  if (options_.reference && options_.ref_check != RefCheck::none) check_ref(rec);
  return true;
}

void VcfReader::check_ref(VcfRecord& rec) const {
  const SequenceSource& src = *options_.reference;
  const std::string name = src.resolve(rec.contig);
  if (name.empty())
    throw Error("contig '" + rec.contig + "' at " + rec.where() + " is not in the reference " + src.path(),
                path_, rec.line);
  const int64_t end = rec.pos0 + static_cast<int64_t>(rec.ref.size());
  std::string have = end <= src.length(name) ? src.fetch(name, rec.pos0, end) : "";
  bool match = have.size() == rec.ref.size();
  for (size_t i = 0; match && i < have.size(); ++i) {
    const char a = std::toupper(rec.ref[i]), b = std::toupper(have[i]);
    match = a == b || a == 'N' || b == 'N';
  }
  if (match) return;
  if (options_.ref_check == RefCheck::error)
    throw Error("REF " + rec.ref + " at " + rec.where() + " does not match the reference " + src.path() +
                    (have.empty() ? std::string(" (past the contig's end)") : " (" + have + ")"),
                path_, rec.line);
  rec.ref_mismatch = true;
}

// ---- writer ----

struct VcfWriter::Handles {
  htsFile* fp = nullptr;
  bcf_hdr_t* hdr = nullptr;
  int input_nhrec = 0;  // input header lines already mirrored
  ~Handles() {
    if (fp) hts_close(fp);
    if (hdr) bcf_hdr_destroy(hdr);
  }
};

namespace {

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

VcfWriter::VcfWriter(std::string path, const VcfReader& input, const std::vector<InfoDef>& added,
                     VcfFormat format)
    : path_(std::move(path)), input_(input), format_(format), h_(std::make_unique<Handles>()) {
  if (format_ == VcfFormat::from_name)
    format_ = ends_with(path_, ".bcf") ? VcfFormat::bcf
              : ends_with(path_, ".gz") || ends_with(path_, ".bgz") ? VcfFormat::vcf_gz
                                                                    : VcfFormat::vcf;
  const char* mode = format_ == VcfFormat::bcf ? "wb" : format_ == VcfFormat::vcf_gz ? "wz" : "w";
  h_->hdr = bcf_hdr_dup(input.header());
  h_->input_nhrec = input.header()->nhrec;
  for (const auto& d : added) {
    std::string line = "##INFO=<ID=" + d.id + ",Number=" + d.number + ",Type=" + d.type +
                       ",Description=\"" + d.description + "\">";
    if (bcf_hdr_append(h_->hdr, line.c_str()) < 0) throw Error("bad INFO definition: " + line);
  }
  if (bcf_hdr_sync(h_->hdr) < 0) throw Error("cannot build the output VCF header", path_);
  if (path_ != "-") target_ = std::make_unique<OutputTarget>(path_);
  h_->fp = hts_open(target_ ? target_->write_path().c_str() : "-", mode);
  if (!h_->fp) throw Error(std::string("cannot create output: ") + std::strerror(errno), path_);
  if (bcf_hdr_write(h_->fp, h_->hdr) < 0) throw Error("cannot write the VCF header", path_);
}

VcfWriter::~VcfWriter() {
  if (!h_->fp) return;
  hts_close(h_->fp);
  h_->fp = nullptr;
  if (target_) target_->discard();
}

// Text VCF input without ##contig lines gets contigs added to its header as records name them;
// the output, whose header is already written, follows so that record ids stay valid.
void VcfWriter::sync_header() {
  bcf_hdr_t* in = input_.header();
  for (; h_->input_nhrec < in->nhrec; ++h_->input_nhrec) {
    bcf_hrec_t* hr = in->hrec[h_->input_nhrec];
    const std::string what = hr->value ? hr->value : (hr->nkeys > 1 ? hr->vals[0] : "?");
    if (std::strcmp(hr->key, "contig") != 0)
      throw Error(std::string("the VCF uses ") + hr->key + " " + what +
                      " without a header line defining it; add one", input_.path());
    if (format_ == VcfFormat::bcf)
      throw Error("contig " + what + " has no ##contig header line, which BCF output needs", input_.path());
    if (bcf_hdr_add_hrec(h_->hdr, bcf_hrec_dup(hr)) < 0 || bcf_hdr_sync(h_->hdr) < 0)
      throw Error("cannot add contig " + what + " to the output header", path_);
  }
}

void VcfWriter::set_floats(VcfRecord& rec, const std::string& id, std::span<const float> v) {
  if (bcf_update_info_float(h_->hdr, rec.raw(), id.c_str(), v.data(), static_cast<int>(v.size())) < 0)
    throw Error("cannot set INFO/" + id + " (not declared as Float?) at " + rec.where(), path_);
}

void VcfWriter::set_ints(VcfRecord& rec, const std::string& id, std::span<const int32_t> v) {
  if (bcf_update_info_int32(h_->hdr, rec.raw(), id.c_str(), v.data(), static_cast<int>(v.size())) < 0)
    throw Error("cannot set INFO/" + id + " (not declared as Integer?) at " + rec.where(), path_);
}

void VcfWriter::set_flag(VcfRecord& rec, const std::string& id, bool on) {
  if (bcf_update_info_flag(h_->hdr, rec.raw(), id.c_str(), nullptr, on ? 1 : 0) < 0)
    throw Error("cannot set INFO/" + id + " (not declared as Flag?) at " + rec.where(), path_);
}

void VcfWriter::set_string(VcfRecord& rec, const std::string& id, const std::string& value) {
  if (bcf_update_info_string(h_->hdr, rec.raw(), id.c_str(), value.c_str()) < 0)
    throw Error("cannot set INFO/" + id + " (not declared as String?) at " + rec.where(), path_);
}

void VcfWriter::write(VcfRecord& rec) {
  sync_header();
  if (bcf_write(h_->fp, h_->hdr, rec.raw()) < 0) throw Error("cannot write record " + rec.where(), path_);
}

void VcfWriter::close() {
  if (!h_->fp) return;
  const int r = hts_close(h_->fp);
  h_->fp = nullptr;
  if (!target_) {
    if (r < 0) throw Error("cannot write VCF to stdout", path_);
    return;
  }
  if (r < 0) {
    target_->discard();
    throw Error("cannot finish writing", path_);
  }
  target_->commit();
}

}  // namespace mm::io
