// Gradient checks (DESIGN §2): every CPU op's hand-written backward against float64 central
// differences, the accumulate (+=) / overwrite (=) contract of each gradient output, the pool's
// entry rules, one AdamW step by hand, and the whole MemMamba model (notes on and off).
//
// Method: a fixed random R defines the scalar L = Σ out ⊙ R; feeding R as dout to the backward
// gives ∂L/∂input analytically, compared with (L(x+h) − L(x−h)) / 2h, h = 1e-6, for every input
// element. Error: ‖analytic − numeric‖ / ‖numeric‖. In float64 the central difference has a
// truncation error O(h²) ≈ 1e-12 and a rounding error ≈ ε·|L|/h ≈ 1e-10 relative for these
// sizes, so 1e-7 is a safe bound for an op; a wrong term in a backward gives errors ≥ 1e-3.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "kernels/adamw.hpp"
#include "kernels/conv1d.hpp"
#include "kernels/elementwise.hpp"
#include "kernels/embedding.hpp"
#include "kernels/linear.hpp"
#include "kernels/notes.hpp"
#include "kernels/rmsnorm.hpp"
#include "kernels/scan.hpp"
#include "model/memmamba.hpp"
#include "support/compare.hpp"
#include "support/gradcheck.hpp"

namespace {

using namespace mmtest;
namespace cpu = mm::cpu;

constexpr double kH = 1e-6;
constexpr double kOpTol = 1e-7;
// A second backward call must add exactly what the first added (up to the rounding of init + g + g).
constexpr double kAccTol = 1e-12;

void check_grad(const std::string& op, const std::string& input, const std::vector<double>& analytic,
                const std::vector<double>& numeric, double tol = kOpTol) {
  ASSERT_EQ(analytic.size(), numeric.size()) << op << " " << input;
  const double rel = rel_error(analytic, numeric);
  report(op, input, rel);
  EXPECT_LT(rel, tol) << op << ": gradient of " << input << " disagrees with finite differences";
}

void check_accumulates(const std::string& op, const std::string& input, const std::vector<double>& first,
                       const AccBuf& buf, const std::vector<size_t>& idx) {
  const double rel = rel_error(buf.added(idx), scaled(first, 2.0));
  EXPECT_LT(rel, kAccTol) << op << ": d" << input << " does not accumulate (+=) over two backward calls";
  EXPECT_EQ(buf.touched_outside(idx), 0u) << op << ": d" << input << " written outside its rows' width";
}

// ------------------------------------------------------------------------------------------
TEST(Gradient, Linear) {
  Rng rng(101);
  const int64_t M = 5, I = 7, O = 4, ld_in = 10, ld_out = 6, ld_dout = 9, ld_din = 12;
  auto in = rng.vec(size_t(M * ld_in)), W = rng.vec(size_t(O * I)), bias = rng.vec(size_t(O));
  const auto R = rng.vec(size_t(M * O));
  const auto in_idx = strided_indices(M, I, ld_in), out_idx = strided_indices(M, O, ld_out);
  std::vector<double> out(size_t(M * ld_out), 0.0);
  auto L = [&] {
    cpu::linear_forward(out.data(), ld_out, in.data(), ld_in, W.data(), bias.data(), M, I, O);
    return dot_at(out, out_idx, R);
  };
  L();
  // dout with a row stride; the padding holds garbage that must not be read.
  auto dout = rng.vec(size_t(M * ld_dout), 100, 200);
  for (int64_t r = 0; r < M; ++r)
    for (int64_t o = 0; o < O; ++o) dout[size_t(r * ld_dout + o)] = R[size_t(r * O + o)];
  AccBuf din(size_t(M * ld_din), rng), dW(size_t(O * I), rng), db(size_t(O), rng);
  auto backward = [&] {
    cpu::linear_backward(din.data(), ld_din, dW.data(), db.data(), dout.data(), ld_dout, in.data(),
                         ld_in, W.data(), M, I, O);
  };
  backward();
  const auto din_idx = strided_indices(M, I, ld_din), W_idx = all_indices(W.size()),
             b_idx = all_indices(bias.size());
  const auto g_in = din.added(din_idx), g_W = dW.added(W_idx), g_b = db.added(b_idx);
  check_grad("linear", "in", g_in, numeric_grad(in, in_idx, L, kH));
  check_grad("linear", "W", g_W, numeric_grad(W, L, kH));
  check_grad("linear", "bias", g_b, numeric_grad(bias, L, kH));
  backward();
  check_accumulates("linear", "in", g_in, din, din_idx);
  check_accumulates("linear", "W", g_W, dW, W_idx);
  check_accumulates("linear", "bias", g_b, db, b_idx);
}

TEST(Gradient, RMSNorm) {
  Rng rng(102);
  const int64_t M = 6, D = 7;
  auto x = rng.vec(size_t(M * D));
  auto w = rng.vec(size_t(D), 0.8, 1.2);
  const auto R = rng.vec(size_t(M * D));
  std::vector<double> y(size_t(M * D)), rstd(static_cast<size_t>(M));
  auto L = [&] {
    cpu::rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), M, D, 1e-5);
    return dot_at(y, all_indices(y.size()), R);
  };
  L();
  AccBuf dx(x.size(), rng), dw(w.size(), rng);
  auto backward = [&] {
    cpu::rmsnorm_backward(dx.data(), dw.data(), R.data(), x.data(), w.data(), rstd.data(), M, D);
  };
  backward();
  const auto xi = all_indices(x.size()), wi = all_indices(w.size());
  const auto g_x = dx.added(xi), g_w = dw.added(wi);
  check_grad("rmsnorm", "x", g_x, numeric_grad(x, L, kH));
  check_grad("rmsnorm", "w", g_w, numeric_grad(w, L, kH));
  L();  // rstd of the unperturbed x again
  backward();
  check_accumulates("rmsnorm", "x", g_x, dx, xi);
  check_accumulates("rmsnorm", "w", g_w, dw, wi);
}

