// memmamba vep: see vep.hpp for the scoring rule, the skip reasons and the output fields.
#include "pipelines/vep.hpp"

#include <htslib/vcf.h>
#include <tbb/parallel_for.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <memory>

#include "io/fasta.hpp"
#include "io/tokenizer.hpp"
#include "pipelines/score.hpp"

namespace mm::pipelines {

// ---------------------------------------------------------------------------------------------
// The scoring core

std::vector<double> score_continuations(MemMamba<float>& model, std::span<const uint8_t> prefix,
                                        const std::vector<std::vector<uint8_t>>& continuations,
                                        int64_t piece, int64_t* fed) {
  const size_t V = static_cast<size_t>(model.config().vocab);
  if (V <= io::tok::BOS)
    throw Error("the model's vocabulary (" + std::to_string(V) + ") has no BOS token: not a DNA model of this format");
  piece = std::max<int64_t>(1, piece);
  std::vector<int32_t> tk;
  std::vector<float> logits;
  int64_t n_fed = 0;

  // The shared prefix: BOS + prefix, in pieces; only the last logits row is kept.
  StreamState<float> base = model.new_state(1);
  std::vector<float> last(V);
  {
    size_t done = 0;
    bool first = true;
    while (first || done < prefix.size()) {
      const size_t m = std::min(prefix.size() - done, static_cast<size_t>(piece));
      tk.clear();
      if (first) tk.push_back(io::tok::BOS);
      for (size_t i = 0; i < m; ++i) tk.push_back(prefix[done + i]);
      logits.resize(tk.size() * V);
      model.forward(tk.data(), 1, static_cast<int64_t>(tk.size()), logits.data(), &base);
      n_fed += static_cast<int64_t>(tk.size());
      std::copy(logits.end() - static_cast<std::ptrdiff_t>(V), logits.end(), last.begin());
      done += m;
      first = false;
    }
  }

  std::vector<double> sums;
  sums.reserve(continuations.size());
  std::vector<float> pending(V);
  for (const auto& cont : continuations) {
    StreamState<float> st = base;  // every continuation starts from the prefix's state
    pending = last;
    double sum = 0;
    size_t done = 0;
    while (done < cont.size()) {
      const size_t m = std::min(cont.size() - done, static_cast<size_t>(piece));
      tk.assign(cont.begin() + static_cast<std::ptrdiff_t>(done),
                cont.begin() + static_cast<std::ptrdiff_t>(done + m));
      logits.resize(m * V);
      model.forward(tk.data(), 1, static_cast<int64_t>(m), logits.data(), &st);
      n_fed += static_cast<int64_t>(m);
      for (size_t i = 0; i < m; ++i) {
        const uint8_t t = cont[done + i];
        if (t < io::tok::A || t > io::tok::T) continue;  // N: fed, but no term
        const float* row = i == 0 ? pending.data() : logits.data() + (i - 1) * V;
        float lp;
        row_values(row, t, &lp, nullptr);
        sum += double(lp);
      }
      std::copy(logits.end() - static_cast<std::ptrdiff_t>(V), logits.end(), pending.begin());
      done += m;
    }
    sums.push_back(sum);
  }
  if (fed) *fed += n_fed;
  return sums;
}

namespace {

std::vector<uint8_t> tokens_of(const std::string& letters) {
  std::vector<uint8_t> t(letters.size());
  io::encode(letters.data(), letters.size(), t.data());
  return t;
}

std::vector<uint8_t> concat(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  std::vector<uint8_t> r(a);
  r.insert(r.end(), b.begin(), b.end());
  return r;
}

}  // namespace

std::vector<double> score_window(MemMamba<float>& model, const LocalWindow& w, VepStrand strand,
                                 int64_t piece, int64_t* fed) {
  const auto up = tokens_of(w.upstream), down = tokens_of(w.downstream);
  std::vector<std::vector<uint8_t>> alleles;
  alleles.push_back(tokens_of(w.ref));
  for (const auto& a : w.alts) alleles.push_back(tokens_of(a));

  // Forward: prefix = upstream, continuation = allele + downstream.
  std::vector<std::vector<uint8_t>> conts;
  for (const auto& a : alleles) conts.push_back(concat(a, down));
  const auto f = score_continuations(model, up, conts, piece, fed);
  std::vector<double> llr(w.alts.size());
  for (size_t k = 0; k < w.alts.size(); ++k) llr[k] = f[k + 1] - f[0];
  if (strand == VepStrand::fwd) return llr;

  // Reverse: prefix = rc(downstream), continuation = rc(upstream + allele) = rc(allele) + rc(upstream).
  std::vector<uint8_t> rdown = down;
  io::reverse_complement(rdown.data(), rdown.size());
  conts.clear();
  for (const auto& a : alleles) {
    auto c = concat(up, a);
    io::reverse_complement(c.data(), c.size());
    conts.push_back(std::move(c));
  }
  const auto r = score_continuations(model, rdown, conts, piece, fed);
  for (size_t k = 0; k < w.alts.size(); ++k) llr[k] = 0.5 * (llr[k] + (r[k + 1] - r[0]));
  return llr;
}

// ---------------------------------------------------------------------------------------------
// The command

namespace {

bool acgt_only(const std::string& s) {
  if (s.empty()) return false;
  for (char c : s)
    switch (c) {
      case 'A': case 'C': case 'G': case 'T': case 'a': case 'c': case 'g': case 't': break;
      default: return false;
    }
  return true;
}

struct Job {
  io::VcfRecord rec;
  std::string record_skip;             // non-empty: the whole record is not scored
  std::vector<std::string> alt_skip;   // per ALT: empty when scored
  LocalWindow window;                  // the ALTs to score, in ALT order
  std::vector<double> llr;             // per scored ALT
  int64_t fed = 0;
};

std::string header_text(std::string s) {
  for (char& c : s)
    if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  return s;
}

}  // namespace

VepStats vep(MemMamba<float>& model, const VepOptions& o, const Reporter& rep) {
  if (o.upstream < 0 || o.upstream > 1000000) throw UsageError("--upstream wants 0 .. 1000000 bases");
  if (o.downstream < 0 || o.downstream > 1000000) throw UsageError("--downstream wants 0 .. 1000000 bases");
  if (model.config().vocab <= io::tok::BOS)
    throw Error("the model's vocabulary has no BOS token: not a DNA model of this format");

  io::FastaOptions fo;
  fo.reporter = rep;
  io::IndexedFasta fasta(o.fasta, fo);
  io::VcfReadOptions ro;
  ro.ref_check = io::RefCheck::none;  // checked here: an unknown contig is a skip, not an error
  io::VcfReader reader(o.input, ro);

  // VcfWriter copies the reader's header and has no hook for generic header lines, so the
  // provenance line is added to the reader's in-memory header before the writer copies it.
  const std::string prov = "##memmamba=" + header_text("version=" + o.version + "; model=" + o.model_path +
                                                       "; command=" + o.command_line);
  if (bcf_hdr_append(reader.header(), prov.c_str()) < 0 || bcf_hdr_sync(reader.header()) < 0)
    throw Error("cannot add the ##memmamba header line", o.output);

  const std::string rule = "U=" + std::to_string(o.upstream) + ",W=" + std::to_string(o.downstream) +
                           ",strand=" + (o.strand == VepStrand::both ? "both" : "fwd");
  const std::vector<io::InfoDef> defs = {
      {"MM_LLR", "A", "Float",
       "MemMamba log-likelihood ratio ln P(ALT haplotype) - ln P(REF haplotype), natural log, summed "
       "from the variant start over the allele and the downstream window (" + rule + ")"},
      {"MM_SKIP", ".", "String",
       "Why a record or ALT was not scored: ref_mismatch, symbolic, breakend, spanning_deletion, "
       "missing_alt, n_context, contig_missing (per ALT, '.' = scored, when ALTs differ)"},
  };
  io::VcfWriter writer(o.output, reader, defs, o.format);

  VepStats stats;
  std::vector<Job> jobs;
  const size_t batch = static_cast<size_t>(std::max<int64_t>(1, o.batch));
  bool more = true;
  while (more) {
    jobs.clear();
    while (jobs.size() < batch) {
      Job j;
      if (!reader.next(j.rec)) {
        more = false;
        break;
      }
      jobs.push_back(std::move(j));
    }
    // Prepare in order (FASTA reads, REF checks, skip reasons).
    for (Job& j : jobs) {
      const io::VcfRecord& r = j.rec;
      j.alt_skip.assign(r.alts.size(), "");
      const std::string name = fasta.resolve(r.contig);
      if (name.empty()) {
        j.record_skip = "contig_missing";
        continue;
      }
      const int64_t len = fasta.length(name);
      const int64_t p = r.pos0, lr = static_cast<int64_t>(r.ref.size());
      const int64_t end = p + lr;
      std::string have = p >= 0 && end <= len ? fasta.fetch(name, p, end) : "";
      bool match = have.size() == r.ref.size();
      for (size_t i = 0; match && i < have.size(); ++i) {
        const char a = static_cast<char>(std::toupper(static_cast<unsigned char>(r.ref[i])));
        const char b = static_cast<char>(std::toupper(static_cast<unsigned char>(have[i])));
        match = a == b || a == 'N' || b == 'N';
      }
      if (!match) {
        if (o.strict)
          throw Error("REF " + r.ref + " at " + r.where() + " does not match the reference " + o.fasta +
                          (have.empty() ? std::string(" (past the contig's end)") : " (" + have + ")"),
                      reader.path(), r.line);
        j.record_skip = "ref_mismatch";
        continue;
      }
      if (!acgt_only(r.ref)) {
        j.record_skip = "n_context";
        continue;
      }
      for (size_t k = 0; k < r.alts.size(); ++k) {
        switch (r.kinds[k]) {
          case io::AltKind::symbolic: j.alt_skip[k] = "symbolic"; break;
          case io::AltKind::breakend: j.alt_skip[k] = "breakend"; break;
          case io::AltKind::spanning_deletion: j.alt_skip[k] = "spanning_deletion"; break;
          case io::AltKind::missing: j.alt_skip[k] = "missing_alt"; break;
          default:
            if (!acgt_only(r.alts[k])) j.alt_skip[k] = "n_context";
            else j.window.alts.push_back(r.alts[k]);
        }
      }
      if (j.window.alts.empty()) continue;
      const int64_t s = std::max<int64_t>(0, p - o.upstream);
      const int64_t e = std::min<int64_t>(len, end + o.downstream);
      j.window.upstream = s < p ? fasta.fetch(name, s, p) : "";
      j.window.ref = r.ref;
      j.window.downstream = end < e ? fasta.fetch(name, end, e) : "";
    }
    // Score in parallel (each record on its own streams).
    tbb::parallel_for(size_t(0), jobs.size(), [&](size_t i) {
      Job& j = jobs[i];
      if (!j.record_skip.empty() || j.window.alts.empty()) return;
      j.llr = score_window(model, j.window, o.strand, o.piece, &j.fed);
    });
    // Write in order.
    for (Job& j : jobs) {
      ++stats.records;
      stats.fed += j.fed;
      const size_t n = j.rec.alts.size();
      if (!j.record_skip.empty()) {
        ++stats.records_skipped;
        stats.alts_skipped += static_cast<int64_t>(n);
        writer.set_string(j.rec, "MM_SKIP", j.record_skip);
      } else {
        std::vector<float> v(n);
        std::string skip;
        size_t scored = 0;
        bool any_skip = false;
        for (size_t k = 0; k < n; ++k) {
          if (k) skip += ',';
          if (j.alt_skip[k].empty()) {
            v[k] = static_cast<float>(j.llr[scored++]);
            skip += '.';
          } else {
            bcf_float_set_missing(v[k]);
            skip += j.alt_skip[k];
            any_skip = true;
          }
        }
        stats.alts_scored += static_cast<int64_t>(scored);
        stats.alts_skipped += static_cast<int64_t>(n - scored);
        if (scored > 0) writer.set_floats(j.rec, "MM_LLR", v);
        if (any_skip) writer.set_string(j.rec, "MM_SKIP", skip);
      }
      writer.write(j.rec);
    }
    rep.advance(double(stats.records), 0, "records");
  }
  writer.close();
  return stats;
}

}  // namespace mm::pipelines
