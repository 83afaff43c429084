// Parity of every CUDA op against its CPU twin (ggml test-backend-ops style): one table, one
// registration per op below; each case draws fresh random inputs, poisons the outputs with NaN,
// runs the CPU twin (fp32) and the CUDA op, and checks ‖cuda − cpu‖ / ‖cpu‖ against the
// tolerance of DESIGN §4 (fp32 path < 1e-4, bf16 outputs < 2e-2; NaN never passes).
// CudaOps.SpeedReport prints timings only. Without a CUDA device every test skips.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <tuple>
#include <algorithm>
#include <string>
#include <vector>

#include "io/error.hpp"
#include "kernels/conv1d.hpp"
#include "kernels/cuda/backward.hpp"
#include "kernels/cuda/ops.hpp"
#include "kernels/elementwise.hpp"
#include "kernels/embedding.hpp"
#include "kernels/linear.hpp"
#include "kernels/notes.hpp"
#include "kernels/rmsnorm.hpp"
#include "kernels/scan.hpp"
#include "support/compare.hpp"

namespace {

namespace cu = mm::cuda;
using cu::DType;
using Vec = std::vector<float>;

// ---- helpers ----------------------------------------------------------------------------------
struct Rng {
  std::mt19937_64 g;
  explicit Rng(uint64_t seed) : g(seed) {}
  Vec uniform(size_t n, float lo, float hi) {
    std::uniform_real_distribution<float> d(lo, hi);
    Vec v(n);
    for (auto& x : v) x = d(g);
    return v;
  }
};

struct Dev {
  cu::Buffer<float> buf;
  explicit Dev(size_t n) : buf(n) {}
  explicit Dev(const Vec& v) : buf(v.size()) { cu::copy_to_device(buf.data(), v.data(), v.size() * 4); }
  float* p() { return buf.data(); }
  Vec get() const {
    Vec v(buf.size());
    cu::copy_to_host(v.data(), buf.data(), v.size() * 4);
    return v;
  }
  void poison() {
    Vec nan(buf.size(), std::numeric_limits<float>::quiet_NaN());
    cu::copy_to_device(buf.data(), nan.data(), nan.size() * 4);
  }
};

// A device buffer's elements, copied to the host as they are.
template <typename E>
std::vector<E> host_copy(const cu::Buffer<E>& d) {
  std::vector<E> h(d.size());
  cu::copy_to_host(h.data(), d.data(), h.size() * sizeof(E));
  return h;
}

// The values of a bf16 device buffer, as fp32 on the host.
Vec values_of(const cu::Buffer<uint16_t>& b) {
  std::vector<uint16_t> h(b.size());
  cu::copy_to_host(h.data(), b.data(), h.size() * 2);
  Vec v(h.size());
  for (size_t i = 0; i < h.size(); ++i) {
    const uint32_t bits = uint32_t(h[i]) << 16;
    std::memcpy(&v[i], &bits, 4);
  }
  return v;
}

// An output buffer of either dtype, poisoned with NaN, read back as fp32.
struct Out {
  DType dt;
  size_t n;
  cu::Buffer<uint16_t> b16;
  cu::Buffer<float> f32;
  Out(DType t, size_t n_) : dt(t), n(n_) {
    if (t == DType::f32) {
      f32 = cu::Buffer<float>(n);
      Vec nan(n, std::numeric_limits<float>::quiet_NaN());
      cu::copy_to_device(f32.data(), nan.data(), n * 4);
    } else {
      b16 = cu::Buffer<uint16_t>(n);
      std::vector<uint16_t> nan(n, 0x7fc0);
      cu::copy_to_device(b16.data(), nan.data(), n * 2);
    }
  }
  void* p() { return dt == DType::f32 ? static_cast<void*>(f32.data()) : static_cast<void*>(b16.data()); }
  Vec get() const {
    if (dt != DType::f32) return values_of(b16);
    Vec v(n);
    cu::copy_to_host(v.data(), f32.data(), n * 4);
    return v;
  }
};

// bf16 copy of fp32 values on the device (through cu::to_bf16).
cu::Buffer<uint16_t> bf16_of(const Vec& v) {
  Dev f(v);
  cu::Buffer<uint16_t> b(v.size());
  cu::to_bf16(b.data(), f.p(), v.size());
  cu::synchronize();
  return b;
}

// v rounded to bf16 (through the device's own conversion): the values a bf16 input holds.
Vec bf16_rounded(const Vec& v) { return values_of(bf16_of(v)); }

// An input of either dtype on the device (bf16: the caller passes values already rounded).
struct In {
  DType dt;
  cu::Buffer<float> f32;
  cu::Buffer<uint16_t> b16;
  In(DType t, const Vec& v) : dt(t) {
    if (t == DType::f32) {
      f32 = cu::Buffer<float>(v.size());
      cu::copy_to_device(f32.data(), v.data(), v.size() * 4);
    } else {
      b16 = bf16_of(v);
    }
  }
  void* p() { return dt == DType::f32 ? static_cast<void*>(f32.data()) : static_cast<void*>(b16.data()); }
};

// Columns [0, w) of each of `rows` rows of stride ld.
Vec cols(const Vec& v, int64_t rows, int64_t ld, int64_t w) {
  Vec r(size_t(rows * w));
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < w; ++j) r[size_t(i * w + j)] = v[size_t(i * ld + j)];
  return r;
}

double tol_for(DType t) { return t == DType::f32 ? 1e-4 : 2e-2; }
const char* dname(DType t) { return t == DType::f32 ? "f32" : "bf16"; }

// Each case returns the errors it measured, by the name of the compared output.
struct Err {
  std::string what;
  double err, tol;
};
struct Case {
  std::string name;
  std::function<std::vector<Err>(Rng&)> run;
};

std::vector<Case>& table() {
  static std::vector<Case> t;
  return t;
}

// ---- linear -----------------------------------------------------------------------------------
std::vector<Err> linear_case(Rng& rng, DType dt, int64_t M, int64_t I, int64_t O, int64_t ld_in,
                             int64_t ld_out, bool bias, bool accumulate) {
  Vec in = rng.uniform(size_t(M * ld_in), -1, 1), W = rng.uniform(size_t(O * I), -0.5f, 0.5f);
  Vec b = rng.uniform(size_t(O), -1, 1), prev = rng.uniform(size_t(M * ld_out), -1, 1);
  // CPU twin (fp32): out = in·Wᵀ + bias, plus the previous contents when accumulating.
  Vec ref(size_t(M * ld_out), 0.f);
  mm::cpu::linear_forward<float>(ref.data(), ld_out, in.data(), ld_in, W.data(), bias ? b.data() : nullptr, M, I, O);
  if (accumulate)
    for (int64_t r = 0; r < M; ++r)
      for (int64_t c = 0; c < O; ++c) ref[size_t(r * ld_out + c)] += prev[size_t(r * ld_out + c)];

  Dev out(size_t(M * ld_out)), db(b);
  if (accumulate) cu::copy_to_device(out.p(), prev.data(), prev.size() * 4);
  else out.poison();
  if (dt == DType::f32) {
    Dev din(in), dW(W);
    cu::linear_forward(out.p(), ld_out, din.p(), ld_in, dW.p(), bias ? db.p() : nullptr, M, I, O, dt, accumulate);
    cu::synchronize();
  } else {
    auto din = bf16_of(in), dW = bf16_of(W);
    cu::linear_forward(out.p(), ld_out, din.data(), ld_in, dW.data(), bias ? db.p() : nullptr, M, I, O, dt, accumulate);
    cu::synchronize();
  }
  Vec got = out.get();
  return {{"out", mmtest::rel_error(cols(got, M, ld_out, O), cols(ref, M, ld_out, O)), tol_for(dt)}};
}

// bf16 inputs written as bf16 (the gate and output products of the note reads). When
// accumulating, the previous contents are bf16 too, and the twin adds their bf16 values.
std::vector<Err> linear_bf16_out_case(Rng& rng, int64_t M, int64_t I, int64_t O, int64_t ld_out, bool bias,
                                      bool accumulate) {
  Vec in = rng.uniform(size_t(M * I), -1, 1), W = rng.uniform(size_t(O * I), -0.5f, 0.5f);
  Vec b = rng.uniform(size_t(O), -1, 1);
  auto prev16 = bf16_of(rng.uniform(size_t(M * ld_out), -1, 1));
  const Vec prev = values_of(prev16);
  Vec ref(size_t(M * ld_out), 0.f);
  mm::cpu::linear_forward<float>(ref.data(), ld_out, in.data(), I, W.data(), bias ? b.data() : nullptr, M, I, O);
  if (accumulate)
    for (size_t i = 0; i < ref.size(); ++i) ref[i] += prev[i];
  auto din = bf16_of(in), dW = bf16_of(W);
  Dev db(b);
  Out out(DType::bf16, size_t(M * ld_out));
  if (accumulate) cu::copy_device(out.p(), prev16.data(), prev16.size() * 2);
  cu::linear_forward(out.p(), ld_out, din.data(), I, dW.data(), bias ? db.p() : nullptr, M, I, O, DType::bf16,
                     accumulate, DType::bf16);
  cu::synchronize();
  return {{"out", mmtest::rel_error(cols(out.get(), M, ld_out, O), cols(ref, M, ld_out, O)), tol_for(DType::bf16)}};
}

// ---- rmsnorm (+ fused note score) ------------------------------------------------------------
std::vector<Err> rmsnorm_case(Rng& rng, DType dt, int64_t M, int64_t D, bool score) {
  Vec x = rng.uniform(size_t(M * D), -2, 2), w = rng.uniform(size_t(D), 0.5f, 1.5f);
  Vec sw = rng.uniform(size_t(D), -0.2f, 0.2f), sb = rng.uniform(1, -0.5f, 0.5f);
  Vec y_ref(size_t(M * D)), s_ref(static_cast<size_t>(M));
  mm::cpu::rmsnorm_forward<float>(y_ref.data(), nullptr, x.data(), w.data(), M, D, 1e-5);
  mm::cpu::note_score_forward<float>(s_ref.data(), y_ref.data(), sw.data(), sb.data(), M, D);

  Dev dx(x), dw(w), dsw(sw), dsb(sb), ds(static_cast<size_t>(M));
  ds.poison();
  Out y(dt, size_t(M * D));
  cu::rmsnorm_forward(y.p(), dt, dx.p(), dw.p(), M, D, 1e-5f, score ? ds.p() : nullptr,
                      score ? dsw.p() : nullptr, score ? dsb.p() : nullptr);
  cu::synchronize();
  std::vector<Err> e{{"y", mmtest::rel_error(y.get(), y_ref), tol_for(dt)}};
  // The score reads the fp32 row in both dtypes, so it keeps the fp32 tolerance.
  if (score) e.push_back({"score", mmtest::rel_error(ds.get(), s_ref), 1e-4});
  return e;
}

