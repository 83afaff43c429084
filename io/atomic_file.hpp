// Atomic replacement of a file: write to a temp file beside the destination, rename on commit.
// Readers never see a half-written file, and a failed or abandoned write leaves nothing behind.
#pragma once
#include <cstddef>
#include <cstdio>
#include <filesystem>
#include <string_view>

namespace mm::io {

class AtomicFile {
public:
  // Creates `<dest>.tmp.XXXXXX` in dest's folder; throws mm::Error naming the folder if it cannot.
  explicit AtomicFile(std::filesystem::path dest);
  // Without commit(), the temp file is removed and the destination is untouched.
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  // Any failure (a full disk included) throws mm::Error naming the destination.
  void write(const void* data, std::size_t size);
  void write(std::string_view s) { write(s.data(), s.size()); }
  // Flushes, fsyncs, renames onto the destination and fsyncs the folder. Further writes throw.
  void commit();

  const std::filesystem::path& destination() const { return dest_; }
  const std::filesystem::path& temp_path() const { return temp_; }

private:
  [[noreturn]] void fail(std::string_view what, int err);
  std::filesystem::path dest_, temp_;
  std::FILE* file_ = nullptr;
  bool committed_ = false;
};

}  // namespace mm::io
