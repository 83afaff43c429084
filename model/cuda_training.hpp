// Training on the CUDA backend for the pipelines, in a form every build compiles: a gradient pass
// for Trainer (model/trainer.hpp) and a whole-sequence forward for validation. Without a CUDA
// backend in the build, or without a GPU, the factories throw mm::Error and
// cuda_training_available() is false.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "model/config.hpp"
#include "model/trainer.hpp"

namespace mm {

bool cuda_training_available();

// CUDA devices visible to this process (0 without a CUDA backend or without a GPU); asking creates
// no context on any device.
int cuda_device_count();
// Makes `device` the current one for this process's CUDA work (one GPU per rank). Call it before
// anything else touches CUDA (cuda_training_available() too), so that no context lands on GPU 0.
// Throws mm::Error when there is no such device.
void cuda_use_device(int device);

// Uploads the model's parameters and runs the training pass on the GPU (fp32 activations, TF32
// products), adding its gradients to model.grads().
GradientPass<float> make_cuda_gradient_pass(const Config& cfg);

// logits (T×V, host) of one whole sequence (tokens, host) under the given parameters, on the GPU
// in fp32 (validation numbers comparable with the CPU's).
using SequenceForward = std::function<void(const std::vector<float>& params, const int32_t* tokens, int64_t T,
                                           float* logits)>;
SequenceForward make_cuda_sequence_forward(const Config& cfg);

}  // namespace mm
