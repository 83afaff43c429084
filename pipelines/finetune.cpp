// memmamba finetune: see finetune.hpp.
#include "pipelines/finetune.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <set>

#include "io/tokenizer.hpp"
#include "kernels/adamw.hpp"
#include "model/trainer.hpp"

namespace mm::pipelines {

namespace fs = std::filesystem;

std::map<std::string, int64_t> label_counts(const std::vector<Example>& ex) {
  std::map<std::string, int64_t> c;
  for (const auto& e : ex) ++c[e.label];
  return c;
}

namespace {

std::string utc_now() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char b[32];
  std::strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return b;
}

std::string fmt(double x) {
  if (!std::isfinite(x)) return "null";
  char b[40];
  std::snprintf(b, sizeof b, "%.6g", x);
  return b;
}

// Higher is better for every metric but the loss; a missing AUROC never improves.
std::optional<double> metric_value(const Metrics& m, const std::string& name) {
  if (name == "loss") return -m.loss;
  if (name == "accuracy") return m.accuracy;
  if (name == "mcc") return m.mcc;
  if (name == "f1") return m.macro_f1;
  if (name == "auroc") return m.auroc;
  throw UsageError("--metric wants loss, accuracy, mcc, f1 or auroc, got '" + name + "'");
}

// Per-example loss weights and the head's gradient of the weighted mean loss.
struct HeadGrad {
  std::vector<float> dW, db;
  void zero(const Head& h) {
    dW.assign(h.W.size(), 0.0f);
    db.assign(h.b.size(), 0.0f);
  }
};

// Σ_i w_{y_i} · CE_i over rows x (n×F); adds ∂/∂(W,b) and, when dx is given, ∂/∂x (n×F), all
// multiplied by `scale`. Returns the weighted loss sum; *wsum receives Σ w.
double head_loss(const Head& h, const float* x, int64_t n, const int* y, const std::vector<double>& cw,
                 double scale, HeadGrad& g, float* dx, double* wsum) {
  const int64_t F = h.F, C = h.C;
  std::vector<float> z(static_cast<size_t>(F)), p(static_cast<size_t>(C));
  double loss = 0, ws = 0;
  for (int64_t i = 0; i < n; ++i) {
    h.forward(x + i * F, p.data(), z.data());
    const double lse = [&] {
      double mx = p[0];
      for (int64_t c = 1; c < C; ++c) mx = std::max(mx, double(p[size_t(c)]));
      double s = 0;
      for (int64_t c = 0; c < C; ++c) s += std::exp(double(p[size_t(c)]) - mx);
      return mx + std::log(s);
    }();
    const int yi = y[i];
    const double w = cw[size_t(yi)];
    loss += w * (lse - double(p[size_t(yi)]));
    ws += w;
    for (int64_t c = 0; c < C; ++c) {
      const double d = (std::exp(double(p[size_t(c)]) - lse) - (c == yi ? 1.0 : 0.0)) * w * scale;
      p[size_t(c)] = float(d);
      g.db[size_t(c)] += float(d);
      float* gw = g.dW.data() + c * F;
      for (int64_t j = 0; j < F; ++j) gw[j] += float(d * z[size_t(j)]);
    }
    if (dx)
      for (int64_t j = 0; j < F; ++j) {
        double s = 0;
        for (int64_t c = 0; c < C; ++c) s += double(p[size_t(c)]) * double(h.W[size_t(c * F + j)]);
        dx[i * F + j] = float(s * double(h.scale[size_t(j)]));
      }
  }
  if (wsum) *wsum = ws;
  return loss;
}

// AdamW on the head (weights decayed, biases not).
struct HeadOpt {
  std::vector<float> mW, vW, mb, vb;
  int64_t step = 0;
  void init(const Head& h) {
    mW.assign(h.W.size(), 0.0f);
    vW = mW;
    mb.assign(h.b.size(), 0.0f);
    vb = mb;
    step = 0;
  }
  void update(Head& h, const HeadGrad& g, double lr, double wd, double grad_scale) {
    ++step;
    cpu::AdamWHyper hp{lr, 0.9, 0.999, 1e-8, wd};
    cpu::adamw_update(h.W.data(), g.dW.data(), mW.data(), vW.data(), int64_t(h.W.size()), hp, wd, step, grad_scale);
    cpu::adamw_update(h.b.data(), g.db.data(), mb.data(), vb.data(), int64_t(h.b.size()), hp, 0.0, step, grad_scale);
  }
};

std::vector<float> predict(const Head& h, const std::vector<float>& x, int64_t n) {
  std::vector<float> probs(size_t(n * h.C));
  for (int64_t i = 0; i < n; ++i) {
    h.forward(x.data() + i * h.F, probs.data() + i * h.C);
    softmax(probs.data() + i * h.C, h.C);
  }
  return probs;
}

// One epoch of head training on fixed features; returns the weighted mean loss.
double head_epoch(Head& h, HeadOpt& opt, const std::vector<float>& x, const std::vector<int>& y,
                  const std::vector<double>& cw, int64_t batch, double lr, double wd, std::mt19937_64& rng) {
  const int64_t n = int64_t(y.size()), F = h.F;
  std::vector<size_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), size_t(0));
  std::shuffle(order.begin(), order.end(), rng);
  HeadGrad g;
  std::vector<float> xb;
  std::vector<int> yb;
  double total = 0, wtotal = 0;
  for (int64_t s = 0; s < n; s += batch) {
    const int64_t e = std::min(n, s + batch);
    xb.resize(size_t((e - s) * F));
    yb.resize(size_t(e - s));
    for (int64_t i = s; i < e; ++i) {
      std::copy_n(x.data() + int64_t(order[size_t(i)]) * F, F, xb.data() + (i - s) * F);
      yb[size_t(i - s)] = y[order[size_t(i)]];
    }
    g.zero(h);
    double ws = 0;
    total += head_loss(h, xb.data(), e - s, yb.data(), cw, 1.0, g, nullptr, &ws);
    wtotal += ws;
    if (ws > 0) opt.update(h, g, lr, wd, 1.0 / ws);
  }
  return wtotal > 0 ? total / wtotal : 0.0;
}

