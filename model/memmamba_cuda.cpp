// MemMamba forward on the CUDA backend, op for op the CPU model's layer (model/memmamba.cpp):
// note write, pool evolution over the piece's segments, the reads, then the Mamba-1 mixer.
// Shapes as in memmamba_cuda.hpp; M = B·T rows of the piece.
#include "model/memmamba_cuda.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <unordered_map>

#include "io/error.hpp"
#include "kernels/cuda/notes.hpp"
#include "model/cuda_layout.hpp"

namespace mm {

using cuda::Buffer;
using cuda::DType;

struct MemMambaCuda::State {
  int64_t batch = 0, position = 0;
  struct Layer {
    Buffer<float> conv_tail, ssm;
    Buffer<int64_t> pos, cand_pos;
    Buffer<float> prio, cand_score, pool_values, cand_values;  // B×K, B×K, B×K×S, B×K×S
    Buffer<int32_t> used, cand_count;
  };
  std::vector<Layer> layers;
};

namespace {

// The segments of a piece (rows of one memory chunk), on the host and the device.
struct HostSegments {
  std::vector<int32_t> t0, t1;
  std::vector<uint8_t> closes;
};

HostSegments make_segments(int64_t pos0, int64_t T, int64_t C) {
  HostSegments s;
  for (int64_t t = 0; t < T;) {
    const int64_t chunk_end = ((pos0 + t) / C + 1) * C;
    const int64_t t1 = std::min(T, chunk_end - pos0);
    s.t0.push_back(int32_t(t));
    s.t1.push_back(int32_t(t1));
    s.closes.push_back(pos0 + t1 == chunk_end ? 1 : 0);
    t = t1;
  }
  return s;
}

template <typename T>
void upload(Buffer<T>& dst, const std::vector<T>& src) {
  dst.reserve(src.size());
  if (!src.empty()) cuda::copy_to_device(dst.data(), src.data(), src.size() * sizeof(T));
}

}  // namespace

struct MemMambaCuda::Impl {
  Config c;
  DType dt;
  Buffer<float> w32;     // all parameters, fp32, each tensor starting on a 256-byte boundary
  Buffer<uint16_t> w16;  // the same in bf16 (the fast path's matrix operands)
  // ParamTable offset → offset in w32/w16 (model/cuda_layout.hpp says why and how).
  std::unordered_map<size_t, size_t> aligned;
  // Per layer: [summary; q (; cross q)] packed so one product writes m and the queries.
  std::vector<Buffer<float>> note_in32;
  std::vector<Buffer<uint16_t>> note_in16;
  std::vector<const LayerIndex*> ix;
  size_t embedding = 0, norm_f = 0;

  // Work buffers, grown on demand and reused by every layer.
  Buffer<int32_t> tokens, seg_t0, seg_t1;
  Buffer<uint8_t> seg_closes;
  Buffer<float> x, s, mq, z, a32, xdbl, dtv, logits;
  cuda::SideStream side;  // the pool walk overlaps other work
  Buffer<uint16_t> v, o, u, a, yg;  // bf16 or fp32 (as raw bytes: sized in floats when f32)
  Buffer<uint16_t> g, g_cross, c_out, c_cross;  // the note reads' gate and output products, same dtype
  Buffer<uint16_t> xin;                // in_proj's x half, same dtype
  Buffer<int32_t> pool_rows, cand_rows, cand_t, cand_n;
  Buffer<float> cand_s;
  std::vector<Buffer<float>> n_ext, kv;      // per layer of the cross window
  std::vector<Buffer<int32_t>> snap;         // per layer of the cross window

