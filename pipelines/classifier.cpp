// Classifier pieces shared by finetune and classify: see classifier.hpp.
#include "pipelines/classifier.hpp"

#include <tbb/parallel_for.h>

#include <algorithm>
#include <cmath>
#include <mutex>
#include <nlohmann/json.hpp>
#include <numeric>
#include <set>

#include "io/safetensors.hpp"
#include "io/tokenizer.hpp"
#include "kernels/tensor.hpp"
#include "memmamba/version.hpp"
#include "model/checkpoint.hpp"
#include "model/params.hpp"

namespace mm::pipelines {

size_t Example::length() const {
  if (!window.alts.empty())
    return window.upstream.size() + std::max(window.ref.size(), window.alts[0].size()) +
           window.downstream.size();
  return seq.size();
}

void check_label(const std::string& label, const std::string& file, long line) {
  if (label.empty()) throw Error("empty label", file, line);
  for (char c : label) {
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f')
      throw Error("label '" + label + "' holds white space (a space or a tab): labels are one word", file, line);
    if (c == ',' || c == ';' || c == '=')
      throw Error(std::string("label '") + label + "' holds '" + c + "': labels may not hold ',', ';' or '='",
                  file, line);
  }
}

// ---------------------------------------------------------------------------------------------
// FeatureSpec

int64_t FeatureSpec::dim(int d_model) const {
  if (kind == FeatureKind::kmer) return int64_t(1) << (2 * k);
  return d_model + (input == InputKind::variant ? 1 : 0);
}

std::string FeatureSpec::to_json() const {
  nlohmann::json j = {{"kind", kind == FeatureKind::kmer ? "kmer" : "backbone"},
                      {"input", input == InputKind::variant ? "variant" : "sequence"},
                      {"strand", both_strands ? "both" : "fwd"}};
  if (kind == FeatureKind::kmer) j["k"] = k;
  else j["pool"] = pool == EmbedPool::last ? "last" : "mean";
  if (input == InputKind::variant) {
    j["upstream"] = upstream;
    j["downstream"] = downstream;
    if (kind == FeatureKind::backbone) j["llr"] = true;
  }
  return j.dump();
}

FeatureSpec FeatureSpec::from_json(const std::string& text, const std::string& where) {
  FeatureSpec s;
  try {
    const auto j = nlohmann::json::parse(text);
    const std::string kind = j.at("kind"), input = j.at("input"), strand = j.at("strand");
    if (kind == "kmer") s.kind = FeatureKind::kmer;
    else if (kind == "backbone") s.kind = FeatureKind::backbone;
    else throw Error("unknown feature kind '" + kind + "'", where);
    if (input == "variant") s.input = InputKind::variant;
    else if (input == "sequence") s.input = InputKind::sequence;
    else throw Error("unknown feature input '" + input + "'", where);
    if (strand != "fwd" && strand != "both") throw Error("unknown strand '" + strand + "'", where);
    s.both_strands = strand == "both";
    if (s.kind == FeatureKind::kmer) {
      s.k = j.at("k");
      if (s.k < 1 || s.k > 8) throw Error("k-mer length " + std::to_string(s.k) + " out of 1..8", where);
    } else {
      const std::string pool = j.at("pool");
      if (pool == "mean") s.pool = EmbedPool::mean;
      else if (pool == "last") s.pool = EmbedPool::last;
      else throw Error("unknown pooling '" + pool + "'", where);
    }
    if (s.input == InputKind::variant) {
      s.upstream = j.at("upstream");
      s.downstream = j.at("downstream");
    }
  } catch (const nlohmann::json::exception& e) {
    throw Error(std::string("bad memmamba.classifier features: ") + e.what(), where);
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// Streams and batches

namespace {

std::vector<int32_t> bos_tokens(const std::string& letters, bool rc) {
  std::vector<uint8_t> t = io::encode(letters);
  if (rc) io::reverse_complement(t.data(), t.size());
  std::vector<int32_t> out;
  out.reserve(t.size() + 1);
  out.push_back(io::tok::BOS);
  for (uint8_t x : t) out.push_back(x);
  return out;
}

std::string window_text(const LocalWindow& w, const std::string& allele) {
  return w.upstream + allele + w.downstream;
}

}  // namespace

std::vector<StreamRow> stream_rows(const FeatureSpec& spec, const std::vector<const Example*>& group) {
  std::vector<StreamRow> rows;
  const float half = spec.both_strands ? 0.5f : 1.0f;
  for (size_t i = 0; i < group.size(); ++i) {
    const Example& e = *group[i];
    auto add = [&](const std::string& letters, float coef) {
      rows.push_back({bos_tokens(letters, false), i, coef * half});
      if (spec.both_strands) rows.push_back({bos_tokens(letters, true), i, coef * half});
    };
    if (spec.input == InputKind::sequence) {
      add(e.seq, 1.0f);
    } else {
      add(window_text(e.window, e.window.alts.at(0)), 1.0f);
      add(window_text(e.window, e.window.ref), -1.0f);
    }
  }
  return rows;
}

std::vector<std::vector<size_t>> length_batches(const std::vector<Example>& examples,
                                                const FeatureSpec& spec, int64_t batch_tokens,
                                                int64_t max_examples) {
  std::vector<size_t> order(examples.size());
  std::iota(order.begin(), order.end(), size_t(0));
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return examples[a].length() < examples[b].length(); });
  const int64_t per = (spec.both_strands ? 2 : 1) * (spec.input == InputKind::variant ? 2 : 1);
  std::vector<std::vector<size_t>> out;
  std::vector<size_t> cur;
  for (size_t i : order) {
    const int64_t len = int64_t(examples[i].length()) + 1;  // the longest so far: sorted
    const int64_t n = int64_t(cur.size()) + 1;
    if (!cur.empty() && (n * per * len > batch_tokens || (max_examples > 0 && n > max_examples))) {
      out.push_back(std::move(cur));
      cur.clear();
    }
    cur.push_back(i);
  }
  if (!cur.empty()) out.push_back(std::move(cur));
  return out;
}

namespace {

// Pooled final hidden states (R×D) of the rows, run as one padded batch in pieces.
std::vector<float> pool_rows(MemMamba<float>& m, const std::vector<StreamRow>& rows, EmbedPool pool,
                             int64_t piece) {
  const int64_t R = int64_t(rows.size()), D = m.config().d_model;
  int64_t Tmax = 0;
  for (const auto& r : rows) Tmax = std::max<int64_t>(Tmax, int64_t(r.tokens.size()));
  piece = std::max<int64_t>(1, piece);
  StreamState<float> st = m.new_state(R);
  std::vector<double> sum(size_t(R * D), 0.0);
  std::vector<float> last(size_t(R * D), 0.0f), hidden;
  std::vector<int32_t> tk;
  for (int64_t t0 = 0; t0 < Tmax; t0 += piece) {
    const int64_t t1 = std::min(Tmax, t0 + piece), P = t1 - t0;
    tk.assign(size_t(R * P), int32_t(io::tok::PAD));
    for (int64_t r = 0; r < R; ++r) {
      const auto& t = rows[size_t(r)].tokens;
      for (int64_t i = t0; i < std::min<int64_t>(t1, int64_t(t.size())); ++i) tk[size_t(r * P + i - t0)] = t[size_t(i)];
    }
    hidden.resize(size_t(R * P * D));
    m.forward_hidden(tk.data(), R, P, hidden.data(), &st);
    for (int64_t r = 0; r < R; ++r) {
      const int64_t len = int64_t(rows[size_t(r)].tokens.size());
      for (int64_t i = std::max<int64_t>(t0, 1); i < std::min(t1, len); ++i) {
        const float* h = hidden.data() + (r * P + i - t0) * D;
        if (pool == EmbedPool::mean)
          for (int64_t k = 0; k < D; ++k) sum[size_t(r * D + k)] += double(h[k]);
        if (i == len - 1) std::copy(h, h + D, last.begin() + r * D);
      }
    }
  }
  if (pool == EmbedPool::last) return last;
  std::vector<float> out(size_t(R * D));
  for (int64_t r = 0; r < R; ++r) {
    const double n = double(std::max<int64_t>(1, int64_t(rows[size_t(r)].tokens.size()) - 1));
    for (int64_t k = 0; k < D; ++k) out[size_t(r * D + k)] = float(sum[size_t(r * D + k)] / n);
  }
  return out;
}

// k-mer frequencies of letters (A/C/G/T k-mers only) added with weight `sign` into f.
void add_kmers(const std::string& letters, int k, bool both, double sign, float* f) {
  const uint64_t mask = (uint64_t(1) << (2 * k)) - 1;
  std::vector<double> counts(size_t(mask + 1), 0.0);
  double total = 0;
  auto walk = [&](const std::vector<uint8_t>& t) {
    uint64_t code = 0;
    int run = 0;
    for (uint8_t x : t) {
      if (x < io::tok::A || x > io::tok::T) {
        run = 0;
        continue;
      }
      code = ((code << 2) | uint64_t(x - io::tok::A)) & mask;
      if (++run >= k) {
        counts[size_t(code)] += 1;
        total += 1;
      }
    }
  };
  std::vector<uint8_t> t = io::encode(letters);
  walk(t);
  if (both) {
    io::reverse_complement(t.data(), t.size());
    walk(t);
  }
  if (total <= 0) return;
  for (size_t i = 0; i < counts.size(); ++i) f[i] += float(sign * counts[i] / total);
}

}  // namespace

std::vector<double> variant_llrs(MemMamba<float>& model, const FeatureSpec& spec,
                                 const std::vector<const Example*>& examples, int64_t piece) {
  std::vector<double> out(examples.size());
  tbb::parallel_for(size_t(0), examples.size(), [&](size_t i) {
    const auto v = score_window(model, examples[i]->window,
                                spec.both_strands ? VepStrand::both : VepStrand::fwd, piece);
    out[i] = v.at(0);
  });
  return out;
}

std::vector<float> compute_features(MemMamba<float>* model, const FeatureSpec& spec,
                                    const std::vector<Example>& examples, const FeatureRun& run,
                                    const Reporter& rep) {
  const int64_t n = int64_t(examples.size());
  if (n == 0) return {};
  if (spec.kind == FeatureKind::kmer) {
    const int64_t F = spec.dim(0);
    std::vector<float> x(size_t(n * F), 0.0f);
    tbb::parallel_for(int64_t(0), n, [&](int64_t i) {
      const Example& e = examples[size_t(i)];
      float* f = x.data() + i * F;
      if (spec.input == InputKind::sequence) {
        add_kmers(e.seq, spec.k, spec.both_strands, 1.0, f);
      } else {
        add_kmers(window_text(e.window, e.window.alts.at(0)), spec.k, spec.both_strands, 1.0, f);
        add_kmers(window_text(e.window, e.window.ref), spec.k, spec.both_strands, -1.0, f);
      }
    });
    return x;
  }
  if (!model) throw Error("backbone features need a model");
  const int64_t D = model->config().d_model, F = spec.dim(int(D));
  std::vector<float> x(size_t(n * F), 0.0f);
  const auto groups = length_batches(examples, spec, run.batch_tokens, 0);
  // Groups run in parallel (the matrix products inside one are single-threaded BLAS calls).
  std::mutex mu;
  int64_t done = 0;
  tbb::parallel_for(size_t(0), groups.size(), size_t(1), [&](size_t gi) {
    const auto& g = groups[gi];
    std::vector<const Example*> ex;
    for (size_t i : g) ex.push_back(&examples[i]);
    const auto rows = stream_rows(spec, ex);
    const auto pooled = pool_rows(*model, rows, spec.pool, run.piece);
    for (size_t r = 0; r < rows.size(); ++r) {
      float* f = x.data() + int64_t(g[rows[r].example]) * F;
      for (int64_t k = 0; k < D; ++k) f[k] += rows[r].coef * pooled[r * size_t(D) + size_t(k)];
    }
    if (spec.input == InputKind::variant) {
      const auto llr = variant_llrs(*model, spec, ex, run.piece);
      for (size_t i = 0; i < g.size(); ++i) x[g[i] * size_t(F) + size_t(D)] = float(llr[i]);
    }
    std::lock_guard<std::mutex> lock(mu);
    done += int64_t(g.size());
    rep.advance(double(done), double(n), "examples");
  });
  return x;
}

// ---------------------------------------------------------------------------------------------
// Head

void Head::init(int64_t features, int64_t classes) {
  F = features;
  C = classes;
  mean.assign(size_t(F), 0.0f);
  scale.assign(size_t(F), 1.0f);
  W.assign(size_t(C * F), 0.0f);
  b.assign(size_t(C), 0.0f);
}

void Head::fit_standardisation(const std::vector<float>& x, int64_t n) {
  for (int64_t j = 0; j < F; ++j) {
    double s = 0, s2 = 0;
    for (int64_t i = 0; i < n; ++i) s += x[size_t(i * F + j)];
    const double mu = n ? s / double(n) : 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const double d = x[size_t(i * F + j)] - mu;
      s2 += d * d;
    }
    const double sd = n > 1 ? std::sqrt(s2 / double(n - 1)) : 0.0;
    mean[size_t(j)] = float(mu);
    scale[size_t(j)] = sd > 1e-7 * std::max(1.0, std::fabs(mu)) ? float(1.0 / sd) : 0.0f;
  }
}