TEST(Gradient, Conv1dSilu) {
  Rng rng(103);
  // `a` is an E-wide column slice (offset 3) of 8-wide rows, like the a-half of in_proj's output.
  const int64_t B = 2, T = 9, E = 5, k = 4, lda = 8, off = 3, ldda = 8;
  auto abuf = rng.vec(size_t(B * T * lda)), w = rng.vec(size_t(E * k)), bias = rng.vec(size_t(E));
  const auto R = rng.vec(size_t(B * T * E));
  std::vector<double> out(size_t(B * T * E)), pre(size_t(B * T * E)), tail(size_t(B * (k - 1) * E));
  auto L = [&] {
    std::fill(tail.begin(), tail.end(), 0.0);  // a fresh sequence
    cpu::conv1d_silu_forward(out.data(), pre.data(), tail.data(), abuf.data() + off, lda, w.data(),
                             bias.data(), B, T, E, k);
    return dot_at(out, all_indices(out.size()), R);
  };
  L();
  const auto pre0 = pre;
  AccBuf da(size_t(B * T * ldda), rng), dw(w.size(), rng), db(bias.size(), rng);
  auto backward = [&] {
    cpu::conv1d_silu_backward(da.data() + off, ldda, dw.data(), db.data(), R.data(), pre0.data(),
                              abuf.data() + off, lda, w.data(), B, T, E, k);
  };
  backward();
  const auto a_idx = strided_indices(B * T, E, lda, off), da_idx = strided_indices(B * T, E, ldda, off),
             wi = all_indices(w.size()), bi = all_indices(bias.size());
  const auto g_a = da.added(da_idx), g_w = dw.added(wi), g_b = db.added(bi);
  check_grad("conv1d_silu", "a", g_a, numeric_grad(abuf, a_idx, L, kH));
  check_grad("conv1d_silu", "w", g_w, numeric_grad(w, L, kH));
  check_grad("conv1d_silu", "bias", g_b, numeric_grad(bias, L, kH));
  backward();
  check_accumulates("conv1d_silu", "a", g_a, da, da_idx);
  check_accumulates("conv1d_silu", "w", g_w, dw, wi);
  check_accumulates("conv1d_silu", "bias", g_b, db, bi);
}

