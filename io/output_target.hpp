// Where a file writer puts its bytes. Normally a temp file beside the destination, renamed over
// it only on success, so a failed run leaves no partial output. A destination that exists and is
// not a regular file (/dev/null, a FIFO, /dev/stdout) is written in place: renaming a temp file
// over a device node would replace the device.
#pragma once
#include <string>

namespace mm::io {

class OutputTarget {
public:
  explicit OutputTarget(std::string destination);
  ~OutputTarget();  // discards the temp file unless committed
  OutputTarget(const OutputTarget&) = delete;
  OutputTarget& operator=(const OutputTarget&) = delete;

  const std::string& destination() const { return dest_; }
  const std::string& write_path() const { return in_place_ ? dest_ : temp_; }
  bool in_place() const { return in_place_; }
  // Moves the finished temp file onto the destination; throws mm::Error naming it.
  void commit();
  void discard() noexcept;

private:
  std::string dest_, temp_;
  bool in_place_ = false, done_ = false;
};

// True when `path` exists and is not a regular file (so it must be written in place).
bool is_special_output(const std::string& path);

}  // namespace mm::io