// ---- conv1d + SiLU (streamed in pieces) -------------------------------------------------------
// pieces: lengths of the consecutive calls (sum T); both sides run the same split, and the CUDA
// outputs of all pieces together are also compared with the CPU twin run as one piece.
std::vector<Err> conv_case(Rng& rng, DType dt, int64_t B, int64_t T, int64_t E, int64_t k,
                           int64_t lda, std::vector<int64_t> pieces) {
  Vec a = rng.uniform(size_t(B * T * lda), -1.5f, 1.5f), w = rng.uniform(size_t(E * k), -0.7f, 0.7f);
  Vec bias = rng.uniform(size_t(E), -0.3f, 0.3f), tail0 = rng.uniform(size_t(B * (k - 1) * E), -1, 1);
  if (dt == DType::bf16) a = bf16_rounded(a);  // the input is in the output's dtype
  // CPU twin, one piece.
  Vec ref(size_t(B * T * E)), tail_ref = tail0;
  mm::cpu::conv1d_silu_forward<float>(ref.data(), nullptr, tail_ref.data(), a.data(), lda, w.data(),
                                      bias.data(), B, T, E, k);
  Dev dw(w), db(bias), dtail(tail0);
  Vec got(size_t(B * T * E)), got32(size_t(B * T * E));
  int64_t t0 = 0;
  for (int64_t len : pieces) {
    // The piece's rows, batch-major, as its own array of row stride lda.
    Vec ap(size_t(B * len * lda));
    for (int64_t b = 0; b < B; ++b)
      std::memcpy(&ap[size_t(b * len * lda)], &a[size_t((b * T + t0) * lda)], size_t(len * lda) * 4);
    In da(dt, ap);
    Dev o32(size_t(B * len * E));
    o32.poison();
    Out o(dt, size_t(B * len * E));
    cu::conv1d_silu_forward(o.p(), dt, o32.p(), dtail.p(), da.p(), lda, dw.p(), db.p(), B, len, E, k);
    cu::synchronize();
    Vec go = o.get(), g32 = o32.get();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < len; ++t)
        for (int64_t e = 0; e < E; ++e) {
          got[size_t((b * T + t0 + t) * E + e)] = go[size_t((b * len + t) * E + e)];
          got32[size_t((b * T + t0 + t) * E + e)] = g32[size_t((b * len + t) * E + e)];
        }
    t0 += len;
  }
  EXPECT_EQ(t0, T);
  return {{"out", mmtest::rel_error(got, ref), tol_for(dt)},
          {"out_f32", mmtest::rel_error(got32, ref), 1e-4},
          {"tail", mmtest::rel_error(dtail.get(), tail_ref), 1e-6}};
}

// ---- selective scan (+ fused SiLU(z) gate), streamed in pieces --------------------------------
std::vector<Err> scan_case(Rng& rng, DType dt, int64_t B, int64_t T, int64_t E, int64_t N,
                           bool init_state, std::vector<int64_t> pieces) {
  const int64_t R = 16, ld_bc = R + 2 * N, ldz = 2 * E;  // B, C: slices of x_proj's output row
  const int64_t M = B * T;
  Vec u = rng.uniform(size_t(M * E), -1, 1), dtv = rng.uniform(size_t(M * E), -4, 1);
  for (size_t i = 0; i < dtv.size(); i += 97) dtv[i] = 20.0f + 5.0f * float(i % 3) / 3.0f;  // softplus threshold
  Vec A_log(size_t(E * N));
  {
    Vec r = rng.uniform(size_t(E * N), 0.5f, 16.0f);
    for (size_t i = 0; i < r.size(); ++i) A_log[i] = std::log(r[i]);
  }
  Vec xp = rng.uniform(size_t(M * ld_bc), -1, 1), zz = rng.uniform(size_t(M * ldz), -2, 2);
  Vec D = rng.uniform(size_t(E), 0.5f, 1.5f);
  Vec h0 = init_state ? rng.uniform(size_t(B * E * N), -1, 1) : Vec(size_t(B * E * N), 0.f);

  // CPU twin: scan then the gate, one piece.
  Vec y(size_t(M * E)), ref(size_t(M * E)), h_ref = h0;
  mm::cpu::scan_forward<float>(y.data(), h_ref.data(), u.data(), E, dtv.data(), A_log.data(),
                               xp.data() + R, xp.data() + R + N, ld_bc, D.data(), B, T, E, N);
  mm::cpu::gate_silu_forward<float>(ref.data(), y.data(), zz.data(), ldz, M, E);

  Dev dA(A_log), dD(D), dh(h0);
  Vec got(size_t(M * E));
  int64_t t0 = 0;
  for (int64_t len : pieces) {
    auto slice = [&](const Vec& v, int64_t ld) {
      Vec s(size_t(B * len * ld));
      for (int64_t b = 0; b < B; ++b)
        std::memcpy(&s[size_t(b * len * ld)], &v[size_t((b * T + t0) * ld)], size_t(len * ld) * 4);
      return s;
    };
    Dev du(slice(u, E)), ddt(slice(dtv, E)), dxp(slice(xp, ld_bc)), dz(slice(zz, ldz));
    Out o(dt, size_t(B * len * E));
    cu::scan_forward(o.p(), dt, dh.p(), du.p(), ddt.p(), dA.p(), dxp.p() + R, dxp.p() + R + N, ld_bc,
                     dD.p(), dz.p(), ldz, B, len, E, N);
    cu::synchronize();
    Vec go = o.get();
    for (int64_t b = 0; b < B; ++b)
      std::memcpy(&got[size_t((b * T + t0) * E)], &go[size_t(b * len * E)], size_t(len * E) * 4);
    t0 += len;
  }
  EXPECT_EQ(t0, T);
  return {{"out", mmtest::rel_error(got, ref), tol_for(dt)}, {"h", mmtest::rel_error(dh.get(), h_ref), 1e-4}};
}

// ---- selective scan backward (+ the fused gate) ------------------------------------------------
// CPU twin: y from cpu::scan_forward (zero state), dy and dz from cpu::gate_silu_backward, then
// cpu::scan_backward. du, ddt, dz, dB and dC are written over NaN, and every column around them
// (the rest of a strided row: x_proj's other columns, the other half of d[a; z]) must keep its
// sentinel; dA_log and dD accumulate onto random previous values (compared as increments).
std::vector<Err> scan_backward_case(Rng& rng, int64_t B, int64_t T, int64_t E, int64_t N,
                                    bool big_dt, int64_t ld_du) {
  const int64_t R = 16, ld_bc = R + 2 * N, ldz = 2 * E, ld_dz = 2 * E;
  const int64_t M = B * T;
  Vec u = rng.uniform(size_t(M * E), -1, 1), dtv = rng.uniform(size_t(M * E), -4, 1);
  if (big_dt)
    for (size_t i = 0; i < dtv.size(); i += 97) dtv[i] = 20.0f + 5.0f * float(i % 3) / 3.0f;
  Vec A_log(size_t(E * N));
  {
    Vec r = rng.uniform(size_t(E * N), 0.5f, 16.0f);
    for (size_t i = 0; i < r.size(); ++i) A_log[i] = std::log(r[i]);
  }
  Vec xp = rng.uniform(size_t(M * ld_bc), -1, 1), zz = rng.uniform(size_t(M * ldz), -2, 2);
  Vec D = rng.uniform(size_t(E), 0.5f, 1.5f), dout = rng.uniform(size_t(M * E), -1, 1);
  const Vec dA_prev = rng.uniform(size_t(E * N), -0.5f, 0.5f), dD_prev = rng.uniform(size_t(E), -0.5f, 0.5f);

  // CPU twin.
  Vec y(size_t(M * E)), h(size_t(B * E * N), 0.f);
  mm::cpu::scan_forward<float>(y.data(), h.data(), u.data(), E, dtv.data(), A_log.data(),
                               xp.data() + R, xp.data() + R + N, ld_bc, D.data(), B, T, E, N);
  Vec dy(size_t(M * E), 0.f), dz_ref(size_t(M * E), 0.f);
  mm::cpu::gate_silu_backward<float>(dy.data(), dz_ref.data(), E, dout.data(), y.data(), zz.data(), ldz, M, E);
  Vec du_ref(size_t(M * E), 0.f), ddt_ref(size_t(M * E)), dxp_ref(size_t(M * ld_bc), 0.f);
  Vec dA_ref = dA_prev, dD_ref = dD_prev;
  mm::cpu::scan_backward<float>(du_ref.data(), E, ddt_ref.data(), dA_ref.data(), dxp_ref.data() + R,
                                dxp_ref.data() + R + N, ld_bc, dD_ref.data(), dy.data(), u.data(), E,
                                dtv.data(), A_log.data(), xp.data() + R, xp.data() + R + N, ld_bc,
                                D.data(), B, T, E, N);

  // Outputs: NaN in columns [c0, c0 + w) of each row, a sentinel elsewhere.
  constexpr float kSentinel = 7.25f;
  auto pattern = [&](int64_t ld, int64_t c0, int64_t w) {
    Vec v(size_t(M * ld), kSentinel);
    for (int64_t r = 0; r < M; ++r)
      for (int64_t c = c0; c < c0 + w; ++c) v[size_t(r * ld + c)] = std::numeric_limits<float>::quiet_NaN();
    return v;
  };
  auto changed = [&](const Vec& v, int64_t ld, int64_t c0, int64_t w) {
    double n = 0;
    for (int64_t r = 0; r < M; ++r)
      for (int64_t c = 0; c < ld; ++c)
        if ((c < c0 || c >= c0 + w) && v[size_t(r * ld + c)] != kSentinel) ++n;
    return n;
  };
  Dev g_du(pattern(ld_du, 0, E)), g_ddt(pattern(E, 0, E)), g_dz(pattern(ld_dz, E, E));
  Dev g_dxp(pattern(ld_bc, R, 2 * N)), g_dA(dA_prev), g_dD(dD_prev);
  Dev d_dout(dout), d_u(u), d_dt(dtv), d_A(A_log), d_xp(xp), d_D(D), d_z(zz);
  // dz goes to the second half of d[a; z] (row stride 2E), the z half of in_proj's output.
  cu::scan_backward(g_du.p(), ld_du, g_ddt.p(), g_dz.p() + E, ld_dz, g_dxp.p() + R, g_dxp.p() + R + N,
                    ld_bc, g_dA.p(), g_dD.p(), d_dout.p(), d_u.p(), d_dt.p(), d_A.p(), d_xp.p() + R,
                    d_xp.p() + R + N, ld_bc, d_D.p(), d_z.p(), ldz, B, T, E, N);
  cu::synchronize();
  const Vec du = g_du.get(), ddt = g_ddt.get(), dz = g_dz.get(), dxp = g_dxp.get();
  Vec dA = g_dA.get(), dD = g_dD.get();
  for (size_t i = 0; i < dA.size(); ++i) dA[i] -= dA_prev[i], dA_ref[i] -= dA_prev[i];
  for (size_t i = 0; i < dD.size(); ++i) dD[i] -= dD_prev[i], dD_ref[i] -= dD_prev[i];
  auto slice = [&](const Vec& v, int64_t ld, int64_t c0, int64_t w) {
    Vec r(size_t(M * w));
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < w; ++j) r[size_t(i * w + j)] = v[size_t(i * ld + c0 + j)];
    return r;
  };
  return {{"du", mmtest::rel_error(cols(du, M, ld_du, E), du_ref), 1e-4},
          {"ddt", mmtest::rel_error(ddt, ddt_ref), 1e-4},
          {"dz", mmtest::rel_error(slice(dz, ld_dz, E, E), dz_ref), 1e-4},
          {"dB", mmtest::rel_error(slice(dxp, ld_bc, R, N), slice(dxp_ref, ld_bc, R, N)), 1e-4},
          {"dC", mmtest::rel_error(slice(dxp, ld_bc, R + N, N), slice(dxp_ref, ld_bc, R + N, N)), 1e-4},
          {"dA_log", mmtest::rel_error(dA, dA_ref), 1e-4},
          {"dD", mmtest::rel_error(dD, dD_ref), 1e-4},
          // Entries outside the written columns that changed (must be none).
          {"others", changed(du, ld_du, 0, E) + changed(dz, ld_dz, E, E) + changed(dxp, ld_bc, R, 2 * N), 0.5}};
}

