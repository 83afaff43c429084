// Where each parameter tensor lives in the CUDA backend's device copy: the ParamTable's tensors in
// order, each starting on a 128-element boundary (256 bytes in bf16, 512 in fp32) because
// cuBLASLt picks much slower kernels for operands that are not 16-byte aligned, which the packed
// ParamTable layout does not promise. A read's k weight is used as the first half of one [k; v]
// matrix (one product gives a slot's key and value), so v follows k directly.
#pragma once
#include <algorithm>
#include <cstddef>
#include <string>
#include <unordered_map>
#include <vector>

#include "model/params.hpp"

namespace mm {

struct DeviceLayout {
  std::unordered_map<size_t, size_t> at;  // ParamTable offset → device offset
  size_t total = 0;

  explicit DeviceLayout(const ParamTable& table) {
    for (const auto& p : table.entries()) {
      at[p.offset] = total;
      total += p.size;
      const bool key = p.name.size() > 9 && p.name.compare(p.name.size() - 9, 9, ".k.weight") == 0;
      if (!key) total = (total + 127) / 128 * 128;
    }
  }
  // params (ParamTable layout) → the device layout, zeros in the padding.
  std::vector<float> pad(const ParamTable& table, const std::vector<float>& params) const {
    std::vector<float> out(total, 0.0f);
    for (const auto& p : table.entries())
      std::copy(params.begin() + long(p.offset), params.begin() + long(p.offset + p.size),
                out.begin() + long(at.at(p.offset)));
    return out;
  }
  // dst (ParamTable layout) += src (device layout).
  void add_unpadded(const ParamTable& table, const std::vector<float>& src, float* dst) const {
    for (const auto& p : table.entries()) {
      const float* s = src.data() + at.at(p.offset);
      float* d = dst + p.offset;
      for (size_t i = 0; i < p.size; ++i) d[i] += s[i];
    }
  }
};

}  // namespace mm
