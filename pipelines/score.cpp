// memmamba score: see score.hpp for the value definitions and the streaming, N and strand rules.
#include "pipelines/score.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string_view>

#include "io/atomic_file.hpp"
#include "io/bed.hpp"
#include "io/bedgraph.hpp"
#include "io/bigwig.hpp"
#include "io/fasta.hpp"
#include "io/region.hpp"
#include "io/tokenizer.hpp"

namespace mm::pipelines {

namespace {
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
}

// ---------------------------------------------------------------------------------------------
// StreamScorer

StreamScorer::StreamScorer(StreamModel& model, int64_t piece)
    : model_(&model), piece_(std::max<int64_t>(1, piece)) {
  start();
}

StreamScorer::StreamScorer(MemMamba<float>& model, int64_t piece)
    : owned_(std::make_unique<CpuStreamModel>(model)), model_(owned_.get()), piece_(std::max<int64_t>(1, piece)) {
  start();
}

void StreamScorer::start() {
  if (model_->config().vocab <= io::tok::BOS)
    throw Error("the model's vocabulary (" + std::to_string(model_->config().vocab) +
                ") has no BOS token: not a DNA model of this format");
  reset();
}

void StreamScorer::reset() {
  model_->reset();
  started_ = false;
  fed_ = 0;
}

void StreamScorer::run(const int32_t* tk, int64_t n) {
  logits_.resize(static_cast<size_t>(n) * static_cast<size_t>(model_->config().vocab));
  model_->forward(tk, n, logits_.data());
}

void row_values(const float* row, uint8_t token, float* logp, float* entropy) {
  const bool base = token >= io::tok::A && token <= io::tok::T;
  if (!base) {
    if (logp) *logp = kNaN;
    if (entropy) *entropy = kNaN;
    return;
  }
  const float* l = row + io::tok::A;  // A C G T
  double m = l[0];
  for (int k = 1; k < 4; ++k) m = std::max(m, double(l[k]));
  double s = 0, sl = 0;
  double e[4];
  for (int k = 0; k < 4; ++k) {
    e[k] = std::exp(double(l[k]) - m);
    s += e[k];
  }
  const double log_z = m + std::log(s);
  if (logp) *logp = static_cast<float>(double(l[token - io::tok::A]) - log_z);
  if (entropy) {
    for (int k = 0; k < 4; ++k) sl += e[k] * double(l[k]);
    *entropy = static_cast<float>(log_z - sl / s);  // −Σ p ln p = ln Z − Σ p l
  }
}

void StreamScorer::feed(const uint8_t* tokens, size_t n, float* logp, float* entropy) {
  const size_t V = static_cast<size_t>(model_->config().vocab);
  size_t done = 0;
  while (done < n) {
    const size_t m = std::min(n - done, static_cast<size_t>(piece_));
    const bool bos = !started_;
    tk_.clear();
    if (bos) tk_.push_back(io::tok::BOS);  // every stream starts with BOS
    for (size_t i = 0; i < m; ++i) tk_.push_back(tokens[done + i]);
    run(tk_.data(), static_cast<int64_t>(tk_.size()));
    for (size_t i = 0; i < m; ++i) {
      // The value of token i comes from the logits of the token before it.
      const float* row = bos ? logits_.data() + i * V
                             : (i == 0 ? pending_.data() : logits_.data() + (i - 1) * V);
      row_values(row, tokens[done + i], logp ? logp + done + i : nullptr,
                 entropy ? entropy + done + i : nullptr);
    }
    pending_.assign(logits_.end() - static_cast<std::ptrdiff_t>(V), logits_.end());
    started_ = true;
    done += m;
    fed_ += static_cast<int64_t>(m);
  }
}

// ---------------------------------------------------------------------------------------------
// Region lists

std::vector<std::string> split_region_list(const std::string& text) {
  std::vector<std::string> out;
  std::string cur;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == ',') {
      // Thousands separator: exactly three digits follow, then '-', ',' or the end.
      bool thousands = true;
      for (size_t k = 1; k <= 3 && thousands; ++k)
        thousands = i + k < text.size() && std::isdigit(static_cast<unsigned char>(text[i + k]));
      if (thousands) {
        const size_t after = i + 4;
        thousands = after == text.size() || text[after] == '-' || text[after] == ',';
      }
      // A thousands group only makes sense after a digit of a position (after ':').
      if (thousands)
        thousands = !cur.empty() && cur.find(':') != std::string::npos &&
                    std::isdigit(static_cast<unsigned char>(cur.back()));
      if (!thousands) {
        if (!cur.empty()) out.push_back(cur);
        cur.clear();
        continue;
      }
    }
    cur += c;
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Output sinks: positions of one stream arrive in increasing order, piece by piece.

namespace {

std::string sanitize(std::string s) {
  for (char& c : s)
    if (c == '"') c = '\'';
    else if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  return s;
}

const char* value_name(ScoreValue v) {
  return v == ScoreValue::logp ? "logp" : v == ScoreValue::entropy ? "entropy" : "logp,entropy";
}

class Sink {
public:
  virtual ~Sink() = default;
  virtual void add(const std::string& contig, int64_t beg0, std::string_view letters,
                   const float* logp, const float* entropy, size_t n) = 0;
  virtual void close() = 0;
};

// bedGraph and bigWig carry one value per base: the chosen one of logp and entropy.
template <typename Writer>
class TrackSink final : public Sink {
public:
  template <typename... Args>
  TrackSink(const ScoreOptions& o, Args&&... writer_args)
      : use_logp_(o.value == ScoreValue::logp), w_(std::forward<Args>(writer_args)...) {}
  void add(const std::string& contig, int64_t beg0, std::string_view, const float* logp,
           const float* entropy, size_t n) override {
    w_.add(contig, beg0, std::span<const float>(use_logp_ ? logp : entropy, n));
  }
  void close() override { w_.close(); }

private:
  bool use_logp_;
  Writer w_;
};

std::unique_ptr<Sink> bedgraph_sink(const ScoreOptions& o) {
  // The writer quotes the name; the provenance goes into the track line's description (a
  // ##-style header line is not valid bedGraph).
  return std::make_unique<TrackSink<io::BedGraphWriter>>(
      o, o.output,
      io::BedGraphOptions{true,
                          std::string("memmamba ") + value_name(o.value) + "\" description=\"" +
                              sanitize("memmamba " + o.version + ": " + o.command_line +
                                       (o.model.empty() ? "" : " (model " + o.model + ")")),
                          true});
}

// TSV: a '#' header (provenance, then the column names), one line per base, "." = no value.
class TsvSink final : public Sink {
public:
  explicit TsvSink(const ScoreOptions& o) : path_(o.output), value_(o.value) {
    if (path_ != "-") file_.emplace(path_);
    buf_ = "# memmamba " + o.version + "\n# command: " + sanitize(o.command_line) +
           (o.model.empty() ? "" : "\n# model: " + sanitize(o.model)) + "\n# values: natural log, over the A/C/G/T prediction of each base from the bases "
           "before it (strand " +
           std::string(o.strand == ScoreStrand::fwd ? "fwd" : o.strand == ScoreStrand::rev ? "rev" : "both: mean of fwd and rev") +
           "); '.' = no value (N)\n#chrom\tstart\tend\tbase";
    if (value_ != ScoreValue::entropy) buf_ += "\tlogp";
    if (value_ != ScoreValue::logp) buf_ += "\tentropy";
    buf_ += "\n";
  }
  void add(const std::string& contig, int64_t beg0, std::string_view letters, const float* logp,
           const float* entropy, size_t n) override {
    for (size_t i = 0; i < n; ++i) {
      const int64_t p = beg0 + static_cast<int64_t>(i);
      buf_ += contig;
      buf_ += '\t';
      buf_ += std::to_string(p);
      buf_ += '\t';
      buf_ += std::to_string(p + 1);
      buf_ += '\t';
      buf_ += i < letters.size() ? letters[i] : '.';
      if (value_ != ScoreValue::entropy) number(logp[i]);
      if (value_ != ScoreValue::logp) number(entropy[i]);
      buf_ += '\n';
      if (buf_.size() > (1u << 20)) flush();
    }
  }
  void close() override {
    flush();
    if (file_) file_->commit();
    else if (std::fflush(stdout) != 0) throw Error("cannot write TSV to stdout", "-");
  }

private:
  void number(float v) {
    buf_ += '\t';
    if (std::isnan(v)) {
      buf_ += '.';
      return;
    }
    char num[32];
    auto res = std::to_chars(num, num + sizeof num, v);
    buf_.append(num, res.ptr);
  }
  void flush() {
    if (file_) file_->write(buf_);
    else if (std::fwrite(buf_.data(), 1, buf_.size(), stdout) != buf_.size())
      throw Error("cannot write TSV to stdout", "-");
    buf_.clear();
  }
  std::string path_;
  ScoreValue value_;
  std::optional<io::AtomicFile> file_;
  std::string buf_;
};

// Per-base (logp, entropy) pairs of the reverse strand of one region, written right to left and
// read back left to right: an unlinked temporary file, so memory stays constant whatever the length.
class Spill {
public:
  Spill() {
    const char* dir = std::getenv("TMPDIR");
    std::string tmpl = std::string(dir && *dir ? dir : "/tmp") + "/memmamba-score.XXXXXX";
    fd_ = ::mkstemp(tmpl.data());
    if (fd_ < 0)
      throw Error(std::string("cannot create a temporary file for reverse-strand values: ") +
                  std::strerror(errno), tmpl);
    ::unlink(tmpl.c_str());
  }
  ~Spill() {
    if (fd_ >= 0) ::close(fd_);
  }
  Spill(const Spill&) = delete;
  Spill& operator=(const Spill&) = delete;