void Head::forward(const float* x, float* logits, float* z) const {
  std::vector<float> local;
  if (!z) {
    local.resize(size_t(F));
    z = local.data();
  }
  for (int64_t j = 0; j < F; ++j) z[j] = (x[j] - mean[size_t(j)]) * scale[size_t(j)];
  for (int64_t c = 0; c < C; ++c) {
    double s = b[size_t(c)];
    const float* w = W.data() + c * F;
    for (int64_t j = 0; j < F; ++j) s += double(w[j]) * double(z[j]);
    logits[c] = float(s);
  }
}

double softmax(float* v, int64_t n) {
  double mx = v[0];
  for (int64_t i = 1; i < n; ++i) mx = std::max(mx, double(v[i]));
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += std::exp(double(v[i]) - mx);
  for (int64_t i = 0; i < n; ++i) v[i] = float(std::exp(double(v[i]) - mx) / s);
  return mx + std::log(s);
}

// ---------------------------------------------------------------------------------------------
// Metrics

Metrics evaluate_metrics(const std::vector<int>& y, const std::vector<float>& probs, int64_t C) {
  Metrics m;
  m.n = int64_t(y.size());
  m.confusion.assign(size_t(C), std::vector<int64_t>(size_t(C), 0));
  if (m.n == 0) return m;
  double loss = 0;
  for (int64_t i = 0; i < m.n; ++i) {
    const float* p = probs.data() + i * C;
    const int pred = int(std::max_element(p, p + C) - p);
    m.confusion[size_t(y[size_t(i)])][size_t(pred)] += 1;
    loss -= std::log(std::max(double(p[y[size_t(i)]]), 1e-12));
  }
  m.loss = loss / double(m.n);
  // Accuracy and Gorodkin's MCC.
  double trace = 0, s = double(m.n), sum_pt = 0, sum_p2 = 0, sum_t2 = 0, f1 = 0;
  int present = 0;
  for (int64_t k = 0; k < C; ++k) {
    double tk = 0, pk = 0;
    for (int64_t j = 0; j < C; ++j) {
      tk += double(m.confusion[size_t(k)][size_t(j)]);
      pk += double(m.confusion[size_t(j)][size_t(k)]);
    }
    const double tp = double(m.confusion[size_t(k)][size_t(k)]);
    trace += tp;
    sum_pt += pk * tk;
    sum_p2 += pk * pk;
    sum_t2 += tk * tk;
    if (tk > 0 || pk > 0) {
      ++present;
      f1 += 2 * tp / (tk + pk);
    }
  }
  m.accuracy = trace / s;
  const double den = std::sqrt((s * s - sum_p2) * (s * s - sum_t2));
  m.mcc = den > 0 ? (trace * s - sum_pt) / den : 0.0;
  m.macro_f1 = present ? f1 / present : 0.0;
  if (C == 2) {
    std::vector<std::pair<float, int>> sc;
    int64_t npos = 0;
    for (int64_t i = 0; i < m.n; ++i) {
      sc.push_back({probs[size_t(i * C + 1)], y[size_t(i)]});
      npos += y[size_t(i)] == 1;
    }
    const int64_t nneg = m.n - npos;
    if (npos > 0 && nneg > 0) {
      std::sort(sc.begin(), sc.end(), [](auto& a, auto& b) { return a.first < b.first; });
      double rank_sum = 0;  // sum of the positives' ranks (1-based, ties averaged)
      for (size_t i = 0; i < sc.size();) {
        size_t j = i;
        while (j < sc.size() && sc[j].first == sc[i].first) ++j;
        const double avg = 0.5 * double(i + 1 + j);
        for (size_t q = i; q < j; ++q)
          if (sc[q].second == 1) rank_sum += avg;
        i = j;
      }
      m.auroc = (rank_sum - double(npos) * double(npos + 1) / 2) / (double(npos) * double(nneg));
    }
  }
  return m;
}

