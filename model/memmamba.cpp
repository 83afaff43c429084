// MemMamba on the CPU, built from the ops of kernels/. Shapes as in memmamba.hpp.
//
// A piece of T tokens runs layer by layer over all its rows. Within a layer the note write comes
// first (scores and summaries of every row), then the pool is evolved chunk by chunk, recording
// the pool each segment reads (a segment: the rows of one memory chunk inside the piece); then the
// reads, then the mixer. Later layers' cross-layer reads use the recorded pools of earlier layers,
// so every read sees exactly the pools "as they stood after chunks 0..c−1".
#include "model/memmamba.hpp"

#include <algorithm>
#include <functional>
#include <cmath>
#include <stdexcept>

#include "io/error.hpp"
#include "kernels/conv1d.hpp"
#include "kernels/elementwise.hpp"
#include "kernels/embedding.hpp"
#include "kernels/linear.hpp"
#include "kernels/rmsnorm.hpp"
#include "kernels/scan.hpp"

namespace mm {

namespace {

using cpu::Pool;

// Rows [t0, t1) of every sequence in the piece that belong to one memory chunk.
struct Segment {
  int64_t t0, t1;
  bool closes_chunk;  // the chunk ends with this segment: its candidates are committed after it
};

std::vector<Segment> segments(int64_t pos0, int64_t T_, int64_t C) {
  std::vector<Segment> segs;
  for (int64_t t = 0; t < T_;) {
    int64_t chunk_end = ((pos0 + t) / C + 1) * C;  // absolute
    int64_t t1 = std::min(T_, chunk_end - pos0);
    segs.push_back({t, t1, pos0 + t1 == chunk_end});
    t = t1;
  }
  return segs;
}

// The pools each segment read, per layer: [segment][batch].
template <typename T>
using Snapshots = std::vector<std::vector<Pool<T>>>;

// One slot of a read: which layer's pool it came from (for routing gradients).
struct SlotSource {
  int layer;
  int64_t pos;
};

template <typename T>
struct SegmentRead {
  int64_t b, t0, t1;
  std::vector<SlotSource> src;
  std::vector<T> slots, keys, vals, P;  // m×S, m×S, m×S, rows×H×m
  int64_t m() const { return int64_t(src.size()); }
};

template <typename T>
struct ReadActs {
  std::vector<T> q, g, o, c;  // M×S, M×D, M×S, M×D
  std::vector<SegmentRead<T>> segs;
};

// Every intermediate of one layer, kept when the backward pass needs it.
template <typename T>
struct LayerActs {
  std::vector<T> x_in;                          // M×D
  std::vector<T> v, rstd_v, s, m, n;            // M×D, M, M, M×S, M×S
  ReadActs<T> read, cross;
  std::vector<T> x_mid;                         // M×D, input of the mixer
  std::vector<T> u, rstd_u, xz, conv_pre, a;    // M×D, M, M×2E, M×E, M×E
  std::vector<T> xdbl, dt, y, yg;               // M×(R+2N), M×E, M×E, M×E
};

template <typename T>
T* at(std::vector<T>& p, size_t off) { return p.data() + off; }
template <typename T>
const T* at(const std::vector<T>& p, size_t off) { return p.data() + off; }

}  // namespace

template <typename T>
struct MemMamba<T>::Impl {
  // Runs layer l over x (M×D, in place). With replay, snaps[l] already holds the pools each
  // segment reads (the backward pass's recomputation) and the pool state is left alone.
  static void layer_forward(MemMamba<T>& mdl, int l, T* x, int64_t B, int64_t T_, int64_t pos0,
                            LayerState<T>& st, std::vector<Snapshots<T>>& snaps, bool replay,
                            LayerActs<T>& A, typename Taps<T>::Layer* tap);

  static void read_forward(MemMamba<T>& mdl, int l, bool cross, const T* v, int64_t B, int64_t T_,
                           const std::vector<Segment>& segs, const std::vector<Snapshots<T>>& snaps,
                           ReadActs<T>& R);

  static void layer_backward(MemMamba<T>& mdl, int l, T* dx, int64_t B, int64_t T_,
                             LayerActs<T>& A, std::vector<std::vector<T>>& dn);

