// Labelled inputs: see labelled.hpp.
#include "pipelines/labelled.hpp"

#include <htslib/bgzf.h>
#include <htslib/kstring.h>
#include <htslib/vcf.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <memory>

#include "io/bed.hpp"
#include "io/tokenizer.hpp"

namespace mm::pipelines {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t b = 0;
  for (;;) {
    const size_t e = s.find(sep, b);
    out.push_back(s.substr(b, e == std::string::npos ? std::string::npos : e - b));
    if (e == std::string::npos) break;
    b = e + 1;
  }
  return out;
}

// Checks letters (IUPAC only) and emptiness of a sequence read from file:line.
void check_sequence(const std::string& seq, const std::string& id, const std::string& file, long line) {
  if (seq.empty()) throw Error("sequence '" + id + "' is empty", file, line);
  for (char c : seq)
    if (!io::is_iupac(c))
      throw Error("sequence '" + id + "' holds '" + std::string(1, c) + "', not a nucleotide letter", file, line);
}

void read_fasta(const LabelledOptions& o, bool need, LabelledSet& out) {
  io::FastaReader fa(o.path);
  while (fa.next_record()) {
    Example e;
    e.id = fa.name();
    e.file = fa.path();
    e.line = fa.header_line();
    std::string d = fa.description();
    while (!d.empty() && std::isspace(static_cast<unsigned char>(d.back()))) d.pop_back();
    if (!d.empty()) {
      check_label(d, e.file, e.line);
      e.label = d;
    } else if (need) {
      throw Error("record '" + e.id + "' has no label (write '>id label')", e.file, e.line);
    }
    e.seq = fa.read_all();
    if (e.seq.empty()) throw Error("sequence '" + e.id + "' is empty", e.file, e.line);
    out.examples.push_back(std::move(e));
  }
}

struct BgzfCloser {
  void operator()(BGZF* f) const { if (f) bgzf_close(f); }
};

void read_tsv(const LabelledOptions& o, bool need, LabelledSet& out) {
  std::unique_ptr<BGZF, BgzfCloser> fp(o.path == "-" ? bgzf_dopen(dup(STDIN_FILENO), "r")
                                                     : bgzf_open(o.path.c_str(), "r"));
  if (!fp) throw Error("cannot open", o.path);
  kstring_t ks = {0, 0, nullptr};
  std::unique_ptr<char, decltype(&free)> hold(nullptr, &free);
  long line = 0;
  for (;;) {
    const int r = bgzf_getline(fp.get(), '\n', &ks);
    hold.release();
    hold.reset(ks.s);
    if (r == -1) break;
    if (r < -1) throw Error("read error", o.path, line + 1);
    ++line;
    std::string s(ks.s ? ks.s : "", ks.l);
    if (!s.empty() && s.back() == '\r') s.pop_back();
    if (s.empty() || s[0] == '#') continue;
    auto f = split(s, '\t');
    if (line == 1 && f.size() >= 2 && f[0] == "id" && f[1] == "sequence") continue;  // header
    if (f.size() > 3)
      throw Error("line has " + std::to_string(f.size()) +
                      " tab-separated fields, want id, sequence and label: labels cannot hold tabs",
                  o.path, line);
    if (f.size() < 2) throw Error("line has no sequence column (want id<TAB>sequence<TAB>label)", o.path, line);
    Example e;
    e.id = f[0];
    e.file = o.path;
    e.line = line;
    if (e.id.empty()) throw Error("empty id", o.path, line);
    check_sequence(f[1], e.id, o.path, line);
    e.seq = std::move(f[1]);
    if (f.size() == 3) {
      check_label(f[2], o.path, line);
      e.label = f[2];
    } else if (need) {
      throw Error("line has no label column (want id<TAB>sequence<TAB>label)", o.path, line);
    }
    out.examples.push_back(std::move(e));
  }
}

void read_bed(const LabelledOptions& o, bool need, LabelledSet& out) {
  if (o.reference.empty()) throw UsageError("BED input needs the reference FASTA (-f REF.fa)");
  if (o.label_column != 0 && o.label_column < 4)
    throw UsageError("--label-column wants 4 or more (columns 1-3 are chrom, start, end), or 0 for none");
  if (need && o.label_column == 0) throw UsageError("training needs labels: --label-column 0 gives none");
  io::IndexedFasta fa(o.reference);
  io::BedReader bed(o.path);
  io::BedRecord rec;
  while (bed.next(rec)) {
    Example e;
    e.file = bed.path();
    e.line = rec.line;
    const std::string loc = rec.contig + ":" + std::to_string(rec.beg + 1) + "-" + std::to_string(rec.end);
    e.id = (o.label_column != 4 && !rec.name().empty()) ? rec.name() : loc;
    const size_t col = size_t(o.label_column) - 4;  // index into extra
    if (o.label_column != 0 && col < rec.extra.size()) {
      check_label(rec.extra[col], e.file, e.line);
      e.label = rec.extra[col];
    } else if (need) {
      throw Error("interval has no label in column " + std::to_string(o.label_column), e.file, e.line);
    }
    if (rec.end <= rec.beg) throw Error("interval " + loc + " is empty (no bases)", e.file, e.line);
    const std::string name = fa.resolve(rec.contig);
    if (name.empty()) throw Error("contig '" + rec.contig + "' is not in the reference " + o.reference, e.file, e.line);
    if (rec.end > fa.length(name))
      throw Error("interval " + loc + " runs past the end of " + name + " (" + std::to_string(fa.length(name)) + ")",
                  e.file, e.line);
    e.seq = fa.fetch(name, rec.beg, rec.end);
    check_sequence(e.seq, e.id, e.file, e.line);
    out.examples.push_back(std::move(e));
  }
}