TEST(Gradient, Scan) {
  Rng rng(104);
  // T = 150 crosses three time blocks of 64; E = 20 is not a multiple of the channel block 16.
  const int64_t B = 2, T = 150, E = 20, N = 4, Rk = 3, ld_bc = Rk + 2 * N, ld_u = 23, u_off = 1,
                ld_du = 21;
  auto ubuf = rng.vec(size_t(B * T * ld_u));
  auto dt = rng.vec(size_t(B * T * E), -3.0, 1.0);
  std::vector<double> A_log(size_t(E * N));
  for (int64_t e = 0; e < E; ++e)
    for (int64_t n = 0; n < N; ++n) A_log[size_t(e * N + n)] = std::log(double(n + 1)) + 0.2 * rng.uniform();
  auto xdbl = rng.vec(size_t(B * T * ld_bc));  // [δ | B | C] rows, B and C are N-wide slices
  auto D = rng.vec(size_t(E));
  const auto R = rng.vec(size_t(B * T * E));
  std::vector<double> y(size_t(B * T * E)), h(size_t(B * E * N));
  auto L = [&] {
    std::fill(h.begin(), h.end(), 0.0);
    cpu::scan_forward(y.data(), h.data(), ubuf.data() + u_off, ld_u, dt.data(), A_log.data(),
                      xdbl.data() + Rk, xdbl.data() + Rk + N, ld_bc, D.data(), B, T, E, N);
    return dot_at(y, all_indices(y.size()), R);
  };
  L();
  AccBuf du(size_t(B * T * ld_du), rng), dA(A_log.size(), rng), dx(xdbl.size(), rng), dD(D.size(), rng);
  std::vector<double> ddt = rng.vec(dt.size(), 50, 60);  // overwritten
  auto backward = [&] {
    cpu::scan_backward(du.data(), ld_du, ddt.data(), dA.data(), dx.data() + Rk, dx.data() + Rk + N,
                       ld_bc, dD.data(), R.data(), ubuf.data() + u_off, ld_u, dt.data(), A_log.data(),
                       xdbl.data() + Rk, xdbl.data() + Rk + N, ld_bc, D.data(), B, T, E, N);
  };
  backward();
  const auto u_idx = strided_indices(B * T, E, ld_u, u_off), du_idx = strided_indices(B * T, E, ld_du),
             B_idx = strided_indices(B * T, N, ld_bc, Rk), C_idx = strided_indices(B * T, N, ld_bc, Rk + N),
             BC_idx = strided_indices(B * T, 2 * N, ld_bc, Rk), Ai = all_indices(A_log.size()),
             Di = all_indices(D.size());
  const auto g_u = du.added(du_idx), g_A = dA.added(Ai), g_B = dx.added(B_idx), g_C = dx.added(C_idx),
             g_D = dD.added(Di), g_BC = dx.added(BC_idx);
  const auto g_dt = ddt;
  check_grad("scan", "u", g_u, numeric_grad(ubuf, u_idx, L, kH));
  check_grad("scan", "dt", g_dt, numeric_grad(dt, L, kH));
  check_grad("scan", "A_log", g_A, numeric_grad(A_log, L, kH));
  check_grad("scan", "B", g_B, numeric_grad(xdbl, B_idx, L, kH));
  check_grad("scan", "C", g_C, numeric_grad(xdbl, C_idx, L, kH));
  check_grad("scan", "D", g_D, numeric_grad(D, L, kH));
  backward();
  check_accumulates("scan", "u", g_u, du, du_idx);
  check_accumulates("scan", "A_log", g_A, dA, Ai);
  check_accumulates("scan", "B|C", g_BC, dx, BC_idx);  // the δ columns stay untouched
  check_accumulates("scan", "D", g_D, dD, Di);
  EXPECT_EQ(ddt, g_dt) << "scan: ddt is documented as written (=), not accumulated";
}

TEST(Gradient, GateSilu) {
  Rng rng(105);
  const int64_t M = 6, D = 5, ldz = 9, z_off = 2, lddz = 11;
  auto y = rng.vec(size_t(M * D)), zbuf = rng.vec(size_t(M * ldz), -3, 3);
  const auto R = rng.vec(size_t(M * D));
  std::vector<double> out(size_t(M * D));
  auto L = [&] {
    cpu::gate_silu_forward(out.data(), y.data(), zbuf.data() + z_off, ldz, M, D);
    return dot_at(out, all_indices(out.size()), R);
  };
  L();
  AccBuf dy(y.size(), rng), dz(size_t(M * lddz), rng);
  auto backward = [&] {
    cpu::gate_silu_backward(dy.data(), dz.data() + z_off, lddz, R.data(), y.data(), zbuf.data() + z_off,
                            ldz, M, D);
  };
  backward();
  const auto yi = all_indices(y.size()), z_idx = strided_indices(M, D, ldz, z_off),
             dz_idx = strided_indices(M, D, lddz, z_off);
  const auto g_y = dy.added(yi), g_z = dz.added(dz_idx);
  check_grad("gate_silu", "y", g_y, numeric_grad(y, L, kH));
  check_grad("gate_silu", "z", g_z, numeric_grad(zbuf, z_idx, L, kH));
  backward();
  check_accumulates("gate_silu", "y", g_y, dy, yi);
  check_accumulates("gate_silu", "z", g_z, dz, dz_idx);
}

TEST(Gradient, GatedResidual) {
  Rng rng(106);
  const int64_t M = 6, D = 5;
  const auto x = rng.vec(size_t(M * D));
  auto g = rng.vec(size_t(M * D), -3, 3), c = rng.vec(size_t(M * D));
  const auto R = rng.vec(size_t(M * D));
  auto L = [&] {
    std::vector<double> xx = x;  // forward is in place: x += σ(g) ⊙ c
    cpu::gated_residual_forward(xx.data(), g.data(), c.data(), M, D);
    return dot_at(xx, all_indices(xx.size()), R);
  };
  std::vector<double> dg = rng.vec(g.size(), 50, 60), dc = rng.vec(c.size(), 50, 60);  // overwritten
  cpu::gated_residual_backward(dg.data(), dc.data(), R.data(), g.data(), c.data(), M, D);
  const auto g1 = dg, c1 = dc;
  check_grad("gated_residual", "g", dg, numeric_grad(g, L, kH));
  check_grad("gated_residual", "c", dc, numeric_grad(c, L, kH));
  // dx passes through: the x-part of L is R itself.
  std::vector<double> xs = x;
  auto Lx = [&] {
    std::vector<double> xx = xs;
    cpu::gated_residual_forward(xx.data(), g.data(), c.data(), M, D);
    return dot_at(xx, all_indices(xx.size()), R);
  };
  check_grad("gated_residual", "x", R, numeric_grad(xs, Lx, kH));
  cpu::gated_residual_backward(dg.data(), dc.data(), R.data(), g.data(), c.data(), M, D);
  EXPECT_EQ(dg, g1) << "gated_residual: dg is documented as written (=)";
  EXPECT_EQ(dc, c1) << "gated_residual: dc is documented as written (=)";
}