// Stratified seeded split: about `fraction` of each class to validation (at least one of a class
// with two or more examples when fraction > 0).
void split(std::vector<Example>& all, double fraction, uint64_t seed, std::vector<Example>& valid) {
  std::map<std::string, std::vector<size_t>> by;
  for (size_t i = 0; i < all.size(); ++i) by[all[i].label].push_back(i);
  std::mt19937_64 rng(seed ^ 0x5eed5011ull);
  std::vector<bool> to_valid(all.size(), false);
  for (auto& [label, idx] : by) {
    std::shuffle(idx.begin(), idx.end(), rng);
    size_t k = size_t(std::llround(fraction * double(idx.size())));
    if (k == 0 && idx.size() >= 2) k = 1;
    if (k >= idx.size()) k = idx.size() - 1;
    for (size_t i = 0; i < k; ++i) to_valid[idx[i]] = true;
  }
  std::vector<Example> train;
  for (size_t i = 0; i < all.size(); ++i) (to_valid[i] ? valid : train).push_back(std::move(all[i]));
  all = std::move(train);
}

}  // namespace

FinetuneResult finetune(const Checkpoint* base, const FinetuneOptions& o, const Reporter& rep) {
  const bool kmer = o.spec.kind == FeatureKind::kmer;
  if (!kmer && !base) throw UsageError("fine-tuning needs a pretrained model (-m)");
  if (o.valid_fraction < 0 || o.valid_fraction >= 1) throw UsageError("--valid-fraction wants 0 <= f < 1");
  if (o.patience < 0) throw UsageError("--patience must not be negative");
  if (!(o.lr > 0) || !(o.head_lr > 0)) throw UsageError("--lr and --head-lr must be positive");
  if (o.weight_decay < 0 || o.clip < 0) throw UsageError("--weight-decay and --clip must not be negative");
  if (o.spec.input == InputKind::variant && o.train.format != LabelledFormat::vcf)
    throw UsageError("variant features need a VCF/BCF input");
  if (o.output.empty()) throw UsageError("give the classifier file with -o/--output");
  const bool frozen = kmer || o.freeze;
  const int64_t epochs = o.epochs > 0 ? o.epochs : (frozen ? 100 : 5);
  const int64_t batch = o.batch > 0 ? o.batch : (frozen ? 32 : 8);
  if (o.spec.kind == FeatureKind::backbone && o.spec.input == InputKind::variant && base->config.vocab <= io::tok::BOS)
    throw Error("the model's vocabulary has no BOS token: not a DNA model of this format");
  metric_value(Metrics{}, o.metric);  // validates the name

  // Data.
  LabelledSet tr = read_labelled(o.train, true, rep);
  if (tr.records_skipped || tr.unlabelled)
    rep.say("skipped " + std::to_string(tr.records_skipped) + " ALT(s) that cannot be scored and " +
            std::to_string(tr.unlabelled) + " without a label");
  std::vector<Example> train = std::move(tr.examples), valid;
  if (train.empty()) throw Error("no labelled examples", o.train.path);
  auto counts = label_counts(train);
  if (counts.size() < 2)
    throw Error("the training data has a single class ('" + counts.begin()->first +
                    "'): a classifier needs examples of at least two labels", o.train.path);
  std::vector<std::string> labels;
  for (const auto& [l, n] : counts) labels.push_back(l);
  const int64_t C = int64_t(labels.size());
  if (o.metric == "auroc" && C != 2) throw UsageError("--metric auroc needs two classes; this data has " + std::to_string(C));
  std::map<std::string, int> index;
  for (size_t i = 0; i < labels.size(); ++i) index[labels[i]] = int(i);

  std::string valid_desc = "none";
  if (!o.valid_path.empty()) {
    LabelledOptions vo = o.train;
    vo.path = o.valid_path;
    if (auto f = labelled_format_from_name(o.valid_path)) vo.format = *f;
    LabelledSet vs = read_labelled(vo, true, rep);
    valid = std::move(vs.examples);
    for (const auto& e : valid)
      if (!index.count(e.label))
        throw Error("validation label '" + e.label + "' does not occur in the training data", e.file, e.line);
    valid_desc = "file " + o.valid_path;
  } else if (o.valid_fraction > 0) {
    split(train, o.valid_fraction, o.seed, valid);
    valid_desc = "stratified split, fraction " + fmt(o.valid_fraction) + ", seed " + std::to_string(o.seed);
    if (label_counts(train).size() < 2)
      throw Error("after the validation split the training data has a single class: give more examples", o.train.path);
  }
  std::vector<int> ytr, yva;
  for (const auto& e : train) ytr.push_back(index.at(e.label));
  for (const auto& e : valid) yva.push_back(index.at(e.label));
  const int64_t ntr = int64_t(train.size()), nva = int64_t(valid.size());

  // Class weights.
  std::vector<double> cw(size_t(C), 1.0);
  std::vector<int64_t> ncls(size_t(C), 0);
  for (int y : ytr) ++ncls[size_t(y)];
  if (o.weighting == ClassWeighting::balanced) {
    for (int64_t c = 0; c < C; ++c)
      cw[size_t(c)] = ncls[size_t(c)] ? double(ntr) / (double(C) * double(ncls[size_t(c)])) : 0.0;
  } else if (o.weighting == ClassWeighting::given) {
    for (const auto& [l, w] : o.class_weights) {
      if (!index.count(l)) throw UsageError("--class-weights names label '" + l + "', which the training data lacks");
      if (!(w > 0)) throw UsageError("--class-weights: the weight of '" + l + "' must be positive");
      cw[size_t(index.at(l))] = w;
    }
  }
  {
    std::string s;
    for (int64_t c = 0; c < C; ++c)
      s += (c ? ", " : "") + labels[size_t(c)] + " " + std::to_string(ncls[size_t(c)]) + " (weight " + fmt(cw[size_t(c)]) + ")";
    rep.say(std::to_string(ntr) + " training and " + std::to_string(nva) + " validation examples; classes: " + s);
  }

  // Model.
  std::unique_ptr<MemMamba<float>> model;
  if (!kmer) model = std::make_unique<MemMamba<float>>(base->config, base->params);
  const int64_t D = model ? model->config().d_model : 0, F = o.spec.dim(int(D));

  FinetuneResult res;
  res.labels = labels;
  res.n_train = ntr;
  res.n_valid = nva;
  fs::path mpath = o.metrics;
  if (mpath.empty()) {
    mpath = o.output;
    std::string stem = mpath.filename().string();
    if (stem.size() > 12 && stem.compare(stem.size() - 12, 12, ".safetensors") == 0) stem.resize(stem.size() - 12);
    mpath.replace_filename(stem + ".metrics.jsonl");
  }
  res.metrics_path = mpath;
  std::ofstream metrics(mpath, std::ios::trunc);
  if (!metrics) throw Error("cannot open the metrics file for writing", mpath.string());

  const auto t_start = std::chrono::steady_clock::now();
  rep.say("features of the training data" + std::string(kmer ? " (k-mers)" : ""));
  std::vector<float> xtr = compute_features(model.get(), o.spec, train, o.run, rep);
  std::vector<float> xva = nva ? compute_features(model.get(), o.spec, valid, o.run, rep) : std::vector<float>();

  Head head;
  head.init(F, C);
  head.fit_standardisation(xtr, ntr);
  HeadOpt hopt;
  hopt.init(head);
  std::mt19937_64 rng(o.seed);

  Head best_head = head;
  std::vector<float> best_backbone;
  std::optional<double> best_score;
  int64_t bad = 0;

  auto evaluate = [&](const std::vector<float>& x, const std::vector<int>& y) {
    return evaluate_metrics(y, predict(head, x, int64_t(y.size())), C);
  };
  // After an epoch: validation, the metrics line, early stopping. Returns false to stop.
  auto end_epoch = [&](int64_t epoch, double train_loss, double lr, double secs,
                       const std::vector<float>& xv) {
    nlohmann::ordered_json line = {{"epoch", epoch}, {"steps", res.steps}, {"train_loss", train_loss},
                           {"lr", kmer || o.freeze ? o.head_lr : lr}, {"seconds", secs}};
    res.epochs = epoch;
    res.train_loss = train_loss;
    bool improved = true;
    if (nva) {
      const Metrics m = evaluate(xv, yva);
      line["valid_loss"] = m.loss;
      line["valid_accuracy"] = m.accuracy;
      line["valid_mcc"] = m.mcc;
      line["valid_macro_f1"] = m.macro_f1;
      line["valid_auroc"] = m.auroc ? nlohmann::json(*m.auroc) : nlohmann::json(nullptr);
      const auto v = metric_value(m, o.metric);
      improved = v && (!best_score || *v > *best_score);
      if (improved) {
        best_score = v;
        res.valid = m;
      }
    }
    line["best"] = improved;
    if (improved) {
      best_head = head;
      res.best_epoch = epoch;
      if (model && !frozen) best_backbone = model->params();
      bad = 0;
    } else {
      ++bad;
    }
    metrics << line.dump() << "\n" << std::flush;
    if (!metrics) throw Error("cannot write the metrics file (disk full?)", mpath.string());
    std::string say = "epoch " + std::to_string(epoch) + ": train loss " + fmt(train_loss);
    if (nva) say += ", valid " + o.metric + " " + fmt(line.value("valid_" + (o.metric == "f1" ? std::string("macro_f1") : o.metric), 0.0)) +
                    (improved ? " (best)" : "");
    if (!frozen || epoch % 10 == 0 || epoch == epochs) rep.say(say);
    if (nva && o.patience > 0 && bad >= o.patience) {
      res.stopped_early = true;
      return false;
    }
    return true;
  };

  auto t_epoch = std::chrono::steady_clock::now();
  auto seconds = [&] {
    const auto now = std::chrono::steady_clock::now();
    const double s = std::chrono::duration<double>(now - t_epoch).count();
    t_epoch = now;
    return s;
  };

  if (frozen) {
    for (int64_t ep = 1; ep <= epochs; ++ep) {
      if (o.should_stop && o.should_stop()) {
        res.interrupted = true;
        break;
      }
      const double loss = head_epoch(head, hopt, xtr, ytr, cw, batch, o.head_lr, o.weight_decay, rng);
      res.steps += (ntr + batch - 1) / batch;
      if (!std::isfinite(loss)) throw Error("training diverged (loss not finite) at epoch " + std::to_string(ep));
      if (!end_epoch(ep, loss, o.head_lr, seconds(), xva)) break;
    }
  } else {
    // Linear probe first, then everything together.
    for (int64_t ep = 0; ep < kProbeEpochs; ++ep)
      head_epoch(head, hopt, xtr, ytr, cw, 32, o.head_lr, o.weight_decay, rng);
    hopt.init(head);
    best_head = head;
    best_backbone = model->params();
    const auto groups = length_batches(train, o.spec, o.run.batch_tokens, batch);
    TrainConfig tc;
    tc.lr = o.lr;
    tc.total_steps = epochs * int64_t(groups.size());
    tc.warmup_steps = o.warmup >= 0 ? o.warmup : std::min<int64_t>(100, tc.total_steps / 10);
    tc.weight_decay = o.weight_decay;
    std::vector<float> m1(model->params().size(), 0.0f), m2(model->params().size(), 0.0f);
    const bool variant = o.spec.input == InputKind::variant;
    double lr = 0;
    for (int64_t ep = 1; ep <= epochs && !res.interrupted; ++ep) {
      std::vector<double> llr;
      if (variant) {
        std::vector<const Example*> all;
        for (const auto& e : train) all.push_back(&e);
        llr = variant_llrs(*model, o.spec, all, o.run.piece);
      }
      std::vector<size_t> order(groups.size());
      std::iota(order.begin(), order.end(), size_t(0));
      std::shuffle(order.begin(), order.end(), rng);
      double total = 0, wtotal = 0;
      for (size_t gi : order) {
        if (o.should_stop && o.should_stop()) {
          res.interrupted = true;
          break;
        }
        const auto& g = groups[gi];
        std::vector<const Example*> ex;
        std::vector<int> yb;
        for (size_t i : g) {
          ex.push_back(&train[i]);
          yb.push_back(ytr[i]);
        }
        const auto rows = stream_rows(o.spec, ex);
        const int64_t R = int64_t(rows.size());
        int64_t T = 0;
        for (const auto& r : rows) T = std::max<int64_t>(T, int64_t(r.tokens.size()));
        std::vector<int32_t> tk(size_t(R * T), int32_t(io::tok::PAD));
        for (int64_t r = 0; r < R; ++r) std::copy(rows[size_t(r)].tokens.begin(), rows[size_t(r)].tokens.end(), tk.begin() + r * T);
        model->zero_grads();
        HeadGrad hg;
        hg.zero(head);
        double ws = 0;
        const int64_t nb = int64_t(g.size());
        const double loss = model->forward_backward_hidden(tk.data(), R, T, [&](const float* hid, float* dhid) {
          // Pooled rows -> features.
          std::vector<float> x(size_t(nb * F), 0.0f), pooled(size_t(R * D), 0.0f);
          for (int64_t r = 0; r < R; ++r) {
            const int64_t len = int64_t(rows[size_t(r)].tokens.size());
            float* pr = pooled.data() + r * D;
            if (o.spec.pool == EmbedPool::last) {
              std::copy_n(hid + (r * T + len - 1) * D, D, pr);
            } else {
              std::vector<double> s(size_t(D), 0.0);
              for (int64_t t = 1; t < len; ++t)
                for (int64_t k = 0; k < D; ++k) s[size_t(k)] += hid[(r * T + t) * D + k];
              for (int64_t k = 0; k < D; ++k) pr[k] = float(s[size_t(k)] / double(len - 1));
            }
            float* f = x.data() + int64_t(rows[size_t(r)].example) * F;
            for (int64_t k = 0; k < D; ++k) f[k] += rows[size_t(r)].coef * pr[k];
          }
          if (variant)
            for (int64_t i = 0; i < nb; ++i) x[size_t(i * F + D)] = float(llr[g[size_t(i)]]);
          std::vector<float> dx(size_t(nb * F), 0.0f);
          double wsum = 0;
          const double lsum = head_loss(head, x.data(), nb, yb.data(), cw, 1.0, hg, dx.data(), &wsum);
          ws = wsum;
          const double inv = wsum > 0 ? 1.0 / wsum : 0.0;
          // Features -> hidden rows (the gradient of the weighted mean loss).
          for (int64_t r = 0; r < R; ++r) {
            const int64_t len = int64_t(rows[size_t(r)].tokens.size());
            const float* df = dx.data() + int64_t(rows[size_t(r)].example) * F;
            const double c = double(rows[size_t(r)].coef) * inv;
            if (o.spec.pool == EmbedPool::last) {
              for (int64_t k = 0; k < D; ++k) dhid[(r * T + len - 1) * D + k] = float(c * df[k]);
            } else {
              const double a = c / double(len - 1);
              for (int64_t t = 1; t < len; ++t)
                for (int64_t k = 0; k < D; ++k) dhid[(r * T + t) * D + k] = float(a * df[k]);
            }
          }
          return lsum;
        });
        if (!(ws > 0)) continue;
        total += loss;
        wtotal += ws;
        // Clip the global norm of the mean-loss gradient (backbone already scaled; head by 1/ws).
        double sq = 0;
        for (float v : model->grads()) sq += double(v) * double(v);
        for (float v : hg.dW) sq += double(v) * double(v) / (ws * ws);
        for (float v : hg.db) sq += double(v) * double(v) / (ws * ws);
        const double norm = std::sqrt(sq);
        if (!std::isfinite(norm) || !std::isfinite(loss))
          throw Error("training diverged (loss or gradient not finite) at step " + std::to_string(res.steps + 1) +
                      "; try a lower --lr");
        const double clip = o.clip > 0 && norm > o.clip ? o.clip / norm : 1.0;
        ++res.steps;
        lr = learning_rate(tc, res.steps);
        cpu::AdamWHyper hp{lr, 0.9, 0.999, 1e-8, o.weight_decay};
        for (const auto& p : model->table().entries())
          cpu::adamw_update(model->params().data() + p.offset, model->grads().data() + p.offset, m1.data() + p.offset,
                            m2.data() + p.offset, int64_t(p.size), hp, p.decay ? o.weight_decay : 0.0, res.steps, clip);
        hopt.update(head, hg, o.head_lr, o.weight_decay, clip / ws);
        rep.advance(double(res.steps), double(tc.total_steps), "steps");
      }
      if (res.interrupted) break;
      std::vector<float> xv = nva ? compute_features(model.get(), o.spec, valid, o.run, Reporter{}) : std::vector<float>();
      if (!end_epoch(ep, wtotal > 0 ? total / wtotal : 0.0, lr, seconds(), xv)) break;
    }
  }

  head = best_head;
  if (model && !frozen && !best_backbone.empty()) model->params() = best_backbone;
  const double total_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();

  // The checkpoint.
  Classifier c;
  c.has_backbone = !kmer;
  if (model) {
    c.config = model->config();
    c.backbone = model->params();
  }
  c.spec = o.spec;
  c.labels = labels;
  c.head = head;
  nlohmann::json weights = nlohmann::json::object(), ntrain = nlohmann::json::object(), nvalid = nlohmann::json::object();
  for (int64_t k = 0; k < C; ++k) {
    weights[labels[size_t(k)]] = cw[size_t(k)];
    ntrain[labels[size_t(k)]] = ncls[size_t(k)];
  }
  for (const auto& [l, n] : label_counts(valid)) nvalid[l] = n;
  nlohmann::json rec = {{"mode", kmer ? "kmer-baseline" : (o.freeze ? "frozen" : "full")},
                        {"date", utc_now()},
                        {"train", o.train.path},
                        {"validation", valid_desc},
                        {"train_counts", ntrain},
                        {"valid_counts", nvalid},
                        {"class_weights", weights},
                        {"epochs_run", res.epochs},
                        {"epochs_max", epochs},
                        {"best_epoch", res.best_epoch},
                        {"steps", res.steps},
                        {"stopped_early", res.stopped_early},
                        {"interrupted", res.interrupted},
                        {"metric", o.metric},
                        {"patience", o.patience},
                        {"batch", batch},
                        {"lr", o.lr},
                        {"head_lr", o.head_lr},
                        {"weight_decay", o.weight_decay},
                        {"clip", o.clip},
                        {"seed", o.seed},
                        {"seconds", total_s}};
  if (!frozen) rec["probe_epochs"] = kProbeEpochs;
  if (res.valid) rec["valid_metrics"] = nlohmann::json::parse(res.valid->to_json(labels));
  if (!kmer) {
    rec["base_model"] = o.model_path;
    for (const char* k : {"memmamba.steps", "memmamba.command", "memmamba.date"})
      if (base->metadata.count(k)) rec[std::string("base_") + (k + 9)] = base->metadata.at(k);
  }
  c.metadata["memmamba.finetune"] = rec.dump();
  c.metadata["memmamba.command"] = o.command;
  save_classifier(o.output, c);
  return res;
}

}  // namespace mm::pipelines
