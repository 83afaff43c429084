// memmamba embed: see embed.hpp for the definitions of the vectors and the streaming rule.
#include "pipelines/embed.hpp"

#include <algorithm>
#include <bit>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string_view>

#include "io/atomic_file.hpp"
#include "io/bed.hpp"
#include "io/fasta.hpp"
#include "io/region.hpp"
#include "io/tokenizer.hpp"
#include "kernels/rmsnorm.hpp"

namespace mm::pipelines {

static_assert(std::endian::native == std::endian::little, "npy output assumes a little-endian host");

// ---------------------------------------------------------------------------------------------
// StreamEmbedder

StreamEmbedder::StreamEmbedder(MemMamba<float>& model, int layer, EmbedPool pool, int64_t piece)
    : model_(model), layer_(layer), pool_(pool), piece_(std::max<int64_t>(1, piece)),
      state_(model.new_state(1)) {
  const Config& c = model_.config();
  if (c.vocab <= io::tok::BOS)
    throw Error("the model's vocabulary (" + std::to_string(c.vocab) +
                ") has no BOS token: not a DNA model of this format");
  if (layer_ != kFinalLayer && (layer_ < 0 || layer_ >= c.n_layer))
    throw UsageError("--layer " + std::to_string(layer_) + ": the model has " +
                     std::to_string(c.n_layer) + " layers (0.." + std::to_string(c.n_layer - 1) +
                     ", or 'final')");
  reset();
}

void StreamEmbedder::reset() {
  state_ = model_.new_state(1);
  started_ = false;
  fed_ = 0;
  sum_.assign(static_cast<size_t>(model_.config().d_model), 0.0);
  last_.clear();
}

void StreamEmbedder::feed(const uint8_t* tokens, size_t n) {
  const Config& c = model_.config();
  const size_t D = static_cast<size_t>(c.d_model), V = static_cast<size_t>(c.vocab);
  const int L = layer_ == kFinalLayer ? c.n_layer - 1 : layer_;
  const float* norm_w = model_.params().data() + model_.table().norm_f();
  size_t done = 0;
  while (done < n) {
    const size_t m = std::min(n - done, static_cast<size_t>(piece_));
    const bool bos = !started_;
    tk_.clear();
    if (bos) tk_.push_back(io::tok::BOS);  // every stream starts with BOS
    for (size_t i = 0; i < m; ++i) tk_.push_back(tokens[done + i]);
    const int64_t T = static_cast<int64_t>(tk_.size());
    logits_.resize(static_cast<size_t>(T) * V);
    Taps<float> taps;
    model_.forward(tk_.data(), 1, T, logits_.data(), &state_, &taps);
    const std::vector<float>& out = taps.layers.at(static_cast<size_t>(L)).output;
    const size_t skip = bos ? 1 : 0;  // the BOS row gets no part in the vector
    const float* rows = out.data() + skip * D;
    const int64_t M = static_cast<int64_t>(m);
    if (pool_ == EmbedPool::mean) {
      const float* src = rows;
      if (layer_ == kFinalLayer) {
        normed_.resize(m * D);
        cpu::rmsnorm_forward(normed_.data(), static_cast<float*>(nullptr), rows, norm_w, M,
                             static_cast<int64_t>(D), c.rms_eps);
        src = normed_.data();
      }
      for (size_t i = 0; i < m; ++i)
        for (size_t k = 0; k < D; ++k) sum_[k] += double(src[i * D + k]);
    } else {
      last_.assign(rows + (m - 1) * D, rows + m * D);
      if (layer_ == kFinalLayer) {
        normed_.resize(D);
        cpu::rmsnorm_forward(normed_.data(), static_cast<float*>(nullptr), last_.data(), norm_w, 1,
                             static_cast<int64_t>(D), c.rms_eps);
        last_ = normed_;
      }
    }
    started_ = true;
    done += m;
    fed_ += M;
  }
}

std::vector<float> StreamEmbedder::result() const {
  if (fed_ == 0) throw Error("an empty sequence has no embedding");
  if (pool_ == EmbedPool::last) return last_;
  std::vector<float> v(sum_.size());
  for (size_t k = 0; k < v.size(); ++k) v[k] = static_cast<float>(sum_[k] / double(fed_));
  return v;
}

int parse_layer(const std::string& text, int n_layer) {
  if (text == "final") return kFinalLayer;
  const std::string range = "the model has " + std::to_string(n_layer) + " layers (0.." +
                            std::to_string(n_layer - 1) + ", or 'final')";
  long v = -1;
  bool ok = !text.empty() && text.size() < 10;
  for (char ch : text) ok = ok && ch >= '0' && ch <= '9';
  if (ok) v = std::stol(text);
  if (!ok || v < 0 || v >= n_layer) throw UsageError("--layer '" + text + "': " + range);
  return static_cast<int>(v);
}

// ---------------------------------------------------------------------------------------------
// Output

std::string npy_bytes(const float* data, int64_t n, int64_t d) {
  std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + std::to_string(n) +
                     ", " + std::to_string(d) + "), }";
  const size_t prefix = 10;  // magic (6) + version (2) + header length (2)
  size_t total = prefix + dict.size() + 1;
  total = (total + 63) / 64 * 64;
  dict.append(total - prefix - dict.size() - 1, ' ');
  dict += '\n';
  std::string out = "\x93NUMPY";
  out += '\x01';
  out += '\x00';
  const size_t hl = dict.size();
  out += static_cast<char>(hl & 0xff);
  out += static_cast<char>((hl >> 8) & 0xff);
  out += dict;
  out.append(reinterpret_cast<const char*>(data), static_cast<size_t>(n * d) * sizeof(float));
  return out;
}

namespace {

struct Row {
  std::string id, chrom;
  int64_t beg = -1, end = -1;  // regions only: 0-based half-open
};

std::string clean_id(std::string s) {
  for (char& c : s)
    if (c == '\t' || c == '\n' || c == '\r') c = ' ';
  return s;
}

void write_out(const EmbedOptions& o, const std::vector<Row>& rows, const std::vector<float>& values,
               int64_t D) {
  const int64_t n = static_cast<int64_t>(rows.size());
  if (o.format == EmbedFormat::npy) {
    std::string ids;
    for (const Row& r : rows) {
      ids += r.id;
      if (r.beg >= 0) ids += "\t" + r.chrom + "\t" + std::to_string(r.beg) + "\t" + std::to_string(r.end);
      ids += '\n';
    }
    io::AtomicFile f(o.output);
    io::AtomicFile side(o.output + ".ids.tsv");
    f.write(npy_bytes(values.data(), n, D));
    side.write(ids);
    f.commit();
    side.commit();
    return;
  }
  std::string text;
  char buf[32];
  for (int64_t i = 0; i < n; ++i) {
    text += rows[size_t(i)].id;
    for (int64_t k = 0; k < D; ++k) {
      std::snprintf(buf, sizeof buf, "\t%.9g", double(values[size_t(i * D + k)]));
      text += buf;
    }
    text += '\n';
  }
  if (o.output == "-") {
    if (std::fwrite(text.data(), 1, text.size(), stdout) != text.size() || std::fflush(stdout) != 0)
      throw Error("cannot write to stdout");
    return;
  }
  io::AtomicFile f(o.output);
  f.write(text);
  f.commit();
}

}  // namespace

EmbedStats embed(MemMamba<float>& model, const EmbedOptions& o, const Reporter& rep) {
  if (o.format == EmbedFormat::npy && o.output == "-")
    throw UsageError(".npy output wants a file name (-o OUT.npy); use -O tsv for stdout");
  const int64_t D = model.config().d_model;
  StreamEmbedder em(model, o.layer, o.pool, o.piece);
  EmbedStats stats;
  std::vector<Row> rows;
  std::vector<float> values;
  auto push = [&](Row r) {
    const std::vector<float> v = em.result();
    values.insert(values.end(), v.begin(), v.end());
    rows.push_back(std::move(r));
    ++stats.rows;
    stats.bases += em.fed();
  };
  std::vector<uint8_t> tk;
  auto feed_text = [&](std::string_view s, const std::string& where, long line) {
    tk.resize(s.size());
    const size_t bad = io::encode(s.data(), s.size(), tk.data());
    if (bad != io::npos)
      throw Error(std::string("not a nucleotide letter: '") + s[bad] + "'", where, line);
    em.feed(tk.data(), tk.size());
  };

  const bool regions = !o.regions.empty() || !o.regions_bed.empty();
  if (!regions) {
    io::FastaReader fa(o.fasta);
    while (fa.next_record()) {
      em.reset();
      for (;;) {
        const std::string_view s = fa.read_chunk(static_cast<size_t>(o.piece));
        if (s.empty()) break;
        feed_text(s, fa.path(), fa.header_line());
      }
      if (em.fed() == 0)
        throw Error("record '" + fa.name() + "' has no bases (nothing to embed)", fa.path(),
                    fa.header_line());
      push(Row{clean_id(fa.name()), {}, -1, -1});
      rep.advance(double(rows.size()), 0, "sequences");
    }
    if (rows.empty()) throw Error("no FASTA records", o.fasta);
  } else {
    if (o.fasta == "-") throw UsageError("-r/-R need an indexed FASTA file, not stdin");
    io::FastaOptions fo;
    fo.reporter = rep;
    io::IndexedFasta fa(o.fasta, fo);
    // Every region is checked before any is embedded.
    std::vector<Row> jobs;
    for (const auto& t : o.regions) {
      const io::Region r = io::resolve(io::parse_region(t), fa);
      const int64_t end = r.end0 < 0 ? fa.length(r.contig) : r.end0;
      if (end <= r.beg0) throw Error("region '" + t + "' has no bases (nothing to embed)");
      jobs.push_back(Row{clean_id(t), r.contig, r.beg0, end});
    }
    if (!o.regions_bed.empty()) {
      io::BedReader bed(o.regions_bed);
      io::BedRecord rec;
      while (bed.next(rec)) {
        const std::string text = rec.contig + ":" + std::to_string(rec.beg + 1) + "-" + std::to_string(rec.end);
        io::Region r{rec.contig, rec.beg, rec.end, text};
        io::Region resolved;
        try {
          resolved = io::resolve(r, fa);
        } catch (const Error& e) {
          throw Error(std::string(e.what()) + " (reference " + fa.path() + ")", bed.path(), rec.line);
        }
        if (rec.end <= rec.beg) throw Error("interval has no bases (nothing to embed)", bed.path(), rec.line);
        const std::string id = rec.name().empty() ? text : rec.name();
        jobs.push_back(Row{clean_id(id), resolved.contig, resolved.beg0, rec.end});
      }
    }
    for (Row& j : jobs) {
      em.reset();
      for (int64_t b = j.beg; b < j.end; b += o.piece) {
        const int64_t e = std::min(j.end, b + o.piece);
        const std::string s = fa.fetch(j.chrom, b, e);
        if (static_cast<int64_t>(s.size()) != e - b)
          throw Error("short read of " + j.chrom + ":" + std::to_string(b + 1) + "-" + std::to_string(e), fa.path());
        feed_text(s, fa.path(), 0);
      }
      push(std::move(j));
      rep.advance(double(rows.size()), double(jobs.size()), "regions");
    }
  }
  write_out(o, rows, values, D);
  return stats;
}

}  // namespace mm::pipelines