bool acgt_only(const std::string& s) {
  if (s.empty()) return false;
  for (char c : s)
    switch (c) {
      case 'A': case 'C': case 'G': case 'T': case 'a': case 'c': case 'g': case 't': break;
      default: return false;
    }
  return true;
}

void read_vcf(const LabelledOptions& o, bool need, LabelledSet& out, const Reporter& rep) {
  if (o.reference.empty()) throw UsageError("VCF input needs the reference FASTA (-f REF.fa)");
  if (need && o.label_key.empty()) throw UsageError("training on a VCF needs --label-key KEY (the INFO field of the label)");
  io::FastaOptions fo;
  fo.reporter = rep;
  io::IndexedFasta fa(o.reference, fo);
  io::VcfReadOptions ro;
  ro.ref_check = io::RefCheck::none;
  io::VcfReader reader(o.path, ro);
  if (!o.label_key.empty()) check_label_key(reader, o.label_key);
  io::VcfRecord rec;
  while (reader.next(rec)) {
    const PreparedVariant pv = prepare_variant(rec, fa, o.upstream, o.downstream);
    const auto labels = o.label_key.empty() ? std::vector<std::string>(rec.alts.size())
                                            : info_labels(reader, rec, o.label_key);
    if (!pv.record_skip.empty()) {
      out.records_skipped += int64_t(rec.alts.size());
      continue;
    }
    for (size_t k = 0; k < rec.alts.size(); ++k) {
      if (!pv.alt_skip[k].empty()) {
        ++out.records_skipped;
        continue;
      }
      if (need && labels[k].empty()) {
        ++out.unlabelled;
        continue;
      }
      Example e;
      e.id = rec.contig + ":" + std::to_string(rec.pos0 + 1) + ":" + rec.ref + ":" + rec.alts[k];
      e.label = labels[k];
      e.file = reader.path();
      e.line = rec.line;
      e.window = pv.windows[k];
      out.examples.push_back(std::move(e));
    }
  }
}

}  // namespace

std::optional<LabelledFormat> labelled_format_from_name(const std::string& path) {
  std::string p = path;
  for (auto& c : p) c = char(std::tolower(static_cast<unsigned char>(c)));
  if (ends_with(p, ".bcf") || ends_with(p, ".vcf") || ends_with(p, ".vcf.gz") || ends_with(p, ".vcf.bgz"))
    return LabelledFormat::vcf;
  if (ends_with(p, ".gz")) p.resize(p.size() - 3);
  if (ends_with(p, ".bed")) return LabelledFormat::bed;
  if (ends_with(p, ".tsv") || ends_with(p, ".txt")) return LabelledFormat::tsv;
  for (const char* s : {".fa", ".fasta", ".fna", ".fas", ".ffn"})
    if (ends_with(p, s)) return LabelledFormat::fasta;
  return std::nullopt;
}

LabelledFormat parse_labelled_format(const std::string& name) {
  if (name == "fasta") return LabelledFormat::fasta;
  if (name == "tsv") return LabelledFormat::tsv;
  if (name == "bed") return LabelledFormat::bed;
  if (name == "vcf") return LabelledFormat::vcf;
  throw UsageError("input type '" + name + "': want fasta, tsv, bed or vcf");
}

LabelledSet read_labelled(const LabelledOptions& o, bool need_labels, const Reporter& rep) {
  LabelledSet out;
  switch (o.format) {
    case LabelledFormat::fasta: read_fasta(o, need_labels, out); break;
    case LabelledFormat::tsv: read_tsv(o, need_labels, out); break;
    case LabelledFormat::bed: read_bed(o, need_labels, out); break;
    case LabelledFormat::vcf: read_vcf(o, need_labels, out, rep); break;
  }
  return out;
}