std::string Metrics::to_json(const std::vector<std::string>& labels) const {
  nlohmann::json j = {{"n", n}, {"loss", loss}, {"accuracy", accuracy}, {"mcc", mcc}, {"macro_f1", macro_f1}};
  j["auroc"] = auroc ? nlohmann::json(*auroc) : nlohmann::json(nullptr);
  j["labels"] = labels;
  j["confusion"] = confusion;
  return j.dump();
}

// ---------------------------------------------------------------------------------------------
// Checkpoint

std::string checkpoint_format(const std::filesystem::path& path) {
  io::SafetensorsFile f = io::SafetensorsFile::read(path);
  auto it = f.metadata().find("format");
  return it == f.metadata().end() ? std::string() : it->second;
}

void save_classifier(const std::filesystem::path& path, const Classifier& c) {
  io::SafetensorsWriter w;
  if (c.has_backbone) {
    ParamTable table(c.config);
    if (c.backbone.size() != table.total()) throw Error("backbone does not match its config", path.string());
    for (const auto& p : table.entries())
      w.add(p.name, p.shape, std::span<const float>(c.backbone.data() + p.offset, p.size));
    w.set_metadata("memmamba.config", c.config.to_json());
  }
  const Head& h = c.head;
  w.add("head.mean", {h.F}, std::span<const float>(h.mean));
  w.add("head.scale", {h.F}, std::span<const float>(h.scale));
  w.add("head.weight", {h.C, h.F}, std::span<const float>(h.W));
  w.add("head.bias", {h.C}, std::span<const float>(h.b));
  for (const auto& [k, v] : c.metadata) w.set_metadata(k, v);
  nlohmann::json cls = {{"labels", c.labels}, {"features", nlohmann::json::parse(c.spec.to_json())},
                        {"backbone", c.has_backbone}};
  w.set_metadata("memmamba.classifier", cls.dump());
  w.set_metadata("format", kClassifierFormat);
  w.set_metadata("memmamba.version", kVersion);
  w.write(path);
}

