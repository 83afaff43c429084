// Where the model comes from when -m/--model is not given (DESIGN §6): MEMMAMBA_MODEL, then the
// shipped model relative to the executable (install tree: <exe dir>/../share/memmamba/models/,
// build tree: the source tree's sample_data/models/).
#pragma once
#include <filesystem>
#include <string>
#include <vector>

namespace mm::cli {

inline constexpr const char* kDefaultModelName = "default.safetensors";

// The folder of the running executable (/proc/self/exe); empty when it cannot be told.
std::filesystem::path executable_dir();

// The places searched for the shipped model, in order (after MEMMAMBA_MODEL).
std::vector<std::filesystem::path> default_model_candidates();

// The model file to load: `given` when not empty; else MEMMAMBA_MODEL when set and not empty
// (used as is, so a wrong path fails at load naming it); else the first candidate that exists.
// Throws mm::UsageError (exit 2) saying all of that when there is none.
std::string resolve_model_path(const std::string& given);

}  // namespace mm::cli