  void write(int64_t index, const float* logp, const float* entropy, size_t n) {
    buf_.resize(2 * n);
    for (size_t i = 0; i < n; ++i) {
      buf_[2 * i] = logp[i];
      buf_[2 * i + 1] = entropy[i];
    }
    io(true, index, n);
  }
  void read(int64_t index, float* logp, float* entropy, size_t n) {
    buf_.resize(2 * n);
    io(false, index, n);
    for (size_t i = 0; i < n; ++i) {
      logp[i] = buf_[2 * i];
      entropy[i] = buf_[2 * i + 1];
    }
  }

private:
  void io(bool write, int64_t index, size_t n) {
    char* p = reinterpret_cast<char*>(buf_.data());
    size_t left = n * 2 * sizeof(float);
    off_t off = static_cast<off_t>(index) * 2 * static_cast<off_t>(sizeof(float));
    while (left > 0) {
      ssize_t got = write ? ::pwrite(fd_, p, left, off) : ::pread(fd_, p, left, off);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0)
        throw Error(std::string("temporary file of reverse-strand values: ") +
                    (got < 0 ? std::strerror(errno) : "short read") + " (disk full? set TMPDIR)");
      p += got;
      off += got;
      left -= static_cast<size_t>(got);
    }
  }
  int fd_ = -1;
  std::vector<float> buf_;
};

struct Job {
  std::string contig;
  int64_t beg = 0, end = 0, length = 0;
};

struct Ctx {
  Ctx(const ScoreOptions& o_, const Reporter& rep_, StreamScorer& sc_, Sink& sink_, ScoreStats& stats_)
      : o(o_), rep(rep_), sc(sc_), sink(sink_), stats(stats_) {}
  const ScoreOptions& o;
  const Reporter& rep;
  StreamScorer& sc;
  Sink& sink;
  ScoreStats& stats;
  double total = 0, done = 0;
  std::vector<uint8_t> tokens;
  std::vector<float> lp, en, lp2, en2;

