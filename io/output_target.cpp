#include "io/output_target.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "io/error.hpp"

namespace mm::io {

bool is_special_output(const std::string& path) {
  struct stat st{};
  return ::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode);
}

OutputTarget::OutputTarget(std::string destination) : dest_(std::move(destination)) {
  in_place_ = is_special_output(dest_);
  if (in_place_) return;
  std::filesystem::path p(dest_);
  std::string name(".");  // built by appends: GCC 12 warns falsely (-Wrestrict) on "lit" + string
  name += p.filename().string();
  name += ".tmp";
  name += std::to_string(::getpid());
  temp_ = (p.parent_path() / name).string();
}

OutputTarget::~OutputTarget() {
  if (!done_) discard();
}

void OutputTarget::discard() noexcept {
  done_ = true;
  if (in_place_) return;
  std::error_code ec;
  std::filesystem::remove(temp_, ec);
}

void OutputTarget::commit() {
  done_ = true;
  if (in_place_) return;
  std::error_code ec;
  std::filesystem::rename(temp_, dest_, ec);
  if (ec) {
    std::filesystem::remove(temp_, ec);
    throw Error("cannot move the output into place: " + ec.message(), dest_);
  }
}

}  // namespace mm::io
