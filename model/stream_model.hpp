// One stream (batch 1) through a model, piece after piece: what `score` and `vep` need from a
// backend. The CPU and the CUDA model both provide it; the streaming contract (DESIGN §3) makes
// any split of the stream give the logits of one whole pass. fork() branches a stream: `vep`
// streams a contig once and scores each variant from a copy of the state at its position.
#pragma once
#include <cstdint>
#include <memory>
#include <utility>
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
  // A second stream on the same weights whose state is a copy of this one's now (position, and
  // per layer the conv tail, the SSM state, the note pool and the unfinished chunk's
  // candidates): fed the same tokens, it gives the logits this stream would, and the two then
  // advance independently. A fork must not outlive the model the first stream was made from.
  virtual std::unique_ptr<StreamModel> fork() const = 0;
  // Absolute position of the next token (tokens fed since reset()).
  virtual int64_t position() const = 0;
  // Whether distinct streams of one model may run forward() at the same time (the CPU model:
  // yes; the CUDA model: no, its streams share one device's work buffers).
  virtual bool concurrent() const = 0;
};

class CpuStreamModel final : public StreamModel {
public:
  explicit CpuStreamModel(MemMamba<float>& m) : m_(m), st_(m.new_state(1)) {}
  CpuStreamModel(MemMamba<float>& m, StreamState<float> st) : m_(m), st_(std::move(st)) {}
  const Config& config() const override { return m_.config(); }
  void reset() override { st_ = m_.new_state(1); }
  void forward(const int32_t* tokens, int64_t n, float* logits) override {
    m_.forward(tokens, 1, n, logits, &st_);
  }
  // StreamState is plain vectors (pools and candidates included): a copy is a complete fork.
  std::unique_ptr<StreamModel> fork() const override { return std::make_unique<CpuStreamModel>(m_, st_); }
  int64_t position() const override { return st_.position; }
  bool concurrent() const override { return true; }
  const StreamState<float>& state() const { return st_; }

private:
  MemMamba<float>& m_;
  StreamState<float> st_;
};

// The CUDA model as a StreamModel (bf16 products); throws mm::Error when this build has no CUDA
// backend or no GPU is present.
std::unique_ptr<StreamModel> make_cuda_stream_model(const Config& cfg, const std::vector<float>& params);
bool cuda_stream_model_available();

}  // namespace mm
