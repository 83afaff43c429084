#include "kernels/notes.hpp"

#include <tbb/parallel_for.h>

#include <algorithm>
#include <cmath>

#include "kernels/cpu/math.hpp"

namespace mm::cpu {

template <typename T>
void note_score_forward(T* s, const T* v, const T* w, const T* b, int64_t M, int64_t D) {
  tbb::parallel_for(int64_t(0), M, [&](int64_t r) {
    T acc = b[0];
    for (int64_t i = 0; i < D; ++i) acc += v[r * D + i] * w[i];
    s[r] = sigmoid(acc);
  });
}

template <typename T>
void note_score_backward(T* dv, T* dw, T* db, const T* ds, const T* s, const T* v, const T* w,
                         int64_t M, int64_t D) {
  for (int64_t r = 0; r < M; ++r) {
    const T g = ds[r] * s[r] * (T(1) - s[r]);
    db[0] += g;
    for (int64_t i = 0; i < D; ++i) {
      dw[i] += g * v[r * D + i];
      dv[r * D + i] += g * w[i];
    }
  }
}

template <typename T>
void note_scale_forward(T* n, const T* s, const T* m, int64_t M, int64_t S) {
  for (int64_t r = 0; r < M; ++r)
    for (int64_t i = 0; i < S; ++i) n[r * S + i] = s[r] * m[r * S + i];
}

template <typename T>
void note_scale_backward(T* dm, T* ds, const T* dn, const T* s, const T* m, int64_t M, int64_t S) {
  for (int64_t r = 0; r < M; ++r) {
    T acc = 0;
    for (int64_t i = 0; i < S; ++i) {
      dm[r * S + i] += s[r] * dn[r * S + i];
      acc += dn[r * S + i] * m[r * S + i];
    }
    ds[r] += acc;
  }
}

namespace {
// a ranks before b: higher score, ties to the earlier position.
template <typename T>
bool ranks_before(T sa, int64_t pa, T sb, int64_t pb) {
  return sa > sb || (sa == sb && pa < pb);
}
}  // namespace

template <typename T>
void candidates_offer(Candidates<T>& c, int64_t K, int64_t S, int64_t pos, T s, const T* n, double tau) {
  if (!(s > T(tau)) || K == 0) return;
  // Insertion into a list kept sorted by rank; it never holds more than K.
  int64_t at = c.count();
  while (at > 0 && ranks_before(s, pos, c.score[at - 1], c.pos[at - 1])) --at;
  if (at >= K) return;
  c.pos.insert(c.pos.begin() + at, pos);
  c.score.insert(c.score.begin() + at, s);
  c.values.insert(c.values.begin() + at * S, n, n + S);
  if (c.count() > K) {
    c.pos.pop_back();
    c.score.pop_back();
    c.values.resize(size_t(K * S));
  }
}

template <typename T>
void pool_commit(Pool<T>& pool, Candidates<T>& c) {
  const int64_t S = pool.width;
  for (int64_t i = 0; i < c.count(); ++i) {
    const T* n = c.values.data() + i * S;
    if (pool.used() < pool.capacity) {
      pool.pos.push_back(c.pos[i]);
      pool.priority.push_back(c.score[i]);
      pool.values.insert(pool.values.end(), n, n + S);
      continue;
    }
    int64_t low = 0;
    for (int64_t j = 1; j < pool.used(); ++j)
      if (pool.priority[j] < pool.priority[low] ||
          (pool.priority[j] == pool.priority[low] && pool.pos[j] < pool.pos[low]))
        low = j;
    if (!(c.score[i] > pool.priority[low])) break;  // later candidates score no higher
    pool.pos[low] = c.pos[i];
    pool.priority[low] = c.score[i];
    std::copy(n, n + S, pool.values.begin() + low * S);
  }
  c.clear();
}

template <typename T>
void pool_attention_forward(T* o, T* P, const T* q, int64_t ldq, const T* keys, const T* vals,
                            int64_t R, int64_t m, int64_t H, int64_t dh) {
  const int64_t S = H * dh;
  const T scale = T(1) / std::sqrt(T(dh));
  tbb::parallel_for(int64_t(0), R, [&](int64_t r) {
    T* orow = o + r * S;
    std::fill(orow, orow + S, T(0));
    for (int64_t h = 0; h < H; ++h) {
      T* p = P + (r * H + h) * m;
      const T* qh = q + r * ldq + h * dh;
      T mx = -INFINITY;
      for (int64_t j = 0; j < m; ++j) {
        T a = 0;
        const T* kj = keys + j * S + h * dh;
#pragma omp simd reduction(+ : a)
        for (int64_t i = 0; i < dh; ++i) a += qh[i] * kj[i];
        p[j] = a * scale;
        mx = std::max(mx, p[j]);
      }
      T sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < m; ++j) sum += (p[j] = exp_(p[j] - mx));
      for (int64_t j = 0; j < m; ++j) {
        p[j] /= sum;
        const T pj = p[j];
        const T* vj = vals + j * S + h * dh;
        T* oh = orow + h * dh;
#pragma omp simd
        for (int64_t i = 0; i < dh; ++i) oh[i] += pj * vj[i];
      }
    }
  });
}

