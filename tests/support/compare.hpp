// ‖a − b‖ / ‖b‖, the relative error every numerical test reports; NaN never passes.
#pragma once
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

namespace mmtest {

template <typename A, typename B>
double rel_error(const A* a, const B* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    const double x = double(a[i]), y = double(b[i]);
    if (std::isnan(x) || std::isnan(y)) return std::numeric_limits<double>::infinity();
    num += (x - y) * (x - y);
    den += y * y;
  }
  if (den == 0) return std::sqrt(num);
  return std::sqrt(num / den);
}

template <typename A, typename B>
double rel_error(const std::vector<A>& a, const std::vector<B>& b) {
  if (a.size() != b.size()) return std::numeric_limits<double>::infinity();
  return rel_error(a.data(), b.data(), a.size());
}

}  // namespace mmtest