  // Embedding and every layer over a piece, continuing `state`: the residual stream (M×D) before
  // the final norm.
  static std::vector<T> forward_layers(MemMamba<T>& mdl, const int32_t* tokens, int64_t B, int64_t T_,
                                       StreamState<T>& state, Taps<T>* taps);

  // One training pass over whole sequences whose head is `head`: given the final hidden states
  // (after the final norm) it fills their gradient and returns the loss. Then the final norm and
  // every layer, each recomputed from its input, run backward into grads.
  static double train_pass(MemMamba<T>& mdl, const int32_t* tokens, int64_t B, int64_t T_, Taps<T>* taps,
                           const std::function<double(const T* hidden, T* d_hidden)>& head);

  static void read_backward(MemMamba<T>& mdl, int l, bool cross, T* dx, T* dv, const T* v,
                            int64_t B, int64_t T_, ReadActs<T>& R,
                            std::vector<std::vector<T>>& dn);
};

template <typename T>
MemMamba<T>::MemMamba(const Config& cfg, uint64_t seed) : cfg_(cfg), table_((cfg.validate(), cfg)) {
  init_params(params_, table_, cfg_, seed);
  grads_.assign(params_.size(), T(0));
}

template <typename T>
MemMamba<T>::MemMamba(const Config& cfg, std::vector<T> params)
    : cfg_(cfg), table_((cfg.validate(), cfg)), params_(std::move(params)) {
  if (params_.size() != table_.total())
    throw Error("parameter count " + std::to_string(params_.size()) + " does not match the config (" +
                std::to_string(table_.total()) + ")");
  grads_.assign(params_.size(), T(0));
}

template <typename T>
MemMamba<T>::~MemMamba() = default;
template <typename T>
MemMamba<T>::MemMamba(MemMamba&&) noexcept = default;

template <typename T>
void MemMamba<T>::zero_grads() {
  std::fill(grads_.begin(), grads_.end(), T(0));
}

template <typename T>
StreamState<T> MemMamba<T>::new_state(int64_t batch) const {
  StreamState<T> s;
  s.batch = batch;
  s.layers.resize(size_t(cfg_.n_layer));
  const int64_t E = cfg_.d_inner();
  for (auto& ls : s.layers) {
    ls.conv_tail.assign(size_t(batch * (cfg_.d_conv - 1) * E), T(0));
    ls.ssm.assign(size_t(batch * E * cfg_.d_state), T(0));
    ls.pool.resize(static_cast<size_t>(batch));
    for (auto& p : ls.pool) {
      p.capacity = cfg_.pool_slots;
      p.width = cfg_.summary_dim;
    }
    ls.cand.resize(static_cast<size_t>(batch));
  }
  return s;
}

template <typename T>
void MemMamba<T>::Impl::read_forward(MemMamba<T>& mdl, int l, bool cross, const T* v, int64_t B,
                                     int64_t T_, const std::vector<Segment>& segs,
                                     const std::vector<Snapshots<T>>& snaps, ReadActs<T>& R) {
  const Config& c = mdl.cfg_;
  const auto& P = mdl.params_;
  const LayerIndex::Read& ix = cross ? mdl.table_.layer(l).cross : mdl.table_.layer(l).read;
  const int64_t M = B * T_, D = c.d_model, S = c.summary_dim, H = c.note_heads, dh = c.head_dim();
  R.q.assign(size_t(M * S), T(0));
  R.g.assign(size_t(M * D), T(0));
  R.o.assign(size_t(M * S), T(0));
  R.c.assign(size_t(M * D), T(0));
  R.segs.clear();
  cpu::linear_forward(R.q.data(), S, v, D, at(P, ix.q), (const T*)nullptr, M, D, S);
  cpu::linear_forward(R.g.data(), D, v, D, at(P, ix.gate_w), at(P, ix.gate_b), M, D, D);
  const int first = cross ? l - c.cross_layer_period + 1 : l;
  for (size_t i = 0; i < segs.size(); ++i)
    for (int64_t b = 0; b < B; ++b) {
      SegmentRead<T> sr{b, segs[i].t0, segs[i].t1, {}, {}, {}, {}, {}};
      for (int src = first; src <= l; ++src) {
        const Pool<T>& pool = snaps[size_t(src)][i][size_t(b)];
        for (int64_t j = 0; j < pool.used(); ++j) sr.src.push_back({src, pool.pos[size_t(j)]});
        sr.slots.insert(sr.slots.end(), pool.values.begin(), pool.values.end());
      }
      const int64_t m = sr.m(), rows = sr.t1 - sr.t0, r0 = b * T_ + sr.t0;
      if (m > 0) {  // an empty pool reads nothing: c stays 0
        sr.keys.resize(size_t(m * S));
        sr.vals.resize(size_t(m * S));
        sr.P.resize(size_t(rows * H * m));
        cpu::linear_forward(sr.keys.data(), S, sr.slots.data(), S, at(P, ix.k), (const T*)nullptr, m, S, S);
        cpu::linear_forward(sr.vals.data(), S, sr.slots.data(), S, at(P, ix.v), (const T*)nullptr, m, S, S);
        cpu::pool_attention_forward(R.o.data() + r0 * S, sr.P.data(), R.q.data() + r0 * S, S,
                                    sr.keys.data(), sr.vals.data(), rows, m, H, dh);
      }
      R.segs.push_back(std::move(sr));
    }
  cpu::linear_forward(R.c.data(), D, R.o.data(), S, at(P, ix.o), (const T*)nullptr, M, S, D);
}

template <typename T>
void MemMamba<T>::Impl::layer_forward(MemMamba<T>& mdl, int l, T* x, int64_t B, int64_t T_,
                                      int64_t pos0, LayerState<T>& st,
                                      std::vector<Snapshots<T>>& snaps, bool replay,
                                      LayerActs<T>& A, typename Taps<T>::Layer* tap) {
  const Config& c = mdl.cfg_;
  const auto& P = mdl.params_;
  const LayerIndex& ix = mdl.table_.layer(l);
  const int64_t M = B * T_, D = c.d_model, E = c.d_inner(), N = c.d_state, R = c.rank(),
                S = c.summary_dim, XW = R + 2 * N;

  if (c.notes) {
    // Note write: scores and summaries of every row.
    A.v.resize(size_t(M * D));
    A.rstd_v.resize(static_cast<size_t>(M));
    A.s.resize(static_cast<size_t>(M));
    A.m.resize(size_t(M * S));
    A.n.resize(size_t(M * S));
    cpu::rmsnorm_forward(A.v.data(), A.rstd_v.data(), x, at(P, ix.note_norm), M, D, c.rms_eps);
    cpu::note_score_forward(A.s.data(), A.v.data(), at(P, ix.score_w), at(P, ix.score_b), M, D);
    cpu::linear_forward(A.m.data(), S, A.v.data(), D, at(P, ix.summary), (const T*)nullptr, M, D, S);
    cpu::note_scale_forward(A.n.data(), A.s.data(), A.m.data(), M, S);

    // The pool each segment reads, then this chunk's candidates, committed at the chunk's end.
    const auto segs = segments(pos0, T_, c.memory_chunk);
    if (!replay) {
      Snapshots<T>& snap = snaps[size_t(l)];
      snap.assign(segs.size(), {});
      for (size_t i = 0; i < segs.size(); ++i) {
        snap[i] = st.pool;
        for (int64_t b = 0; b < B; ++b) {
          for (int64_t t = segs[i].t0; t < segs[i].t1; ++t) {
            const int64_t r = b * T_ + t;
            cpu::candidates_offer(st.cand[size_t(b)], c.pool_slots, S, pos0 + t, A.s[size_t(r)],
                                  A.n.data() + r * S, c.tau1);
          }
          if (segs[i].closes_chunk) cpu::pool_commit(st.pool[size_t(b)], st.cand[size_t(b)]);
        }
      }
    }
    read_forward(mdl, l, false, A.v.data(), B, T_, segs, snaps, A.read);
    if (c.has_cross(l)) read_forward(mdl, l, true, A.v.data(), B, T_, segs, snaps, A.cross);
    cpu::gated_residual_forward(x, A.read.g.data(), A.read.c.data(), M, D);
    if (c.has_cross(l)) cpu::gated_residual_forward(x, A.cross.g.data(), A.cross.c.data(), M, D);

    if (tap) {
      tap->score.assign(A.s.begin(), A.s.begin() + T_);
      tap->pool_read.clear();
      tap->segment_start.clear();
      for (size_t i = 0; i < segs.size(); ++i) {
        tap->pool_read.push_back(snaps[size_t(l)][i][0].pos);
        tap->segment_start.push_back(pos0 + segs[i].t0);
      }
      tap->after_notes.assign(x, x + T_ * D);
    }
  }

  // Mixer (Mamba-1).
  A.x_mid.assign(x, x + M * D);
  A.u.resize(size_t(M * D));
  A.rstd_u.resize(static_cast<size_t>(M));
  A.xz.resize(size_t(M * 2 * E));
  A.conv_pre.resize(size_t(M * E));
  A.a.resize(size_t(M * E));
  A.xdbl.resize(size_t(M * XW));
  A.dt.resize(size_t(M * E));
  A.y.resize(size_t(M * E));
  A.yg.resize(size_t(M * E));
  cpu::rmsnorm_forward(A.u.data(), A.rstd_u.data(), x, at(P, ix.norm), M, D, c.rms_eps);
  cpu::linear_forward(A.xz.data(), 2 * E, A.u.data(), D, at(P, ix.in_proj), (const T*)nullptr, M, D, 2 * E);
  cpu::conv1d_silu_forward(A.a.data(), A.conv_pre.data(), st.conv_tail.data(), A.xz.data(), 2 * E,
                           at(P, ix.conv_w), at(P, ix.conv_b), B, T_, E, int64_t(c.d_conv));
  cpu::linear_forward(A.xdbl.data(), XW, A.a.data(), E, at(P, ix.x_proj), (const T*)nullptr, M, E, XW);
  cpu::linear_forward(A.dt.data(), E, A.xdbl.data(), XW, at(P, ix.dt_w), at(P, ix.dt_b), M, R, E);
  cpu::scan_forward(A.y.data(), st.ssm.data(), A.a.data(), E, A.dt.data(), at(P, ix.A_log),
                    A.xdbl.data() + R, A.xdbl.data() + R + N, XW, at(P, ix.D), B, T_, E, N);
  cpu::gate_silu_forward(A.yg.data(), A.y.data(), A.xz.data() + E, 2 * E, M, E);
  std::vector<T> out(size_t(M * D));
  cpu::linear_forward(out.data(), D, A.yg.data(), E, at(P, ix.out_proj), (const T*)nullptr, M, E, D);
  for (int64_t i = 0; i < M * D; ++i) x[i] += out[size_t(i)];
  if (tap) tap->output.assign(x, x + T_ * D);
}

template <typename T>
void MemMamba<T>::Impl::read_backward(MemMamba<T>& mdl, int l, bool cross, T* dx, T* dv, const T* v,
                                      int64_t B, int64_t T_, ReadActs<T>& R,
                                      std::vector<std::vector<T>>& dn) {
  const Config& c = mdl.cfg_;
  const auto& P = mdl.params_;
  auto& G = mdl.grads_;
  const LayerIndex::Read& ix = cross ? mdl.table_.layer(l).cross : mdl.table_.layer(l).read;
  const int64_t M = B * T_, D = c.d_model, S = c.summary_dim, H = c.note_heads, dh = c.head_dim();
  std::vector<T> dg(size_t(M * D)), dc(size_t(M * D)), dout(size_t(M * S), T(0)), dq(size_t(M * S), T(0));
  cpu::gated_residual_backward(dg.data(), dc.data(), dx, R.g.data(), R.c.data(), M, D);
  cpu::linear_backward(dv, D, at(G, ix.gate_w), at(G, ix.gate_b), dg.data(), D, v, D, at(P, ix.gate_w), M, D, D);
  cpu::linear_backward(dout.data(), S, at(G, ix.o), (T*)nullptr, dc.data(), D, R.o.data(), S, at(P, ix.o), M, S, D);
  for (auto& sr : R.segs) {
    const int64_t m = sr.m(), rows = sr.t1 - sr.t0, r0 = sr.b * T_ + sr.t0;
    if (m == 0) continue;
    std::vector<T> dkeys(size_t(m * S), T(0)), dvals(size_t(m * S), T(0)), dslots(size_t(m * S), T(0));
    cpu::pool_attention_backward(dq.data() + r0 * S, S, dkeys.data(), dvals.data(),
                                 dout.data() + r0 * S, R.q.data() + r0 * S, S, sr.keys.data(),
                                 sr.vals.data(), sr.P.data(), rows, m, H, dh);
    cpu::linear_backward(dslots.data(), S, at(G, ix.k), (T*)nullptr, dkeys.data(), S, sr.slots.data(), S, at(P, ix.k), m, S, S);
    cpu::linear_backward(dslots.data(), S, at(G, ix.v), (T*)nullptr, dvals.data(), S, sr.slots.data(), S, at(P, ix.v), m, S, S);
    // A slot's value is the summary n of its source token: route the gradient back there.
    for (int64_t j = 0; j < m; ++j) {
      T* dst = dn[size_t(sr.src[size_t(j)].layer)].data() + (sr.b * T_ + sr.src[size_t(j)].pos) * S;
      for (int64_t i = 0; i < S; ++i) dst[i] += dslots[size_t(j * S + i)];
    }
  }
  cpu::linear_backward(dv, D, at(G, ix.q), (T*)nullptr, dq.data(), S, v, D, at(P, ix.q), M, D, S);
}

template <typename T>
void MemMamba<T>::Impl::layer_backward(MemMamba<T>& mdl, int l, T* dx, int64_t B, int64_t T_,
                                       LayerActs<T>& A, std::vector<std::vector<T>>& dn) {
  const Config& c = mdl.cfg_;
  const auto& P = mdl.params_;
  auto& G = mdl.grads_;
  const LayerIndex& ix = mdl.table_.layer(l);
  const int64_t M = B * T_, D = c.d_model, E = c.d_inner(), N = c.d_state, R = c.rank(),
                S = c.summary_dim, XW = R + 2 * N;

  // Mixer: x_out = x_mid + out_proj(y ⊙ SiLU(z)).
  std::vector<T> dyg(size_t(M * E), T(0)), dy(size_t(M * E), T(0)), dxz(size_t(M * 2 * E), T(0)),
      da(size_t(M * E), T(0)), ddt(size_t(M * E)), dxdbl(size_t(M * XW), T(0)), du(size_t(M * D), T(0));
  cpu::linear_backward(dyg.data(), E, at(G, ix.out_proj), (T*)nullptr, dx, D, A.yg.data(), E, at(P, ix.out_proj), M, E, D);
  cpu::gate_silu_backward(dy.data(), dxz.data() + E, 2 * E, dyg.data(), A.y.data(), A.xz.data() + E, 2 * E, M, E);
  cpu::scan_backward(da.data(), E, ddt.data(), at(G, ix.A_log), dxdbl.data() + R, dxdbl.data() + R + N,
                     XW, at(G, ix.D), dy.data(), A.a.data(), E, A.dt.data(), at(P, ix.A_log),
                     A.xdbl.data() + R, A.xdbl.data() + R + N, XW, at(P, ix.D), B, T_, E, N);
  cpu::linear_backward(dxdbl.data(), XW, at(G, ix.dt_w), at(G, ix.dt_b), ddt.data(), E, A.xdbl.data(), XW, at(P, ix.dt_w), M, R, E);
  cpu::linear_backward(da.data(), E, at(G, ix.x_proj), (T*)nullptr, dxdbl.data(), XW, A.a.data(), E, at(P, ix.x_proj), M, E, XW);
  cpu::conv1d_silu_backward(dxz.data(), 2 * E, at(G, ix.conv_w), at(G, ix.conv_b), da.data(),
                            A.conv_pre.data(), A.xz.data(), 2 * E, at(P, ix.conv_w), B, T_, E, int64_t(c.d_conv));
  cpu::linear_backward(du.data(), D, at(G, ix.in_proj), (T*)nullptr, dxz.data(), 2 * E, A.u.data(), D, at(P, ix.in_proj), M, D, 2 * E);
  cpu::rmsnorm_backward(dx, at(G, ix.norm), du.data(), A.x_mid.data(), at(P, ix.norm), A.rstd_u.data(), M, D);

  if (!c.notes) return;
  // Reads: x_mid = x_in + σ(g)⊙c (+ the cross read), all from v = RMSNorm_n(x_in).
  std::vector<T> dv(size_t(M * D), T(0));
  read_backward(mdl, l, false, dx, dv.data(), A.v.data(), B, T_, A.read, dn);
  if (c.has_cross(l)) read_backward(mdl, l, true, dx, dv.data(), A.v.data(), B, T_, A.cross, dn);
  // Write: n = s·m. Every read of this layer's pool (here and in later layers) is done, so
  // dn[l] is complete.
  std::vector<T> dm(size_t(M * S), T(0)), ds(static_cast<size_t>(M), T(0));
  cpu::note_scale_backward(dm.data(), ds.data(), dn[size_t(l)].data(), A.s.data(), A.m.data(), M, S);
  cpu::linear_backward(dv.data(), D, at(G, ix.summary), (T*)nullptr, dm.data(), S, A.v.data(), D, at(P, ix.summary), M, D, S);
  cpu::note_score_backward(dv.data(), at(G, ix.score_w), at(G, ix.score_b), ds.data(), A.s.data(), A.v.data(), at(P, ix.score_w), M, D);
  cpu::rmsnorm_backward(dx, at(G, ix.note_norm), dv.data(), A.x_in.data(), at(P, ix.note_norm), A.rstd_v.data(), M, D);
}

template <typename T>
std::vector<T> MemMamba<T>::Impl::forward_layers(MemMamba<T>& mdl, const int32_t* tokens, int64_t B,
                                                 int64_t T_, StreamState<T>& state, Taps<T>* taps) {
  const Config& c = mdl.cfg_;
  if (state.batch != B) throw Error("stream state batch does not match the input");
  if (taps) taps->layers.assign(size_t(c.n_layer), {});
  std::vector<T> x(size_t(B * T_ * c.d_model));
  cpu::embedding_forward(x.data(), tokens, at(mdl.params_, mdl.table_.embedding()), B * T_, int64_t(c.d_model));
  std::vector<Snapshots<T>> snaps(size_t(c.n_layer));
  LayerActs<T> acts;
  for (int l = 0; l < c.n_layer; ++l) {
    layer_forward(mdl, l, x.data(), B, T_, state.position, state.layers[size_t(l)], snaps, false, acts,
                  taps ? &taps->layers[size_t(l)] : nullptr);
    // Pools older than the cross-layer window are no longer read.
    const int drop = l - std::max(c.cross_layer_period, 1) + 1;
    if (drop >= 0) Snapshots<T>().swap(snaps[size_t(drop)]);
  }
  return x;
}

template <typename T>
void MemMamba<T>::forward(const int32_t* tokens, int64_t B, int64_t T_, T* logits,
                          StreamState<T>* state, Taps<T>* taps) {
  const int64_t M = B * T_, D = cfg_.d_model, V = cfg_.vocab;
  StreamState<T> fresh;
  if (!state) {
    fresh = new_state(B);
    state = &fresh;
  }
  const std::vector<T> x = Impl::forward_layers(*this, tokens, B, T_, *state, taps);
  std::vector<T> hf(size_t(M * D));
  cpu::rmsnorm_forward(hf.data(), (T*)nullptr, x.data(), at(params_, table_.norm_f()), M, D, cfg_.rms_eps);
  cpu::linear_forward(logits, V, hf.data(), D, at(params_, table_.embedding()), (const T*)nullptr, M, D, V);
  state->position += T_;
}

template <typename T>
double MemMamba<T>::Impl::train_pass(MemMamba<T>& mdl, const int32_t* tokens, int64_t B, int64_t T_,
                                     Taps<T>* taps, const std::function<double(const T*, T*)>& head) {
  const Config& c = mdl.cfg_;
  const int64_t M = B * T_, D = c.d_model, S = c.summary_dim;
  const int L = c.n_layer;
  StreamState<T> st = mdl.new_state(B);
  if (taps) taps->layers.assign(static_cast<size_t>(L), {});
  // Forward, keeping only each layer's input and the pools its segments read.
  std::vector<std::vector<T>> inputs(static_cast<size_t>(L));
  std::vector<Snapshots<T>> snaps(static_cast<size_t>(L));
  std::vector<T> x(size_t(M * D));
  cpu::embedding_forward(x.data(), tokens, at(mdl.params_, mdl.table_.embedding()), M, D);
  {
    LayerActs<T> acts;
    for (int l = 0; l < L; ++l) {
      inputs[size_t(l)] = x;
      layer_forward(mdl, l, x.data(), B, T_, 0, st.layers[size_t(l)], snaps, false, acts,
                    taps ? &taps->layers[size_t(l)] : nullptr);
    }
  }
  std::vector<T> hf(size_t(M * D)), rstd(static_cast<size_t>(M)), dhf(size_t(M * D), T(0));
  cpu::rmsnorm_forward(hf.data(), rstd.data(), x.data(), at(mdl.params_, mdl.table_.norm_f()), M, D, c.rms_eps);
  const double loss = head(hf.data(), dhf.data());

  // Backward: final norm, then each layer recomputed from its input.
  std::vector<T> dx(size_t(M * D), T(0));
  cpu::rmsnorm_backward(dx.data(), at(mdl.grads_, mdl.table_.norm_f()), dhf.data(), x.data(),
                        at(mdl.params_, mdl.table_.norm_f()), rstd.data(), M, D);
  std::vector<std::vector<T>> dn(static_cast<size_t>(L));
  if (c.notes)
    for (auto& d : dn) d.assign(size_t(M * S), T(0));
  StreamState<T> scratch = mdl.new_state(B);
  for (int l = L - 1; l >= 0; --l) {
    LayerActs<T> acts;
    acts.x_in = inputs[size_t(l)];
    std::vector<T> xl = acts.x_in;
    layer_forward(mdl, l, xl.data(), B, T_, 0, scratch.layers[size_t(l)], snaps, true, acts, nullptr);
    layer_backward(mdl, l, dx.data(), B, T_, acts, dn);
    std::vector<T>().swap(inputs[size_t(l)]);
  }
  cpu::embedding_backward(at(mdl.grads_, mdl.table_.embedding()), tokens, dx.data(), M, D);
  return loss;
}

template <typename T>
double MemMamba<T>::forward_backward(const int32_t* tokens, const int32_t* targets, int64_t B,
                                     int64_t T_, double scale, int64_t* counted, T* logits_out,
                                     Taps<T>* taps) {
  const int64_t M = B * T_, D = cfg_.d_model, V = cfg_.vocab;
  // The tied LM head and the cross-entropy.
  return Impl::train_pass(*this, tokens, B, T_, taps, [&](const T* hf, T* dhf) {
    std::vector<T> logits(size_t(M * V)), dlogits(size_t(M * V));
    cpu::linear_forward(logits.data(), V, hf, D, at(params_, table_.embedding()), (const T*)nullptr, M, D, V);
    if (logits_out) std::copy(logits.begin(), logits.end(), logits_out);
    const double loss = cpu::cross_entropy_forward_backward(dlogits.data(), counted, logits.data(), targets, M, V, scale);
    cpu::linear_backward(dhf, D, at(grads_, table_.embedding()), (T*)nullptr, dlogits.data(), V, hf, D,
                         at(params_, table_.embedding()), M, D, V);
    return loss;
  });
}

template <typename T>
void MemMamba<T>::forward_hidden(const int32_t* tokens, int64_t B, int64_t T_, T* hidden,
                                 StreamState<T>* state) {
  const int64_t M = B * T_, D = cfg_.d_model;
  StreamState<T> fresh;
  if (!state) {
    fresh = new_state(B);
    state = &fresh;
  }
  const std::vector<T> x = Impl::forward_layers(*this, tokens, B, T_, *state, nullptr);
  cpu::rmsnorm_forward(hidden, (T*)nullptr, x.data(), at(params_, table_.norm_f()), M, D, cfg_.rms_eps);
  state->position += T_;
}

template <typename T>
double MemMamba<T>::forward_backward_hidden(
    const int32_t* tokens, int64_t B, int64_t T_,
    const std::function<double(const T* hidden, T* d_hidden)>& loss_grad) {
  return Impl::train_pass(*this, tokens, B, T_, nullptr, loss_grad);
}

template <typename T>
std::vector<int32_t> MemMamba<T>::next_token_targets(const int32_t* tokens, int64_t B, int64_t T_) {
  std::vector<int32_t> t(size_t(B * T_), -1);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i + 1 < T_; ++i) {
      int32_t nx = tokens[b * T_ + i + 1];
      if (nx >= 1 && nx <= 4) t[size_t(b * T_ + i)] = nx;
    }
  return t;
}

template class MemMamba<float>;
template class MemMamba<double>;

}  // namespace mm
