// Parallel over blocks of channels (each channel's recurrence is independent); within a block,
// time runs sequentially with the block's states in a small contiguous array.
#include "kernels/scan.hpp"

#include <tbb/parallel_for.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/math.hpp"

namespace mm::cpu {

namespace {
constexpr int64_t kChannelBlock = 16;  // channels per task
constexpr int64_t kTimeBlock = 64;     // backward: steps between stored states
}  // namespace

template <typename T>
void scan_forward(T* y, T* h, const T* u, int64_t ld_u, const T* dt, const T* A_log, const T* Bm,
                  const T* Cm, int64_t ld_bc, const T* D, int64_t B, int64_t T_, int64_t E,
                  int64_t N) {
  // A transposed to N × E (padded to whole channel blocks) so that, for one state index n, a
  // block's channels are contiguous: the inner loops then run across 16 channels and vectorise,
  // with no horizontal sums.
  constexpr int64_t W = kChannelBlock;
  const int64_t nblk = (E + W - 1) / W, Ep = nblk * W;
  std::vector<T> At(size_t(N * Ep), T(0));
  for (int64_t e = 0; e < E; ++e)
    for (int64_t n = 0; n < N; ++n) At[size_t(n * Ep + e)] = -std::exp(A_log[e * N + n]);
  tbb::parallel_for(int64_t(0), B * nblk, [&](int64_t task) {
    const int64_t b = task / nblk, e0 = (task % nblk) * W, ne = std::min(E, e0 + W) - e0;
    T* hb = h + b * E * N;
    std::vector<T> hs(size_t(N * W), T(0));  // hs[n][j]: channel e0 + j, state n
    for (int64_t j = 0; j < ne; ++j)
      for (int64_t n = 0; n < N; ++n) hs[size_t(n * W + j)] = hb[(e0 + j) * N + n];
    alignas(64) T delta[W], du[W], acc[W];
    for (int64_t t = 0; t < T_; ++t) {
      const int64_t row = b * T_ + t;
      const T* Bt = Bm + row * ld_bc;
      const T* Ct = Cm + row * ld_bc;
      const T* ut = u + row * ld_u + e0;
      const T* dtt = dt + row * E + e0;
      if (ne == W) {  // a whole block: no conditions, so the softplus runs 8-wide too
#pragma omp simd
        for (int64_t j = 0; j < W; ++j) {
          delta[j] = softplus(dtt[j]);
          du[j] = delta[j] * ut[j];
          acc[j] = D[e0 + j] * ut[j];
        }
      } else {  // the last, partial block: padding channels carry zeros
        for (int64_t j = 0; j < W; ++j) {
          const bool in = j < ne;
          delta[j] = in ? softplus(dtt[j]) : T(0);
          du[j] = in ? delta[j] * ut[j] : T(0);
          acc[j] = in ? D[e0 + j] * ut[j] : T(0);
        }
      }
      for (int64_t n = 0; n < N; ++n) {
        const T bn = Bt[n], cn = Ct[n];
        const T* An = At.data() + n * Ep + e0;
        T* hn = hs.data() + n * W;
#pragma omp simd
        for (int64_t j = 0; j < W; ++j) {
          const T hv = exp_(delta[j] * An[j]) * hn[j] + du[j] * bn;
          hn[j] = hv;
          acc[j] += hv * cn;
        }
      }
      for (int64_t j = 0; j < ne; ++j) y[row * E + e0 + j] = acc[j];
    }
    for (int64_t j = 0; j < ne; ++j)
      for (int64_t n = 0; n < N; ++n) hb[(e0 + j) * N + n] = hs[size_t(n * W + j)];
  });
}

template <typename T>
void scan_backward(T* du, int64_t ld_du, T* ddt, T* dA_log, T* dBm, T* dCm, int64_t ld_dbc, T* dD,
                   const T* dy, const T* u, int64_t ld_u, const T* dt, const T* A_log,
                   const T* Bm, const T* Cm, int64_t ld_bc, const T* D, int64_t B, int64_t T_,
                   int64_t E, int64_t N) {
  std::vector<T> A(size_t(E * N));
  for (int64_t i = 0; i < E * N; ++i) A[i] = -std::exp(A_log[i]);
  const int64_t nblk = (E + kChannelBlock - 1) / kChannelBlock;
  const int64_t ntb = (T_ + kTimeBlock - 1) / kTimeBlock;
  // Per channel-block partial sums of dB and dC (they reduce over channels), summed at the end.
  std::vector<T> dB_part(size_t(nblk * B * T_ * N), T(0)), dC_part(size_t(nblk * B * T_ * N), T(0));

  tbb::parallel_for(int64_t(0), nblk, [&](int64_t blk) {
    const int64_t e0 = blk * kChannelBlock, e1 = std::min(E, e0 + kChannelBlock), ne = e1 - e0;
    std::vector<T> saved(size_t(ntb * ne * N));        // state before each time block
    std::vector<T> hs(size_t(kTimeBlock * ne * N));    // states within one time block
    std::vector<T> g(size_t(ne * N)), dA(size_t(ne * N));
    T* dBp = dB_part.data() + blk * B * T_ * N;
    T* dCp = dC_part.data() + blk * B * T_ * N;
    for (int64_t b = 0; b < B; ++b) {
      std::vector<T> h(size_t(ne * N), T(0));
      // One step of the recurrence for the block's channels; `keep` (or null) receives h_t.
      auto step = [&](int64_t t, T* keep) {
        const int64_t row = b * T_ + t;
        for (int64_t e = e0; e < e1; ++e) {
          const T delta = softplus(dt[row * E + e]), dbu = delta * u[row * ld_u + e];
          for (int64_t n = 0; n < N; ++n) {
            T& hv = h[(e - e0) * N + n];
            hv = exp_(delta * A[e * N + n]) * hv + dbu * Bm[row * ld_bc + n];
            if (keep) keep[(e - e0) * N + n] = hv;
          }
        }
      };
      // Forward again, keeping the state at each time-block start.
      for (int64_t t = 0; t < T_; ++t) {
        if (t % kTimeBlock == 0) std::copy(h.begin(), h.end(), saved.begin() + (t / kTimeBlock) * ne * N);
        step(t, nullptr);
      }
      std::fill(g.begin(), g.end(), T(0));
      std::fill(dA.begin(), dA.end(), T(0));
      for (int64_t tb = ntb - 1; tb >= 0; --tb) {
        const int64_t t0 = tb * kTimeBlock, t1 = std::min(T_, t0 + kTimeBlock);
        // Recompute this block's states.
        std::copy(saved.begin() + tb * ne * N, saved.begin() + (tb + 1) * ne * N, h.begin());
        for (int64_t t = t0; t < t1; ++t) step(t, hs.data() + (t - t0) * ne * N);
        for (int64_t t = t1 - 1; t >= t0; --t) {
          const int64_t row = b * T_ + t;
          const T* Bt = Bm + row * ld_bc;
          const T* Ct = Cm + row * ld_bc;
          for (int64_t e = e0; e < e1; ++e) {
            const T dte = dt[row * E + e], delta = softplus(dte), ue = u[row * ld_u + e];
            const T dye = dy[row * E + e];
            const T* ht = hs.data() + ((t - t0) * ne + (e - e0)) * N;
            const T* hp = t == t0 ? saved.data() + (tb * ne + (e - e0)) * N
                                  : hs.data() + ((t - 1 - t0) * ne + (e - e0)) * N;
            T* ge = g.data() + (e - e0) * N;
            T ddelta = 0, du_acc = D[e] * dye;
            for (int64_t n = 0; n < N; ++n) {
              const T a = A[e * N + n], decay = exp_(delta * a);
              ge[n] += dye * Ct[n];
              dCp[row * N + n] += dye * ht[n];
              ddelta += ge[n] * (hp[n] * decay * a + Bt[n] * ue);
              dA[(e - e0) * N + n] += ge[n] * hp[n] * decay * delta;
              dBp[row * N + n] += ge[n] * delta * ue;
              du_acc += ge[n] * delta * Bt[n];
              ge[n] *= decay;
            }
            du[row * ld_du + e] += du_acc;
            ddt[row * E + e] = ddelta * softplus_grad(dte);
            dD[e] += dye * ue;
          }
        }
      }
      for (int64_t e = e0; e < e1; ++e)
        for (int64_t n = 0; n < N; ++n) dA_log[e * N + n] += dA[(e - e0) * N + n] * A[e * N + n];
    }
  });
  tbb::parallel_for(int64_t(0), B * T_, [&](int64_t row) {
    for (int64_t blk = 0; blk < nblk; ++blk)
      for (int64_t n = 0; n < N; ++n) {
        dBm[row * ld_dbc + n] += dB_part[(blk * B * T_ + row) * N + n];
        dCm[row * ld_dbc + n] += dC_part[(blk * B * T_ + row) * N + n];
      }
  });
}

template void scan_forward<float>(float*, float*, const float*, int64_t, const float*, const float*, const float*, const float*, int64_t, const float*, int64_t, int64_t, int64_t, int64_t);
template void scan_forward<double>(double*, double*, const double*, int64_t, const double*, const double*, const double*, const double*, int64_t, const double*, int64_t, int64_t, int64_t, int64_t);
template void scan_backward<float>(float*, int64_t, float*, float*, float*, float*, int64_t, float*, const float*, const float*, int64_t, const float*, const float*, const float*, const float*, int64_t, const float*, int64_t, int64_t, int64_t, int64_t);
template void scan_backward<double>(double*, int64_t, double*, double*, double*, double*, int64_t, double*, const double*, const double*, int64_t, const double*, const double*, const double*, const double*, int64_t, const double*, int64_t, int64_t, int64_t, int64_t);

}  // namespace mm::cpu
