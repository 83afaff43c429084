// Checkpoints (DESIGN §5): safetensors, parameters under their PyTorch/mamba-ssm names, and in
// __metadata__ the config JSON, the format version and the training provenance.
#pragma once
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "model/config.hpp"

namespace mm {

inline constexpr const char* kCheckpointFormat = "memmamba-checkpoint-1";

struct Checkpoint {
  Config config;
  std::vector<float> params;                   // flat, laid out by ParamTable(config)
  std::map<std::string, std::string> metadata; // provenance: free-form keys (memmamba.*)
};

// Writes atomically (temp file + rename). Throws mm::Error naming the file.
void save_checkpoint(const std::filesystem::path& path, const Checkpoint& ckpt);

// Refuses, naming the file: not safetensors, truncated or corrupt, another format or version,
// a config that does not validate, a missing, extra or wrongly shaped tensor, NaN/Inf values.
Checkpoint load_checkpoint(const std::filesystem::path& path);

}  // namespace mm
