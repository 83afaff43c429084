// DNA passkey recall (DESIGN §3, "Evidence this design learns"): trains the prototype-sized model
// (d 64, 2 layers, K 32 slots, C 64) on BOS + 16-base key + random gap + BOS + the same key, with
// loss only on the second key, through a length curriculum; then evaluates recall accuracy
// (teacher-forced argmax over A/C/G/T, chance 25 %) on fresh sequences of each evaluation length,
// streaming long sequences through a StreamState in pieces. With notes on it also reports why
// recall works or fails: note scores of key vs gap tokens, how many pool slots hold key positions
// when the query is read, and the read gates at the query.
//
// Progress goes to stderr, the final Markdown tables to stdout. See bench/RECALL.md.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "io/error.hpp"
#include "model/checkpoint.hpp"
#include "model/config.hpp"
#include "model/cuda_training.hpp"
#include "model/memmamba.hpp"
#include "model/trainer.hpp"
#include "recall_task.hpp"

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

struct Args {
  std::vector<int64_t> lengths{256, 1024, 4096};
  std::vector<int64_t> steps{400, 400, 200};
  int64_t batch = 8;
  uint64_t seed = 1;
  double lr = 2e-3, min_lr_ratio = 0.1, clip = 1.0, weight_decay = 0.1;
  int64_t warmup = 50;
  bool notes = true;
  bool cuda = false;  // training passes on the GPU (--device cuda); evaluation stays on the CPU
  std::string out, load;
  std::vector<std::pair<int64_t, int64_t>> eval{{256, 64}, {1024, 64}, {4096, 64}, {16384, 32}, {65536, 16}};
  int64_t eval_batch = 8;
  int64_t piece = 16384;
  int64_t print_every = 25;
};

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr,
               "recall_experiment: %s\n"
               "usage: recall_experiment [--lengths 256,1024,4096] [--steps 400,400,200] [--batch 8]\n"
               "  [--seed 1] [--lr 2e-3] [--warmup 50] [--min-lr-ratio 0.1] [--clip 1] [--wd 0.1]\n"
               "  [--notes on|off] [--device cpu|cuda] [--out CKPT] [--load CKPT]\n"
               "  [--eval 256,1024,4096,16384:32,65536:16] (LEN or LEN:SEQUENCES, default 64 sequences)\n"
               "  [--eval-batch 8] [--piece 16384] [--print-every 25]\n",
               why.c_str());
  std::exit(2);
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, sep))
    if (!item.empty()) out.push_back(item);
  return out;
}

int64_t to_int(const std::string& s, const std::string& flag) {
  try {
    size_t used = 0;
    const long long v = std::stoll(s, &used);
    if (used != s.size()) throw std::invalid_argument(s);
    return v;
  } catch (const std::exception&) {
    usage(flag + ": not an integer: '" + s + "'");
  }
}

double to_double(const std::string& s, const std::string& flag) {
  try {
    size_t used = 0;
    const double v = std::stod(s, &used);
    if (used != s.size()) throw std::invalid_argument(s);
    return v;
  } catch (const std::exception&) {
    usage(flag + ": not a number: '" + s + "'");
  }
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) usage(f + " needs a value");
      return argv[++i];
    };
    auto ints = [&](const std::string& v) {
      std::vector<int64_t> r;
      for (const auto& s : split(v, ',')) r.push_back(to_int(s, f));
      return r;
    };
    if (f == "--lengths") a.lengths = ints(val());
    else if (f == "--steps") a.steps = ints(val());
    else if (f == "--batch") a.batch = to_int(val(), f);
    else if (f == "--seed") a.seed = uint64_t(to_int(val(), f));
    else if (f == "--lr") a.lr = to_double(val(), f);
    else if (f == "--warmup") a.warmup = to_int(val(), f);
    else if (f == "--min-lr-ratio") a.min_lr_ratio = to_double(val(), f);
    else if (f == "--clip") a.clip = to_double(val(), f);
    else if (f == "--wd") a.weight_decay = to_double(val(), f);
    else if (f == "--notes") {
      const std::string v = val();
      if (v == "on") a.notes = true;
      else if (v == "off") a.notes = false;
      else usage("--notes takes on or off");
    } else if (f == "--device") {
      const std::string d = val();
      if (d == "cuda") a.cuda = true;
      else if (d != "cpu") usage("--device takes cpu or cuda");
    } else if (f == "--out") a.out = val();
    else if (f == "--load") a.load = val();
    else if (f == "--eval") {
      a.eval.clear();
      for (const auto& s : split(val(), ',')) {
        const auto parts = split(s, ':');
        if (parts.empty() || parts.size() > 2) usage("--eval: bad item '" + s + "'");
        a.eval.push_back({to_int(parts[0], f), parts.size() == 2 ? to_int(parts[1], f) : 64});
      }
    } else if (f == "--eval-batch") a.eval_batch = to_int(val(), f);
    else if (f == "--piece") a.piece = to_int(val(), f);
    else if (f == "--print-every") a.print_every = to_int(val(), f);
    else if (f == "-h" || f == "--help") usage("help");
    else usage("unknown flag " + f);
  }
  if (a.lengths.size() != a.steps.size()) usage("--lengths and --steps need the same number of stages");
  for (auto L : a.lengths)
    if (L < mm::recall::kMinLength) usage("training lengths must be at least 34");
  for (auto& [L, n] : a.eval)
    if (L < mm::recall::kMinLength || n < 1) usage("evaluation lengths must be at least 34, sequences at least 1");
  if (a.batch < 1 || a.eval_batch < 1 || a.piece < 1 || a.print_every < 1) usage("sizes must be positive");
  return a;
}