  size_t act_bytes() const { return dt == DType::f32 ? 4 : 2; }
  DType act_dtype() const { return dt == DType::f32 ? DType::f32 : DType::bf16; }
  // Products whose operands stay fp32 (slot keys/values, dt_proj): TF32 on the fast path.
  DType f32_products() const { return dt == DType::bf16 ? DType::tf32 : DType::f32; }
  void* w(size_t off) {
    const size_t a = aligned.at(off);
    return dt == DType::f32 ? static_cast<void*>(w32.data() + a) : static_cast<void*>(w16.data() + a);
  }
  // The matrix at off, from its element `skip` on (a block of its rows).
  void* w_row(size_t off, int64_t skip) { return static_cast<char*>(w(off)) + size_t(skip) * act_bytes(); }
  void* packed(int l) {
    return dt == DType::f32 ? static_cast<void*>(note_in32[size_t(l)].data()) : static_cast<void*>(note_in16[size_t(l)].data());
  }
  // A buffer of n activations in the GEMM dtype.
  void* act(Buffer<uint16_t>& b, size_t n) {
    b.reserve(n * act_bytes() / 2);
    return b.data();
  }
  float* f(size_t off) { return w32.data() + aligned.at(off); }
};

MemMambaCuda::MemMambaCuda(const Config& cfg, const std::vector<float>& params, DType gemm)
    : cfg_(cfg), table_((cfg.validate(), cfg)), impl_(std::make_unique<Impl>()) {
  if (params.size() != table_.total())
    throw Error("parameter count " + std::to_string(params.size()) + " does not match the config");
  if (!cuda::available()) throw Error("no CUDA device is available");
  if (gemm != DType::f32 && gemm != DType::bf16) throw Error("the CUDA model runs its products in f32 or bf16");
  if (cfg.notes && cfg.memory_chunk > 1024)
    throw Error("the CUDA backend supports memory_chunk up to 1024 (this model has " +
                std::to_string(cfg.memory_chunk) + ")");
  Impl& I = *impl_;
  I.c = cfg;
  I.dt = gemm;
  const DeviceLayout layout(table_);
  I.aligned = layout.at;
  const std::vector<float> padded = layout.pad(table_, params);
  I.w32 = Buffer<float>(padded.size());
  cuda::copy_to_device(I.w32.data(), padded.data(), padded.size() * sizeof(float));
  I.w16 = Buffer<uint16_t>(padded.size());
  cuda::to_bf16(I.w16.data(), I.w32.data(), padded.size());
  I.embedding = table_.embedding();
  I.norm_f = table_.norm_f();
  const int64_t d = cfg.d_model, S = cfg.summary_dim;
  for (int l = 0; l < cfg.n_layer; ++l) {
    const LayerIndex& li = table_.layer(l);
    I.ix.push_back(&li);
    if (!cfg.notes) continue;
    std::vector<float> packed(params.begin() + long(li.summary), params.begin() + long(li.summary + size_t(S * d)));
    packed.insert(packed.end(), params.begin() + long(li.read.q), params.begin() + long(li.read.q + size_t(S * d)));
    if (cfg.has_cross(l))
      packed.insert(packed.end(), params.begin() + long(li.cross.q), params.begin() + long(li.cross.q + size_t(S * d)));
    Buffer<float> p32(packed.size());
    cuda::copy_to_device(p32.data(), packed.data(), packed.size() * sizeof(float));
    Buffer<uint16_t> p16(packed.size());
    cuda::to_bf16(p16.data(), p32.data(), packed.size());
    I.note_in32.push_back(std::move(p32));
    I.note_in16.push_back(std::move(p16));
  }
  const int window = std::max(1, cfg.cross_layer_period);
  I.n_ext.resize(static_cast<size_t>(window));
  I.kv.resize(static_cast<size_t>(window));
  I.snap.resize(static_cast<size_t>(window));
}

MemMambaCuda::~MemMambaCuda() = default;

std::unique_ptr<MemMambaCuda::State, void (*)(MemMambaCuda::State*)> MemMambaCuda::new_state(int64_t B) const {
  std::unique_ptr<State, void (*)(State*)> st(new State, [](State* p) { delete p; });
  st->batch = B;
  const int64_t E = cfg_.d_inner(), N = cfg_.d_state, k = cfg_.d_conv, K = cfg_.pool_slots, S = cfg_.summary_dim;
  st->layers.resize(size_t(cfg_.n_layer));
  for (auto& L : st->layers) {
    L.conv_tail = Buffer<float>(size_t(B * (k - 1) * E));
    L.ssm = Buffer<float>(size_t(B * E * N));
    cuda::fill_zero(L.conv_tail.data(), L.conv_tail.size() * 4);
    cuda::fill_zero(L.ssm.data(), L.ssm.size() * 4);
    if (!cfg_.notes) continue;
    L.pos = Buffer<int64_t>(size_t(B * K));
    L.cand_pos = Buffer<int64_t>(size_t(B * K));
    L.prio = Buffer<float>(size_t(B * K));
    L.cand_score = Buffer<float>(size_t(B * K));
    L.pool_values = Buffer<float>(size_t(B * K * S));
    L.cand_values = Buffer<float>(size_t(B * K * S));
    L.used = Buffer<int32_t>(static_cast<size_t>(B));
    L.cand_count = Buffer<int32_t>(static_cast<size_t>(B));
    std::vector<int64_t> none(size_t(B * K), -1);
    cuda::copy_to_device(L.pos.data(), none.data(), none.size() * 8);
    cuda::copy_to_device(L.cand_pos.data(), none.data(), none.size() * 8);
    for (auto* b : {&L.prio, &L.cand_score, &L.pool_values, &L.cand_values}) cuda::fill_zero(b->data(), b->size() * 4);
    cuda::fill_zero(L.used.data(), size_t(B) * 4);
    cuda::fill_zero(L.cand_count.data(), size_t(B) * 4);
  }
  return st;
}

int64_t MemMambaCuda::position(const State& st) const { return st.position; }

std::vector<int64_t> MemMambaCuda::pool_positions(const State& st, int layer, int64_t b) const {
  const int64_t K = cfg_.pool_slots;
  std::vector<int64_t> pos(static_cast<size_t>(K));
  cuda::copy_to_host(pos.data(), st.layers.at(static_cast<size_t>(layer)).pos.data() + b * K, size_t(K) * 8);
  pos.erase(std::remove(pos.begin(), pos.end(), int64_t(-1)), pos.end());
  return pos;
}

void MemMambaCuda::forward(const int32_t* tokens_host, int64_t B, int64_t T, float* logits_host, State* state) {
  std::unique_ptr<State, void (*)(State*)> fresh(nullptr, [](State* p) { delete p; });
  if (!state) {
    fresh = new_state(B);
    state = fresh.get();
  }
  if (state->batch != B) throw Error("stream state batch does not match the input");
  Impl& I = *impl_;
  const Config& c = cfg_;
  const int64_t D = c.d_model, E = c.d_inner(), N = c.d_state, R = c.rank(), S = c.summary_dim,
                K = c.pool_slots, V = c.vocab, XW = R + 2 * N, H = c.note_heads, dh = c.head_dim();
  const int window = std::max(1, c.cross_layer_period);
  const int64_t piece = std::max<int64_t>(1, max_piece);
  auto last = std::chrono::steady_clock::now();
  auto add = [&](const char* group, double s) {
    for (auto& [name, total] : *profile)
      if (name == group) {
        total += s;
        return;
      }
    profile->emplace_back(group, s);
  };
  auto tick = [&](const char* group) {  // profile: time since the previous tick goes to `group`
    if (!profile) return;
    cuda::synchronize();
    const auto now = std::chrono::steady_clock::now();
    add(group, std::chrono::duration<double>(now - last).count());
    last = now;
  };

  for (int64_t p0 = 0; p0 < T; p0 += piece) {
    const int64_t Tp = std::min(piece, T - p0), M = B * Tp, pos0 = state->position;
    // Tokens of this piece, sequence by sequence.
    std::vector<int32_t> tok(static_cast<size_t>(M));
    for (int64_t b = 0; b < B; ++b) std::copy_n(tokens_host + b * T + p0, Tp, tok.begin() + b * Tp);
    upload(I.tokens, tok);
    I.x.reserve(size_t(M * D));
    cuda::embedding_forward(I.x.data(), I.tokens.data(), I.f(I.embedding), M, D);
    tick("upload, embedding");
    const HostSegments hs = make_segments(pos0, Tp, c.memory_chunk);
    upload(I.seg_t0, hs.t0);
    upload(I.seg_t1, hs.t1);
    upload(I.seg_closes, hs.closes);
    const cuda::Segments segs{I.seg_t0.data(), I.seg_t1.data(), I.seg_closes.data(), int64_t(hs.t0.size())};
    const int64_t ext_rows = 2 * B * K + M;

    for (int l = 0; l < c.n_layer; ++l) {
      const LayerIndex& li = *I.ix[size_t(l)];
      State::Layer& st = state->layers[size_t(l)];
      const void* res_g[2] = {nullptr, nullptr};  // the note reads' (gate, output) products
      const float* res_gb[2] = {nullptr, nullptr};  // and the gates' biases
      const void* res_c[2] = {nullptr, nullptr};
      int nres = 0;
      if (c.notes) {
        const int slot = l % window;
        const bool cross = c.has_cross(l);
        const int64_t qcols = cross ? 3 * S : 2 * S;  // [m | q | q_cross]
        // Note write: v, scores, summaries into this layer's extended rows.
        void* v = I.act(I.v, size_t(M * D));
        I.s.reserve(static_cast<size_t>(M));
        cuda::rmsnorm_forward(v, I.dt, I.x.data(), I.f(li.note_norm), M, D, float(c.rms_eps), I.s.data(),
                              I.f(li.score_w), I.f(li.score_b));
        I.mq.reserve(size_t(M * qcols));
        cuda::linear_forward(I.mq.data(), qcols, v, D, I.packed(l), nullptr, M, D, qcols, I.dt, false);
        Buffer<float>& next = I.n_ext[size_t(slot)];
        next.reserve(size_t(ext_rows * S));
        cuda::copy_device(next.data(), st.pool_values.data(), size_t(B * K * S) * 4);
        cuda::copy_device(next.data() + B * K * S, st.cand_values.data(), size_t(B * K * S) * 4);
        cuda::note_scale_forward(next.data() + 2 * B * K * S, S, I.s.data(), I.mq.data(), qcols, M, S);
        tick("notes: norm, score, summary and query products");
        // The pool each segment reads, and the state after the piece.
        Buffer<int32_t>& snap = I.snap[size_t(slot)];
        snap.reserve(size_t(segs.count * B * K));
        I.pool_rows.reserve(size_t(B * K));
        I.cand_rows.reserve(size_t(B * K));
        I.cand_s.reserve(size_t(segs.count * B * K));
        I.cand_t.reserve(size_t(segs.count * B * K));
        I.cand_n.reserve(size_t(segs.count * B));
        // The pool's walk is sequential (one warp per sequence): it runs on the side stream while
        // the default stream computes what does not depend on it (the own read's slot keys and
        // values, both reads' gate products). The segments' candidates are found first, on the
        // default stream, so the walk is ready to start (at the side stream's higher priority)
        // before the products take every multiprocessor.
        const cuda::PoolScratch scratch{I.cand_s.data(), I.cand_t.data(), I.cand_n.data()};
        cuda::pool_candidates(scratch, I.s.data(), segs, B, Tp, K, float(c.tau1));
        I.side.fork();
        cuda::pool_walk(snap.data(), {st.pos.data(), st.prio.data(), st.used.data(), st.cand_pos.data(),
                                      st.cand_score.data(), st.cand_count.data()},
                        I.pool_rows.data(), I.cand_rows.data(), pos0, segs, B, Tp, K, scratch, I.side.handle());
        cuda::gather_rows(st.pool_values.data(), next.data(), I.pool_rows.data(), B * K, S, I.side.handle());
        cuda::gather_rows(st.cand_values.data(), next.data(), I.cand_rows.data(), B * K, S, I.side.handle());

        // Reads: own pool, then (every p-th layer) the union of the window's pools.
        auto slot_kv = [&](const LayerIndex::Read& rx, int sl) {
          Buffer<float>& kv = I.kv[size_t(sl % window)];
          kv.reserve(size_t(ext_rows * 2 * S));
          cuda::linear_forward(kv.data(), 2 * S, I.n_ext[size_t(sl % window)].data(), S, I.f(rx.k), nullptr, ext_rows, S,
                               2 * S, I.f32_products(), false);
          return cuda::ReadSource{kv.data(), I.snap[size_t(sl % window)].data()};
        };
        // The gate and output products are only read back by the gated residual: in the
        // activation dtype (bf16 on the fast path, half the bytes written and read). The gate's
        // bias is added there too (no pass of its own over M×D values).
        auto gate = [&](const LayerIndex::Read& rx, Buffer<uint16_t>& g) {
          cuda::linear_forward(I.act(g, size_t(M * D)), D, v, D, I.w(rx.gate_w), nullptr, M, D, D, I.dt, false,
                               I.act_dtype());
        };
        // A read's output product; its gated residual lands in the mixer's norm below.
        auto finish = [&](const LayerIndex::Read& rx, const std::vector<cuda::ReadSource>& src, const float* q,
                          const Buffer<uint16_t>& g, Buffer<uint16_t>& c_out) {
          void* o = I.act(I.o, size_t(M * S));
          cuda::pool_read_forward(o, I.dt, q, qcols, src.data(), int(src.size()), segs, B, Tp, K, H, dh);
          tick("notes: pool attention");
          cuda::linear_forward(I.act(c_out, size_t(M * D)), D, o, S, I.w(rx.o), nullptr, M, S, D, I.dt, false,
                               I.act_dtype());
          tick("notes: output products");
          res_g[nres] = g.data();
          res_gb[nres] = I.f(rx.gate_b);
          res_c[nres++] = c_out.data();
        };
        const std::vector<cuda::ReadSource> own{slot_kv(li.read, l)};
        gate(li.read, I.g);
        if (cross) gate(li.cross, I.g_cross);
        I.side.join();
        tick("notes: pool walk, overlapped with own slot keys/values and gate products");
        if (profile) add("  (of which the pool walk's own span on the side stream)", I.side.last_span_ms() / 1e3);
        // Both reads use the same v (the layer's input), so their residuals can land together.
        finish(li.read, own, I.mq.data() + S, I.g, I.c_out);
        if (cross) {
          std::vector<cuda::ReadSource> src;
          for (int sl = l - c.cross_layer_period + 1; sl <= l; ++sl) src.push_back(slot_kv(li.cross, sl));
          tick("notes: cross slot keys/values");
          finish(li.cross, src, I.mq.data() + 2 * S, I.g_cross, I.c_cross);
        }
      }
      // Mixer (Mamba-1); out_proj accumulates into the residual stream.
      void* u = I.act(I.u, size_t(M * D));
      if (nres > 0) {
        cuda::gated_residual_rmsnorm_forward(u, I.dt, I.x.data(), res_g, res_gb, res_c, nres, I.act_dtype(),
                                             I.f(li.norm), M, D, float(c.rms_eps));
        tick("notes gated residuals + mixer: norm");
      } else {
        cuda::rmsnorm_forward(u, I.dt, I.x.data(), I.f(li.norm), M, D, float(c.rms_eps));
        tick("mixer: norm");
      }
      // in_proj as two products: x in the activation dtype (the conv's input), z in fp32 (the
      // scan reads it; a bf16 z measured slower there, see kernels/cuda/scan.cu).
      void* xin = I.act(I.xin, size_t(M * E));
      I.z.reserve(size_t(M * E));
      cuda::linear_forward(xin, E, u, D, I.w(li.in_proj), nullptr, M, D, E, I.dt, false, I.act_dtype());
      cuda::linear_forward(I.z.data(), E, u, D, I.w_row(li.in_proj, E * D), nullptr, M, D, E, I.dt, false);
      tick("mixer: in_proj");
      void* a = I.act(I.a, size_t(M * E));
      I.a32.reserve(size_t(M * E));
      cuda::conv1d_silu_forward(a, I.dt, I.a32.data(), st.conv_tail.data(), xin, E, I.f(li.conv_w),
                                I.f(li.conv_b), B, Tp, E, c.d_conv);
      tick("mixer: conv + SiLU");
      I.xdbl.reserve(size_t(M * XW));
      cuda::linear_forward(I.xdbl.data(), XW, a, E, I.w(li.x_proj), nullptr, M, E, XW, I.dt, false);
      void* yg = I.act(I.yg, size_t(M * E));
      I.dtv.reserve(size_t(M * E));
      cuda::linear_forward(I.dtv.data(), E, I.xdbl.data(), XW, I.f(li.dt_w), I.f(li.dt_b), M, R, E, I.f32_products(), false);
      tick("mixer: x_proj, dt_proj");
      cuda::scan_forward(yg, I.dt, st.ssm.data(), I.a32.data(), I.dtv.data(), I.f(li.A_log), I.xdbl.data() + R,
                         I.xdbl.data() + R + N, XW, I.f(li.D), I.z.data(), E, B, Tp, E, N);
      tick("mixer: selective scan");
      cuda::linear_forward(I.x.data(), D, yg, E, I.w(li.out_proj), nullptr, M, E, D, I.dt, true);
      tick("mixer: out_proj");
    }
    // Final norm and the tied head.
    void* hf = I.act(I.u, size_t(M * D));
    cuda::rmsnorm_forward(hf, I.dt, I.x.data(), I.f(I.norm_f), M, D, float(c.rms_eps));
    I.logits.reserve(size_t(M * V));
    cuda::linear_forward(I.logits.data(), V, hf, D, I.w(I.embedding), nullptr, M, D, V, I.dt, false);
    tick("head");
    state->position += Tp;
    if (logits_host) {
      std::vector<float> out(size_t(M * V));
      cuda::copy_to_host(out.data(), I.logits.data(), out.size() * 4);
      for (int64_t b = 0; b < B; ++b)
        std::copy_n(out.begin() + b * Tp * V, Tp * V, logits_host + (b * T + p0) * V);
    }
  }
  cuda::synchronize();
}

std::unique_ptr<MemMambaCuda::State, void (*)(MemMambaCuda::State*)> MemMambaCuda::copy_state(const State& src) const {
  std::unique_ptr<State, void (*)(State*)> st(new State, [](State* p) { delete p; });
  st->batch = src.batch;
  st->position = src.position;
  auto dup = []<typename E>(Buffer<E>& dst, const Buffer<E>& from) {  // same size and contents
    dst = Buffer<E>(from.size());
    cuda::copy_device(dst.data(), from.data(), from.size() * sizeof(E));
  };
  st->layers.resize(src.layers.size());
  for (size_t l = 0; l < src.layers.size(); ++l) {
    const State::Layer& a = src.layers[l];
    State::Layer& b = st->layers[l];
    dup(b.conv_tail, a.conv_tail);
    dup(b.ssm, a.ssm);
    dup(b.pos, a.pos);
    dup(b.cand_pos, a.cand_pos);
    dup(b.prio, a.prio);
    dup(b.cand_score, a.cand_score);
    dup(b.pool_values, a.pool_values);
    dup(b.cand_values, a.cand_values);
    dup(b.used, a.used);
    dup(b.cand_count, a.cand_count);
  }
  return st;
}

}  // namespace mm
