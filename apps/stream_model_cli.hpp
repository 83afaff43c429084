// The model of the streaming commands (score, vep): --device auto|cpu|cuda and -m/--model (or the
// shipped default) opened as a StreamModel on that device.
#pragma once
#include <memory>
#include <string>

#include "apps/cli.hpp"
#include "model/memmamba.hpp"
#include "model/stream_model.hpp"

namespace mm::cli {

// "cpu" or "cuda" from --device (auto: cuda when this build has the backend and a GPU is
// present). Throws mm::UsageError for another value, or cuda without a GPU.
std::string stream_device(const Args& args);

struct OpenedModel {
  std::string path;                        // the checkpoint file (provenance)
  std::unique_ptr<MemMamba<float>> cpu;    // the CPU model the stream runs on (null on cuda)
  std::unique_ptr<StreamModel> stream;
};

// Loads -m/--model (resolve_model_path) onto `device` ("cpu" or "cuda").
OpenedModel open_stream_model(const Args& args, const std::string& device);

}  // namespace mm::cli