TEST(Gradient, NoteScore) {
  Rng rng(107);
  const int64_t M = 7, D = 6;
  auto v = rng.vec(size_t(M * D)), w = rng.vec(size_t(D)), b = rng.vec(1);
  const auto R = rng.vec(size_t(M));
  std::vector<double> s(static_cast<size_t>(M));
  auto L = [&] {
    cpu::note_score_forward(s.data(), v.data(), w.data(), b.data(), M, D);
    return dot_at(s, all_indices(s.size()), R);
  };
  L();
  AccBuf dv(v.size(), rng), dw(w.size(), rng), db(1, rng);
  auto backward = [&] {
    cpu::note_score_backward(dv.data(), dw.data(), db.data(), R.data(), s.data(), v.data(), w.data(), M, D);
  };
  backward();
  const auto vi = all_indices(v.size()), wi = all_indices(w.size()), bi = all_indices(1);
  const auto g_v = dv.added(vi), g_w = dw.added(wi), g_b = db.added(bi);
  check_grad("note_score", "v", g_v, numeric_grad(v, L, kH));
  check_grad("note_score", "w", g_w, numeric_grad(w, L, kH));
  check_grad("note_score", "b", g_b, numeric_grad(b, L, kH));
  L();
  backward();
  check_accumulates("note_score", "v", g_v, dv, vi);
  check_accumulates("note_score", "w", g_w, dw, wi);
  check_accumulates("note_score", "b", g_b, db, bi);
}

TEST(Gradient, NoteScale) {
  Rng rng(108);
  const int64_t M = 7, S = 4;
  auto s = rng.vec(size_t(M), 0.05, 0.95), m = rng.vec(size_t(M * S));
  const auto R = rng.vec(size_t(M * S));
  std::vector<double> n(size_t(M * S));
  auto L = [&] {
    cpu::note_scale_forward(n.data(), s.data(), m.data(), M, S);
    return dot_at(n, all_indices(n.size()), R);
  };
  AccBuf dm(m.size(), rng), ds(s.size(), rng);
  auto backward = [&] { cpu::note_scale_backward(dm.data(), ds.data(), R.data(), s.data(), m.data(), M, S); };
  backward();
  const auto mi = all_indices(m.size()), si = all_indices(s.size());
  const auto g_m = dm.added(mi), g_s = ds.added(si);
  check_grad("note_scale", "s", g_s, numeric_grad(s, L, kH));
  check_grad("note_scale", "m", g_m, numeric_grad(m, L, kH));
  backward();
  check_accumulates("note_scale", "s", g_s, ds, si);
  check_accumulates("note_scale", "m", g_m, dm, mi);
}

TEST(Gradient, PoolAttention) {
  Rng rng(109);
  const int64_t Rr = 4, m = 5, H = 2, dh = 3, S = H * dh, ldq = 8, q_off = 1, lddq = 7;
  auto qbuf = rng.vec(size_t(Rr * ldq), -2, 2), keys = rng.vec(size_t(m * S), -2, 2),
       vals = rng.vec(size_t(m * S));
  const auto R = rng.vec(size_t(Rr * S));
  std::vector<double> o(size_t(Rr * S)), P(size_t(Rr * H * m));
  auto L = [&] {
    cpu::pool_attention_forward(o.data(), P.data(), qbuf.data() + q_off, ldq, keys.data(), vals.data(),
                                Rr, m, H, dh);
    return dot_at(o, all_indices(o.size()), R);
  };
  L();
  const auto P0 = P;
  AccBuf dq(size_t(Rr * lddq), rng), dk(keys.size(), rng), dvv(vals.size(), rng);
  auto backward = [&] {
    cpu::pool_attention_backward(dq.data() + q_off, lddq, dk.data(), dvv.data(), R.data(),
                                 qbuf.data() + q_off, ldq, keys.data(), vals.data(), P0.data(), Rr, m, H, dh);
  };
  backward();
  const auto q_idx = strided_indices(Rr, S, ldq, q_off), dq_idx = strided_indices(Rr, S, lddq, q_off),
             ki = all_indices(keys.size()), vi = all_indices(vals.size());
  const auto g_q = dq.added(dq_idx), g_k = dk.added(ki), g_v = dvv.added(vi);
  check_grad("pool_attention", "q", g_q, numeric_grad(qbuf, q_idx, L, kH));
  check_grad("pool_attention", "keys", g_k, numeric_grad(keys, L, kH));
  check_grad("pool_attention", "vals", g_v, numeric_grad(vals, L, kH));
  backward();
  check_accumulates("pool_attention", "q", g_q, dq, dq_idx);
  check_accumulates("pool_attention", "keys", g_k, dk, ki);
  check_accumulates("pool_attention", "vals", g_v, dvv, vi);
  // An empty pool reads nothing: o = 0.
  std::vector<double> o0(o.size(), 7.0);
  cpu::pool_attention_forward(o0.data(), P.data(), qbuf.data() + q_off, ldq, keys.data(), vals.data(),
                              Rr, 0, H, dh);
  EXPECT_EQ(o0, std::vector<double>(o.size(), 0.0));
}

