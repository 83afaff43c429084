// MemMamba's training pass on the CUDA backend, op for op the CPU model's forward_backward
// (model/memmamba.cpp): the forward keeps each layer's input, its summaries n (the rows the
// pools refer to) and the pool each segment read; the backward recomputes one layer at a time
// from its input and runs its ops' backward twins. Shapes as in memmamba_train_cuda.hpp.
//
// Summaries use the inference path's "extended rows" (kernels/cuda/notes.hpp): rows [0, 2·B·K)
// stand for a carried pool and candidates, which a training pass (fresh state) never has, so
// they stay zero and every snapshot refers to the piece's own rows.
#include "model/memmamba_train_cuda.hpp"

#include <algorithm>
#include <chrono>

#include "io/error.hpp"
#include "kernels/cuda/backward.hpp"
#include "kernels/cuda/notes.hpp"
#include "model/cuda_layout.hpp"

namespace mm {

using cuda::Buffer;
using cuda::DType;

struct MemMambaCudaTraining::Impl {
  Config c;
  const ParamTable* table = nullptr;
  DeviceLayout layout;
  DType gd;  // matrix products
  Buffer<float> w, g;  // parameters and gradients in the device layout
  std::vector<const LayerIndex*> ix;
  std::vector<std::pair<std::string, double>>* profile = nullptr;
  std::chrono::steady_clock::time_point last;

  // Kept from the forward for the backward.
  Buffer<int32_t> tokens, targets, seg_t0, seg_t1;
  Buffer<uint8_t> seg_closes;
  Buffer<float> inputs;             // L×M×D: each layer's input
  std::vector<Buffer<float>> n_ext;  // per layer: ext rows × S
  std::vector<Buffer<int32_t>> snap; // per layer: nseg×B×K
  // One layer's activations (overwritten by each layer).
  Buffer<float> x, v, s, mq, o_r, o_c, g_r, g_c, c_r, c_c, x_mid, u, xz, a, xdbl, dtv, yg, tail, h;
  std::vector<Buffer<float>> kv;     // per source of a read (window)
  // Pool state of the forward (reset per layer) and its scratch.
  Buffer<int64_t> pos, cand_pos;
  Buffer<float> prio, cand_score, cand_s;
  Buffer<int32_t> used, cand_count, pool_rows, cand_rows, cand_t, cand_n;
  // Gradients.
  Buffer<float> dx, dyg, da, ddt, dxz, dxdbl, du, dv, dg, dc, dO, dmq, ds, logits, dlogits, hf, dhf;
  std::vector<Buffer<float>> dkv, dn_ext;

  Impl(const Config& cfg, const ParamTable& t, DType products) : c(cfg), table(&t), layout(t), gd(products) {}

