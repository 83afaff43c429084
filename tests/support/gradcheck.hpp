// Finite-difference gradient checking in float64 (DESIGN §2: every hand-written backward is
// checked against central differences on CPU).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "support/compare.hpp"

namespace mmtest {

// Fresh values from a seeded RNG: uniform(lo, hi).
class Rng {
public:
  explicit Rng(uint64_t seed) : gen_(seed) {}
  double uniform(double lo = -1, double hi = 1) {
    return std::uniform_real_distribution<double>(lo, hi)(gen_);
  }
  std::vector<double> vec(size_t n, double lo = -1, double hi = 1) {
    std::vector<double> v(n);
    for (auto& x : v) x = uniform(lo, hi);
    return v;
  }
  int64_t integer(int64_t lo, int64_t hi) {  // inclusive
    return std::uniform_int_distribution<int64_t>(lo, hi)(gen_);
  }
  std::mt19937_64& gen() { return gen_; }

private:
  std::mt19937_64 gen_;
};

// All indices 0..n-1.
inline std::vector<size_t> all_indices(size_t n) {
  std::vector<size_t> i(n);
  std::iota(i.begin(), i.end(), size_t(0));
  return i;
}

// Indices of an M×width block stored with row stride ld.
inline std::vector<size_t> strided_indices(int64_t M, int64_t width, int64_t ld, int64_t offset = 0) {
  std::vector<size_t> i;
  for (int64_t r = 0; r < M; ++r)
    for (int64_t c = 0; c < width; ++c) i.push_back(size_t(offset + r * ld + c));
  return i;
}

inline std::vector<double> gather(const std::vector<double>& v, const std::vector<size_t>& idx) {
  std::vector<double> g;
  g.reserve(idx.size());
  for (size_t i : idx) g.push_back(v[i]);
  return g;
}

// Central differences of the scalar L() with respect to x[idx], x modified in place and restored.
// The step actually taken, (x+h) − (x−h) after rounding, is the divisor.
template <class F>
std::vector<double> numeric_grad(std::vector<double>& x, const std::vector<size_t>& idx, F&& L,
                                 double h = 1e-6) {
  std::vector<double> g;
  g.reserve(idx.size());
  for (size_t i : idx) {
    const double x0 = x[i], xp = x0 + h, xm = x0 - h;
    x[i] = xp;
    const double lp = L();
    x[i] = xm;
    const double lm = L();
    x[i] = x0;
    g.push_back((lp - lm) / (xp - xm));
  }
  return g;
}

template <class F>
std::vector<double> numeric_grad(std::vector<double>& x, F&& L, double h = 1e-6) {
  return numeric_grad(x, all_indices(x.size()), std::forward<F>(L), h);
}

// Σ a ⊙ b over the given indices of a (b dense, in the same order).
inline double dot_at(const std::vector<double>& a, const std::vector<size_t>& idx,
                     const std::vector<double>& b) {
  double s = 0;
  for (size_t k = 0; k < idx.size(); ++k) s += a[idx[k]] * b[k];
  return s;
}

// A gradient buffer of a backward that accumulates (+=): it starts from random values so that
// "+=" is told apart from "=", and elements outside the written block must stay as they were.
struct AccBuf {
  std::vector<double> init, v;
  AccBuf(size_t n, Rng& rng) : init(rng.vec(n)), v(init) {}
  double* data() { return v.data(); }
  // What the backward added at idx.
  std::vector<double> added(const std::vector<size_t>& idx) const {
    std::vector<double> d;
    for (size_t i : idx) d.push_back(v[i] - init[i]);
    return d;
  }
  // Elements outside idx that changed.
  size_t touched_outside(const std::vector<size_t>& idx) const {
    std::vector<char> in(v.size(), 0);
    for (size_t i : idx) in[i] = 1;
    size_t n = 0;
    for (size_t i = 0; i < v.size(); ++i) n += !in[i] && v[i] != init[i];
    return n;
  }
};

inline std::vector<double> scaled(std::vector<double> v, double s) {
  for (auto& x : v) x *= s;
  return v;
}

inline void report(const std::string& op, const std::string& input, double rel) {
  std::printf("[gradcheck] %-16s %-10s rel %.3e\n", op.c_str(), input.c_str(), rel);
  std::fflush(stdout);
}

}  // namespace mmtest
