// One stream (batch 1) through a model, piece after piece: what `score` (and later `vep`) needs
// from a backend. The CPU and the CUDA model both provide it; the streaming contract (DESIGN §3)
// makes any split of the stream give the logits of one whole pass.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "model/config.hpp"
#include "model/memmamba.hpp"

namespace mm {

class StreamModel {
public:
  virtual ~StreamModel() = default;
  virtual const Config& config() const = 0;
  // Starts a new stream at position 0.
  virtual void reset() = 0;
  // Continues the stream with n tokens; logits (n×V) on the host.
  virtual void forward(const int32_t* tokens, int64_t n, float* logits) = 0;
};

class CpuStreamModel final : public StreamModel {
public:
  explicit CpuStreamModel(MemMamba<float>& m) : m_(m), st_(m.new_state(1)) {}
  const Config& config() const override { return m_.config(); }
  void reset() override { st_ = m_.new_state(1); }
  void forward(const int32_t* tokens, int64_t n, float* logits) override {
    m_.forward(tokens, 1, n, logits, &st_);
  }

private:
  MemMamba<float>& m_;
  StreamState<float> st_;
};

// The CUDA model as a StreamModel (bf16 products); throws mm::Error when this build has no CUDA
// backend or no GPU is present.
std::unique_ptr<StreamModel> make_cuda_stream_model(const Config& cfg, const std::vector<float>& params);
bool cuda_stream_model_available();

}  // namespace mm
