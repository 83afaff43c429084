#include "apps/stream_model_cli.hpp"

#include "apps/model_path.hpp"
#include "io/error.hpp"
#include "model/checkpoint.hpp"

namespace mm::cli {

std::string stream_device(const Args& args) {
  std::string dev = args.get("device");
  if (dev != "auto" && dev != "cpu" && dev != "cuda") throw UsageError("--device wants auto, cpu or cuda, got '" + dev + "'");
  if (dev == "auto") dev = cuda_stream_model_available() ? "cuda" : "cpu";
  if (dev == "cuda" && !cuda_stream_model_available())
    throw UsageError("--device cuda: no CUDA device here, or this build has no CUDA backend");
  return dev;
}

OpenedModel open_stream_model(const Args& args, const std::string& device) {
  OpenedModel m;
  m.path = resolve_model_path(args.has("model") ? args.get("model") : "");
  Checkpoint ckpt = load_checkpoint(m.path);
  if (device == "cuda") {
    m.stream = make_cuda_stream_model(ckpt.config, ckpt.params);
  } else {
    m.cpu = std::make_unique<MemMamba<float>>(ckpt.config, std::move(ckpt.params));
    m.stream = std::make_unique<CpuStreamModel>(*m.cpu);
  }
  return m;
}

}  // namespace mm::cli