Classifier load_classifier(const std::filesystem::path& path) {
  const std::string where = path.string();
  io::SafetensorsFile f = io::SafetensorsFile::read(path);
  const auto& meta = f.metadata();
  auto fmt = meta.find("format");
  if (fmt == meta.end()) throw Error("not a memmamba classifier (no 'format' in the safetensors metadata)", where);
  if (fmt->second == kCheckpointFormat)
    throw Error("a pretrained model without a classification head: fine-tune it first (memmamba finetune -m " +
                where + " ...)", where);
  if (fmt->second != kClassifierFormat)
    throw Error("format '" + fmt->second + "' is not a classifier this memmamba (" + kVersion + ") reads (" +
                kClassifierFormat + ")", where);
  Classifier c;
  c.metadata = meta;
  auto cls_it = meta.find("memmamba.classifier");
  if (cls_it == meta.end()) throw Error("classifier has no 'memmamba.classifier' metadata", where);
  try {
    const auto j = nlohmann::json::parse(cls_it->second);
    c.labels = j.at("labels").get<std::vector<std::string>>();
    c.has_backbone = j.at("backbone").get<bool>();
    c.spec = FeatureSpec::from_json(j.at("features").dump(), where);
  } catch (const nlohmann::json::exception& e) {
    throw Error(std::string("bad 'memmamba.classifier' metadata: ") + e.what(), where);
  }
  if (c.labels.size() < 2) throw Error("classifier names fewer than two labels", where);
  for (const auto& l : c.labels) check_label(l, where, 0);
  std::set<std::string> expected;
  auto tensor = [&](const std::string& name, const std::vector<int64_t>& shape, const std::string& why) {
    expected.insert(name);
    if (!f.has(name)) throw Error("lacks tensor '" + name + "'", where);
    const auto& info = f.info(name);
    if (info.shape != shape)
      throw Error("head/backbone mismatch: tensor '" + name + "' has shape " + shape_string(info.shape) + ", " +
                      why + " want " + shape_string(shape), where);
    if (!io::dtype_is_float(info.dtype)) throw Error("tensor '" + name + "' is not floating point", where);
    auto v = f.as_f32(name);
    for (float x : v)
      if (!std::isfinite(x)) throw Error("tensor '" + name + "' holds NaN or Inf", where);
    return v;
  };
  int d_model = 0;
  if (c.has_backbone) {
    auto cfg_text = meta.find("memmamba.config");
    if (cfg_text == meta.end()) throw Error("classifier has no 'memmamba.config' metadata", where);
    c.config = Config::from_json(cfg_text->second, where);
    d_model = c.config.d_model;
    ParamTable table(c.config);
    c.backbone.assign(table.total(), 0.0f);
    for (const auto& p : table.entries()) {
      auto v = tensor(p.name, p.shape, "the backbone's config would");
      std::copy(v.begin(), v.end(), c.backbone.begin() + std::ptrdiff_t(p.offset));
    }
  } else if (c.spec.kind == FeatureKind::backbone) {
    throw Error("classifier on backbone features has no backbone", where);
  }
  const int64_t F = c.spec.dim(d_model), C = int64_t(c.labels.size());
  const std::string why = "its " + std::to_string(C) + " labels and " + std::to_string(F) + " features (" +
                          (c.has_backbone ? "d_model " + std::to_string(d_model) + ", " : std::string()) +
                          c.spec.to_json() + ")";
  c.head.init(F, C);
  c.head.mean = tensor("head.mean", {F}, why);
  c.head.scale = tensor("head.scale", {F}, why);
  c.head.W = tensor("head.weight", {C, F}, why);
  c.head.b = tensor("head.bias", {C}, why);
  for (const auto& n : f.names())
    if (!expected.count(n)) throw Error("has tensor '" + n + "' that a classifier does not define", where);
  return c;
}

}  // namespace mm::pipelines