// ---- embedding, gated residual ----------------------------------------------------------------
std::vector<Err> embedding_case(Rng& rng, int64_t M, int64_t D, int64_t V) {
  Vec table = rng.uniform(size_t(V * D), -1, 1);
  std::vector<int32_t> tok(static_cast<size_t>(M));
  std::uniform_int_distribution<int32_t> pick(0, int32_t(V - 1));
  for (auto& t : tok) t = pick(rng.g);
  Vec ref(size_t(M * D));
  mm::cpu::embedding_forward<float>(ref.data(), tok.data(), table.data(), M, D);
  Dev dtab(table), out(size_t(M * D));
  out.poison();
  cu::Buffer<int32_t> dtok(tok.size());
  cu::copy_to_device(dtok.data(), tok.data(), tok.size() * 4);
  cu::embedding_forward(out.p(), dtok.data(), dtab.p(), M, D);
  cu::synchronize();
  return {{"out", mmtest::rel_error(out.get(), ref), 1e-6}};
}

std::vector<Err> gated_residual_case(Rng& rng, int64_t M, int64_t D) {
  Vec x = rng.uniform(size_t(M * D), -1, 1), g = rng.uniform(size_t(M * D), -4, 4);
  Vec c = rng.uniform(size_t(M * D), -1, 1);
  Vec ref = x;
  mm::cpu::gated_residual_forward<float>(ref.data(), g.data(), c.data(), M, D);
  Dev dx(x), dg(g), dc(c);
  cu::gated_residual_forward(dx.p(), dg.p(), dc.p(), M, D);
  cu::synchronize();
  return {{"x", mmtest::rel_error(dx.get(), ref), 1e-4}};
}

// The note reads' gated residuals fused into the mixer's norm. CPU twin: gated_residual for
// each read in order (on the bf16 values when gdt is bf16, plus the gate's bias in fp32 when
// the case has one), then rmsnorm.
std::vector<Err> residual_rmsnorm_case(Rng& rng, DType ydt, DType gdt, int nres, int64_t M, int64_t D, bool bias) {
  Vec x = rng.uniform(size_t(M * D), -2, 2), w = rng.uniform(size_t(D), 0.5f, 1.5f);
  std::vector<Vec> g, b, c;
  std::vector<In> dg, dc;
  std::vector<Dev> db;
  for (int i = 0; i < nres; ++i) {
    g.push_back(rng.uniform(size_t(M * D), -4, 4));
    c.push_back(rng.uniform(size_t(M * D), -1, 1));
    b.push_back(rng.uniform(size_t(D), -2, 2));
    if (gdt == DType::bf16) g.back() = bf16_rounded(g.back()), c.back() = bf16_rounded(c.back());
  }
  for (int i = 0; i < nres; ++i)
    dg.emplace_back(gdt, g[size_t(i)]), dc.emplace_back(gdt, c[size_t(i)]), db.emplace_back(b[size_t(i)]);
  Vec x_ref = x, y_ref(size_t(M * D));
  for (int i = 0; i < nres; ++i) {
    Vec gi = g[size_t(i)];
    if (bias)
      for (int64_t k = 0; k < M * D; ++k) gi[size_t(k)] += b[size_t(i)][size_t(k % D)];
    mm::cpu::gated_residual_forward<float>(x_ref.data(), gi.data(), c[size_t(i)].data(), M, D);
  }
  mm::cpu::rmsnorm_forward<float>(y_ref.data(), nullptr, x_ref.data(), w.data(), M, D, 1e-5);
  Dev dx(x), dw(w);
  Out y(ydt, size_t(M * D));
  const void* gp[2] = {dg[0].p(), nres > 1 ? dg[1].p() : nullptr};
  const float* bp[2] = {db[0].p(), nres > 1 ? db[1].p() : nullptr};
  const void* cp[2] = {dc[0].p(), nres > 1 ? dc[1].p() : nullptr};
  cu::gated_residual_rmsnorm_forward(y.p(), ydt, dx.p(), gp, bias ? bp : nullptr, cp, nres, gdt, dw.p(), M, D, 1e-5f);
  cu::synchronize();
  return {{"x", mmtest::rel_error(dx.get(), x_ref), 1e-4}, {"y", mmtest::rel_error(y.get(), y_ref), tol_for(ydt)}};
}

// ---- backward ops (the training path) ------------------------------------------------------------
// Parameter gradients accumulate: each case starts them from random values on both sides, so the
// "+=" contract is checked too.
std::vector<Err> linear_backward_case(Rng& rng, DType dt, int64_t M, int64_t I, int64_t O, int64_t ld_x,
                                      int64_t ld_dy, bool bias, bool acc_dx) {
  Vec X = rng.uniform(size_t(M * ld_x), -1, 1), W = rng.uniform(size_t(O * I), -0.5f, 0.5f);
  Vec dY = rng.uniform(size_t(M * ld_dy), -1, 1);
  Vec dX0 = rng.uniform(size_t(M * I), -1, 1), dW0 = rng.uniform(size_t(O * I), -1, 1), db0 = rng.uniform(size_t(O), -1, 1);
  Vec dX_ref = acc_dx ? dX0 : Vec(size_t(M * I), 0.f), dW_ref = dW0, db_ref = db0;
  mm::cpu::linear_backward<float>(dX_ref.data(), I, dW_ref.data(), bias ? db_ref.data() : nullptr, dY.data(), ld_dy,
                                  X.data(), ld_x, W.data(), M, I, O);
  Dev dX(dX0), dW(dW0), db(db0), dx(X), dw(W), ddy(dY);
  if (!acc_dx) dX.poison();
  cu::linear_backward(dX.p(), I, acc_dx, dW.p(), bias ? db.p() : nullptr, ddy.p(), ld_dy, dx.p(), ld_x, dw.p(), M, I, O, dt);
  cu::synchronize();
  const double tol = dt == DType::f32 ? 1e-4 : 5e-3;  // TF32: 10-bit mantissa products
  std::vector<Err> e{{"dX", mmtest::rel_error(dX.get(), dX_ref), tol}, {"dW", mmtest::rel_error(dW.get(), dW_ref), tol}};
  if (bias) e.push_back({"db", mmtest::rel_error(db.get(), db_ref), 1e-4});
  return e;
}

std::vector<Err> rmsnorm_backward_case(Rng& rng, int64_t M, int64_t D, bool accumulate) {
  Vec x = rng.uniform(size_t(M * D), -2, 2), w = rng.uniform(size_t(D), 0.5f, 1.5f), dy = rng.uniform(size_t(M * D), -1, 1);
  Vec dx0 = rng.uniform(size_t(M * D), -1, 1), dw0 = rng.uniform(size_t(D), -1, 1);
  Vec y(size_t(M * D)), rstd(static_cast<size_t>(M));
  mm::cpu::rmsnorm_forward<float>(y.data(), rstd.data(), x.data(), w.data(), M, D, 1e-5);
  Vec dx_ref = accumulate ? dx0 : Vec(size_t(M * D), 0.f), dw_ref = dw0;
  mm::cpu::rmsnorm_backward<float>(dx_ref.data(), dw_ref.data(), dy.data(), x.data(), w.data(), rstd.data(), M, D);
  Dev ddx(dx0), ddw(dw0), dx_(x), dw_(w), ddy(dy);
  if (!accumulate) ddx.poison();
  cu::rmsnorm_backward(ddx.p(), accumulate, ddw.p(), ddy.p(), dx_.p(), dw_.p(), M, D, 1e-5f);
  cu::synchronize();
  return {{"dx", mmtest::rel_error(ddx.get(), dx_ref), 1e-4}, {"dw", mmtest::rel_error(ddw.get(), dw_ref), 1e-4}};
}

std::vector<Err> conv_backward_case(Rng& rng, int64_t B, int64_t T, int64_t E, int64_t k, int64_t lda) {
  Vec a = rng.uniform(size_t(B * T * lda), -1.5f, 1.5f), w = rng.uniform(size_t(E * k), -0.7f, 0.7f);
  Vec bias = rng.uniform(size_t(E), -0.3f, 0.3f), dout = rng.uniform(size_t(B * T * E), -1, 1);
  Vec dw0 = rng.uniform(size_t(E * k), -1, 1), db0 = rng.uniform(size_t(E), -1, 1);
  Vec out(size_t(B * T * E)), pre(size_t(B * T * E)), tail(size_t(B * (k - 1) * E), 0.f);
  mm::cpu::conv1d_silu_forward<float>(out.data(), pre.data(), tail.data(), a.data(), lda, w.data(), bias.data(), B, T, E, k);
  Vec da_ref(size_t(B * T * lda), 0.f), dw_ref = dw0, db_ref = db0;
  mm::cpu::conv1d_silu_backward<float>(da_ref.data(), lda, dw_ref.data(), db_ref.data(), dout.data(), pre.data(), a.data(),
                                       lda, w.data(), B, T, E, k);
  Dev da(size_t(B * T * lda)), dw(dw0), db(db0), a_(a), w_(w), b_(bias), g(dout);
  da.poison();
  cu::conv1d_silu_backward(da.p(), lda, dw.p(), db.p(), g.p(), a_.p(), lda, w_.p(), b_.p(), B, T, E, k);
  cu::synchronize();
  return {{"da", mmtest::rel_error(cols(da.get(), B * T, lda, E), cols(da_ref, B * T, lda, E)), 1e-4},
          {"dw", mmtest::rel_error(dw.get(), dw_ref), 1e-4},
          {"dbias", mmtest::rel_error(db.get(), db_ref), 1e-4}};
}

std::vector<Err> gated_residual_backward_case(Rng& rng, int64_t M, int64_t D) {
  Vec g = rng.uniform(size_t(M * D), -4, 4), c = rng.uniform(size_t(M * D), -1, 1), dx = rng.uniform(size_t(M * D), -1, 1);
  Vec dg_ref(size_t(M * D)), dc_ref(size_t(M * D));
  mm::cpu::gated_residual_backward<float>(dg_ref.data(), dc_ref.data(), dx.data(), g.data(), c.data(), M, D);
  Dev dg(size_t(M * D)), dc(size_t(M * D)), g_(g), c_(c), dx_(dx);
  dg.poison();
  dc.poison();
  cu::gated_residual_backward(dg.p(), dc.p(), dx_.p(), g_.p(), c_.p(), M, D);
  cu::synchronize();
  return {{"dg", mmtest::rel_error(dg.get(), dg_ref), 1e-5}, {"dc", mmtest::rel_error(dc.get(), dc_ref), 1e-5}};
}

