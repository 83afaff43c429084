#include "model/stream_model.hpp"

#include "io/error.hpp"
#ifdef MEMMAMBA_HAVE_CUDA
#include "model/memmamba_cuda.hpp"
#endif

namespace mm {

#ifdef MEMMAMBA_HAVE_CUDA
namespace {
class CudaStreamModel final : public StreamModel {
public:
  CudaStreamModel(const Config& cfg, const std::vector<float>& params)
      : m_(cfg, params, cuda::DType::bf16), st_(m_.new_state(1)) {}
  const Config& config() const override { return m_.config(); }
  void reset() override { st_ = m_.new_state(1); }
  void forward(const int32_t* tokens, int64_t n, float* logits) override {
    m_.forward(tokens, 1, n, logits, st_.get());
  }

private:
  MemMambaCuda m_;
  std::unique_ptr<MemMambaCuda::State, void (*)(MemMambaCuda::State*)> st_;
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