  float* W(size_t off) { return w.data() + layout.at.at(off); }
  float* G(size_t off) { return g.data() + layout.at.at(off); }
  void tick(const char* group) {
    if (!profile) return;
    cuda::synchronize();
    const auto now = std::chrono::steady_clock::now();
    const double sec = std::chrono::duration<double>(now - last).count();
    last = now;
    for (auto& [name, total] : *profile)
      if (name == group) {
        total += sec;
        return;
      }
    profile->emplace_back(group, sec);
  }
};

namespace {

template <typename T>
void upload(Buffer<T>& dst, const std::vector<T>& src) {
  dst.reserve(src.size());
  if (!src.empty()) cuda::copy_to_device(dst.data(), src.data(), src.size() * sizeof(T));
}

template <typename T>
T* zeroed(Buffer<T>& b, size_t n) {
  b.reserve(n);
  cuda::fill_zero(b.data(), n * sizeof(T));
  return b.data();
}

template <typename T>
T* sized(Buffer<T>& b, size_t n) {
  b.reserve(n);
  return b.data();
}

}  // namespace

MemMambaCudaTraining::MemMambaCudaTraining(const Config& cfg, DType products)
    : cfg_(cfg), table_((cfg.validate(), cfg)) {
  if (!cuda::available()) throw Error("no CUDA device is available");
  if (products != DType::f32 && products != DType::tf32)
    throw Error("CUDA training runs its matrix products in fp32 or TF32");
  if (cfg.notes && cfg.memory_chunk > 1024)
    throw Error("the CUDA backend supports memory_chunk up to 1024 (this model has " +
                std::to_string(cfg.memory_chunk) + ")");
  impl_ = std::make_unique<Impl>(cfg, table_, products);
  Impl& I = *impl_;
  I.w = Buffer<float>(I.layout.total);
  I.g = Buffer<float>(I.layout.total);
  for (int l = 0; l < cfg.n_layer; ++l) I.ix.push_back(&table_.layer(l));
  const size_t L = size_t(cfg.n_layer), window = size_t(std::max(1, cfg.cross_layer_period));
  I.n_ext.resize(L);
  I.snap.resize(L);
  I.dn_ext.resize(L);
  I.kv.resize(window);
  I.dkv.resize(window);
}

MemMambaCudaTraining::~MemMambaCudaTraining() = default;

void MemMambaCudaTraining::set_params(const std::vector<float>& params) {
  if (params.size() != table_.total())
    throw Error("parameter count " + std::to_string(params.size()) + " does not match the config");
  const std::vector<float> padded = impl_->layout.pad(table_, params);
  cuda::copy_to_device(impl_->w.data(), padded.data(), padded.size() * sizeof(float));
}

double MemMambaCudaTraining::forward_backward(const int32_t* tokens_host, const int32_t* targets_host,
                                              int64_t B, int64_t T, double scale, int64_t* counted,
                                              float* grads, float* logits_host) {
  Impl& I = *impl_;
  const Config& c = cfg_;
  if (B <= 0 || T <= 0) throw Error("a training batch needs B > 0 sequences of T > 0 tokens");
  const int64_t M = B * T, D = c.d_model, E = c.d_inner(), N = c.d_state, R = c.rank(), S = c.summary_dim,
                K = c.pool_slots, V = c.vocab, XW = R + 2 * N, H = c.note_heads, dh = c.head_dim(),
                k = c.d_conv;
  const int L = c.n_layer;
  const float eps = float(c.rms_eps);
  const DType gd = I.gd;
  I.profile = profile;
  I.last = std::chrono::steady_clock::now();
  upload(I.tokens, std::vector<int32_t>(tokens_host, tokens_host + M));
  upload(I.targets, std::vector<int32_t>(targets_host, targets_host + M));
  cuda::fill_zero(I.g.data(), I.layout.total * sizeof(float));

  // Segments: rows of one memory chunk (all sequences start at position 0).
  std::vector<int32_t> t0s, t1s;
  std::vector<uint8_t> closes;
  for (int64_t t = 0; t < T;) {
    const int64_t t1 = std::min(T, (t / c.memory_chunk + 1) * c.memory_chunk);
    t0s.push_back(int32_t(t));
    t1s.push_back(int32_t(t1));
    closes.push_back(t1 % c.memory_chunk == 0 ? 1 : 0);
    t = t1;
  }
  upload(I.seg_t0, t0s);
  upload(I.seg_t1, t1s);
  upload(I.seg_closes, closes);
  const cuda::Segments segs{I.seg_t0.data(), I.seg_t1.data(), I.seg_closes.data(), int64_t(t0s.size())};
  const int64_t nseg = segs.count, ext_rows = 2 * B * K + M, ext0 = 2 * B * K;
  const int64_t qcols = 3 * S;  // [m | q | q_cross]

  float* x = sized(I.x, size_t(M * D));
  float* inputs = sized(I.inputs, size_t(L) * size_t(M * D));
  cuda::embedding_forward(x, I.tokens.data(), I.W(table_.embedding()), M, D);

  // One layer's forward; with replay the pools come from the first pass's snapshots.
  auto layer_forward = [&](int l, bool replay) {
    const LayerIndex& li = *I.ix[size_t(l)];
    if (c.notes) {
      float* v = sized(I.v, size_t(M * D));
      float* s = sized(I.s, size_t(M));
      float* mq = sized(I.mq, size_t(M * qcols));
      cuda::rmsnorm_forward(v, DType::f32, x, I.W(li.note_norm), M, D, eps, s, I.W(li.score_w), I.W(li.score_b));
      cuda::linear_forward(mq, qcols, v, D, I.W(li.summary), nullptr, M, D, S, gd, false);
      cuda::linear_forward(mq + S, qcols, v, D, I.W(li.read.q), nullptr, M, D, S, gd, false);
      if (c.has_cross(l)) cuda::linear_forward(mq + 2 * S, qcols, v, D, I.W(li.cross.q), nullptr, M, D, S, gd, false);
      float* n = zeroed(I.n_ext[size_t(l)], size_t(ext_rows * S));
      cuda::note_scale_forward(n + ext0 * S, S, s, mq, qcols, M, S);
      I.tick("notes: norm, score, summary and query products");
      if (!replay) {
        int32_t* snap = sized(I.snap[size_t(l)], size_t(nseg * B * K));
        std::vector<int64_t> none(size_t(B * K), -1);
        upload(I.pos, none);
        upload(I.cand_pos, none);
        cuda::PoolState st{I.pos.data(), zeroed(I.prio, size_t(B * K)), zeroed(I.used, size_t(B)),
                           I.cand_pos.data(), zeroed(I.cand_score, size_t(B * K)), zeroed(I.cand_count, size_t(B))};
        cuda::pool_evolve(snap, st, sized(I.pool_rows, size_t(B * K)), sized(I.cand_rows, size_t(B * K)), s, 0, segs,
                          B, T, K, float(c.tau1),
                          {sized(I.cand_s, size_t(nseg * B * K)), sized(I.cand_t, size_t(nseg * B * K)),
                           sized(I.cand_n, size_t(nseg * B))});
        I.tick("notes: pool evolution");
      }
      auto read = [&](const LayerIndex::Read& rx, int first, float* o, float* gg, float* cc, const float* q) {
        std::vector<cuda::ReadSource> src;
        for (int sl = first; sl <= l; ++sl) {
          float* kv = sized(I.kv[size_t(sl - first)], size_t(ext_rows * 2 * S));
          cuda::linear_forward(kv, 2 * S, I.n_ext[size_t(sl)].data(), S, I.W(rx.k), nullptr, ext_rows, S, 2 * S, gd, false);
          src.push_back({kv, I.snap[size_t(sl)].data()});
        }
        cuda::pool_read_forward(o, DType::f32, q, qcols, src.data(), int(src.size()), segs, B, T, K, H, dh);
        cuda::linear_forward(cc, D, o, S, I.W(rx.o), nullptr, M, S, D, gd, false);
        cuda::linear_forward(gg, D, v, D, I.W(rx.gate_w), I.W(rx.gate_b), M, D, D, gd, false);
        cuda::gated_residual_forward(x, gg, cc, M, D);
      };
      read(li.read, l, sized(I.o_r, size_t(M * S)), sized(I.g_r, size_t(M * D)), sized(I.c_r, size_t(M * D)), mq + S);
      if (c.has_cross(l))
        read(li.cross, l - c.cross_layer_period + 1, sized(I.o_c, size_t(M * S)), sized(I.g_c, size_t(M * D)),
             sized(I.c_c, size_t(M * D)), mq + 2 * S);
      I.tick("notes: reads");
    }
    float* x_mid = sized(I.x_mid, size_t(M * D));
    cuda::copy_device(x_mid, x, size_t(M * D) * 4);
    float* u = sized(I.u, size_t(M * D));
    float* xz = sized(I.xz, size_t(M * 2 * E));
    float* a = sized(I.a, size_t(M * E));
    float* xdbl = sized(I.xdbl, size_t(M * XW));
    float* dtv = sized(I.dtv, size_t(M * E));
    float* yg = sized(I.yg, size_t(M * E));
    cuda::rmsnorm_forward(u, DType::f32, x, I.W(li.norm), M, D, eps);
    cuda::linear_forward(xz, 2 * E, u, D, I.W(li.in_proj), nullptr, M, D, 2 * E, gd, false);
    cuda::conv1d_silu_forward(a, DType::f32, nullptr, zeroed(I.tail, size_t(B * std::max<int64_t>(k - 1, 1) * E)), xz,
                              2 * E, I.W(li.conv_w), I.W(li.conv_b), B, T, E, k);
    cuda::linear_forward(xdbl, XW, a, E, I.W(li.x_proj), nullptr, M, E, XW, gd, false);
    cuda::linear_forward(dtv, E, xdbl, XW, I.W(li.dt_w), I.W(li.dt_b), M, R, E, gd, false);
    cuda::scan_forward(yg, DType::f32, zeroed(I.h, size_t(B * E * N)), a, dtv, I.W(li.A_log), xdbl + R, xdbl + R + N,
                       XW, I.W(li.D), xz + E, 2 * E, B, T, E, N);
    cuda::linear_forward(x, D, yg, E, I.W(li.out_proj), nullptr, M, E, D, gd, true);
    I.tick("mixer forward");
  };

  for (int l = 0; l < L; ++l) {
    cuda::copy_device(inputs + size_t(l) * size_t(M * D), x, size_t(M * D) * 4);
    layer_forward(l, false);
  }

  // Head and loss.
  float* hf = sized(I.hf, size_t(M * D));
  float* logits = sized(I.logits, size_t(M * V));
  float* dlogits = sized(I.dlogits, size_t(M * V));
  cuda::rmsnorm_forward(hf, DType::f32, x, I.W(table_.norm_f()), M, D, eps);
  cuda::linear_forward(logits, V, hf, D, I.W(table_.embedding()), nullptr, M, D, V, gd, false);
  const double loss = cuda::cross_entropy_forward_backward(dlogits, counted, logits, I.targets.data(), M, V, float(scale));
  if (logits_host) cuda::copy_to_host(logits_host, logits, size_t(M * V) * 4);
  float* dhf = sized(I.dhf, size_t(M * D));
  float* dx = sized(I.dx, size_t(M * D));
  cuda::linear_backward(dhf, D, false, I.G(table_.embedding()), nullptr, dlogits, V, hf, D, I.W(table_.embedding()), M,
                        D, V, gd);
  cuda::rmsnorm_backward(dx, false, I.G(table_.norm_f()), dhf, x, I.W(table_.norm_f()), M, D, eps);
  I.tick("head and loss");
  if (c.notes)
    for (int l = 0; l < L; ++l) zeroed(I.dn_ext[size_t(l)], size_t(ext_rows * S));

  for (int l = L - 1; l >= 0; --l) {
    const LayerIndex& li = *I.ix[size_t(l)];
    cuda::copy_device(x, inputs + size_t(l) * size_t(M * D), size_t(M * D) * 4);
    layer_forward(l, true);
    // Mixer: x_out = x_mid + out_proj(scan(...) ⊙ SiLU(z)).
    float* dyg = sized(I.dyg, size_t(M * E));
    float* da = sized(I.da, size_t(M * E));
    float* ddt = sized(I.ddt, size_t(M * E));
    float* dxz = sized(I.dxz, size_t(M * 2 * E));
    float* dxdbl = sized(I.dxdbl, size_t(M * XW));
    float* du = sized(I.du, size_t(M * D));
    float *a = I.a.data(), *xz = I.xz.data(), *xdbl = I.xdbl.data();
    cuda::linear_backward(dyg, E, false, I.G(li.out_proj), nullptr, dx, D, I.yg.data(), E, I.W(li.out_proj), M, E, D, gd);
    cuda::scan_backward(da, E, ddt, dxz + E, 2 * E, dxdbl + R, dxdbl + R + N, XW, I.G(li.A_log), I.G(li.D), dyg, a,
                        I.dtv.data(), I.W(li.A_log), xdbl + R, xdbl + R + N, XW, I.W(li.D), xz + E, 2 * E, B, T, E, N);
    cuda::linear_backward(dxdbl, XW, false, I.G(li.dt_w), I.G(li.dt_b), ddt, E, xdbl, XW, I.W(li.dt_w), M, R, E, gd);
    cuda::linear_backward(da, E, true, I.G(li.x_proj), nullptr, dxdbl, XW, a, E, I.W(li.x_proj), M, E, XW, gd);
    cuda::conv1d_silu_backward(dxz, 2 * E, I.G(li.conv_w), I.G(li.conv_b), da, xz, 2 * E, I.W(li.conv_w),
                               I.W(li.conv_b), B, T, E, k);
    cuda::linear_backward(du, D, false, I.G(li.in_proj), nullptr, dxz, 2 * E, I.u.data(), D, I.W(li.in_proj), M, D,
                          2 * E, gd);
    cuda::rmsnorm_backward(dx, true, I.G(li.norm), du, I.x_mid.data(), I.W(li.norm), M, D, eps);
    I.tick("mixer backward");
    if (!c.notes) continue;

    // Reads: x_mid = x_in + σ(g)⊙c (+ the cross read), both from v = RMSNorm_n(x_in).
    float* v = I.v.data();
    float* mq = I.mq.data();
    float* dv = sized(I.dv, size_t(M * D));
    float* dmq = sized(I.dmq, size_t(M * qcols));
    float* dg = sized(I.dg, size_t(M * D));
    float* dc = sized(I.dc, size_t(M * D));
    float* dO = sized(I.dO, size_t(M * S));
    bool dv_written = false;
    auto read_backward = [&](const LayerIndex::Read& rx, int first, const float* o, const float* gg, const float* cc,
                             int qcol) {
      cuda::gated_residual_backward(dg, dc, dx, gg, cc, M, D);
      cuda::linear_backward(dv, D, dv_written, I.G(rx.gate_w), I.G(rx.gate_b), dg, D, v, D, I.W(rx.gate_w), M, D, D, gd);
      dv_written = true;
      cuda::linear_backward(dO, S, false, I.G(rx.o), nullptr, dc, D, o, S, I.W(rx.o), M, S, D, gd);
      // The read's slot keys and values, recomputed (the forward's buffers hold the last read's).
      std::vector<cuda::ReadSource> src;
      std::vector<float*> dkv;
      for (int sl = first; sl <= l; ++sl) {
        float* kv = sized(I.kv[size_t(sl - first)], size_t(ext_rows * 2 * S));
        cuda::linear_forward(kv, 2 * S, I.n_ext[size_t(sl)].data(), S, I.W(rx.k), nullptr, ext_rows, S, 2 * S, gd, false);
        src.push_back({kv, I.snap[size_t(sl)].data()});
        dkv.push_back(zeroed(I.dkv[size_t(sl - first)], size_t(ext_rows * 2 * S)));
      }
      cuda::pool_read_backward(dmq + qcol, qcols, dkv.data(), dO, mq + qcol, qcols, src.data(), int(src.size()), segs,
                               B, T, K, H, dh);
      for (int sl = first; sl <= l; ++sl)
        cuda::linear_backward(I.dn_ext[size_t(sl)].data(), S, true, I.G(rx.k), nullptr, dkv[size_t(sl - first)], 2 * S,
                              I.n_ext[size_t(sl)].data(), S, I.W(rx.k), ext_rows, S, 2 * S, gd);
      cuda::linear_backward(dv, D, true, I.G(rx.q), nullptr, dmq + qcol, qcols, v, D, I.W(rx.q), M, D, S, gd);
    };
    read_backward(li.read, l, I.o_r.data(), I.g_r.data(), I.c_r.data(), int(S));
    if (c.has_cross(l))
      read_backward(li.cross, l - c.cross_layer_period + 1, I.o_c.data(), I.g_c.data(), I.c_c.data(), int(2 * S));
    // Write: n = s·m. Every read of this layer's pool (here and in later layers) is done, so
    // its summaries' gradient is complete.
    float* ds = sized(I.ds, size_t(M));
    cuda::note_scale_backward(dmq, qcols, ds, I.dn_ext[size_t(l)].data() + ext0 * S, S, I.s.data(), mq, qcols, M, S);
    cuda::linear_backward(dv, D, true, I.G(li.summary), nullptr, dmq, qcols, v, D, I.W(li.summary), M, D, S, gd);
    cuda::note_score_backward(dv, I.G(li.score_w), I.G(li.score_b), ds, I.s.data(), v, I.W(li.score_w), M, D);
    cuda::rmsnorm_backward(dx, true, I.G(li.note_norm), dv, inputs + size_t(l) * size_t(M * D), I.W(li.note_norm), M,
                           D, eps);
    I.tick("notes backward");
  }
  cuda::embedding_backward(I.G(table_.embedding()), I.tokens.data(), dx, M, D, V);
  std::vector<float> gh(I.layout.total);
  cuda::copy_to_host(gh.data(), I.g.data(), gh.size() * sizeof(float));
  I.layout.add_unpadded(table_, gh, grads);
  I.tick("gradients to the host");
  return loss;
}

}  // namespace mm