std::vector<Err> embedding_backward_case(Rng& rng, int64_t M, int64_t D, int64_t V) {
  std::vector<int32_t> tok(static_cast<size_t>(M));
  std::uniform_int_distribution<int32_t> pick(0, int32_t(V - 1));
  for (auto& t : tok) t = pick(rng.g);
  Vec dx = rng.uniform(size_t(M * D), -1, 1), d0 = rng.uniform(size_t(V * D), -1, 1), ref = d0;
  mm::cpu::embedding_backward<float>(ref.data(), tok.data(), dx.data(), M, D);
  Dev dt(d0), g(dx);
  cu::Buffer<int32_t> dtok(tok.size());
  cu::copy_to_device(dtok.data(), tok.data(), tok.size() * 4);
  cu::embedding_backward(dt.p(), dtok.data(), g.p(), M, D, V);
  cu::synchronize();
  return {{"dtable", mmtest::rel_error(dt.get(), ref), 1e-5}};
}

std::vector<Err> cross_entropy_case(Rng& rng, int64_t M, int64_t V, float scale) {
  Vec logits = rng.uniform(size_t(M * V), -4, 4);
  std::vector<int32_t> tgt(static_cast<size_t>(M));
  std::uniform_int_distribution<int32_t> pick(-1, int32_t(V - 1));
  for (auto& t : tgt) t = pick(rng.g);
  Vec ref(size_t(M * V));
  int64_t n_ref = 0, n = 0;
  const double l_ref = mm::cpu::cross_entropy_forward_backward<float>(ref.data(), &n_ref, logits.data(), tgt.data(), M, V, scale);
  Dev dl(size_t(M * V)), lg(logits);
  dl.poison();
  cu::Buffer<int32_t> dt(tgt.size());
  cu::copy_to_device(dt.data(), tgt.data(), tgt.size() * 4);
  const double l = cu::cross_entropy_forward_backward(dl.p(), &n, lg.p(), dt.data(), M, V, scale);
  EXPECT_EQ(n, n_ref);
  return {{"loss", std::abs(l - l_ref) / std::abs(l_ref), 1e-5}, {"dlogits", mmtest::rel_error(dl.get(), ref), 1e-5}};
}

std::vector<Err> note_score_backward_case(Rng& rng, int64_t M, int64_t D) {
  Vec v = rng.uniform(size_t(M * D), -2, 2), w = rng.uniform(size_t(D), -0.3f, 0.3f), b = rng.uniform(1, -1, 1);
  Vec ds = rng.uniform(size_t(M), -1, 1), s(static_cast<size_t>(M));
  mm::cpu::note_score_forward<float>(s.data(), v.data(), w.data(), b.data(), M, D);
  Vec dv0 = rng.uniform(size_t(M * D), -1, 1), dw0 = rng.uniform(size_t(D), -1, 1), db0 = rng.uniform(1, -1, 1);
  Vec dv_ref = dv0, dw_ref = dw0, db_ref = db0;
  mm::cpu::note_score_backward<float>(dv_ref.data(), dw_ref.data(), db_ref.data(), ds.data(), s.data(), v.data(), w.data(), M, D);
  Dev dv(dv0), dw(dw0), db(db0), ds_(ds), s_(s), v_(v), w_(w);
  cu::note_score_backward(dv.p(), dw.p(), db.p(), ds_.p(), s_.p(), v_.p(), w_.p(), M, D);
  cu::synchronize();
  return {{"dv", mmtest::rel_error(dv.get(), dv_ref), 1e-5}, {"dw", mmtest::rel_error(dw.get(), dw_ref), 1e-4},
          {"db", mmtest::rel_error(db.get(), db_ref), 1e-4}};
}

std::vector<Err> note_scale_backward_case(Rng& rng, int64_t M, int64_t S, int64_t ld) {
  Vec s = rng.uniform(size_t(M), 0, 1), m = rng.uniform(size_t(M * ld), -1, 1), dn = rng.uniform(size_t(M * S), -1, 1);
  Vec mc = cols(m, M, ld, S);
  Vec dm_ref(size_t(M * S), 0.f), ds_ref(size_t(M), 0.f);
  mm::cpu::note_scale_backward<float>(dm_ref.data(), ds_ref.data(), dn.data(), s.data(), mc.data(), M, S);
  Dev dm(static_cast<size_t>(M * ld)), ds(static_cast<size_t>(M)), s_(s), m_(m), dn_(dn);
  dm.poison();
  ds.poison();
  cu::note_scale_backward(dm.p(), ld, ds.p(), dn_.p(), S, s_.p(), m_.p(), ld, M, S);
  cu::synchronize();
  return {{"dm", mmtest::rel_error(cols(dm.get(), M, ld, S), dm_ref), 1e-5}, {"ds", mmtest::rel_error(ds.get(), ds_ref), 1e-5}};
}

// The pool read's backward over nsrc sources: random slot rows (some empty) per segment; the CPU
// twin gathers each segment's visible slots and runs pool_attention_backward, scattering the slot
// gradients back to their rows.
std::vector<Err> pool_read_backward_case(Rng& rng, int64_t B, int64_t T, int64_t C, int64_t K, int64_t H, int64_t dh,
                                         int nsrc) {
  const int64_t S = H * dh, M = B * T, rows = M + 2 * B * K, ldq = 3 * S;
  std::vector<int32_t> t0s, t1s;
  std::vector<uint8_t> closes;
  for (int64_t t = 0; t < T; t += C) {
    t0s.push_back(int32_t(t));
    t1s.push_back(int32_t(std::min(T, t + C)));
    closes.push_back(1);
  }
  const int64_t nseg = int64_t(t0s.size());
  std::vector<Vec> kv;
  std::vector<std::vector<int32_t>> snap;
  std::uniform_int_distribution<int32_t> row_pick(0, int32_t(rows - 1));
  for (int i = 0; i < nsrc; ++i) {
    kv.push_back(rng.uniform(size_t(rows * 2 * S), -1, 1));
    std::vector<int32_t> sn(size_t(nseg * B * K));
    for (auto& r : sn) r = (rng.g() % 4 == 0) ? -1 : row_pick(rng.g);
    if (i == 0) std::fill(sn.begin(), sn.begin() + K, -1);  // a segment that reads nothing (source 0 of seg 0, b 0)
    snap.push_back(sn);
  }
  if (nsrc == 1) std::fill(snap[0].begin(), snap[0].begin() + K, -1);
  Vec q = rng.uniform(size_t(M * ldq), -1, 1), dout = rng.uniform(size_t(M * S), -1, 1);
  // CPU twin.
  Vec dq_ref(size_t(M * S), 0.f);
  std::vector<Vec> dkv_ref(size_t(nsrc), Vec(size_t(rows * 2 * S), 0.f));
  for (int64_t sg = 0; sg < nseg; ++sg)
    for (int64_t b = 0; b < B; ++b) {
      std::vector<std::pair<int, int32_t>> vis;
      for (int i = 0; i < nsrc; ++i)
        for (int64_t j = 0; j < K; ++j) {
          const int32_t r = snap[size_t(i)][size_t((sg * B + b) * K + j)];
          if (r >= 0) vis.push_back({i, r});
        }
      const int64_t m = int64_t(vis.size()), len = t1s[size_t(sg)] - t0s[size_t(sg)], r0 = b * T + t0s[size_t(sg)];
      if (m == 0) continue;
      Vec keys(size_t(m * S)), vals(size_t(m * S)), P(size_t(len * H * m)), o(size_t(len * S)), dk(size_t(m * S), 0.f),
          dv(size_t(m * S), 0.f);
      for (int64_t j = 0; j < m; ++j)
        for (int64_t c = 0; c < S; ++c) {
          keys[size_t(j * S + c)] = kv[size_t(vis[size_t(j)].first)][size_t(vis[size_t(j)].second * 2 * S + c)];
          vals[size_t(j * S + c)] = kv[size_t(vis[size_t(j)].first)][size_t(vis[size_t(j)].second * 2 * S + S + c)];
        }
      mm::cpu::pool_attention_forward<float>(o.data(), P.data(), q.data() + r0 * ldq + S, ldq, keys.data(), vals.data(), len, m, H, dh);
      mm::cpu::pool_attention_backward<float>(dq_ref.data() + r0 * S, S, dk.data(), dv.data(), dout.data() + r0 * S,
                                              q.data() + r0 * ldq + S, ldq, keys.data(), vals.data(), P.data(), len, m, H, dh);
      for (int64_t j = 0; j < m; ++j)
        for (int64_t c = 0; c < S; ++c) {
          Vec& d = dkv_ref[size_t(vis[size_t(j)].first)];
          d[size_t(vis[size_t(j)].second * 2 * S + c)] += dk[size_t(j * S + c)];
          d[size_t(vis[size_t(j)].second * 2 * S + S + c)] += dv[size_t(j * S + c)];
        }
    }
  // CUDA.
  std::vector<Dev> dkv_dev, kv_dev;
  std::vector<cu::Buffer<int32_t>> snap_dev;
  std::vector<cu::ReadSource> src;
  std::vector<float*> dkv_ptr;
  for (int i = 0; i < nsrc; ++i) {
    kv_dev.emplace_back(kv[size_t(i)]);
    dkv_dev.emplace_back(Vec(size_t(rows * 2 * S), 0.f));
    snap_dev.emplace_back(snap[size_t(i)].size());
    cu::copy_to_device(snap_dev.back().data(), snap[size_t(i)].data(), snap[size_t(i)].size() * 4);
  }
  for (int i = 0; i < nsrc; ++i) {
    src.push_back({kv_dev[size_t(i)].p(), snap_dev[size_t(i)].data()});
    dkv_ptr.push_back(dkv_dev[size_t(i)].p());
  }
  cu::Buffer<int32_t> st0(t0s.size()), st1(t1s.size());
  cu::Buffer<uint8_t> scl(closes.size());
  cu::copy_to_device(st0.data(), t0s.data(), t0s.size() * 4);
  cu::copy_to_device(st1.data(), t1s.data(), t1s.size() * 4);
  cu::copy_to_device(scl.data(), closes.data(), closes.size());
  Dev dq(size_t(M * ldq)), q_(q), go(dout);
  dq.poison();
  cu::pool_read_backward(dq.p() + S, ldq, dkv_ptr.data(), go.p(), q_.p() + S, ldq, src.data(), nsrc,
                         {st0.data(), st1.data(), scl.data(), nseg}, B, T, K, H, dh);
  cu::synchronize();
  Vec dq_got = dq.get(), dq_cols(size_t(M * S));
  for (int64_t r = 0; r < M; ++r)
    for (int64_t c = 0; c < S; ++c) dq_cols[size_t(r * S + c)] = dq_got[size_t(r * ldq + S + c)];
  std::vector<Err> e{{"dq", mmtest::rel_error(dq_cols, dq_ref), 1e-4}};
  for (int i = 0; i < nsrc; ++i)
    e.push_back({"dkv" + std::to_string(i), mmtest::rel_error(dkv_dev[size_t(i)].get(), dkv_ref[size_t(i)]), 1e-4});
  return e;
}