// DESIGN's prototype.
mm::Config prototype(bool notes) {
  mm::Config c;
  c.d_model = 64;
  c.n_layer = 2;
  c.expand = 2;
  c.d_state = 16;
  c.d_conv = 4;
  c.pool_slots = 32;
  c.summary_dim = 64;
  c.note_heads = 4;
  c.memory_chunk = 64;
  c.cross_layer_period = 2;
  c.tau1 = 0.5;
  c.notes = notes;
  return c;
}

// Teacher-forced recall over the scored rows of logits (B×T×V) for a sequence of total length L
// whose rows start at absolute position row0.
struct Hits {
  int64_t correct = 0, total = 0;
  int64_t predicted[5] = {0, 0, 0, 0, 0};  // argmax counts per base (1..4)
  // Share of the most often predicted base: 1.0 means a constant prediction.
  double top_share() const {
    int64_t top = 0;
    for (int v = 1; v <= 4; ++v) top = std::max(top, predicted[v]);
    return total ? double(top) / double(total) : 0.0;
  }
};
Hits recall_hits(const float* logits, const int32_t* tokens, int64_t B, int64_t T, int64_t row0,
                 int64_t L, int64_t V) {
  const mm::recall::Layout lay{L};
  Hits h;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = lay.first_scored(); t + 1 < L; ++t) {
      const int64_t r = t - row0;
      if (r < 0 || r + 1 >= T) continue;
      const int32_t want = tokens[b * T + r + 1];
      const int32_t got = mm::recall::argmax_base(logits + (b * T + r) * V);
      h.correct += got == want;
      ++h.predicted[got];
      ++h.total;
    }
  return h;
}

struct Mean {
  double sum = 0;
  int64_t n = 0;
  void add(double x) { sum += x; ++n; }
  double get() const { return n ? sum / double(n) : std::nan(""); }
};

struct LayerDiag {
  Mean key_score, gap_score, key_above, gap_above;  // scores of batch element 0's tokens
  Mean key_slots, used_slots, bos_slots;            // per sequence, pool read at the query
  Mean gate, cross_gate;                            // mean σ(v W_g + b_g) at the scored rows
};

struct EvalResult {
  int64_t L = 0, n = 0;
  Hits hits;
  std::vector<LayerDiag> layers;
  double seconds = 0;
};

// Mean over the D channels of σ(W_g v + b_g), v = RMSNorm_n(x), at one row x.
double mean_gate(const mm::MemMamba<float>& m, int l, bool cross, const float* x) {
  const mm::Config& c = m.config();
  const auto& P = m.params();
  const mm::LayerIndex& ix = m.table().layer(l);
  const mm::LayerIndex::Read& rd = cross ? ix.cross : ix.read;
  const int64_t D = c.d_model;
  double ss = 0;
  for (int64_t i = 0; i < D; ++i) ss += double(x[i]) * x[i];
  const double rstd = 1.0 / std::sqrt(ss / double(D) + c.rms_eps);
  std::vector<double> v(static_cast<size_t>(D));
  for (int64_t i = 0; i < D; ++i) v[size_t(i)] = x[i] * rstd * P[ix.note_norm + size_t(i)];
  double total = 0;
  for (int64_t o = 0; o < D; ++o) {
    double g = P[rd.gate_b + size_t(o)];
    for (int64_t i = 0; i < D; ++i) g += P[rd.gate_w + size_t(o * D + i)] * v[size_t(i)];
    total += 1.0 / (1.0 + std::exp(-g));
  }
  return total / double(D);
}

