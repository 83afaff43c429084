#include "apps/model_path.hpp"

#include <cstdlib>
#include <system_error>

#include "io/error.hpp"
#include "memmamba/version.hpp"

namespace mm::cli {

namespace fs = std::filesystem;

fs::path executable_dir() {
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec || exe.empty()) return {};
  return exe.parent_path();
}

std::vector<fs::path> default_model_candidates() {
  std::vector<fs::path> out;
  if (fs::path dir = executable_dir(); !dir.empty())
    out.push_back((dir / ".." / "share" / "memmamba" / "models" / kDefaultModelName).lexically_normal());
  out.push_back(fs::path(kSourceDir) / "sample_data" / "models" / kDefaultModelName);
  return out;
}

std::string resolve_model_path(const std::string& given) {
  if (!given.empty()) return given;
  if (const char* env = std::getenv("MEMMAMBA_MODEL"); env && *env) return env;
  const auto candidates = default_model_candidates();
  std::string tried;
  for (const auto& c : candidates) {
    std::error_code ec;
    if (fs::is_regular_file(c, ec)) return c.string();
    tried += (tried.empty() ? "" : " or ") + c.string();
  }
  throw UsageError("no model: give -m/--model FILE (MEMMAMBA_MODEL is unset and the shipped model "
                   "was not found at " + tried + ")");
}

}  // namespace mm::cli