TEST(Gradient, Embedding) {
  Rng rng(110);
  const int64_t V = 8, D = 3, M = 12;
  std::vector<int32_t> tokens(static_cast<size_t>(M));
  for (auto& t : tokens) t = int32_t(rng.integer(0, V - 1));
  tokens[3] = tokens[7] = tokens[9] = 4;  // repeats must add up
  auto table = rng.vec(size_t(V * D));
  const auto R = rng.vec(size_t(M * D));
  std::vector<double> out(size_t(M * D));
  auto L = [&] {
    cpu::embedding_forward(out.data(), tokens.data(), table.data(), M, D);
    return dot_at(out, all_indices(out.size()), R);
  };
  AccBuf dt(table.size(), rng);
  auto backward = [&] { cpu::embedding_backward(dt.data(), tokens.data(), R.data(), M, D); };
  backward();
  const auto ti = all_indices(table.size());
  const auto g = dt.added(ti);
  check_grad("embedding", "table", g, numeric_grad(table, L, kH));
  backward();
  check_accumulates("embedding", "table", g, dt, ti);
}

TEST(Gradient, CrossEntropy) {
  Rng rng(111);
  const int64_t M = 7, V = 8;
  const double scale = 3.0;
  auto logits = rng.vec(size_t(M * V), -2, 2);
  std::vector<int32_t> targets = {1, -1, 4, 2, -1, 3, 7};
  auto L = [&] {
    return cpu::cross_entropy_forward_backward<double>(nullptr, nullptr, logits.data(), targets.data(),
                                                       M, V, scale) / scale;
  };
  std::vector<double> dl = rng.vec(logits.size(), 50, 60);  // overwritten, ignored rows included
  int64_t counted = -1;
  const double loss = cpu::cross_entropy_forward_backward(dl.data(), &counted, logits.data(),
                                                          targets.data(), M, V, scale);
  EXPECT_EQ(counted, 5);
  EXPECT_DOUBLE_EQ(loss / scale, L());
  for (int64_t r : {1, 4})
    for (int64_t v = 0; v < V; ++v) EXPECT_EQ(dl[size_t(r * V + v)], 0.0) << "ignored row " << r;
  check_grad("cross_entropy", "logits", dl, numeric_grad(logits, L, kH));
}

TEST(Gradient, AdamWOneStepByHand) {
  Rng rng(112);
  const int64_t n = 9;
  auto p = rng.vec(size_t(n)), g = rng.vec(size_t(n)), m = rng.vec(size_t(n), -0.1, 0.1),
       v = rng.vec(size_t(n), 0.0, 0.05);
  cpu::AdamWHyper hp;
  hp.lr = 3e-3;
  hp.beta1 = 0.8;
  hp.beta2 = 0.97;
  hp.eps = 1e-6;
  hp.weight_decay = 0.1;
  const double wd = 0.25, gs = 0.5;  // the explicit weight_decay argument is the one applied
  const int64_t step = 3;
  std::vector<double> ep(p), em(m), ev(v);
  for (int64_t i = 0; i < n; ++i) {
    const double gi = g[size_t(i)] * gs;
    em[size_t(i)] = 0.8 * m[size_t(i)] + 0.2 * gi;
    ev[size_t(i)] = 0.97 * v[size_t(i)] + 0.03 * gi * gi;
    const double mhat = em[size_t(i)] / (1 - 0.8 * 0.8 * 0.8), vhat = ev[size_t(i)] / (1 - 0.97 * 0.97 * 0.97);
    ep[size_t(i)] = p[size_t(i)] - 3e-3 * (mhat / (std::sqrt(vhat) + 1e-6) + wd * p[size_t(i)]);
  }
  cpu::adamw_update(p.data(), g.data(), m.data(), v.data(), n, hp, wd, step, gs);
  const double rp = rel_error(p, ep), rm = rel_error(m, em), rv = rel_error(v, ev);
  report("adamw", "p", rp);
  report("adamw", "m", rm);
  report("adamw", "v", rv);
  EXPECT_LT(rp, 1e-14);
  EXPECT_LT(rm, 1e-14);
  EXPECT_LT(rv, 1e-14);
  // float32 storage, double arithmetic inside: the same step within float rounding.
  std::vector<float> pf, gf, mf, vf;
  Rng rng2(112);
  for (auto* dst : {&pf, &gf}) for (double x : rng2.vec(size_t(n))) dst->push_back(float(x));
  for (double x : rng2.vec(size_t(n), -0.1, 0.1)) mf.push_back(float(x));
  for (double x : rng2.vec(size_t(n), 0.0, 0.05)) vf.push_back(float(x));
  cpu::adamw_update(pf.data(), gf.data(), mf.data(), vf.data(), n, hp, wd, step, gs);
  const double rpf = rel_error(pf, ep);
  report("adamw", "p(f32)", rpf);
  EXPECT_LT(rpf, 1e-6);
}