// The pool read's forward over nsrc sources, built like pool_read_backward_case: random slot rows
// (a quarter empty) per segment, the first segment of sequence 0 reading nothing in any source
// (o = 0); q a column slice of row stride 3S. The CPU twin gathers each segment's visible slots
// and runs pool_attention_forward.
std::vector<Err> pool_read_forward_case(Rng& rng, DType dt, int64_t B, int64_t T, int64_t C, int64_t K, int64_t H,
                                        int64_t dh, int nsrc) {
  const int64_t S = H * dh, M = B * T, rows = M + 2 * B * K, ldq = 3 * S;
  std::vector<int32_t> t0s, t1s;
  std::vector<uint8_t> closes;
  for (int64_t t = 0; t < T; t += C) {
    t0s.push_back(int32_t(t));
    t1s.push_back(int32_t(std::min(T, t + C)));
    closes.push_back(1);
  }
  const int64_t nseg = int64_t(t0s.size());
  std::vector<Vec> kv;
  std::vector<std::vector<int32_t>> snap;
  std::uniform_int_distribution<int32_t> row_pick(0, int32_t(rows - 1));
  for (int i = 0; i < nsrc; ++i) {
    kv.push_back(rng.uniform(size_t(rows * 2 * S), -1, 1));
    std::vector<int32_t> sn(size_t(nseg * B * K));
    for (auto& r : sn) r = (rng.g() % 4 == 0) ? -1 : row_pick(rng.g);
    std::fill(sn.begin(), sn.begin() + K, -1);  // segment 0 of sequence 0 reads nothing
    snap.push_back(sn);
  }
  Vec q = rng.uniform(size_t(M * ldq), -2, 2);
  Vec o_ref(size_t(M * S), 0.f);
  for (int64_t sg = 0; sg < nseg; ++sg)
    for (int64_t b = 0; b < B; ++b) {
      std::vector<std::pair<int, int32_t>> vis;
      for (int i = 0; i < nsrc; ++i)
        for (int64_t j = 0; j < K; ++j) {
          const int32_t r = snap[size_t(i)][size_t((sg * B + b) * K + j)];
          if (r >= 0) vis.push_back({i, r});
        }
      const int64_t m = int64_t(vis.size()), len = t1s[size_t(sg)] - t0s[size_t(sg)], r0 = b * T + t0s[size_t(sg)];
      if (m == 0) continue;
      Vec keys(size_t(m * S)), vals(size_t(m * S)), P(size_t(len * H * m));
      for (int64_t j = 0; j < m; ++j)
        for (int64_t c = 0; c < S; ++c) {
          keys[size_t(j * S + c)] = kv[size_t(vis[size_t(j)].first)][size_t(vis[size_t(j)].second * 2 * S + c)];
          vals[size_t(j * S + c)] = kv[size_t(vis[size_t(j)].first)][size_t(vis[size_t(j)].second * 2 * S + S + c)];
        }
      mm::cpu::pool_attention_forward<float>(o_ref.data() + r0 * S, P.data(), q.data() + r0 * ldq + S, ldq,
                                             keys.data(), vals.data(), len, m, H, dh);
    }
  std::vector<Dev> kv_dev;
  std::vector<cu::Buffer<int32_t>> snap_dev;
  std::vector<cu::ReadSource> src;
  for (int i = 0; i < nsrc; ++i) {
    kv_dev.emplace_back(kv[size_t(i)]);
    snap_dev.emplace_back(snap[size_t(i)].size());
    cu::copy_to_device(snap_dev.back().data(), snap[size_t(i)].data(), snap[size_t(i)].size() * 4);
  }
  for (int i = 0; i < nsrc; ++i) src.push_back({kv_dev[size_t(i)].p(), snap_dev[size_t(i)].data()});
  cu::Buffer<int32_t> st0(t0s.size()), st1(t1s.size());
  cu::Buffer<uint8_t> scl(closes.size());
  cu::copy_to_device(st0.data(), t0s.data(), t0s.size() * 4);
  cu::copy_to_device(st1.data(), t1s.data(), t1s.size() * 4);
  cu::copy_to_device(scl.data(), closes.data(), closes.size());
  Dev q_(q);
  Out o(dt, size_t(M * S));
  cu::pool_read_forward(o.p(), dt, q_.p() + S, ldq, src.data(), nsrc, {st0.data(), st1.data(), scl.data(), nseg}, B, T,
                        K, H, dh);
  cu::synchronize();
  return {{"o", mmtest::rel_error(o.get(), o_ref), tol_for(dt)}};
}

// The pool walk against the CPU's candidates_offer / pool_commit (DESIGN §3): every segment's
// snapshot and the state after each piece, compared exactly, as source positions slot by slot.
// Pieces that end inside a chunk carry candidates into the next call; rising, coarsely quantised
// scores keep the pool changing and make ties; hundreds of segments recycle the walk's staging.
std::vector<Err> pool_evolve_case(Rng& rng, int64_t B, int64_t C, int64_t K, const std::vector<int64_t>& pieces) {
  const float tau = 0.5f;
  int64_t T = 0;
  for (int64_t p : pieces) T += p;
  std::vector<Vec> score(size_t(B), Vec(static_cast<size_t>(T)));
  for (auto& sb : score) {
    Vec noise = rng.uniform(size_t(T), -0.25f, 0.25f);
    for (int64_t t = 0; t < T; ++t)
      sb[size_t(t)] = std::clamp(std::round((0.3f + 0.6f * float(t) / float(T) + noise[size_t(t)]) * 64.0f) / 64.0f, 0.0f, 1.0f);
  }
  std::vector<mm::cpu::Pool<float>> pool(static_cast<size_t>(B));
  std::vector<mm::cpu::Candidates<float>> cand(static_cast<size_t>(B));
  for (auto& pl : pool) pl.capacity = K, pl.width = 1;
  cu::Buffer<int64_t> pos(size_t(B * K)), cand_pos(size_t(B * K));
  cu::Buffer<float> prio(size_t(B * K)), cand_score(size_t(B * K));
  cu::Buffer<int32_t> used(static_cast<size_t>(B)), cand_count(static_cast<size_t>(B)), pool_rows(size_t(B * K)), cand_rows(size_t(B * K));
  const std::vector<int64_t> none(size_t(B * K), -1);
  const std::vector<int32_t> zeros(static_cast<size_t>(B), 0);
  cu::copy_to_device(pos.data(), none.data(), none.size() * 8);
  cu::copy_to_device(cand_pos.data(), none.data(), none.size() * 8);
  cu::copy_to_device(used.data(), zeros.data(), zeros.size() * 4);
  cu::copy_to_device(cand_count.data(), zeros.data(), zeros.size() * 4);
  int64_t snap_bad = 0, state_bad = 0, pos0 = 0;
  const float one = 1.0f;
  for (int64_t Tp : pieces) {
    std::vector<int32_t> t0s, t1s;
    std::vector<uint8_t> closes;
    for (int64_t t = 0; t < Tp;) {
      const int64_t end = std::min(Tp, ((pos0 + t) / C + 1) * C - pos0);
      t0s.push_back(int32_t(t));
      t1s.push_back(int32_t(end));
      closes.push_back((pos0 + end) % C == 0 ? 1 : 0);
      t = end;
    }
    const int64_t nseg = int64_t(t0s.size());
    Vec s(size_t(B * Tp));
    for (int64_t b = 0; b < B; ++b)
      std::copy_n(score[size_t(b)].begin() + pos0, Tp, s.begin() + b * Tp);
    const std::vector<int64_t> pos_before = host_copy(pos), cand_before = host_copy(cand_pos);
    cu::Buffer<int32_t> st0(t0s.size()), st1(t1s.size()), snap(size_t(nseg * B * K));
    cu::Buffer<uint8_t> scl(closes.size());
    cu::copy_to_device(st0.data(), t0s.data(), t0s.size() * 4);
    cu::copy_to_device(st1.data(), t1s.data(), t1s.size() * 4);
    cu::copy_to_device(scl.data(), closes.data(), closes.size());
    cu::Buffer<float> sc_score(size_t(nseg * B * K));
    cu::Buffer<int32_t> sc_t(size_t(nseg * B * K)), sc_count(size_t(nseg * B));
    Dev s_dev(s);
    cu::pool_evolve(snap.data(), {pos.data(), prio.data(), used.data(), cand_pos.data(), cand_score.data(), cand_count.data()},
                    pool_rows.data(), cand_rows.data(), s_dev.p(), pos0, {st0.data(), st1.data(), scl.data(), nseg}, B, Tp,
                    K, tau, {sc_score.data(), sc_t.data(), sc_count.data()});
    cu::synchronize();
    const std::vector<int32_t> rows = host_copy(snap);
    // A snapshot row as a source position: the pool or candidates before the piece, or a token of it.
    auto position = [&](int32_t r, int64_t b) -> int64_t {
      if (r < 0) return -1;
      if (r < B * K) return pos_before[size_t(r)];
      if (r < 2 * B * K) return cand_before[size_t(r - B * K)];
      const int64_t u = r - 2 * B * K;
      return u / Tp == b ? pos0 + u % Tp : -2;
    };
    for (int64_t i = 0; i < nseg; ++i)
      for (int64_t b = 0; b < B; ++b) {
        const auto& pl = pool[size_t(b)];
        for (int64_t j = 0; j < K; ++j)
          snap_bad += position(rows[size_t((i * B + b) * K + j)], b) != (j < pl.used() ? pl.pos[size_t(j)] : -1);
        for (int64_t t = t0s[size_t(i)]; t < t1s[size_t(i)]; ++t)
          mm::cpu::candidates_offer<float>(cand[size_t(b)], K, 1, pos0 + t, s[size_t(b * Tp + t)], &one, tau);
        if (closes[size_t(i)]) mm::cpu::pool_commit(pool[size_t(b)], cand[size_t(b)]);
      }
    // The state after the piece.
    const std::vector<int64_t> pos_after = host_copy(pos), cand_after = host_copy(cand_pos);
    const std::vector<int32_t> used_after = host_copy(used), count_after = host_copy(cand_count);
    const std::vector<float> prio_after = host_copy(prio), cscore_after = host_copy(cand_score);
    for (int64_t b = 0; b < B; ++b) {
      const auto& pl = pool[size_t(b)];
      const auto& cd = cand[size_t(b)];
      state_bad += used_after[size_t(b)] != pl.used();
      state_bad += count_after[size_t(b)] != cd.count();
      for (int64_t j = 0; j < std::min(pl.used(), K); ++j)
        state_bad += pos_after[size_t(b * K + j)] != pl.pos[size_t(j)] || prio_after[size_t(b * K + j)] != pl.priority[size_t(j)];
      for (int64_t j = 0; j < std::min(cd.count(), K); ++j)
        state_bad += cand_after[size_t(b * K + j)] != cd.pos[size_t(j)] || cscore_after[size_t(b * K + j)] != cd.score[size_t(j)];
    }
    pos0 += Tp;
  }
  return {{"snapshot slots that differ", double(snap_bad), 0.5}, {"state entries that differ", double(state_bad), 0.5}};
}

