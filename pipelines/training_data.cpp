#include "pipelines/training_data.hpp"

#include <algorithm>
#include <limits>
#include <random>
#include <set>

#include "io/bed.hpp"
#include "io/fasta.hpp"
#include "io/region.hpp"
#include "io/tokenizer.hpp"

namespace mm::pipelines {

namespace {

using Span = std::pair<int64_t, int64_t>;
using Spans = std::vector<Span>;
constexpr int64_t kToEnd = std::numeric_limits<int64_t>::max();

std::string canonical(std::string name) {
  if (name.rfind("chr", 0) == 0 && name.size() > 3) name = name.substr(3);
  if (name == "M") name = "MT";
  return name;
}

bool is_base(uint8_t t) { return t >= io::tok::A && t <= io::tok::T; }

Spans merged(Spans s) {
  std::sort(s.begin(), s.end());
  Spans out;
  for (const auto& x : s) {
    if (x.second <= x.first) continue;
    if (!out.empty() && x.first <= out.back().second) out.back().second = std::max(out.back().second, x.second);
    else out.push_back(x);
  }
  return out;
}

Spans clipped(const Spans& s, int64_t len) {
  Spans out;
  for (auto [b, e] : s) {
    b = std::max<int64_t>(0, b);
    e = std::min(e, len);
    if (b < e) out.push_back({b, e});
  }
  return out;
}

// a − b, both merged.
Spans subtract(const Spans& a, const Spans& b) {
  Spans out;
  size_t j = 0;
  for (auto [beg, end] : a) {
    while (j < b.size() && b[j].second <= beg) ++j;
    int64_t cur = beg;
    for (size_t k = j; k < b.size() && b[k].first < end; ++k) {
      if (b[k].first > cur) out.push_back({cur, b[k].first});
      cur = std::max(cur, b[k].second);
    }
    if (cur < end) out.push_back({cur, end});
  }
  return out;
}

bool overlaps(const Spans& s, int64_t beg, int64_t end) {
  auto it = std::upper_bound(s.begin(), s.end(), Span{beg, kToEnd});
  if (it != s.begin() && std::prev(it)->second > beg) return true;
  return it != s.end() && it->first < end;
}

struct RegionSet {
  std::map<std::string, Spans> by_contig;  // canonical names
  std::map<std::string, std::string> written;  // canonical -> as the user wrote it
  void add(const std::string& contig, int64_t b, int64_t e) {
    by_contig[canonical(contig)].push_back({b, e});
    written.emplace(canonical(contig), contig);
  }
  void finish() {
    for (auto& [k, v] : by_contig) v = merged(v);
  }
  const Spans* find(const std::string& contig) const {
    auto it = by_contig.find(canonical(contig));
    return it == by_contig.end() ? nullptr : &it->second;
  }
  bool empty() const { return by_contig.empty(); }
};

RegionSet read_bed_set(const std::string& path) {
  RegionSet s;
  if (path.empty()) return s;
  for (const auto& r : io::read_bed(path)) s.add(r.contig, r.beg, r.end);
  s.finish();
  return s;
}

class Loader {
public:
  Loader(const DataOptions& o, const Reporter& rep) : o_(o), rep_(rep) {
    include_ = read_bed_set(o.regions_bed);
    exclude_ = read_bed_set(o.exclude_bed);
    valid_ = read_bed_set(o.valid_bed);
    for (const auto& text : o.valid_regions) {
      io::Region r = io::parse_region(text);
      valid_.add(r.contig, r.beg0, r.end0 < 0 ? kToEnd : r.end0);
      explicit_valid_.push_back(r);
    }
    valid_.finish();
    for (const auto& c : o.valid_contigs) valid_contigs_.insert(canonical(c));
  }

  void fasta(const std::string& path) {
    io::FastaReader r(path);
    std::vector<uint8_t> tokens;
    while (r.next_record()) {
      tokens.clear();
      for (;;) {
        auto piece = r.read_chunk(size_t(1) << 22);
        if (piece.empty()) break;
        const size_t at = tokens.size();
        tokens.resize(at + piece.size());
        io::encode(piece.data(), piece.size(), tokens.data() + at);
      }
      contig(path, r.name(), tokens);
    }
  }

  void bam(const std::string& path) {
    io::BamReader r(path, o_.bam);
    for (const auto& c : r.contigs()) note_contig(c, -1);
    io::Read read;
    std::vector<uint8_t> train, valid;
    int64_t n_train = 0, n_valid = 0, n_dropped = 0;
    while (r.next(read)) {
      if (read.seq.empty()) continue;
      const int64_t beg = read.pos, end = read.pos + int64_t(read.seq.size());
      const bool placed = read.pos >= 0 && read.contig != "*";
      auto in = [&](const RegionSet& s) {
        const Spans* sp = placed ? s.find(read.contig) : nullptr;
        return sp && overlaps(*sp, beg, end);
      };
      if (placed && (valid_contigs_.count(canonical(read.contig)) || in(valid_))) {
        if (in(exclude_)) { ++n_dropped; continue; }
        append_read(valid, read.seq);
        ++n_valid;
      } else if (in(exclude_) || (!include_.empty() && !in(include_))) {
        ++n_dropped;
      } else {
        append_read(train, read.seq);
        ++n_train;
      }
    }
    rep_.say(path + ": " + std::to_string(n_train) + " training reads, " + std::to_string(n_valid) +
             " validation reads, " + std::to_string(n_dropped) + " outside the regions");
    push(ds_.train, path, "reads", train, 0, int64_t(train.size()));
    push(ds_.valid, path, "reads", valid, 0, int64_t(valid.size()));
  }