// ---- pool entry rules (DESIGN §3, note write) ---------------------------------------------
using Cand = cpu::Candidates<double>;
using Pool = cpu::Pool<double>;

Pool make_pool(int64_t K, int64_t S, std::vector<int64_t> pos, std::vector<double> prio) {
  Pool p;
  p.capacity = K;
  p.width = S;
  p.pos = pos;
  p.priority = prio;
  for (int64_t q : pos)
    for (int64_t i = 0; i < S; ++i) p.values.push_back(double(q) + 0.1 * double(i));
  return p;
}

void offer(Cand& c, int64_t K, int64_t S, int64_t pos, double s, double tau) {
  std::vector<double> n(static_cast<size_t>(S));
  for (int64_t i = 0; i < S; ++i) n[size_t(i)] = double(pos) + 0.1 * double(i);  // traceable values
  cpu::candidates_offer(c, K, S, pos, s, n.data(), tau);
}

// Every slot's values must still be those of its source position.
void expect_values_follow(const Pool& p) {
  ASSERT_EQ(p.values.size(), size_t(p.used() * p.width));
  for (int64_t j = 0; j < p.used(); ++j)
    for (int64_t i = 0; i < p.width; ++i)
      EXPECT_DOUBLE_EQ(p.values[size_t(j * p.width + i)], double(p.pos[size_t(j)]) + 0.1 * double(i))
          << "slot " << j;
}