PreparedVariant prepare_variant(const io::VcfRecord& r, const io::IndexedFasta& fasta, int64_t upstream,
                                int64_t downstream) {
  PreparedVariant pv;
  pv.alt_skip.assign(r.alts.size(), "");
  pv.windows.resize(r.alts.size());
  const std::string name = fasta.resolve(r.contig);
  if (name.empty()) {
    pv.record_skip = "contig_missing";
    return pv;
  }
  const int64_t len = fasta.length(name);
  const int64_t p = r.pos0, lr = int64_t(r.ref.size()), end = p + lr;
  const std::string have = p >= 0 && end <= len ? fasta.fetch(name, p, end) : "";
  bool match = have.size() == r.ref.size();
  for (size_t i = 0; match && i < have.size(); ++i) {
    const char a = char(std::toupper(static_cast<unsigned char>(r.ref[i])));
    const char b = char(std::toupper(static_cast<unsigned char>(have[i])));
    match = a == b || a == 'N' || b == 'N';
  }
  if (!match) {
    pv.record_skip = "ref_mismatch";
    return pv;
  }
  if (!acgt_only(r.ref)) {
    pv.record_skip = "n_context";
    return pv;
  }
  const int64_t s = std::max<int64_t>(0, p - upstream), e = std::min<int64_t>(len, end + downstream);
  const std::string up = s < p ? fasta.fetch(name, s, p) : "", down = end < e ? fasta.fetch(name, end, e) : "";
  for (size_t k = 0; k < r.alts.size(); ++k) {
    switch (r.kinds[k]) {
      case io::AltKind::symbolic: pv.alt_skip[k] = "symbolic"; break;
      case io::AltKind::breakend: pv.alt_skip[k] = "breakend"; break;
      case io::AltKind::spanning_deletion: pv.alt_skip[k] = "spanning_deletion"; break;
      case io::AltKind::missing: pv.alt_skip[k] = "missing_alt"; break;
      default:
        if (!acgt_only(r.alts[k])) pv.alt_skip[k] = "n_context";
    }
    if (!pv.alt_skip[k].empty()) continue;
    pv.windows[k] = LocalWindow{up, r.ref, {r.alts[k]}, down};
  }
  return pv;
}

void check_label_key(const io::VcfReader& reader, const std::string& key) {
  bcf_hdr_t* hdr = reader.header();
  const int id = bcf_hdr_id2int(hdr, BCF_DT_ID, key.c_str());
  if (id < 0 || !bcf_hdr_idinfo_exists(hdr, BCF_HL_INFO, id))
    throw Error("--label-key " + key + ": the header declares no INFO field of that name", reader.path());
}

std::vector<std::string> info_labels(const io::VcfReader& reader, io::VcfRecord& rec, const std::string& key) {
  bcf_hdr_t* hdr = reader.header();
  check_label_key(reader, key);
  const int id = bcf_hdr_id2int(hdr, BCF_DT_ID, key.c_str());
  const int type = bcf_hdr_id2type(hdr, BCF_HL_INFO, id);
  const size_t na = rec.alts.size();
  std::vector<std::string> values;
  if (type == BCF_HT_FLAG) {
    const int r = bcf_get_info_flag(hdr, rec.raw(), key.c_str(), nullptr, nullptr);
    values.push_back(r == 1 ? "1" : "0");
  } else if (type == BCF_HT_INT) {
    int32_t* v = nullptr;
    int nv = 0;
    const int n = bcf_get_info_int32(hdr, rec.raw(), key.c_str(), &v, &nv);
    for (int i = 0; i < n; ++i)
      values.push_back(v[i] == bcf_int32_missing || v[i] == bcf_int32_vector_end ? "" : std::to_string(v[i]));
    free(v);
  } else if (type == BCF_HT_REAL) {
    float* v = nullptr;
    int nv = 0;
    const int n = bcf_get_info_float(hdr, rec.raw(), key.c_str(), &v, &nv);
    char buf[32];
    for (int i = 0; i < n; ++i) {
      if (bcf_float_is_missing(v[i]) || bcf_float_is_vector_end(v[i])) {
        values.push_back("");
        continue;
      }
      std::snprintf(buf, sizeof buf, "%g", double(v[i]));
      values.push_back(buf);
    }
    free(v);
  } else {
    char* v = nullptr;
    int nv = 0;
    const int n = bcf_get_info_string(hdr, rec.raw(), key.c_str(), &v, &nv);
    if (n > 0) {
      std::string s(v, strnlen(v, size_t(n)));
      for (auto& x : split(s, ',')) values.push_back(x == "." ? "" : x);
    }
    free(v);
  }
  std::vector<std::string> out(na);
  if (values.empty()) return out;
  if (values.size() == 1) {
    std::fill(out.begin(), out.end(), values[0]);
  } else if (values.size() == na) {
    out = values;
  } else {
    throw Error("INFO " + key + " has " + std::to_string(values.size()) + " values at " + rec.where() +
                    "; want one, or one per ALT (" + std::to_string(na) + ")", reader.path(), rec.line);
  }
  for (const auto& l : out)
    if (!l.empty()) check_label(l, reader.path(), rec.line);
  return out;
}

}  // namespace mm::pipelines