  DataSet finish() {
    for (const auto& [canon, spans] : valid_.by_contig)
      if (!seen_.count(canon))
        throw Error("validation region contig '" + valid_.written[canon] + "' is not in the inputs");
    for (const auto& c : valid_contigs_)
      if (!seen_.count(c)) throw Error("validation contig '" + c + "' is not in the inputs");
    int64_t ignored = 0;
    for (const RegionSet* s : {&include_, &exclude_})
      for (const auto& [canon, spans] : s->by_contig)
        if (!seen_.count(canon)) ignored += int64_t(spans.size());
    if (ignored) rep_.say(std::to_string(ignored) + " BED intervals on contigs absent from the inputs were ignored");
    for (const auto& iv : ds_.train)
      for (uint8_t t : iv.tokens) ds_.train_bases += is_base(t);
    for (const auto& iv : ds_.valid)
      for (uint8_t t : iv.tokens) ds_.valid_bases += is_base(t);
    if (ds_.train_bases == 0)
      throw Error(include_.empty() && valid_.empty() && valid_contigs_.empty()
                      ? "the inputs hold no A/C/G/T bases to train on (empty or all N?)"
                      : "no A/C/G/T bases are left to train on after the include, exclude and validation regions");
    ds_.summary = std::to_string(ds_.train.size()) + " training intervals (" + std::to_string(ds_.train_bases) +
                  " A/C/G/T bases), " + std::to_string(ds_.valid.size()) + " validation intervals (" +
                  std::to_string(ds_.valid_bases) + " bases)";
    return std::move(ds_);
  }

private:
  static void append_read(std::vector<uint8_t>& joined, const std::string& seq) {
    if (!joined.empty()) joined.push_back(io::tok::BOS);
    const size_t at = joined.size();
    joined.resize(at + seq.size());
    io::encode(seq.data(), seq.size(), joined.data() + at);
  }

  void note_contig(const std::string& name, int64_t len) {
    const std::string c = canonical(name);
    seen_.insert(c);
    if (len < 0) return;
    for (const auto& r : explicit_valid_)
      if (canonical(r.contig) == c && (r.beg0 >= len || r.end0 > len))
        throw Error("validation region " + r.text + " lies outside contig " + name + " (" + std::to_string(len) + " bases)");
  }

  void contig(const std::string& path, const std::string& name, const std::vector<uint8_t>& tokens) {
    const int64_t len = int64_t(tokens.size());
    note_contig(name, len);
    Spans base;
    if (include_.empty()) base = {{0, len}};
    else if (const Spans* s = include_.find(name)) base = clipped(*s, len);
    static const Spans none;
    const Spans* ex = exclude_.find(name);
    const Spans& exs = ex ? *ex : none;
    base = subtract(base, exs);
    Spans v;
    if (valid_contigs_.count(canonical(name))) v = {{0, len}};
    else if (const Spans* s = valid_.find(name)) v = clipped(*s, len);
    for (auto [b, e] : subtract(base, v)) split(ds_.train, path, name, tokens, b, e);
    for (auto [b, e] : subtract(v, exs)) split(ds_.valid, path, name, tokens, b, e);
  }

  // Pieces of [b, e) between runs of at least kGapRun non-bases.
  static void split(std::vector<Interval>& out, const std::string& path, const std::string& name,
                    const std::vector<uint8_t>& t, int64_t b, int64_t e) {
    int64_t start = b, run = 0;
    for (int64_t i = b; i < e; ++i) {
      if (is_base(t[size_t(i)])) {
        if (run >= kGapRun) {
          push(out, path, name, t, start, i - run);
          start = i;
        }
        run = 0;
      } else {
        ++run;
      }
    }
    push(out, path, name, t, start, run >= kGapRun ? e - run : e);
  }

  static void push(std::vector<Interval>& out, const std::string& path, const std::string& name,
                   const std::vector<uint8_t>& t, int64_t b, int64_t e) {
    if (e <= b) return;
    if (std::none_of(t.begin() + b, t.begin() + e, is_base)) return;
    Interval iv;
    iv.source = path;
    iv.contig = name;
    iv.beg0 = b;
    iv.end0 = e;
    iv.tokens.assign(t.begin() + b, t.begin() + e);
    out.push_back(std::move(iv));
  }