TEST(Gradient, PoolOnlyScoresAboveTauEnter) {
  Cand c;
  const double tau = 0.5;
  offer(c, 4, 2, 0, 0.5, tau);    // equal to tau: out
  offer(c, 4, 2, 1, 0.49, tau);   // below: out
  offer(c, 4, 2, 2, 0.51, tau);   // in
  offer(c, 4, 2, 3, 0.9, tau);    // in
  offer(c, 4, 2, 4, -1.0, tau);
  EXPECT_EQ(c.pos, (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(c.score, (std::vector<double>{0.9, 0.51}));
  Pool p = make_pool(4, 2, {}, {});
  cpu::pool_commit(p, c);
  EXPECT_EQ(p.pos, (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(c.count(), 0);
  expect_values_follow(p);
}

TEST(Gradient, PoolKeepsOnlyTheKBestOfAChunk) {
  Cand c;
  const int64_t K = 3;
  const std::vector<double> s = {0.6, 0.9, 0.7, 0.9, 0.55, 0.95, 0.7, 0.8};
  for (size_t t = 0; t < s.size(); ++t) offer(c, K, 2, int64_t(t), s[t], 0.3);
  EXPECT_EQ(c.count(), K);
  EXPECT_EQ(c.pos, (std::vector<int64_t>{5, 1, 3}));  // 0.95, then the tie 0.9 to the earlier position
  Pool p = make_pool(K, 2, {}, {});
  cpu::pool_commit(p, c);
  EXPECT_EQ(p.pos, (std::vector<int64_t>{5, 1, 3}));
  EXPECT_EQ(p.priority, (std::vector<double>{0.95, 0.9, 0.9}));
  expect_values_follow(p);
}

TEST(Gradient, PoolAppendsInDecreasingScoreTiesToEarlierPosition) {
  Pool p = make_pool(5, 3, {2}, {0.6});
  Cand c;
  offer(c, 5, 3, 12, 0.7, 0.3);
  offer(c, 5, 3, 11, 0.8, 0.3);
  offer(c, 5, 3, 10, 0.7, 0.3);
  cpu::pool_commit(p, c);
  EXPECT_EQ(p.pos, (std::vector<int64_t>{2, 11, 10, 12}));
  EXPECT_EQ(p.priority, (std::vector<double>{0.6, 0.8, 0.7, 0.7}));
  EXPECT_EQ(c.count(), 0);
  expect_values_follow(p);
  // The order decides who enters when the pool fills: one free slot, two equal candidates
  // offered later-first. The earlier position appends; the other equals the lowest priority
  // and does not replace it.
  Pool q = make_pool(2, 3, {1}, {0.9});
  offer(c, 2, 3, 41, 0.6, 0.3);
  offer(c, 2, 3, 40, 0.6, 0.3);
  cpu::pool_commit(q, c);
  EXPECT_EQ(q.pos, (std::vector<int64_t>{1, 40}));
  expect_values_follow(q);
}

TEST(Gradient, PoolReplacesLowestPriorityTiesToEarliestPosition) {
  // Full pool; the two lowest priorities tie, the earlier source position (3, in slot 1) goes first.
  Pool p = make_pool(3, 2, {7, 3, 5}, {0.6, 0.6, 0.9});
  Cand c;
  offer(c, 3, 2, 21, 0.62, 0.3);
  offer(c, 3, 2, 20, 0.65, 0.3);
  cpu::pool_commit(p, c);
  EXPECT_EQ(p.pos, (std::vector<int64_t>{21, 20, 5}));
  EXPECT_EQ(p.priority, (std::vector<double>{0.62, 0.65, 0.9}));
  expect_values_follow(p);
}

TEST(Gradient, PoolCandidateEqualToLowestDoesNotReplace) {
  Pool p = make_pool(3, 2, {4, 1, 2}, {0.6, 0.7, 0.8});
  Cand c;
  offer(c, 3, 2, 30, 0.6, 0.3);
  cpu::pool_commit(p, c);
  EXPECT_EQ(p.pos, (std::vector<int64_t>{4, 1, 2}));
  EXPECT_EQ(p.priority, (std::vector<double>{0.6, 0.7, 0.8}));
  // 0.75 replaces 0.6; then 0.7 equals the new lowest (0.7 at position 1) and stays out.
  offer(c, 3, 2, 31, 0.7, 0.3);
  offer(c, 3, 2, 32, 0.75, 0.3);
  cpu::pool_commit(p, c);
  EXPECT_EQ(p.pos, (std::vector<int64_t>{32, 1, 2}));
  EXPECT_EQ(p.priority, (std::vector<double>{0.75, 0.7, 0.8}));
  expect_values_follow(p);
}

// ---- the whole model ----------------------------------------------------------------------
// Pool membership per [sequence][layer][segment]: the positions each segment read.
using Membership = std::vector<std::vector<std::vector<int64_t>>>;

struct ModelEval {
  double loss;
  std::vector<double> rows;  // each row's cross-entropy (0 where the target is ignored)
  Membership members;
};

void whole_model_check(bool notes, uint64_t seed) {
  mm::Config cfg;
  cfg.vocab = 8;
  cfg.d_model = 8;
  cfg.n_layer = 2;
  cfg.expand = 2;
  cfg.d_state = 3;
  cfg.d_conv = 3;
  cfg.dt_rank = 1;
  cfg.pool_slots = 3;
  cfg.summary_dim = 4;
  cfg.note_heads = 2;
  cfg.memory_chunk = 5;
  cfg.cross_layer_period = 2;
  cfg.tau1 = 0.3;
  cfg.notes = notes;
  mm::MemMamba<double> model(cfg, seed);
  const mm::ParamTable& table = model.table();
  Rng rng(seed + 1000);
  // Fresh random parameters around the initialisation (no exact 1s and 0s), with Δ's bias
  // raised so that Δ = softplus(·) is O(0.1..1) and A_log gets gradients well above the noise.
  auto& P = model.params();
  for (auto& x : P) x += 0.1 * rng.uniform();
  for (int l = 0; l < cfg.n_layer; ++l) {
    const auto& ix = table.layer(l);
    for (int64_t e = 0; e < cfg.d_inner(); ++e) P[ix.dt_b + size_t(e)] = rng.uniform(-2.0, 0.5);
    // x_proj (δ, B, C rows) uniform(±1) rather than ±1/√E: the state path y = h·C then carries
    // a share of the output comparable to D ⊙ u, so that the gradients of dt_proj and A_log
    // stand well above the rounding noise of the difference quotient.
    for (size_t k = 0; k < size_t(cfg.d_inner() * (cfg.rank() + 2 * cfg.d_state)); ++k)
      P[ix.x_proj + k] = rng.uniform();
  }
  const int64_t B = 2, T = 23, M = B * T;
  std::vector<int32_t> tokens(static_cast<size_t>(M));
  for (auto& t : tokens) t = int32_t(rng.integer(1, 4));
  for (size_t i : {2u, 9u, 10u, 17u, 25u, 31u, 40u}) tokens[i] = 5;  // N: ignored targets
  tokens[0] = 6;                                                       // BOS
  const auto targets = mm::MemMamba<double>::next_token_targets(tokens.data(), B, T);

  std::vector<double> logits(size_t(M * cfg.vocab));
  auto eval = [&]() -> ModelEval {
    ModelEval r;
    mm::Taps<double> t0, t1;
    model.forward(tokens.data(), B, T, logits.data(), nullptr, &t0);
    r.loss = cpu::cross_entropy_forward_backward<double>(nullptr, nullptr, logits.data(), targets.data(),
                                                          M, cfg.vocab, 1.0);
    for (int64_t i = 0; i < M; ++i)
      r.rows.push_back(cpu::cross_entropy_forward_backward<double>(
          nullptr, nullptr, logits.data() + i * cfg.vocab, targets.data() + i, 1, cfg.vocab, 1.0));
    if (notes) {
      // Taps show batch element 0: the second sequence's membership from a run of it alone.
      std::vector<double> l1(size_t(T * cfg.vocab));
      model.forward(tokens.data() + T, 1, T, l1.data(), nullptr, &t1);
      for (auto* t : {&t0, &t1})
        for (auto& layer : t->layers) r.members.push_back(layer.pool_read);
    }
    return r;
  };

  // Analytic.
  model.zero_grads();
  int64_t counted = 0;
  mm::Taps<double> taps;
  const double loss = model.forward_backward(tokens.data(), targets.data(), B, T, 1.0, &counted, nullptr, &taps);
  const std::vector<double> analytic = model.grads();
  const ModelEval base = eval();
  EXPECT_NEAR(loss, base.loss, 1e-12 * std::abs(loss)) << "forward_backward's loss differs from forward's";
  EXPECT_GT(counted, 20);
  EXPECT_LT(counted, M - 5);

  if (notes) {
    // The pools must fill and evolve, else the reads (and their gradients) go untested.
    int64_t nonempty = 0, replaced = 0;
    for (const auto& seq_layer : base.members)
      for (size_t i = 0; i < seq_layer.size(); ++i) {
        nonempty += !seq_layer[i].empty();
        if (i > 0 && seq_layer[i - 1].size() == size_t(cfg.pool_slots) &&
            seq_layer[i].size() == size_t(cfg.pool_slots) && seq_layer[i] != seq_layer[i - 1])
          ++replaced;
      }
    std::printf("[gradcheck] model: %lld segment reads of a non-empty pool, %lld after a replacement\n",
                (long long)nonempty, (long long)replaced);
    EXPECT_GT(nonempty, 0) << "no chunk read a non-empty pool";
    EXPECT_GT(replaced, 0) << "no pool slot was ever replaced";
    EXPECT_EQ(taps.layers.size(), size_t(cfg.n_layer));
    EXPECT_EQ(taps.layers[0].pool_read, base.members[0]) << "forward_backward and forward read different pools";
  }

  // Numeric, skipping the elements whose ±h flips pool membership (the backward treats it as constant).
  std::vector<double> numeric(P.size(), 0.0);
  std::vector<char> skip(P.size(), 0);
  int64_t skips = 0;
  for (size_t i = 0; i < P.size(); ++i) {
    const double x0 = P[i], xp = x0 + kH, xm = x0 - kH;
    P[i] = xp;
    const ModelEval ep = eval();
    P[i] = xm;
    const ModelEval em = eval();
    P[i] = x0;
    if (ep.members != base.members || em.members != base.members) {
      skip[i] = 1;
      ++skips;
      continue;
    }
    // Σ_rows (ℓ(+h) − ℓ(−h)) rather than Σℓ(+h) − Σℓ(−h): the same quantity, without the
    // rounding of a sum of ~80 (ulp 1.4e-14) in each term of the difference quotient.
    double diff = 0;
    for (int64_t r = 0; r < M; ++r) diff += ep.rows[size_t(r)] - em.rows[size_t(r)];
    numeric[i] = diff / (xp - xm);
  }
  const double model_tol = 1e-6;
  double worst = 0;
  for (const auto& e : table.entries()) {
    std::vector<double> a, n;
    for (size_t k = e.offset; k < e.offset + e.size; ++k)
      if (!skip[k]) {
        a.push_back(analytic[k]);
        n.push_back(numeric[k]);
      }
    const double rel = rel_error(a, n);
    worst = std::max(worst, rel);
    double norm = 0;
    for (double x : n) norm += x * x;
    std::printf("[gradcheck] %-12s %-34s rel %.3e  |grad| %.3e\n", notes ? "model" : "model(plain)",
                e.name.c_str(), rel, std::sqrt(norm));
    EXPECT_LT(rel, model_tol) << "parameter " << e.name << " (notes " << (notes ? "on" : "off") << ")";
  }
  std::printf("[gradcheck] %s: %zu parameters, %lld skipped for a membership flip, worst rel %.3e\n",
              notes ? "model" : "model(plain)", P.size(), (long long)skips, worst);
  EXPECT_LE(skips, int64_t(P.size() / 100)) << "too many membership flips at h = " << kH;
}

TEST(Gradient, WholeModelMatchesFiniteDifferences) { whole_model_check(true, 7); }

TEST(Gradient, WholeModelNotesOffMatchesFiniteDifferences) { whole_model_check(false, 8); }

}  // namespace