// ---- the table ---------------------------------------------------------------------------------
// "Small" in a name marks the quick cases (e.g. for compute-sanitizer runs).
const bool registered = [] {
  auto& t = table();
  for (DType dt : {DType::f32, DType::bf16}) {
    const std::string d = dname(dt);
    t.push_back({"linear_" + d + "_Small_M7_I5_O3_bias", [=](Rng& r) { return linear_case(r, dt, 7, 5, 3, 5, 3, true, false); }});
    t.push_back({"linear_" + d + "_M77_I45_O33", [=](Rng& r) { return linear_case(r, dt, 77, 45, 33, 45, 33, false, false); }});
    t.push_back({"linear_" + d + "_M130_I256_O512_bias_acc", [=](Rng& r) { return linear_case(r, dt, 130, 256, 512, 256, 512, true, true); }});
    t.push_back({"linear_" + d + "_strided_M300_I256_O96_ld512_ld100_bias", [=](Rng& r) { return linear_case(r, dt, 300, 256, 96, 512, 100, true, false); }});
    t.push_back({"linear_" + d + "_strided_M64_I33_O17_ld40_ld19_acc", [=](Rng& r) { return linear_case(r, dt, 64, 33, 17, 40, 19, false, true); }});
    t.push_back({"rmsnorm_" + d + "_Small_M37_D100_score", [=](Rng& r) { return rmsnorm_case(r, dt, 37, 100, true); }});
    t.push_back({"rmsnorm_" + d + "_M1000_D256", [=](Rng& r) { return rmsnorm_case(r, dt, 1000, 256, false); }});
    t.push_back({"rmsnorm_" + d + "_M513_D1000_score", [=](Rng& r) { return rmsnorm_case(r, dt, 513, 1000, true); }});
    t.push_back({"conv1d_" + d + "_Small_B2_T50_E70_k4_lda140", [=](Rng& r) { return conv_case(r, dt, 2, 50, 70, 4, 140, {50}); }});
    t.push_back({"conv1d_" + d + "_B1_T1000_E512_k4", [=](Rng& r) { return conv_case(r, dt, 1, 1000, 512, 4, 512, {1000}); }});
    t.push_back({"scan_" + d + "_Small_B2_T100_E48_N16_h0", [=](Rng& r) { return scan_case(r, dt, 2, 100, 48, 16, true, {100}); }});
    t.push_back({"scan_" + d + "_B1_T5000_E64_N16_h0", [=](Rng& r) { return scan_case(r, dt, 1, 5000, 64, 16, true, {5000}); }});
    t.push_back({"scan_" + d + "_B2_T3000_E256_N16", [=](Rng& r) { return scan_case(r, dt, 2, 3000, 256, 16, false, {3000}); }});
  }
  t.push_back({"conv1d_f32_Small_stream_B2_T37_E33_k4_pieces_2_35", [](Rng& r) { return conv_case(r, DType::f32, 2, 37, 33, 4, 66, {2, 35}); }});
  t.push_back({"conv1d_f32_stream_B2_T300_E100_k4_pieces_1_1_150_148", [](Rng& r) { return conv_case(r, DType::f32, 2, 300, 100, 4, 100, {1, 1, 150, 148}); }});
  // Even E with an odd row stride: rows of a start off pair boundaries, so one channel per thread.
  t.push_back({"conv1d_bf16_Small_B2_T40_E40_k4_lda41", [](Rng& r) { return conv_case(r, DType::bf16, 2, 40, 40, 4, 41, {40}); }});
  t.push_back({"conv1d_bf16_stream_B2_T300_E100_k4_pieces_1_1_150_148", [](Rng& r) { return conv_case(r, DType::bf16, 2, 300, 100, 4, 100, {1, 1, 150, 148}); }});
  t.push_back({"conv1d_f32_Small_B1_T9_E5_k1", [](Rng& r) { return conv_case(r, DType::f32, 1, 9, 5, 1, 5, {9}); }});
  t.push_back({"conv1d_f32_Small_B1_T20_E40_k2", [](Rng& r) { return conv_case(r, DType::f32, 1, 20, 40, 2, 40, {20}); }});
  t.push_back({"scan_f32_B2_T5000_E130_N4_h0", [](Rng& r) { return scan_case(r, DType::f32, 2, 5000, 130, 4, true, {5000}); }});
  t.push_back({"scan_f32_Small_B1_T200_E40_N8_h0", [](Rng& r) { return scan_case(r, DType::f32, 1, 200, 40, 8, true, {200}); }});
  t.push_back({"scan_f32_Small_B2_T300_E33_N32_h0", [](Rng& r) { return scan_case(r, DType::f32, 2, 300, 33, 32, true, {300}); }});
  t.push_back({"scan_f32_stream_B1_T5000_E512_N16_pieces_1234_3766", [](Rng& r) { return scan_case(r, DType::f32, 1, 5000, 512, 16, true, {1234, 3766}); }});
  t.push_back({"scan_f32_Small_stream_B2_T40_E20_N4_pieces_1_1_38", [](Rng& r) { return scan_case(r, DType::f32, 2, 40, 20, 4, true, {1, 1, 38}); }});
  t.push_back({"scan_bf16_stream_B2_T5000_E96_N16_pieces_2500_2500", [](Rng& r) { return scan_case(r, DType::bf16, 2, 5000, 96, 16, true, {2500, 2500}); }});
  // scan backward: B, T, E, N, dt above the softplus threshold, ld_du.
  t.push_back({"scan_backward_f32_Small_B2_T100_E48_N16", [](Rng& r) { return scan_backward_case(r, 2, 100, 48, 16, false, 48); }});
  t.push_back({"scan_backward_f32_Small_B1_T37_E20_N4_ld_du25", [](Rng& r) { return scan_backward_case(r, 1, 37, 20, 4, false, 25); }});
  t.push_back({"scan_backward_f32_Small_B2_T203_E40_N8", [](Rng& r) { return scan_backward_case(r, 2, 203, 40, 8, false, 40); }});
  t.push_back({"scan_backward_f32_Small_B2_T300_E33_N32", [](Rng& r) { return scan_backward_case(r, 2, 300, 33, 32, false, 33); }});
  t.push_back({"scan_backward_f32_B1_T5000_E64_N16", [](Rng& r) { return scan_backward_case(r, 1, 5000, 64, 16, false, 64); }});
  t.push_back({"scan_backward_f32_B2_T3000_E256_N16_ld_du300", [](Rng& r) { return scan_backward_case(r, 2, 3000, 256, 16, false, 300); }});
  t.push_back({"scan_backward_f32_B2_T5000_E130_N4_big_dt", [](Rng& r) { return scan_backward_case(r, 2, 5000, 130, 4, true, 130); }});
  t.push_back({"scan_backward_f32_B1_T4000_E96_N16_big_dt", [](Rng& r) { return scan_backward_case(r, 1, 4000, 96, 16, true, 96); }});
  t.push_back({"scan_backward_f32_B1_T3001_E72_N32_big_dt", [](Rng& r) { return scan_backward_case(r, 1, 3001, 72, 32, true, 72); }});
  t.push_back({"scan_backward_f32_B1_T20000_E128_N16", [](Rng& r) { return scan_backward_case(r, 1, 20000, 128, 16, false, 128); }});
  t.push_back({"scan_backward_f32_B3_T2500_E512_N16_big_dt", [](Rng& r) { return scan_backward_case(r, 3, 2500, 512, 16, true, 512); }});
  t.push_back({"embedding_Small_M100_D24_V8", [](Rng& r) { return embedding_case(r, 100, 24, 8); }});
  t.push_back({"embedding_M1000_D256_V8", [](Rng& r) { return embedding_case(r, 1000, 256, 8); }});
  t.push_back({"gated_residual_Small_M33_D100", [](Rng& r) { return gated_residual_case(r, 33, 100); }});
  t.push_back({"gated_residual_M1000_D256", [](Rng& r) { return gated_residual_case(r, 1000, 256); }});
  t.push_back({"residual_rmsnorm_bf16_bf16_M1000_D256_two_reads_bias", [](Rng& r) { return residual_rmsnorm_case(r, DType::bf16, DType::bf16, 2, 1000, 256, true); }});
  t.push_back({"residual_rmsnorm_bf16_bf16_M1000_D256_one_read_bias", [](Rng& r) { return residual_rmsnorm_case(r, DType::bf16, DType::bf16, 1, 1000, 256, true); }});
  t.push_back({"residual_rmsnorm_bf16_bf16_M1000_D256_two_reads", [](Rng& r) { return residual_rmsnorm_case(r, DType::bf16, DType::bf16, 2, 1000, 256, false); }});
  t.push_back({"residual_rmsnorm_f32_f32_Small_M37_D100_two_reads_bias", [](Rng& r) { return residual_rmsnorm_case(r, DType::f32, DType::f32, 2, 37, 100, true); }});
  t.push_back({"residual_rmsnorm_f32_bf16_Small_M9_D33_one_read", [](Rng& r) { return residual_rmsnorm_case(r, DType::f32, DType::bf16, 1, 9, 33, false); }});
  t.push_back({"linear_bf16_out_M300_I256_O256_bias", [](Rng& r) { return linear_bf16_out_case(r, 300, 256, 256, 256, true, false); }});
  t.push_back({"linear_bf16_out_Small_M33_I64_O40_ld48_acc", [](Rng& r) { return linear_bf16_out_case(r, 33, 64, 40, 48, false, true); }});
  // Backward ops.
  for (DType dt : {DType::f32, DType::tf32}) {
    const std::string d = dt == DType::f32 ? "f32" : "tf32";
    t.push_back({"linear_backward_" + d + "_Small_M7_I5_O3_bias", [=](Rng& r) { return linear_backward_case(r, dt, 7, 5, 3, 5, 3, true, false); }});
    t.push_back({"linear_backward_" + d + "_M300_I256_O96_ld512_ld100_bias_acc", [=](Rng& r) { return linear_backward_case(r, dt, 300, 256, 96, 512, 100, true, true); }});
    t.push_back({"linear_backward_" + d + "_M5000_I48_O512", [=](Rng& r) { return linear_backward_case(r, dt, 5000, 48, 512, 48, 512, false, false); }});
  }
  t.push_back({"rmsnorm_backward_Small_M37_D100", [](Rng& r) { return rmsnorm_backward_case(r, 37, 100, false); }});
  t.push_back({"rmsnorm_backward_M3000_D256_acc", [](Rng& r) { return rmsnorm_backward_case(r, 3000, 256, true); }});
  t.push_back({"conv1d_backward_Small_B2_T50_E70_k4_lda140", [](Rng& r) { return conv_backward_case(r, 2, 50, 70, 4, 140); }});
  t.push_back({"conv1d_backward_B1_T1000_E512_k4", [](Rng& r) { return conv_backward_case(r, 1, 1000, 512, 4, 1024); }});
  t.push_back({"conv1d_backward_Small_B2_T9_E5_k1", [](Rng& r) { return conv_backward_case(r, 2, 9, 5, 1, 5); }});
  t.push_back({"conv1d_backward_Small_B1_T3_E40_k4", [](Rng& r) { return conv_backward_case(r, 1, 3, 40, 4, 40); }});
  t.push_back({"gated_residual_backward_M1000_D256", [](Rng& r) { return gated_residual_backward_case(r, 1000, 256); }});
  t.push_back({"embedding_backward_Small_M100_D24_V8", [](Rng& r) { return embedding_backward_case(r, 100, 24, 8); }});
  t.push_back({"embedding_backward_M3000_D256_V8", [](Rng& r) { return embedding_backward_case(r, 3000, 256, 8); }});
  t.push_back({"cross_entropy_Small_M50_V8", [](Rng& r) { return cross_entropy_case(r, 50, 8, 1.0f); }});
  t.push_back({"cross_entropy_M5000_V8_scale", [](Rng& r) { return cross_entropy_case(r, 5000, 8, 4000.0f); }});
  t.push_back({"note_score_backward_M1000_D256", [](Rng& r) { return note_score_backward_case(r, 1000, 256); }});
  t.push_back({"note_scale_backward_M1000_S64_ld192", [](Rng& r) { return note_scale_backward_case(r, 1000, 64, 192); }});
  t.push_back({"pool_evolve_Small_B1_C5_K13_pieces_702_301", [](Rng& r) { return pool_evolve_case(r, 1, 5, 13, {702, 301}); }});
  t.push_back({"pool_evolve_B2_C8_K16_pieces_1001_333_666", [](Rng& r) { return pool_evolve_case(r, 2, 8, 16, {1001, 333, 666}); }});
  t.push_back({"pool_evolve_B3_C256_K64_pieces_40000_25001", [](Rng& r) { return pool_evolve_case(r, 3, 256, 64, {40000, 25001}); }});
  t.push_back({"pool_read_backward_Small_B2_T40_C8_K4_H2_dh4", [](Rng& r) { return pool_read_backward_case(r, 2, 40, 8, 4, 2, 4, 1); }});
  t.push_back({"pool_read_backward_B1_T600_C256_K64_H4_dh16", [](Rng& r) { return pool_read_backward_case(r, 1, 600, 256, 64, 4, 16, 1); }});
  t.push_back({"pool_read_backward_cross_B2_T300_C100_K16_H4_dh8_src4", [](Rng& r) { return pool_read_backward_case(r, 2, 300, 100, 16, 4, 8, 4); }});
  // pool_read forward: B, T, C, K, H, d_h, sources (d_h 16 up to 256 slots: the tensor-core kernel;
  // 8 sources × 128 slots stream through shared memory).
  for (DType dt : {DType::f32, DType::bf16}) {
    const std::string d = dname(dt);
    t.push_back({"pool_read_forward_" + d + "_Small_B2_T40_C8_K4_H2_dh4", [=](Rng& r) { return pool_read_forward_case(r, dt, 2, 40, 8, 4, 2, 4, 1); }});
    t.push_back({"pool_read_forward_" + d + "_Small_B2_T75_C16_K8_H3_dh8_src3", [=](Rng& r) { return pool_read_forward_case(r, dt, 2, 75, 16, 8, 3, 8, 3); }});
    t.push_back({"pool_read_forward_" + d + "_B1_T1000_C256_K64_H4_dh16", [=](Rng& r) { return pool_read_forward_case(r, dt, 1, 1000, 256, 64, 4, 16, 1); }});
    t.push_back({"pool_read_forward_" + d + "_B1_T1000_C256_K64_H4_dh16_src4", [=](Rng& r) { return pool_read_forward_case(r, dt, 1, 1000, 256, 64, 4, 16, 4); }});
  }
  t.push_back({"pool_read_forward_f32_Small_B2_T70_C33_K5_H1_dh16_src2", [](Rng& r) { return pool_read_forward_case(r, DType::f32, 2, 70, 33, 5, 1, 16, 2); }});
  t.push_back({"pool_read_forward_f32_B2_T300_C100_K16_H4_dh32_src4", [](Rng& r) { return pool_read_forward_case(r, DType::f32, 2, 300, 100, 16, 4, 32, 4); }});
  t.push_back({"pool_read_forward_f32_stream_B1_T600_C128_K128_H4_dh16_src8", [](Rng& r) { return pool_read_forward_case(r, DType::f32, 1, 600, 128, 128, 4, 16, 8); }});
  t.push_back({"pool_read_forward_bf16_stream_B2_T300_C100_K128_H4_dh32_src4", [](Rng& r) { return pool_read_forward_case(r, DType::bf16, 2, 300, 100, 128, 4, 32, 4); }});
  t.push_back({"pool_read_forward_f32_stream_B1_T200_C64_K128_H8_dh4_src8", [](Rng& r) { return pool_read_forward_case(r, DType::f32, 1, 200, 64, 128, 8, 4, 8); }});
  return true;
}();