template <typename T>
void pool_attention_backward(T* dq, int64_t lddq, T* dkeys, T* dvals, const T* dout, const T* q,
                             int64_t ldq, const T* keys, const T* vals, const T* P, int64_t R,
                             int64_t m, int64_t H, int64_t dh) {
  const int64_t S = H * dh;
  const T scale = T(1) / std::sqrt(T(dh));
  std::vector<T> dp(static_cast<size_t>(m));
  for (int64_t r = 0; r < R; ++r)
    for (int64_t h = 0; h < H; ++h) {
      const T* p = P + (r * H + h) * m;
      const T* dor = dout + r * S + h * dh;
      const T* qh = q + r * ldq + h * dh;
      T dot = 0;
      for (int64_t j = 0; j < m; ++j) {
        T a = 0;
        for (int64_t i = 0; i < dh; ++i) {
          a += dor[i] * vals[j * S + h * dh + i];
          dvals[j * S + h * dh + i] += p[j] * dor[i];
        }
        dp[j] = a;
        dot += p[j] * a;
      }
      for (int64_t j = 0; j < m; ++j) {
        const T da = p[j] * (dp[j] - dot) * scale;
        for (int64_t i = 0; i < dh; ++i) {
          dq[r * lddq + h * dh + i] += da * keys[j * S + h * dh + i];
          dkeys[j * S + h * dh + i] += da * qh[i];
        }
      }
    }
}

#define MM_INSTANTIATE(T)                                                                         \
  template void note_score_forward<T>(T*, const T*, const T*, const T*, int64_t, int64_t);        \
  template void note_score_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*,        \
                                       int64_t, int64_t);                                          \
  template void note_scale_forward<T>(T*, const T*, const T*, int64_t, int64_t);                  \
  template void note_scale_backward<T>(T*, T*, const T*, const T*, const T*, int64_t, int64_t);   \
  template void candidates_offer<T>(Candidates<T>&, int64_t, int64_t, int64_t, T, const T*,       \
                                    double);                                                       \
  template void pool_commit<T>(Pool<T>&, Candidates<T>&);                                          \
  template void pool_attention_forward<T>(T*, T*, const T*, int64_t, const T*, const T*, int64_t, \
                                          int64_t, int64_t, int64_t);                              \
  template void pool_attention_backward<T>(T*, int64_t, T*, T*, const T*, const T*, int64_t,      \
                                           const T*, const T*, const T*, int64_t, int64_t,         \
                                           int64_t, int64_t);
MM_INSTANTIATE(float)
MM_INSTANTIATE(double)
#undef MM_INSTANTIATE

}  // namespace mm::cpu
