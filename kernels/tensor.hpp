// Tensor: a contiguous, row-major, owning buffer with a shape. The CPU ops take raw pointers and
// sizes (llm.c style); Tensor is how the model owns its parameters, gradients and activations.
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

namespace mm {

template <typename T>
class Tensor {
public:
  Tensor() = default;
  explicit Tensor(std::vector<int64_t> shape, T fill = T(0)) : shape_(std::move(shape)) {
    data_.assign(count(shape_), fill);
  }
  static size_t count(const std::vector<int64_t>& shape) {
    return std::accumulate(shape.begin(), shape.end(), size_t(1),
                           [](size_t a, int64_t b) { return a * size_t(b); });
  }
  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t dim(size_t i) const { return shape_.at(i); }
  size_t size() const { return data_.size(); }
  bool empty() const { return data_.empty(); }
  T* data() { return data_.data(); }
  const T* data() const { return data_.data(); }
  T& operator[](size_t i) { return data_[i]; }
  const T& operator[](size_t i) const { return data_[i]; }
  void zero() { std::fill(data_.begin(), data_.end(), T(0)); }
  void resize(std::vector<int64_t> shape) {
    shape_ = std::move(shape);
    data_.resize(count(shape_));
  }
  std::vector<T>& vec() { return data_; }
  const std::vector<T>& vec() const { return data_; }

private:
  std::vector<int64_t> shape_;
  std::vector<T> data_;
};

inline std::string shape_string(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) {
    if (i) r += ',';
    r += std::to_string(s[i]);
  }
  r += ']';
  return r;
}

}  // namespace mm
