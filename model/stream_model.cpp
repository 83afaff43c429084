#include "model/stream_model.hpp"

#include <memory>
#include <utility>

#include "io/error.hpp"
#ifdef MEMMAMBA_HAVE_CUDA
#include "model/memmamba_cuda.hpp"
#endif

namespace mm {

#ifdef MEMMAMBA_HAVE_CUDA
namespace {
using CudaState = std::unique_ptr<MemMambaCuda::State, void (*)(MemMambaCuda::State*)>;

// Forks share the device model (weights and work buffers) and own their device state.
class CudaStreamModel final : public StreamModel {
public:
  CudaStreamModel(const Config& cfg, const std::vector<float>& params)
      : m_(std::make_shared<MemMambaCuda>(cfg, params, cuda::DType::bf16)), st_(m_->new_state(1)) {}
  CudaStreamModel(std::shared_ptr<MemMambaCuda> m, CudaState st) : m_(std::move(m)), st_(std::move(st)) {}
  const Config& config() const override { return m_->config(); }
  void reset() override { st_ = m_->new_state(1); }
  void forward(const int32_t* tokens, int64_t n, float* logits) override {
    m_->forward(tokens, 1, n, logits, st_.get());
  }
  std::unique_ptr<StreamModel> fork() const override {
    return std::make_unique<CudaStreamModel>(m_, m_->copy_state(*st_));
  }
  int64_t position() const override { return m_->position(*st_); }
  bool concurrent() const override { return false; }

private:
  std::shared_ptr<MemMambaCuda> m_;
  CudaState st_;
};
}  // namespace

bool cuda_stream_model_available() { return cuda::available(); }

std::unique_ptr<StreamModel> make_cuda_stream_model(const Config& cfg, const std::vector<float>& params) {
  return std::make_unique<CudaStreamModel>(cfg, params);
}
#else
bool cuda_stream_model_available() { return false; }

std::unique_ptr<StreamModel> make_cuda_stream_model(const Config&, const std::vector<float>&) {
  throw UsageError("this build has no CUDA backend (configure with the default preset where nvcc is installed)");
}
#endif

}  // namespace mm