EvalResult evaluate(mm::MemMamba<float>& model, int64_t L, int64_t n, const Args& a, uint64_t seed) {
  const mm::Config& c = model.config();
  const int64_t V = c.vocab, D = c.d_model;
  const mm::recall::Layout lay{L};
  EvalResult res;
  res.L = L;
  res.n = n;
  res.layers.resize(size_t(c.n_layer));
  std::mt19937_64 rng(seed);
  const auto t0 = Clock::now();
  // The last piece starts at the chunk holding the query BOS, so the state just before it holds
  // exactly the pools the query reads.
  const int64_t qc = (lay.first_scored() / c.memory_chunk) * c.memory_chunk;
  for (int64_t done = 0; done < n; done += a.eval_batch) {
    const int64_t B = std::min(a.eval_batch, n - done);
    std::vector<int32_t> tokens, targets;
    mm::recall::make_batch(rng, B, L, tokens, targets);
    auto st = model.new_state(B);
    std::vector<int32_t> piece;
    std::vector<float> logits;
    mm::Taps<float> taps;
    auto run_piece = [&](int64_t p0, int64_t p1) {
      const int64_t T = p1 - p0;
      piece.resize(size_t(B * T));
      for (int64_t b = 0; b < B; ++b)
        std::copy(tokens.begin() + b * L + p0, tokens.begin() + b * L + p1, piece.begin() + b * T);
      logits.resize(size_t(B * T * V));
      model.forward(piece.data(), B, T, logits.data(), &st, c.notes ? &taps : nullptr);
      if (!c.notes) return;
      for (int l = 0; l < c.n_layer; ++l) {
        auto& d = res.layers[size_t(l)];
        const auto& s = taps.layers[size_t(l)].score;
        for (int64_t t = p0; t < p1; ++t) {
          const double x = s[size_t(t - p0)];
          if (lay.is_key(t)) {
            d.key_score.add(x);
            d.key_above.add(x > c.tau1);
          } else if (lay.is_gap(t)) {
            d.gap_score.add(x);
            d.gap_above.add(x > c.tau1);
          }
        }
      }
    };
    for (int64_t p0 = 0; p0 < qc; p0 += a.piece) run_piece(p0, std::min(qc, p0 + a.piece));
    if (c.notes)
      for (int l = 0; l < c.n_layer; ++l) {
        auto& d = res.layers[size_t(l)];
        for (int64_t b = 0; b < B; ++b) {
          const auto& pool = st.layers[size_t(l)].pool[size_t(b)];
          int64_t key = 0, bos = 0;
          for (int64_t p : pool.pos) {
            key += lay.is_key(p);
            bos += p == 0;
          }
          d.key_slots.add(double(key));
          d.bos_slots.add(double(bos));
          d.used_slots.add(double(pool.used()));
        }
      }
    run_piece(qc, L);
    const Hits h = recall_hits(logits.data(), piece.data(), B, L - qc, qc, L, V);
    res.hits.correct += h.correct;
    res.hits.total += h.total;
    for (int v = 1; v <= 4; ++v) res.hits.predicted[v] += h.predicted[v];
    if (c.notes)  // gates at batch element 0's scored rows, from the layer inputs the taps hold
      for (int l = 0; l < c.n_layer; ++l)
        for (int64_t t = lay.first_scored(); t + 1 < L; ++t) {
          const int64_t r = t - qc;
          std::vector<float> x(static_cast<size_t>(D));
          if (l == 0) {
            const float* e = model.params().data() + model.table().embedding() + size_t(piece[size_t(r)]) * size_t(D);
            std::copy(e, e + D, x.begin());
          } else {
            const auto& o = taps.layers[size_t(l - 1)].output;
            std::copy(o.begin() + r * D, o.begin() + (r + 1) * D, x.begin());
          }
          res.layers[size_t(l)].gate.add(mean_gate(model, l, false, x.data()));
          if (c.has_cross(l)) res.layers[size_t(l)].cross_gate.add(mean_gate(model, l, true, x.data()));
        }
  }
  res.seconds = since(t0);
  return res;
}

