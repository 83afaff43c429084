#include "model/cuda_training.hpp"

#include <memory>

#include "io/error.hpp"
#ifdef MEMMAMBA_HAVE_CUDA
#include <cuda_runtime.h>

#include "model/memmamba_cuda.hpp"
#include "model/memmamba_train_cuda.hpp"
#endif

namespace mm {

#ifdef MEMMAMBA_HAVE_CUDA

bool cuda_training_available() { return cuda::available(); }

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

void cuda_use_device(int device) {
  const int n = cuda_device_count();
  if (device < 0 || device >= n)
    throw Error("CUDA device " + std::to_string(device) + " does not exist (" + std::to_string(n) + " visible)");
  const cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) throw Error("cannot use CUDA device " + std::to_string(device) + ": " + cudaGetErrorString(e));
}

GradientPass<float> make_cuda_gradient_pass(const Config& cfg) {
  auto engine = std::make_shared<MemMambaCudaTraining>(cfg, cuda::DType::tf32);
  return [engine](MemMamba<float>& model, const Batch& b, int64_t* counted) {
    engine->set_params(model.params());
    return engine->forward_backward(b.tokens.data(), b.targets.data(), b.B, b.T, 1.0, counted,
                                    model.grads().data());
  };
}

SequenceForward make_cuda_sequence_forward(const Config& cfg) {
  return [cfg](const std::vector<float>& params, const int32_t* tokens, int64_t T, float* logits) {
    MemMambaCuda m(cfg, params, cuda::DType::f32);
    m.forward(tokens, 1, T, logits);
  };
}

#else

bool cuda_training_available() { return false; }

int cuda_device_count() { return 0; }

void cuda_use_device(int device) {
  throw Error("CUDA device " + std::to_string(device) + ": this build has no CUDA backend");
}

GradientPass<float> make_cuda_gradient_pass(const Config&) {
  throw Error("this build has no CUDA backend (configure with CUDA to train on a GPU)");
}

SequenceForward make_cuda_sequence_forward(const Config&) {
  throw Error("this build has no CUDA backend (configure with CUDA to train on a GPU)");
}

#endif

}  // namespace mm
