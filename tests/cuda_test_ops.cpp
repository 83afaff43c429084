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
    Vec v(n);
    if (dt == DType::f32) {
      cu::copy_to_host(v.data(), f32.data(), n * 4);
    } else {
      std::vector<uint16_t> h(n);
      cu::copy_to_host(h.data(), b16.data(), n * 2);
      for (size_t i = 0; i < n; ++i) {
        const uint32_t bits = uint32_t(h[i]) << 16;
        std::memcpy(&v[i], &bits, 4);
      }
    }
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
    Dev da(ap), o32(size_t(B * len * E));
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
  EXPECT_THROW(cu::linear_forward(p, 4, p, 4, p, nullptr, 0, 4, 4, DType::f32, false), mm::Error);
  EXPECT_THROW(cu::conv1d_silu_forward(p, DType::f32, nullptr, p, p, 8, p, p, 1, 4, 8, 9), mm::Error);
  EXPECT_THROW(cu::conv1d_silu_forward(p, DType::f32, nullptr, p, p, 4, p, p, 1, 4, 8, 4), mm::Error);
  EXPECT_THROW(cu::rmsnorm_forward(p, DType::f32, p, p, 4, 8, 1e-5f, p, nullptr, nullptr), mm::Error);
  EXPECT_THROW(cu::rmsnorm_forward(p, DType::f32, p, p, -1, 8, 1e-5f), mm::Error);
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
}

}  // namespace