std::string no_device_message() {
  return "no CUDA device: mm::cuda::available() is false (CUDA parity tests need a GPU)";
}

class CudaOps : public ::testing::TestWithParam<size_t> {
protected:
  void SetUp() override {
    if (!cu::available()) GTEST_SKIP() << no_device_message();
  }
};

TEST_P(CudaOps, Parity) {
  const Case& c = table()[GetParam()];
  Rng rng(0x5eed0000u + GetParam());
  const auto errs = c.run(rng);
  for (const Err& e : errs) {
    std::printf("[ parity   ] %-58s %-8s rel err %.3e (tol %.0e)%s\n", c.name.c_str(), e.what.c_str(),
                e.err, e.tol, e.err < e.tol ? "" : "  FAIL");
    EXPECT_LT(e.err, e.tol) << c.name << " " << e.what;  // NaN gives inf: never passes
  }
}

INSTANTIATE_TEST_SUITE_P(Table, CudaOps, ::testing::Range(size_t(0), table().size()),
                         [](const ::testing::TestParamInfo<size_t>& i) { return table()[i.param].name; });

// Launchers refuse what they cannot do, with mm::Error.
TEST(CudaOpsSmall, RefusesAndTracksMemory) {
  if (!cu::available()) GTEST_SKIP() << no_device_message();
  cu::Buffer<float> f(1024);
  float* p = f.data();
  EXPECT_THROW(cu::scan_forward(p, DType::f32, p, p, p, p, p, p, 32, p, p, 8, 1, 4, 8, 12), mm::Error);
  EXPECT_THROW(cu::scan_forward(p, DType::f32, p, p, p, p, p, p, 8, p, p, 8, 1, 4, 8, 16), mm::Error);  // ld_bc < N
  EXPECT_THROW(cu::scan_forward(p, DType::f32, p, p, p, p, p, p, 32, p, p, 4, 1, 4, 8, 16), mm::Error);  // ldz < E
  EXPECT_THROW(cu::scan_backward(p, 8, p, p, 8, p, p, 32, p, p, p, p, p, p, p, p, 32, p, p, 8, 1, 4, 8, 12), mm::Error);
  EXPECT_THROW(cu::scan_backward(p, 4, p, p, 8, p, p, 32, p, p, p, p, p, p, p, p, 32, p, p, 8, 1, 4, 8, 16), mm::Error);  // ld_du < E
  EXPECT_THROW(cu::linear_forward(p, 4, p, 3, p, nullptr, 2, 4, 4, DType::f32, false), mm::Error);
  EXPECT_THROW(cu::linear_forward(p, 4, p, 4, p, nullptr, 2, 4, 4, DType::f32, false, DType::bf16), mm::Error);  // bf16 out needs bf16 in
  {
    const void* gc[2] = {p, p};
    const float* one_null_bias[2] = {p, nullptr};
    EXPECT_THROW(cu::gated_residual_rmsnorm_forward(p, DType::f32, p, gc, nullptr, gc, 3, DType::f32, p, 2, 4, 1e-5f), mm::Error);
    EXPECT_THROW(cu::gated_residual_rmsnorm_forward(p, DType::tf32, p, gc, nullptr, gc, 1, DType::f32, p, 2, 4, 1e-5f), mm::Error);
    EXPECT_THROW(cu::gated_residual_rmsnorm_forward(p, DType::f32, p, gc, one_null_bias, gc, 2, DType::f32, p, 2, 4, 1e-5f), mm::Error);
  }
  EXPECT_THROW(cu::linear_forward(p, 4, p, 4, p, nullptr, 0, 4, 4, DType::f32, false), mm::Error);
  EXPECT_THROW(cu::conv1d_silu_forward(p, DType::f32, nullptr, p, p, 8, p, p, 1, 4, 8, 9), mm::Error);
  EXPECT_THROW(cu::conv1d_silu_forward(p, DType::f32, nullptr, p, p, 4, p, p, 1, 4, 8, 4), mm::Error);
  EXPECT_THROW(cu::rmsnorm_forward(p, DType::f32, p, p, 4, 8, 1e-5f, p, nullptr, nullptr), mm::Error);
  EXPECT_THROW(cu::rmsnorm_forward(p, DType::f32, p, p, -1, 8, 1e-5f), mm::Error);
  // The backward launchers refuse too.
  EXPECT_THROW(cu::gemm(p, 4, p, 4, false, p, 4, false, 4, 4, 4, DType::bf16, 0.f), mm::Error);  // fp32 operands only
  EXPECT_THROW(cu::gemm(p, 4, p, 3, false, p, 4, false, 4, 4, 4, DType::f32, 0.f), mm::Error);   // lda < K
  EXPECT_THROW(cu::linear_backward(p, 4, false, p, nullptr, p, 3, p, 4, p, 2, 4, 4, DType::f32), mm::Error);  // ld_dy < O
  EXPECT_THROW(cu::conv1d_silu_backward(p, 8, p, p, p, p, 8, p, p, 1, 4, 8, 9), mm::Error);     // k > 8
  EXPECT_THROW(cu::rmsnorm_backward(p, false, p, p, p, p, 2, 5000, 1e-5f), mm::Error);           // D > 4096
  EXPECT_THROW(cu::cross_entropy_forward_backward(p, nullptr, p, nullptr, 4, 8, 1.f), mm::Error); // null targets
  EXPECT_THROW(cu::pool_read_backward(p, 8, nullptr, p, p, 8, nullptr, 0, {}, 1, 4, 4, 2, 4), mm::Error);  // no source
  try {
    cu::scan_forward(p, DType::f32, p, p, p, p, p, p, 32, p, p, 8, 1, 4, 8, 12);
  } catch (const mm::Error& e) {
    EXPECT_NE(std::string(e.what()).find("N=12"), std::string::npos) << e.what();
  }
  // Peak accounting.
  cu::synchronize();
  cu::reset_peak();
  const size_t before = cu::peak_bytes();
  { cu::Buffer<float> big(size_t(1) << 20); }
  EXPECT_GE(cu::peak_bytes(), before + (size_t(4) << 20));
  cu::reset_peak();
  EXPECT_EQ(cu::peak_bytes(), before);
}