  const DataOptions& o_;
  const Reporter& rep_;
  RegionSet include_, exclude_, valid_;
  std::vector<io::Region> explicit_valid_;
  std::set<std::string> valid_contigs_, seen_;
  DataSet ds_;
};

bool is_alignment_file(const std::string& path) {
  for (const char* ext : {".bam", ".cram", ".sam", ".sam.gz"})
    if (path.size() >= std::string(ext).size() && path.compare(path.size() - std::string(ext).size(), std::string::npos, ext) == 0)
      return true;
  return false;
}

uint64_t splitmix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

int64_t non_bases(const uint8_t* t, int64_t n) {
  int64_t c = 0;
  for (int64_t i = 0; i < n; ++i) c += !is_base(t[i]);
  return c;
}

}  // namespace

DataSet load_training_data(const DataOptions& options, const Reporter& reporter) {
  if (options.inputs.empty()) throw UsageError("no input files (FASTA, BAM, CRAM or SAM)");
  Loader l(options, reporter);
  for (const auto& in : options.inputs) {
    if (is_alignment_file(in)) l.bam(in);
    else l.fasta(in);
  }
  return l.finish();
}

WindowSampler::WindowSampler(const std::vector<Interval>& intervals, WindowSpec spec)
    : intervals_(intervals), spec_(spec) {
  if (spec.length < 1) throw UsageError("--window must be at least 1");
  if (spec.stride < 1) throw UsageError("--stride must be at least 1");
  if (!(spec.max_n_fraction >= 0 && spec.max_n_fraction <= 1)) throw UsageError("--max-n must lie in [0, 1]");
  if (!(spec.rc_prob >= 0 && spec.rc_prob <= 1)) throw UsageError("--rc-prob must lie in [0, 1]");
  uint64_t total = 0;
  size_t longest = 0;
  for (size_t i = 0; i < intervals.size(); ++i) {
    const int64_t len = intervals[i].end0 - intervals[i].beg0;
    if (len > intervals[longest].end0 - intervals[longest].beg0) longest = i;
    if (len < spec.length) continue;
    total += uint64_t((len - spec.length) / spec.stride + 1);
    which_.push_back(i);
    cum_.push_back(total);
  }
  if (intervals.empty()) throw Error("no training intervals");
  if (which_.empty()) {
    const Interval& l = intervals[longest];
    throw Error("--window " + std::to_string(spec.length) + " is longer than every training interval; the longest is " +
                    l.contig + ":" + std::to_string(l.beg0 + 1) + "-" + std::to_string(l.end0) + " (" +
                    std::to_string(l.end0 - l.beg0) + " bases, after splitting at runs of N)",
                l.source);
  }
}

SampledWindow WindowSampler::sample(uint64_t index) const {
  std::mt19937_64 rng(splitmix(spec_.seed * 0x100000001b3ULL ^ splitmix(index)));
  const uint64_t total = cum_.back();
  const int64_t L = spec_.length;
  for (int attempt = 0; attempt < 1000; ++attempt) {
    const uint64_t u = rng() % total;
    const size_t k = size_t(std::upper_bound(cum_.begin(), cum_.end(), u) - cum_.begin());
    const uint64_t first = k == 0 ? 0 : cum_[k - 1];
    const Interval& iv = intervals_[which_[k]];
    const int64_t off = int64_t(u - first) * spec_.stride;
    const uint8_t* t = iv.tokens.data() + off;
    if (double(non_bases(t, L)) > spec_.max_n_fraction * double(L)) continue;
    SampledWindow w;
    w.interval = which_[k];
    w.beg0 = iv.beg0 + off;
    w.tokens.assign(t, t + L);
    w.reverse = double(rng() >> 11) * 0x1.0p-53 < spec_.rc_prob;
    if (w.reverse) io::reverse_complement(w.tokens.data(), w.tokens.size());
    return w;
  }
  throw Error("found no training window with at most " + std::to_string(spec_.max_n_fraction) +
              " N in 1000 draws: the training intervals are mostly N (raise --max-n or choose other regions)");
}

std::vector<SampledWindow> validation_windows(const std::vector<Interval>& valid, int64_t length,
                                              double max_n_fraction, int64_t max_windows) {
  struct Cand { size_t iv; int64_t off, len; };
  std::vector<Cand> c;
  for (size_t i = 0; i < valid.size(); ++i) {
    const int64_t n = int64_t(valid[i].tokens.size());
    for (int64_t off = 0; off < n; off += length) {
      const int64_t len = std::min(length, n - off);
      if (len < length && off > 0) break;  // a short tail of a tiled interval
      if (double(non_bases(valid[i].tokens.data() + off, len)) > max_n_fraction * double(len)) continue;
      c.push_back({i, off, len});
    }
  }
  std::vector<SampledWindow> out;
  const int64_t n = int64_t(c.size());
  const int64_t take = max_windows > 0 ? std::min(n, max_windows) : n;
  for (int64_t j = 0; j < take; ++j) {
    const Cand& x = c[size_t(j * n / take)];
    SampledWindow w;
    w.interval = x.iv;
    w.beg0 = valid[x.iv].beg0 + x.off;
    w.tokens.assign(valid[x.iv].tokens.begin() + x.off, valid[x.iv].tokens.begin() + x.off + x.len);
    out.push_back(std::move(w));
  }
  return out;
}

}  // namespace mm::pipelines