std::string pct(double x) {
  char b[32];
  if (std::isnan(x)) return "n/a";
  std::snprintf(b, sizeof b, "%.1f %%", 100.0 * x);
  return b;
}
std::string num(double x, const char* fmt = "%.3f") {
  char b[32];
  if (std::isnan(x)) return "n/a";
  std::snprintf(b, sizeof b, fmt, x);
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  const Args a = parse(argc, argv);
  try {
    const auto t_start = Clock::now();
    mm::Config cfg = prototype(a.notes);
    std::vector<float> init;
    if (!a.load.empty()) {
      mm::Checkpoint ck = mm::load_checkpoint(a.load);
      cfg = ck.config;
      init = std::move(ck.params);
    }
    mm::MemMamba<float> model = init.empty() ? mm::MemMamba<float>(cfg, a.seed) : mm::MemMamba<float>(cfg, std::move(init));
    const int64_t total_steps = std::accumulate(a.steps.begin(), a.steps.end(), int64_t(0));
    std::fprintf(stderr, "recall_experiment: notes %s, %zu parameters, %lld steps, batch %lld, lr %g, seed %llu, training on %s\n",
                 cfg.notes ? "on" : "off", model.params().size(), (long long)total_steps,
                 (long long)a.batch, a.lr, (unsigned long long)a.seed, a.cuda ? "cuda" : "cpu");

    // ---- training: the length curriculum -----------------------------------------------------
    if (total_steps > 0) {
      mm::TrainConfig tc;
      tc.lr = a.lr;
      tc.min_lr_ratio = a.min_lr_ratio;
      tc.warmup_steps = a.warmup;
      tc.total_steps = total_steps;
      tc.weight_decay = a.weight_decay;
      tc.clip = a.clip;
      mm::Trainer<float> trainer(model, tc, a.cuda ? mm::make_cuda_gradient_pass(cfg) : mm::GradientPass<float>{});
      std::mt19937_64 rng(a.seed * 0x9E3779B97F4A7C15ull + 1);
      int64_t step = 0;
      for (size_t stage = 0; stage < a.lengths.size(); ++stage) {
        const int64_t L = a.lengths[stage];
        const auto t_stage = Clock::now();
        Mean loss_window;
        auto t_window = Clock::now();
        for (int64_t i = 0; i < a.steps[stage]; ++i) {
          ++step;
          mm::Batch batch;
          batch.B = a.batch;
          batch.T = L;
          mm::recall::make_batch(rng, a.batch, L, batch.tokens, batch.targets);
          const bool report = step % a.print_every == 0 || i + 1 == a.steps[stage];
          std::string recall = "", notes_line;
          if (report) {  // recall of this batch under the parameters the step starts from
            std::vector<float> logits(size_t(batch.B * L * cfg.vocab));
            mm::Taps<float> taps;
            model.forward(batch.tokens.data(), batch.B, L, logits.data(), nullptr, cfg.notes ? &taps : nullptr);
            const Hits h = recall_hits(logits.data(), batch.tokens.data(), batch.B, L, 0, L, cfg.vocab);
            recall = pct(double(h.correct) / double(h.total));
            // Notes trajectory (batch element 0): mean key / gap score and the pool the query
            // BOS reads (slots used, of them key positions).
            const mm::recall::Layout lay{L};
            for (int l = 0; cfg.notes && l < cfg.n_layer; ++l) {
              const auto& tl = taps.layers[size_t(l)];
              Mean ks, gs;
              for (int64_t t = 0; t < L; ++t)
                if (lay.is_key(t)) ks.add(tl.score[size_t(t)]);
                else if (lay.is_gap(t)) gs.add(tl.score[size_t(t)]);
              size_t seg = 0;
              while (seg + 1 < tl.segment_start.size() && tl.segment_start[seg + 1] <= lay.first_scored()) ++seg;
              int64_t key = 0;
              for (int64_t p : tl.pool_read[seg]) key += lay.is_key(p);
              char buf[128];
              std::snprintf(buf, sizeof buf, "  L%d score key %.3f gap %.3f pool %zu (key %lld)", l,
                            ks.get(), gs.get(), tl.pool_read[seg].size(), (long long)key);
              notes_line += buf;
            }
          }
          const mm::StepResult r = trainer.step([&](int64_t) { return batch; });
          loss_window.add(r.loss);
          if (report) {
            const double per = since(t_window) / double(loss_window.n);
            std::fprintf(stderr,
                         "step %5lld  len %6lld  loss %.4f  (mean of %lld: %.4f)  recall %s  |g| %.3f  lr %.2e  %.2f s/step  %.0f s%s\n",
                         (long long)step, (long long)L, r.loss, (long long)loss_window.n, loss_window.get(),
                         recall.c_str(), r.grad_norm, r.lr, per, since(t_start), notes_line.c_str());
            loss_window = {};
            t_window = Clock::now();
          }
        }
        std::fprintf(stderr, "stage %zu (length %lld, %lld steps) done in %.0f s\n", stage + 1,
                     (long long)L, (long long)a.steps[stage], since(t_stage));
      }
      if (!a.out.empty()) {
        mm::Checkpoint ck{cfg, model.params(), {}};
        auto join = [](const std::vector<int64_t>& v) {
          std::string s;
          for (auto x : v) {
            if (!s.empty()) s += ',';
            s += std::to_string(x);
          }
          return s;
        };
        ck.metadata["memmamba.task"] = "dna-passkey-recall";
        ck.metadata["memmamba.curriculum_lengths"] = join(a.lengths);
        ck.metadata["memmamba.curriculum_steps"] = join(a.steps);
        ck.metadata["memmamba.seed"] = std::to_string(a.seed);
        ck.metadata["memmamba.lr"] = std::to_string(a.lr);
        ck.metadata["memmamba.batch"] = std::to_string(a.batch);
        mm::save_checkpoint(a.out, ck);
        std::fprintf(stderr, "wrote %s\n", a.out.c_str());
      }
    }
    const double train_s = since(t_start);

    // ---- evaluation -------------------------------------------------------------------------
    std::vector<EvalResult> results;
    for (size_t i = 0; i < a.eval.size(); ++i) {
      const auto [L, n] = a.eval[i];
      results.push_back(evaluate(model, L, n, a, a.seed + 1000003ull * (i + 1) + 17));
      const auto& r = results.back();
      std::fprintf(stderr, "eval length %lld: recall %s over %lld sequences (%.0f s)\n", (long long)L,
                   pct(double(r.hits.correct) / double(r.hits.total)).c_str(), (long long)n, r.seconds);
    }

    const char* name = cfg.notes ? "MemMamba (notes on)" : "Mamba (notes off)";
    std::printf("\n### %s: training %.0f s, evaluation %.0f s\n\n", name, train_s, since(t_start) - train_s);
    std::printf("| total length | sequences | recall accuracy | most predicted base | eval s |\n"
                "|---:|---:|---:|---:|---:|\n");
    for (const auto& r : results)
      std::printf("| %lld | %lld | %s | %s | %.0f |\n", (long long)r.L, (long long)r.n,
                  pct(double(r.hits.correct) / double(r.hits.total)).c_str(), pct(r.hits.top_share()).c_str(),
                  r.seconds);
    if (cfg.notes) {
      std::printf("\nDiagnostics per layer (scores and gates: batch element 0 of each evaluation batch;"
                  " pool slots: every sequence, the pool the query BOS reads; τ1 = %.2f, K = %d):\n\n",
                  cfg.tau1, cfg.pool_slots);
      std::printf("| total length | layer | key score | gap score | key > τ1 | gap > τ1 | slots used |"
                  " key slots (of 16) | BOS slot | read gate | cross gate |\n"
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
      for (const auto& r : results)
        for (int l = 0; l < cfg.n_layer; ++l) {
          const auto& d = r.layers[size_t(l)];
          std::printf("| %lld | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", (long long)r.L, l,
                      num(d.key_score.get()).c_str(), num(d.gap_score.get()).c_str(),
                      pct(d.key_above.get()).c_str(), pct(d.gap_above.get()).c_str(),
                      num(d.used_slots.get(), "%.1f").c_str(), num(d.key_slots.get(), "%.2f").c_str(),
                      num(d.bos_slots.get(), "%.2f").c_str(), num(d.gate.get()).c_str(),
                      num(d.cross_gate.get()).c_str());
        }
    }
    std::fflush(stdout);
  } catch (const mm::Error& e) {
    std::fprintf(stderr, "recall_experiment: error: %s\n", e.message().c_str());
    return int(e.code());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "recall_experiment: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