// The pool read at the tiny model's shape (memory chunk 256, K 64, H 4, d_h 16), B 1, T 2^20: the
// own read (1 source, 64 slots) and the cross-layer read (4 sources, 256 slots), every slot full,
// the slot rows drawn at random for each segment (pessimistic for the L2: real pools change
// slowly). Effective FLOP rate: 4·H·slots·d_h per token (q·k and p·v, 2 per multiply-add).
void pool_read_speed() {
  const int64_t T = int64_t(1) << 20, C = 256, K = 64, H = 4, dh = 16, S = H * dh, ldq = 2 * S, rows = T + 2 * K;
  const int64_t nseg = T / C;
  Rng rng(11);
  cu::Buffer<float> q(size_t(T * ldq)), kv(size_t(rows * 2 * S));
  {
    const Vec blk = rng.uniform(size_t(1) << 22, -1, 1);
    for (size_t o = 0; o < size_t(T * ldq); o += blk.size())
      cu::copy_to_device(q.data() + o, blk.data(), std::min(blk.size(), size_t(T * ldq) - o) * 4);
    for (size_t o = 0; o < size_t(rows * 2 * S); o += blk.size())
      cu::copy_to_device(kv.data() + o, blk.data(), std::min(blk.size(), size_t(rows * 2 * S) - o) * 4);
  }
  std::vector<cu::Buffer<int32_t>> snaps;
  std::vector<cu::ReadSource> src;
  std::uniform_int_distribution<int32_t> row_pick(0, int32_t(rows - 1));
  for (int i = 0; i < 4; ++i) {
    std::vector<int32_t> sn(size_t(nseg * K));
    for (auto& r : sn) r = row_pick(rng.g);
    snaps.emplace_back(sn.size());
    cu::copy_to_device(snaps.back().data(), sn.data(), sn.size() * 4);
    src.push_back({kv.data(), snaps.back().data()});
  }
  std::vector<int32_t> t0s, t1s;
  std::vector<uint8_t> closes(size_t(nseg), 1);
  for (int64_t s = 0; s < nseg; ++s) {
    t0s.push_back(int32_t(s * C));
    t1s.push_back(int32_t(s * C + C));
  }
  cu::Buffer<int32_t> st0(t0s.size()), st1(t1s.size());
  cu::Buffer<uint8_t> scl(closes.size());
  cu::copy_to_device(st0.data(), t0s.data(), t0s.size() * 4);
  cu::copy_to_device(st1.data(), t1s.data(), t1s.size() * 4);
  cu::copy_to_device(scl.data(), closes.data(), closes.size());
  cu::Buffer<float> o32(size_t(T * S));
  cu::Buffer<uint16_t> o16(size_t(T * S));
  for (DType odt : {DType::bf16, DType::f32})
    for (int nsrc : {1, 4}) {
      void* o = odt == DType::f32 ? static_cast<void*>(o32.data()) : static_cast<void*>(o16.data());
      auto go = [&] {
        cu::pool_read_forward(o, odt, q.data() + S, ldq, src.data(), nsrc, {st0.data(), st1.data(), scl.data(), nseg},
                              1, T, K, H, dh);
      };
      go();
      cu::synchronize();
      cu::Timer tm;
      const int reps = 10;
      tm.start();
      for (int i = 0; i < reps; ++i) go();
      const double ms = tm.stop_ms() / reps;
      const double flop = 4.0 * double(T) * double(H) * double(nsrc * K) * double(dh);
      std::printf("[ speed    ] pool_read_forward C=256 K=64x%d H=4 d_h=16 T=2^20 B=1 out %-4s: %.3f ms, "
                  "%.1f TFLOP/s effective\n",
                  nsrc, dname(odt), ms, flop / ms / 1e9);
    }
}

// Timings only (tests never assert on time): the scan at E=512, N=16, L=2^20, batch 1 (its backward
// at 2^17 and 2^20 too), and GEMMs.
TEST(CudaOps, SpeedReport) {
  if (!cu::available()) GTEST_SKIP() << no_device_message();
  std::printf("[ speed    ] device: %s\n", cu::device_name().c_str());
  {
    const int64_t E = 512, N = 16, L = int64_t(1) << 20, R = 16, ld_bc = R + 2 * N;
    const size_t ME = size_t(L * E);
    Rng rng(7);
    // Fill the big arrays by repeating a random block (generation on the host would dominate).
    auto fill = [&](float* dst, size_t n, float lo, float hi) {
      const Vec blk = rng.uniform(size_t(1) << 22, lo, hi);
      for (size_t o = 0; o < n; o += blk.size())
        cu::copy_to_device(dst + o, blk.data(), std::min(blk.size(), n - o) * 4);
    };
    cu::Buffer<float> u(ME), dt(ME), z(ME), xp(size_t(L * ld_bc)), A_log(size_t(E * N)), D(static_cast<size_t>(E)),
        h(size_t(E * N));
    cu::Buffer<uint16_t> out16(ME);
    cu::Buffer<float> out32(ME);
    fill(u.data(), ME, -1, 1);
    fill(dt.data(), ME, -4, 1);
    fill(z.data(), ME, -2, 2);
    fill(xp.data(), size_t(L * ld_bc), -1, 1);
    fill(A_log.data(), size_t(E * N), 0, 2.5f);
    fill(D.data(), size_t(E), 0.5f, 1.5f);
    for (DType odt : {DType::bf16, DType::f32}) {
      void* o = odt == DType::f32 ? static_cast<void*>(out32.data()) : static_cast<void*>(out16.data());
      auto go = [&] {
        cu::fill_zero(h.data(), size_t(E * N) * 4);
        cu::scan_forward(o, odt, h.data(), u.data(), dt.data(), A_log.data(), xp.data() + R,
                         xp.data() + R + N, ld_bc, D.data(), z.data(), E, 1, L, E, N);
      };
      go();
      cu::synchronize();
      cu::Timer tm;
      const int reps = 5;
      tm.start();
      for (int i = 0; i < reps; ++i) go();
      const double ms = tm.stop_ms() / reps;
      // Bytes of one pass over the inputs and the output (u, dt, z read; out written; B, C).
      const double bytes = double(ME) * (3 * 4 + dtype_bytes(odt)) + double(L) * 2 * N * 4;
      std::printf("[ speed    ] scan_forward E=512 N=16 L=2^20 B=1 out %-4s: %.3f ms, %.0f GB/s effective, "
                  "%.1f M tokens/s (mamba-ssm selective scan: 11.8 ms)\n",
                  dname(odt), ms, bytes / ms / 1e6, double(L) / ms / 1e3);
    }
    // The backward (fused gate) next to the fp32 forward, at L = 2^17 and 2^20 (prefixes of the
    // same arrays).
    cu::Buffer<float> dout(ME), du(ME), ddt(ME), dz(ME), dxp(size_t(L * ld_bc)), dA(size_t(E * N)),
        dD(static_cast<size_t>(E));
    fill(dout.data(), ME, -1, 1);
    cu::fill_zero(dA.data(), size_t(E * N) * 4);
    cu::fill_zero(dD.data(), size_t(E) * 4);
    for (int lg : {17, 20}) {
      const int64_t Ls = int64_t(1) << lg;
      const double MEs = double(Ls) * E;
      auto fwd = [&] {
        cu::fill_zero(h.data(), size_t(E * N) * 4);
        cu::scan_forward(out32.data(), DType::f32, h.data(), u.data(), dt.data(), A_log.data(),
                         xp.data() + R, xp.data() + R + N, ld_bc, D.data(), z.data(), E, 1, Ls, E, N);
      };
      auto bwd = [&] {
        cu::scan_backward(du.data(), E, ddt.data(), dz.data(), E, dxp.data() + R, dxp.data() + R + N,
                          ld_bc, dA.data(), dD.data(), dout.data(), u.data(), dt.data(), A_log.data(),
                          xp.data() + R, xp.data() + R + N, ld_bc, D.data(), z.data(), E, 1, Ls, E, N);
      };
      fwd();
      cu::synchronize();
      cu::reset_peak();
      const size_t before = cu::peak_bytes();
      bwd();  // grows the backward's scratch to this length
      cu::synchronize();
      const double scratch_gib = double(cu::peak_bytes() - before) / double(size_t(1) << 30);
      cu::Timer tm;
      const int reps = 5;
      tm.start();
      for (int i = 0; i < reps; ++i) fwd();
      const double ms_f = tm.stop_ms() / reps;
      tm.start();
      for (int i = 0; i < reps; ++i) bwd();
      const double ms_b = tm.stop_ms() / reps;
      // Bytes of one pass: forward u, dt, z read, out written; backward dout, u, dt, z read and
      // du, ddt, dz written; B, C read (and dB, dC written).
      const double bytes_f = MEs * 4 * 4 + double(Ls) * 2 * N * 4;
      const double bytes_b = MEs * 7 * 4 + double(Ls) * 4 * N * 4;
      std::printf("[ speed    ] scan E=512 N=16 L=2^%d B=1 f32: forward %.3f ms (%.0f GB/s effective), "
                  "backward %.3f ms (%.0f GB/s effective, %.2fx forward, scratch grew %.2f GiB)\n",
                  lg, ms_f, bytes_f / ms_f / 1e6, ms_b, bytes_b / ms_b / 1e6, ms_b / ms_f, scratch_gib);
    }
  }
  for (auto [M, I, O] : {std::tuple<int64_t, int64_t, int64_t>{8192, 8192, 8192},
                         {int64_t(1) << 20, 256, 1024}, {int64_t(1) << 20, 512, 256}}) {
    cu::Buffer<float> a32(size_t(M * I)), w32(size_t(O * I)), out(size_t(M * O));
    cu::Buffer<uint16_t> a(size_t(M * I)), w(size_t(O * I));
    cu::fill_zero(a32.data(), size_t(M * I) * 4);
    {
      Rng rng(3);
      const Vec blk = rng.uniform(size_t(1) << 20, -1, 1);
      for (size_t o = 0; o < size_t(M * I); o += blk.size())
        cu::copy_to_device(a32.data() + o, blk.data(), std::min(blk.size(), size_t(M * I) - o) * 4);
      for (size_t o = 0; o < size_t(O * I); o += blk.size())
        cu::copy_to_device(w32.data() + o, blk.data(), std::min(blk.size(), size_t(O * I) - o) * 4);
    }
    cu::to_bf16(a.data(), a32.data(), size_t(M * I));
    cu::to_bf16(w.data(), w32.data(), size_t(O * I));
    auto go = [&] { cu::linear_forward(out.data(), O, a.data(), I, w.data(), nullptr, M, I, O, DType::bf16, false); };
    go();
    cu::synchronize();
    cu::Timer tm;
    const int reps = 10;
    tm.start();
    for (int i = 0; i < reps; ++i) go();
    const double ms = tm.stop_ms() / reps;
    std::printf("[ speed    ] linear_forward bf16 (fp32 out) M=%lld I=%lld O=%lld: %.3f ms, %.1f TFLOP/s\n",
                (long long)M, (long long)I, (long long)O, ms, 2.0 * double(M) * I * O / ms / 1e9);
  }
  pool_read_speed();
}

// The pool read refuses what it cannot do.
TEST(CudaOpsSmall, PoolReadRefuses) {
  if (!cu::available()) GTEST_SKIP() << no_device_message();
  cu::Buffer<float> f(1024);
  float* p = f.data();
  cu::Buffer<int32_t> z(4);
  const cu::ReadSource src{p, z.data()};
  const cu::Segments segs{z.data(), z.data(), nullptr, 1};
  EXPECT_THROW(cu::pool_read_forward(p, DType::f32, p, 24, &src, 1, segs, 1, 4, 4, 2, 12), mm::Error);   // d_h 12
  EXPECT_THROW(cu::pool_read_forward(p, DType::f32, p, 32, &src, 1, segs, 1, 4, 129, 2, 16), mm::Error); // K > 128
  EXPECT_THROW(cu::pool_read_forward(p, DType::f32, p, 32, &src, 9, segs, 1, 4, 4, 2, 16), mm::Error);   // 9 sources
  EXPECT_THROW(cu::pool_read_forward(p, DType::f32, p, 16, &src, 1, segs, 1, 4, 4, 2, 16), mm::Error);   // ldq < S
  EXPECT_THROW(cu::pool_read_forward(p, DType::tf32, p, 32, &src, 1, segs, 1, 4, 4, 2, 16), mm::Error);  // tf32 out
}

}  // namespace
