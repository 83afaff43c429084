// memmamba vep: see vep.hpp for the scoring rule, the skip reasons and the output fields.
#include "pipelines/vep.hpp"

#include <htslib/vcf.h>
#include <tbb/parallel_for.h>
#include <tbb/task_group.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <memory>
#include <set>

#include "io/fasta.hpp"
#include "io/tokenizer.hpp"
#include "pipelines/score.hpp"

namespace mm::pipelines {

// ---------------------------------------------------------------------------------------------
// The scoring core

namespace {

void check_vocab(const Config& c) {
  if (c.vocab <= io::tok::BOS)
    throw Error("the model's vocabulary (" + std::to_string(c.vocab) + ") has no BOS token: not a DNA model of this format");
}

// Feeds tokens (no BOS) to a stream in pieces; keeps the logits row of the last one in `last`.
void feed(StreamModel& s, const uint8_t* t, size_t n, int64_t piece, std::vector<float>& last,
          std::vector<int32_t>& tk, std::vector<float>& logits) {
  const size_t V = static_cast<size_t>(s.config().vocab);
  for (size_t done = 0; done < n;) {
    const size_t m = std::min(n - done, static_cast<size_t>(piece));
    tk.assign(t + done, t + done + m);
    logits.resize(m * V);
    s.forward(tk.data(), static_cast<int64_t>(m), logits.data());
    last.assign(logits.end() - static_cast<std::ptrdiff_t>(V), logits.end());
    done += m;
  }
}

// Resets the stream and runs BOS; `last` gets its logits row.
void start(StreamModel& s, std::vector<float>& last) {
  const size_t V = static_cast<size_t>(s.config().vocab);
  s.reset();
  const int32_t bos = io::tok::BOS;
  last.resize(V);
  s.forward(&bos, 1, last.data());
}

}  // namespace

std::vector<double> score_forks(const StreamModel& stream, std::span<const float> last,
                                const std::vector<std::vector<uint8_t>>& continuations, int64_t piece,
                                int64_t* fed) {
  const size_t V = static_cast<size_t>(stream.config().vocab);
  check_vocab(stream.config());
  if (last.size() != V) throw Error("score_forks: the last logits row has " + std::to_string(last.size()) + " values, not V");
  piece = std::max<int64_t>(1, piece);
  std::vector<int32_t> tk;
  std::vector<float> logits;
  std::vector<float> pending(V);
  int64_t n_fed = 0;
  std::vector<double> sums;
  sums.reserve(continuations.size());
  for (const auto& cont : continuations) {
    const std::unique_ptr<StreamModel> st = stream.fork();  // every continuation starts from the prefix's state
    pending.assign(last.begin(), last.end());
    double sum = 0;
    size_t done = 0;
    while (done < cont.size()) {
      const size_t m = std::min(cont.size() - done, static_cast<size_t>(piece));
      tk.assign(cont.begin() + static_cast<std::ptrdiff_t>(done),
                cont.begin() + static_cast<std::ptrdiff_t>(done + m));
      logits.resize(m * V);
      st->forward(tk.data(), static_cast<int64_t>(m), logits.data());
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

std::vector<double> score_continuations(StreamModel& model, std::span<const uint8_t> prefix,
                                        const std::vector<std::vector<uint8_t>>& continuations, int64_t piece,
                                        int64_t* fed) {
  check_vocab(model.config());
  piece = std::max<int64_t>(1, piece);
  std::vector<int32_t> tk;
  std::vector<float> logits, last;
  start(model, last);
  feed(model, prefix.data(), prefix.size(), piece, last, tk, logits);
  if (fed) *fed += 1 + static_cast<int64_t>(prefix.size());
  return score_forks(model, last, continuations, piece, fed);
}

std::vector<double> score_continuations(MemMamba<float>& model, std::span<const uint8_t> prefix,
                                        const std::vector<std::vector<uint8_t>>& continuations, int64_t piece,
                                        int64_t* fed) {
  CpuStreamModel s(model);
  return score_continuations(s, prefix, continuations, piece, fed);
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

// REF then each ALT, as tokens.
std::vector<std::vector<uint8_t>> alleles_of(const LocalWindow& w) {
  std::vector<std::vector<uint8_t>> alleles;
  alleles.push_back(tokens_of(w.ref));
  for (const auto& a : w.alts) alleles.push_back(tokens_of(a));
  return alleles;
}

// The forward continuations: allele + downstream, REF first.
std::vector<std::vector<uint8_t>> forward_continuations(const std::vector<std::vector<uint8_t>>& alleles,
                                                        const std::vector<uint8_t>& down) {
  std::vector<std::vector<uint8_t>> conts;
  for (const auto& a : alleles) conts.push_back(concat(a, down));
  return conts;
}

std::vector<double> differences(const std::vector<double>& sums) {  // ALT − REF
  std::vector<double> llr(sums.size() - 1);
  for (size_t k = 0; k < llr.size(); ++k) llr[k] = sums[k + 1] - sums[0];
  return llr;
}

}  // namespace

std::vector<double> score_fork(const StreamModel& stream, std::span<const float> last, const LocalWindow& w,
                               int64_t piece, int64_t* fed) {
  return differences(score_forks(stream, last, forward_continuations(alleles_of(w), tokens_of(w.downstream)), piece, fed));
}

std::vector<double> score_window(StreamModel& model, const LocalWindow& w, VepStrand strand, int64_t piece,
                                 int64_t* fed) {
  const auto up = tokens_of(w.upstream), down = tokens_of(w.downstream);
  const auto alleles = alleles_of(w);

  // Forward: prefix = upstream, continuation = allele + downstream.
  std::vector<double> llr = differences(score_continuations(model, up, forward_continuations(alleles, down), piece, fed));
  if (strand == VepStrand::fwd) return llr;

  // Reverse: prefix = rc(downstream), continuation = rc(upstream + allele) = rc(allele) + rc(upstream).
  std::vector<uint8_t> rdown = down;
  io::reverse_complement(rdown.data(), rdown.size());
  std::vector<std::vector<uint8_t>> conts;
  for (const auto& a : alleles) {
    auto c = concat(up, a);
    io::reverse_complement(c.data(), c.size());
    conts.push_back(std::move(c));
  }
  const auto r = differences(score_continuations(model, rdown, conts, piece, fed));
  for (size_t k = 0; k < llr.size(); ++k) llr[k] = 0.5 * (llr[k] + r[k]);
  return llr;
}

std::vector<double> score_window(MemMamba<float>& model, const LocalWindow& w, VepStrand strand, int64_t piece,
                                 int64_t* fed) {
  CpuStreamModel s(model);
  return score_window(s, w, strand, piece, fed);
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
  std::unique_ptr<StreamModel> fork;   // stream mode: the contig's stream at the variant
  std::vector<float> last;             // stream mode: its last logits row
  std::vector<double> llr;             // per scored ALT
  int64_t fed = 0;
};

std::string header_text(std::string s) {
  for (char& c : s)
    if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  return s;
}

// Stream mode: the one pass over a contig, advanced from variant to variant.
class ContigStream {
public:
  ContigStream(StreamModel& model, const io::IndexedFasta& fasta, int64_t piece)
      : model_(model), fasta_(fasta), piece_(std::max<int64_t>(1, piece)) {}
  const std::string& contig() const { return contig_; }
  int64_t at() const { return at_; }
  // A new pass over `contig`: the stream holds BOS.
  void begin(const std::string& contig, int64_t* fed) {
    contig_ = contig;
    at_ = 0;
    start(model_, last_);
    *fed += 1;
  }
  // Feeds ref[at, p), in pieces read from the FASTA: the stream then holds BOS + ref[0, p).
  void advance_to(int64_t p, int64_t* fed) {
    while (at_ < p) {
      const int64_t m = std::min(p - at_, piece_);
      const std::string letters = fasta_.fetch(contig_, at_, at_ + m);
      if (static_cast<int64_t>(letters.size()) != m)
        throw Error("cannot read " + contig_ + ":" + std::to_string(at_ + 1) + "-" + std::to_string(at_ + m), fasta_.path());
      tokens_.resize(letters.size());
      io::encode(letters.data(), letters.size(), tokens_.data());
      feed(model_, tokens_.data(), tokens_.size(), piece_, last_, tk_, logits_);
      at_ += m;
      *fed += m;
    }
  }
  std::unique_ptr<StreamModel> fork() const { return model_.fork(); }
  const std::vector<float>& last() const { return last_; }

private:
  StreamModel& model_;
  const io::IndexedFasta& fasta_;
  int64_t piece_;
  std::string contig_;
  int64_t at_ = 0;
  std::vector<float> last_, logits_;
  std::vector<uint8_t> tokens_;
  std::vector<int32_t> tk_;
};

// Waits for a task group's tasks when leaving a scope early (an exception on the main thread),
// so no task outlives the jobs it writes to.
struct WaitOnExit {
  tbb::task_group& g;
  ~WaitOnExit() {
    try {
      g.wait();
    } catch (...) {  // the first exception is already on its way
    }
  }
};

}  // namespace

VepStats vep(StreamModel& model, const VepOptions& o, const Reporter& rep) {
  const bool all = o.upstream == kUpstreamAll;
  if (!all && (o.upstream < 0 || o.upstream > 1000000)) throw UsageError("--upstream wants 0 .. 1000000 bases, or all");
  if (o.downstream < 0 || o.downstream > 1000000) throw UsageError("--downstream wants 0 .. 1000000 bases");
  const bool stream = o.mode == VepMode::stream;
  if (stream && !all)
    throw UsageError("--mode stream scores with the whole contig prefix as context: it needs --upstream all");
  if (stream && o.strand != VepStrand::fwd)
    throw UsageError("--mode stream scores the forward strand only (--strand both reads each window from its "
                     "downstream end); use --mode window or a finite --upstream");
  check_vocab(model.config());

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

  const std::string rule = "U=" + (all ? std::string("all") : std::to_string(o.upstream)) +
                           ",W=" + std::to_string(o.downstream) +
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
  const int64_t piece = std::max<int64_t>(1, o.piece);
  ContigStream cs(model, fasta, piece);
  std::set<std::string> streamed;  // contigs whose pass is over
  std::string last_where;          // the last record streamed, for the unsorted-input message
  auto score_job = [&](Job& j) {
    if (j.fork) {
      j.llr = score_fork(*j.fork, j.last, j.window, piece, &j.fed);
      j.fork.reset();
      j.last = {};
    } else if (model.concurrent()) {
      const auto s = model.fork();  // its own stream, reset by score_window
      j.llr = score_window(*s, j.window, o.strand, piece, &j.fed);
    } else {
      j.llr = score_window(model, j.window, o.strand, piece, &j.fed);
    }
  };
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
    tbb::task_group tasks;  // stream mode: forks scored while the contig's pass goes on
    WaitOnExit wait_on_exit{tasks};
    // Prepare in order (FASTA reads, REF checks, skip reasons; stream mode: the contig's pass
    // up to each variant and the fork there).
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
      const int64_t s = all ? 0 : std::max<int64_t>(0, p - o.upstream);
      const int64_t e = std::min<int64_t>(len, end + o.downstream);
      j.window.ref = r.ref;
      j.window.downstream = end < e ? fasta.fetch(name, end, e) : "";
      if (!stream) {
        j.window.upstream = s < p ? fasta.fetch(name, s, p) : "";
        continue;
      }
      // Stream mode: the records to score come sorted by position within each contig, each
      // contig in one block.
      if (name != cs.contig()) {
        if (streamed.count(name))
          throw Error("the VCF is not sorted: " + r.where() + " comes after records of other contigs (last " +
                          last_where + "); --upstream all streams each contig once: sort the VCF "
                          "(bcftools sort) or use --mode window (which costs the contig prefix per variant)",
                      reader.path(), r.line);
        if (!cs.contig().empty()) streamed.insert(cs.contig());
        cs.begin(name, &stats.fed);
        ++stats.contigs_streamed;
      } else if (p < cs.at()) {
        throw Error("the VCF is not sorted: " + r.where() + " comes after " + last_where +
                        "; --upstream all streams each contig once: sort the VCF (bcftools sort) or use "
                        "--mode window (which costs the contig prefix per variant)",
                    reader.path(), r.line);
      }
      last_where = r.where();
      cs.advance_to(p, &stats.fed);
      j.fork = cs.fork();
      j.last = cs.last();
      if (model.concurrent()) tasks.run([&score_job, &j] { score_job(j); });
      else score_job(j);
    }
    // Score (window mode: in parallel, each record on its own stream).
    if (stream) {
      tasks.wait();
    } else if (model.concurrent()) {
      tbb::parallel_for(size_t(0), jobs.size(), [&](size_t i) {
        Job& j = jobs[i];
        if (!j.record_skip.empty() || j.window.alts.empty()) return;
        score_job(j);
      });
    } else {
      for (Job& j : jobs)
        if (j.record_skip.empty() && !j.window.alts.empty()) score_job(j);
    }
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

VepStats vep(MemMamba<float>& model, const VepOptions& o, const Reporter& rep) {
  CpuStreamModel s(model);
  return vep(s, o, rep);
}

}  // namespace mm::pipelines