  void progress(int64_t n) {
    done += double(n);
    if (total > 0) rep.advance(done, total, "bases");
  }
  void encode(std::string_view s, const std::string& file, const std::string& contig, int64_t beg0) {
    tokens.resize(s.size());
    const size_t bad = io::encode(s.data(), s.size(), tokens.data());
    if (bad != io::npos)
      throw Error(contig + " at position " + std::to_string(beg0 + int64_t(bad) + 1) +
                  " holds '" + std::string(1, s[bad]) + "', which is not a nucleotide code", file);
    lp.resize(s.size());
    en.resize(s.size());
  }
  void emit(const std::string& contig, int64_t beg0, std::string_view letters, const float* l,
            const float* e) {
    const size_t n = letters.size();
    sink.add(contig, beg0, letters, l, e, n);
    stats.bases += int64_t(n);
    for (size_t i = 0; i < n; ++i) stats.missing += std::isnan(l[i]) ? 1 : 0;
  }
};

// Forward strand of [beg, end) after `context` bases before it, fetched piece by piece. `on_piece`
// gets each region piece with its values; context pieces are fed without output.
template <typename OnPiece>
void forward_indexed(Ctx& c, const io::IndexedFasta& fa, const Job& j, OnPiece on_piece) {
  c.sc.reset();
  const int64_t cbeg = std::max<int64_t>(0, j.beg - c.o.context);
  for (int64_t p = cbeg; p < j.end;) {
    int64_t q = std::min(j.end, p + c.o.piece);
    if (p < j.beg) q = std::min(q, j.beg);  // context pieces stop at the region start
    const std::string s = fa.fetch(j.contig, p, q);
    c.encode(s, fa.path(), j.contig, p);
    const bool region = p >= j.beg;
    c.sc.feed(c.tokens.data(), c.tokens.size(), region ? c.lp.data() : nullptr,
              region ? c.en.data() : nullptr);
    if (region) on_piece(p, std::string_view(s));
    c.progress(q - p);
    p = q;
  }
}

// Reverse strand of [beg, end) after `context` bases beyond its end: the reverse complement is
// streamed from the right, and values go to the spill file at their forward coordinates.
void reverse_indexed(Ctx& c, const io::IndexedFasta& fa, const Job& j, Spill& spill) {
  c.sc.reset();
  const int64_t cend = std::min(j.length, j.end + c.o.context);
  for (int64_t q = cend; q > j.beg;) {
    int64_t p = std::max(j.beg, q - c.o.piece);
    if (q > j.end) p = std::max(p, j.end);  // context pieces stop at the region end
    const std::string s = fa.fetch(j.contig, p, q);
    c.encode(s, fa.path(), j.contig, p);
    io::reverse_complement(c.tokens.data(), c.tokens.size());
    const bool region = p < j.end;
    c.sc.feed(c.tokens.data(), c.tokens.size(), region ? c.lp.data() : nullptr,
              region ? c.en.data() : nullptr);
    if (region) {
      std::reverse(c.lp.begin(), c.lp.end());  // back to forward order: positions p..q-1
      std::reverse(c.en.begin(), c.en.end());
      spill.write(p - j.beg, c.lp.data(), c.en.data(), c.lp.size());
    }
    c.progress(q - p);
    q = p;
  }
}

void score_job(Ctx& c, const io::IndexedFasta& fa, const Job& j) {
  c.stats.streams++;
  if (c.o.strand == ScoreStrand::fwd) {
    forward_indexed(c, fa, j, [&](int64_t p, std::string_view s) {
      c.emit(j.contig, p, s, c.lp.data(), c.en.data());
    });
    c.stats.fed += c.sc.fed();
    return;
  }
  Spill spill;
  reverse_indexed(c, fa, j, spill);
  c.stats.fed += c.sc.fed();
  if (c.o.strand == ScoreStrand::rev) {
    for (int64_t p = j.beg; p < j.end;) {
      const int64_t q = std::min(j.end, p + c.o.piece);
      const std::string s = fa.fetch(j.contig, p, q);
      c.lp.resize(s.size());
      c.en.resize(s.size());
      spill.read(p - j.beg, c.lp.data(), c.en.data(), s.size());
      c.emit(j.contig, p, s, c.lp.data(), c.en.data());
      p = q;
    }
    return;
  }
  // Both strands: the mean of the forward value and the reverse value at each position.
  forward_indexed(c, fa, j, [&](int64_t p, std::string_view s) {
    const size_t n = s.size();
    c.lp2.resize(n);
    c.en2.resize(n);
    spill.read(p - j.beg, c.lp2.data(), c.en2.data(), n);
    for (size_t i = 0; i < n; ++i) {
      c.lp[i] = 0.5f * (c.lp[i] + c.lp2[i]);  // NaN (N) on either strand stays NaN
      c.en[i] = 0.5f * (c.en[i] + c.en2[i]);
    }
    c.emit(j.contig, p, s, c.lp.data(), c.en.data());
  });
  c.stats.fed += c.sc.fed();
}

// Forward whole contigs of any FASTA (gzip, stdin), record by record, never holding a contig.
void score_streaming(Ctx& c) {
  io::FastaReader r(c.o.fasta);
  while (r.next_record()) {
    c.sc.reset();
    c.stats.streams++;
    int64_t pos = 0;
    for (;;) {
      std::string_view s = r.read_chunk(static_cast<size_t>(c.o.piece));
      if (s.empty()) break;
      c.encode(s, r.path(), r.name(), pos);
      c.sc.feed(c.tokens.data(), c.tokens.size(), c.lp.data(), c.en.data());
      c.emit(r.name(), pos, s, c.lp.data(), c.en.data());
      pos += int64_t(s.size());
    }
    c.stats.fed += c.sc.fed();
    c.rep.say("scored " + r.name() + " (" + std::to_string(pos) + " bases)");
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------

ScoreStats score(MemMamba<float>& model, const ScoreOptions& options, const Reporter& rep) {
  CpuStreamModel cpu(model);
  return score(cpu, options, rep);
}

ScoreStats score(StreamModel& model, const ScoreOptions& options, const Reporter& rep) {
  ScoreOptions o = options;
  if (o.value == ScoreValue::both && o.format != ScoreFormat::tsv)
    throw UsageError("--value both writes two columns: use -O tsv");
  if (o.context < 0) throw UsageError("--context wants a number of bases >= 0");
  if (o.piece <= 0) throw UsageError("--piece wants a positive number of bases");
  if (o.format == ScoreFormat::bigwig && o.output == "-")
    throw UsageError("bigWig cannot be written to stdout: give -o FILE");

  // Devices and pipes (/dev/null, /dev/stdout, a FIFO) are written in place, as stdout is: the
  // atomic temp-file-and-rename would replace the device node itself.
  if (o.output != "-") {
    struct stat st{};
    const bool special = o.output.rfind("/dev/", 0) == 0 || o.output.rfind("/proc/", 0) == 0 ||
                         (::stat(o.output.c_str(), &st) == 0 && !S_ISREG(st.st_mode));
    if (special) {
      if (o.format == ScoreFormat::bigwig)
        throw UsageError("bigWig needs a regular file to write (seekable), not " + o.output);
      if (!std::freopen(o.output.c_str(), "w", stdout))
        throw Error(std::string("cannot open output: ") + std::strerror(errno), o.output);
      o.output = "-";
    }
  }

  const bool whole = o.regions.empty() && o.regions_bed.empty();
  const bool indexed = !whole || o.strand != ScoreStrand::fwd || o.format == ScoreFormat::bigwig;
  if (indexed && o.fasta == "-")
    throw UsageError("the reference comes from stdin, which allows forward scoring of whole contigs "
                     "to bedGraph or TSV only: regions, --strand rev/both and bigWig need an "
                     "indexed FASTA file");

  ScoreStats stats;
  StreamScorer sc(model, o.piece);
  if (!indexed) {
    // Open the input first: a missing FASTA creates no output.
    if (o.fasta != "-") {
      io::FastaReader probe(o.fasta);
    }
    std::unique_ptr<Sink> sink;
    if (o.format == ScoreFormat::tsv) sink = std::make_unique<TsvSink>(o);
    else sink = bedgraph_sink(o);
    Ctx c(o, rep, sc, *sink, stats);
    score_streaming(c);
    sink->close();
    return stats;
  }

  io::FastaOptions fo;
  fo.reporter = rep;
  io::IndexedFasta fa(o.fasta, fo);
  std::map<std::string, size_t> order;
  for (size_t i = 0; i < fa.contigs().size(); ++i) order[fa.contigs()[i]] = i;

  // Every region is checked before anything is written.
  std::vector<Job> jobs;
  std::vector<std::string> texts;
  auto add_job = [&](const io::Region& r, const std::string& text) {
    const int64_t len = fa.length(r.contig);
    Job j{r.contig, r.beg0, r.end0 < 0 ? len : r.end0, len};
    if (j.end > j.beg) {
      jobs.push_back(j);
      texts.push_back(text);
    }
  };
  if (whole)
    for (const auto& name : fa.contigs()) add_job(io::Region{name, 0, -1, name}, name);
  for (const auto& t : o.regions) add_job(io::resolve(io::parse_region(t), fa), t);
  if (!o.regions_bed.empty()) {
    io::BedReader bed(o.regions_bed);
    io::BedRecord rec;
    while (bed.next(rec)) {
      io::Region r{rec.contig, rec.beg, rec.end,
                   rec.contig + ":" + std::to_string(rec.beg + 1) + "-" + std::to_string(rec.end)};
      io::Region resolved;
      try {
        resolved = io::resolve(r, fa);
      } catch (const Error& e) {
        throw Error(std::string(e.what()) + " (reference " + fa.path() + ")", bed.path(), rec.line);
      }
      add_job(resolved, bed.path() + ":" + std::to_string(rec.line));
    }
  }

  std::unique_ptr<Sink> sink;
  if (o.format == ScoreFormat::bigwig) {
    // bigWig wants contigs in header order and increasing, non-overlapping intervals.
    std::vector<size_t> idx(jobs.size());
    for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
    std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) {
      return std::pair(order[jobs[a].contig], jobs[a].beg) < std::pair(order[jobs[b].contig], jobs[b].beg);
    });
    std::vector<Job> sorted;
    for (size_t k = 0; k < idx.size(); ++k) {
      if (k > 0 && jobs[idx[k]].contig == sorted.back().contig && jobs[idx[k]].beg < sorted.back().end)
        throw Error("bigWig output needs regions that do not overlap: '" + texts[idx[k - 1]] +
                    "' and '" + texts[idx[k]] + "' do (write bedGraph or TSV instead)");
      sorted.push_back(jobs[idx[k]]);
    }
    jobs = std::move(sorted);
    std::vector<std::pair<std::string, int64_t>> contigs;
    for (const auto& name : fa.contigs())
      if (fa.length(name) > 0) contigs.emplace_back(name, fa.length(name));
    sink = std::make_unique<TrackSink<io::BigWigWriter>>(o, o.output, std::move(contigs));
  } else if (o.format == ScoreFormat::tsv) {
    sink = std::make_unique<TsvSink>(o);
  } else {
    sink = bedgraph_sink(o);
  }

  Ctx c(o, rep, sc, *sink, stats);
  for (const auto& j : jobs) {
    const int64_t fwd_ctx = std::min(o.context, j.beg);
    const int64_t rev_ctx = std::min(o.context, j.length - j.end);
    if (o.strand != ScoreStrand::rev) c.total += double(j.end - j.beg + fwd_ctx);
    if (o.strand != ScoreStrand::fwd) c.total += double(j.end - j.beg + rev_ctx);
  }
  for (const auto& j : jobs) score_job(c, fa, j);
  sink->close();
  return stats;
}

}  // namespace mm::pipelines
