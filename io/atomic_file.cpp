// AtomicFile: mkstemp + checked stdio + fsync + rename (POSIX).
#include "io/atomic_file.hpp"
#include "io/output_target.hpp"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <string>
#include <sys/stat.h>
#include <unistd.h>

#include "io/error.hpp"

namespace mm::io {
namespace {

// The process umask, read without changing it (umask(2) can only set, which would race with
// other threads creating files). mkstemp makes 0600 files; checkpoints should get the usual mode.
mode_t current_umask() {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("Umask:", 0) == 0) return static_cast<mode_t>(std::stoul(line.substr(6), nullptr, 8));
  return 022;
}

std::string reason(int err) { return std::strerror(err); }

}  // namespace

AtomicFile::AtomicFile(std::filesystem::path dest) : dest_(std::move(dest)) {
  // Renaming a temp file over a device or a FIFO would replace it (/dev/null, say).
  if (is_special_output(dest_.string()))
    throw Error("not a regular file: an atomic write would replace it", dest_.string());
  std::filesystem::path folder = dest_.parent_path().empty() ? "." : dest_.parent_path();
  std::string templ = dest_.string() + ".tmp.XXXXXX";
  int fd = ::mkstemp(templ.data());
  if (fd < 0) {
    int err = errno;
    throw Error("cannot create a file in folder " + folder.string() + ": " + reason(err), folder.string());
  }
  temp_ = templ;
  ::fchmod(fd, 0666 & ~current_umask());
  file_ = ::fdopen(fd, "wb");
  if (!file_) {
    int err = errno;
    ::close(fd);
    ::unlink(temp_.c_str());
    throw Error("cannot open " + temp_.string() + ": " + reason(err), dest_.string());
  }
}

AtomicFile::~AtomicFile() {
  if (file_) std::fclose(file_);
  if (!committed_ && !temp_.empty()) ::unlink(temp_.c_str());
}

void AtomicFile::fail(std::string_view what, int err) {
  // The temp file is useless now; drop it at once rather than waiting for the destructor.
  if (file_) std::fclose(file_);
  file_ = nullptr;
  ::unlink(temp_.c_str());
  throw Error("cannot write " + dest_.string() + ": " + std::string(what) + ": " + reason(err),
              dest_.string());
}

void AtomicFile::write(const void* data, std::size_t size) {
  if (!file_) throw Error("cannot write " + dest_.string() + ": file already committed or failed", dest_.string());
  if (size && std::fwrite(data, 1, size, file_) != size) fail("write failed", errno);
}

void AtomicFile::commit() {
  if (!file_) throw Error("cannot commit " + dest_.string() + ": file already committed or failed", dest_.string());
  if (std::fflush(file_) != 0) fail("flush failed", errno);
  if (::fsync(::fileno(file_)) != 0) fail("fsync failed", errno);
  int rc = std::fclose(file_);
  file_ = nullptr;
  if (rc != 0) fail("close failed", errno);
  if (::rename(temp_.c_str(), dest_.c_str()) != 0) fail("rename from " + temp_.string() + " failed", errno);
  committed_ = true;
  // Make the rename itself durable; a failure here does not undo a completed rename, so ignore it.
  std::filesystem::path folder = dest_.parent_path().empty() ? "." : dest_.parent_path();
  if (int dfd = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY); dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace mm::io
