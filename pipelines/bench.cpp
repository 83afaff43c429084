#include "pipelines/bench.hpp"

#include <sys/resource.h>
#include <tbb/info.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <random>

#include "kernels/linear.hpp"
#include "kernels/scan.hpp"
#include "model/memmamba.hpp"
#include "model/trainer.hpp"
#ifdef MEMMAMBA_HAVE_CUDA
#include "kernels/cuda/ops.hpp"
#include "model/cuda_training.hpp"
#include "model/memmamba_cuda.hpp"
#include "model/memmamba_train_cuda.hpp"
#endif

namespace mm::pipelines {

namespace {

using Clock = std::chrono::steady_clock;

// Median seconds of `repeats` runs of f after one warm-up run.
template <typename F>
double time_median(int repeats, F&& f) {
  f();
  std::vector<double> t;
  for (int i = 0; i < std::max(1, repeats); ++i) {
    auto t0 = Clock::now();
    f();
    t.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

std::vector<int32_t> random_dna(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = int32_t(1 + rng() % 4);
  t[0] = 6;
  return t;
}

std::string cpu_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

std::string pow2(int64_t n) {
  int k = 0;
  while ((int64_t(1) << k) < n) ++k;
  return (int64_t(1) << k) == n ? "2^" + std::to_string(k) : std::to_string(n);
}

}  // namespace

double forward_gemm_flops_per_token(const Config& c) {
  const double d = c.d_model, E = c.d_inner(), N = c.d_state, R = c.rank(), S = c.summary_dim,
               K = c.pool_slots, V = c.vocab;
  double per_layer = 2 * d * 2 * E + 2 * E * (R + 2 * N) + 2 * R * E + 2 * E * d;
  double total = 0;
  for (int l = 0; l < c.n_layer; ++l) {
    total += per_layer;
    if (!c.notes) continue;
    const int reads = c.has_cross(l) ? 2 : 1;
    total += 2 * d * S;                          // summary
    total += reads * (2 * d * S + 2 * d * d + 2 * S * d);  // q, gate, o
    total += 2 * 2 * K * S;                      // own pool attention (scores + values)
    if (c.has_cross(l)) total += 2 * 2 * K * c.cross_layer_period * S;
  }
  return total + 2 * d * V;
}

BenchReport bench_cpu(const BenchOptions& o, const Reporter& rep) {
  BenchReport r;
  r.device = "CPU: " + cpu_name() + ", " + std::to_string(tbb::info::default_concurrency()) + " threads";
  std::time_t now = std::time(nullptr);
  char date[32];
  std::strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
  r.date = date;
  r.config_json = o.config.to_json();

  // The GEMM ceiling, at the shape of the model's largest projection (in_proj over 4096 rows).
  {
    const int64_t M = 4096, I = o.config.d_model, O = 2 * o.config.d_inner();
    std::vector<float> a(size_t(M * I), 0.5f), w(size_t(O * I), 0.25f), out(size_t(M * O));
    double s = time_median(o.repeats * 3, [&] {
      cpu::linear_forward(out.data(), O, a.data(), I, w.data(), (const float*)nullptr, M, I, O);
    });
    double rate = 2.0 * M * I * O / s;
    r.rows.push_back({"sgemm (in_proj shape)", std::to_string(M) + "x" + std::to_string(I) + "x" + std::to_string(O),
                      rate / 1e9, "GFLOP/s", "the ceiling below"});
    rep.say("sgemm " + fmt("%.1f", rate / 1e9) + " GFLOP/s");
    const double flops = forward_gemm_flops_per_token(o.config);

    for (bool notes : {true, false}) {
      Config c = o.config;
      c.notes = notes;
      MemMamba<float> model(c, o.seed);
      for (int64_t L : o.infer_lengths) {
        auto tok = random_dna(L, o.seed + 1);
        std::vector<float> logits(size_t(L * c.vocab));
        double t = time_median(o.repeats, [&] { model.forward(tok.data(), 1, L, logits.data()); });
        const double tps = double(L) / t;
        const double f = notes ? flops : forward_gemm_flops_per_token(c);
        r.rows.push_back({std::string("inference, notes ") + (notes ? "on" : "off"), pow2(L), tps,
                          "tokens/s", fmt("%.0f%% of sgemm rate in GEMMs", 100.0 * tps * f / rate)});
        rep.say(r.rows.back().what + " at " + pow2(L) + ": " + fmt("%.0f", tps) + " tokens/s");
      }
    }
  }
  if (o.train_length > 0) {
    MemMamba<float> model(o.config, o.seed);
    TrainConfig tc;
    Trainer<float> tr(model, tc);
    Batch b;
    b.B = 1;
    b.T = o.train_length;
    b.tokens = random_dna(b.T, o.seed + 2);
    b.targets = MemMamba<float>::next_token_targets(b.tokens.data(), 1, b.T);
    double t = time_median(o.repeats, [&] { tr.step([&](int64_t) { return b; }); });
    r.rows.push_back({"training step (fwd+bwd+AdamW)", pow2(b.T), double(b.T) / t, "tokens/s", ""});
    rep.say("training at " + pow2(b.T) + ": " + fmt("%.0f", double(b.T) / t) + " tokens/s");
  }
  if (o.scan_length > 0) {
    const int64_t E = 512, N = 16, L = o.scan_length, XW = 2 * N;
    std::mt19937 rng(3);
    std::uniform_real_distribution<float> u(-1, 1);
    std::vector<float> x(size_t(L * E)), dt(size_t(L * E)), bc(size_t(L * XW)), y(size_t(L * E)),
        A_log(size_t(E * N)), D(size_t(E), 1.0f), h(size_t(E * N));
    for (auto* v : {&x, &dt, &bc}) for (auto& e : *v) e = u(rng);
    for (int64_t i = 0; i < E * N; ++i) A_log[size_t(i)] = std::log(float(i % N + 1));
    double t = time_median(o.repeats, [&] {
      std::fill(h.begin(), h.end(), 0.0f);
      cpu::scan_forward(y.data(), h.data(), x.data(), E, dt.data(), A_log.data(), bc.data(),
                        bc.data() + N, XW, D.data(), 1, L, E, N);
    });
    const double bytes = double(L) * (3.0 * E + XW) * 4.0;  // read u, dt, B, C; write y
    r.rows.push_back({"selective scan E=512 N=16", pow2(L), t * 1e3, "ms",
                      fmt("%.1f GB/s", bytes / t / 1e9)});
  }
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  r.peak_memory_bytes = double(ru.ru_maxrss) * 1024.0;
  return r;
}

#ifdef MEMMAMBA_HAVE_CUDA
bool cuda_built() { return true; }

BenchReport bench_cuda(const BenchOptions& o, const Reporter& rep) {
  BenchReport r;
  r.device = "CUDA: " + cuda::device_name();
  std::time_t now = std::time(nullptr);
  char date[32];
  std::strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
  r.date = date;
  r.config_json = o.config.to_json();
  cuda::reset_peak();
  size_t peak = 0;  // high-water mark over the phases (the training phase resets the counter)
  {  // The bf16 GEMM ceiling (8192³, random operands).
    const int64_t n = 8192;
    std::vector<float> host(size_t(n * n));
    std::mt19937 rng(5);
    std::uniform_real_distribution<float> u(-1, 1);
    for (auto& v : host) v = u(rng);
    cuda::Buffer<float> a32(host.size()), out(host.size());
    cuda::copy_to_device(a32.data(), host.data(), host.size() * 4);
    cuda::Buffer<uint16_t> a16(host.size()), b16(host.size());
    cuda::to_bf16(a16.data(), a32.data(), host.size());
    cuda::to_bf16(b16.data(), a32.data(), host.size());
    cuda::Timer timer;
    std::vector<double> ms;
    for (int i = 0; i < 1 + std::max(3, o.repeats); ++i) {
      timer.start();
      cuda::linear_forward(out.data(), n, a16.data(), n, b16.data(), nullptr, n, n, n, cuda::DType::bf16, false);
      ms.push_back(timer.stop_ms());
    }
    std::sort(ms.begin() + 1, ms.end());
    const double t = ms[1 + (ms.size() - 1) / 2] / 1e3;
    r.rows.push_back({"bf16 GEMM (cuBLASLt)", "8192^3", 2.0 * n * n * n / t / 1e12, "TFLOP/s", "the matrix ceiling"});
  }
  for (bool notes : {false, true}) {
    Config c = o.config;
    c.notes = notes;
    MemMamba<float> init(c, o.seed);  // initialised weights, copied to the device
    MemMambaCuda model(c, init.params(), cuda::DType::bf16);
    for (int64_t L : o.infer_lengths) {
      auto tok = random_dna(L, o.seed + 1);
      double t = time_median(o.repeats, [&] { model.forward(tok.data(), 1, L, nullptr); });
      r.rows.push_back({std::string("inference, notes ") + (notes ? "on" : "off"), pow2(L), double(L) / t,
                        "tokens/s", "batch 1, bf16, pieces of " + pow2(model.max_piece)});
      rep.say(r.rows.back().what + " at " + pow2(L) + ": " + fmt("%.3g", double(L) / t) + " tokens/s");
    }
    // Where the time goes: one extra pass at the largest length, synchronised after each group.
    if (!o.infer_lengths.empty()) {
      const int64_t L = *std::max_element(o.infer_lengths.begin(), o.infer_lengths.end());
      auto tok = random_dna(L, o.seed + 1);
      std::vector<std::pair<std::string, double>> prof;
      model.profile = &prof;
      model.forward(tok.data(), 1, L, nullptr);
      model.profile = nullptr;
      for (const auto& [name, sec] : prof)
        r.rows.push_back({std::string("  notes ") + (notes ? "on" : "off") + ", " + name, pow2(L),
                          sec * 1e3, "ms", fmt("%.1f ns/token", sec * 1e9 / double(L))});
    }
  }
  if (o.train_length > 0) {
    // A whole training step: the GPU pass (forward, recomputing backward, gradients to the
    // host) and AdamW on the host, batch 1; then one profiled pass (synchronised per group).
    for (bool notes : {false, true}) {
      Config c = o.config;
      c.notes = notes;
      MemMamba<float> model(c, o.seed);
      Batch b;
      b.B = 1;
      b.T = o.train_length;
      b.tokens = random_dna(b.T, o.seed + 2);
      b.targets = MemMamba<float>::next_token_targets(b.tokens.data(), 1, b.T);
      {  // the trainer's engine (and its device buffers) lives in this scope only
        cuda::synchronize();
        peak = std::max(peak, cuda::peak_bytes());
        cuda::reset_peak();
        Trainer<float> tr(model, TrainConfig{}, make_cuda_gradient_pass(c));
        const double t = time_median(o.repeats, [&] { tr.step([&](int64_t) { return b; }); });
        r.rows.push_back({std::string("training step, notes ") + (notes ? "on" : "off"), pow2(b.T), double(b.T) / t,
                          "tokens/s", "batch 1, fp32 activations, TF32 products, AdamW on the host"});
        rep.say(r.rows.back().what + " at " + pow2(b.T) + ": " + fmt("%.3g", double(b.T) / t) + " tokens/s");
        r.rows.push_back({std::string("  training step, notes ") + (notes ? "on" : "off") + ": device memory", pow2(b.T),
                          double(cuda::peak_bytes()) / 1048576.0, "MiB", "peak allocated through the backend"});
        peak = std::max(peak, cuda::peak_bytes());
      }
      MemMambaCudaTraining engine(c, cuda::DType::tf32);
      engine.set_params(model.params());
      std::vector<float> grads(model.params().size());
      std::vector<std::pair<std::string, double>> prof;
      engine.profile = &prof;
      int64_t n = 0;
      engine.forward_backward(b.tokens.data(), b.targets.data(), 1, b.T, 1.0, &n, grads.data());
      for (const auto& [name, sec] : prof)
        r.rows.push_back({std::string("  training, notes ") + (notes ? "on" : "off") + ", " + name, pow2(b.T),
                          sec * 1e3, "ms", fmt("%.1f ns/token", sec * 1e9 / double(b.T))});
    }
  }
  if (o.scan_length > 0) {
    const int64_t E = 512, N = 16, L = o.scan_length, XW = 2 * N;
    std::mt19937 rng(3);
    std::uniform_real_distribution<float> u(-1, 1);
    std::vector<float> hx(size_t(L * E)), hbc(size_t(L * XW)), hA(size_t(E * N));
    for (auto& e : hx) e = u(rng);
    for (auto& e : hbc) e = u(rng);
    for (int64_t i = 0; i < E * N; ++i) hA[size_t(i)] = std::log(float(i % N + 1));
    cuda::Buffer<float> x(hx.size()), dt(hx.size()), z(hx.size()), bc(hbc.size()), A(hA.size()), D(static_cast<size_t>(E)),
        h(size_t(E * N)), y(hx.size());
    cuda::copy_to_device(x.data(), hx.data(), hx.size() * 4);
    cuda::copy_to_device(dt.data(), hx.data(), hx.size() * 4);
    cuda::copy_to_device(z.data(), hx.data(), hx.size() * 4);
    cuda::copy_to_device(bc.data(), hbc.data(), hbc.size() * 4);
    cuda::copy_to_device(A.data(), hA.data(), hA.size() * 4);
    cuda::copy_to_device(D.data(), hA.data(), size_t(E) * 4);
    cuda::Timer timer;
    std::vector<double> ms;
    for (int i = 0; i < 1 + std::max(3, o.repeats); ++i) {
      cuda::fill_zero(h.data(), h.size() * 4);
      timer.start();
      cuda::scan_forward(y.data(), cuda::DType::f32, h.data(), x.data(), dt.data(), A.data(), bc.data(),
                         bc.data() + N, XW, D.data(), z.data(), E, 1, L, E, N);
      ms.push_back(timer.stop_ms());
    }
    std::sort(ms.begin() + 1, ms.end());
    const double t = ms[1 + (ms.size() - 1) / 2];
    const double bytes = double(L) * (4.0 * E + XW) * 4.0;  // read u, dt, z, B, C; write y (fp32)
    r.rows.push_back({"selective scan E=512 N=16 (fused softplus, D, gate)", pow2(L), t, "ms",
                      fmt("%.0f GB/s", bytes / (t / 1e3) / 1e9)});
  }
  r.peak_memory_bytes = double(std::max(peak, cuda::peak_bytes()));
  return r;
}
#else
bool cuda_built() { return false; }
BenchReport bench_cuda(const BenchOptions&, const Reporter&) {
  throw UsageError("this build has no CUDA backend (configure with the default preset on a machine with nvcc)");
}
#endif

std::string format_report(const BenchReport& r) {
  std::string s = "# memmamba bench\n# device: " + r.device + "\n# date: " + r.date +
                  "\n# config: " + r.config_json + "\n";
  s += "what\tsize\tvalue\tunit\tnote\n";
  for (const auto& row : r.rows)
    s += row.what + "\t" + row.size + "\t" + fmt(row.value >= 100 ? "%.0f" : "%.3g", row.value) + "\t" +
         row.unit + "\t" + row.note + "\n";
  s += "peak memory\t-\t" + fmt("%.0f", r.peak_memory_bytes / 1048576.0) + "\tMiB\tresident set\n";
  return s;
}

}  // namespace mm::pipelines
