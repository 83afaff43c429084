// The safetensors format (checkpoints, DESIGN §5): 8-byte little-endian header length N, N bytes
// of JSON header (padded with spaces to a multiple of 8), then the data section, which the tensors
// must cover exactly. Written atomically; read with strict validation so that a damaged or foreign
// file is refused with a message naming it instead of being half-loaded.
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace mm::io {

// Declared in the order of the reference implementation's enum: the writer lays tensors out by
// this order descending (then by name), as the Python package does, which keeps every tensor
// aligned to its element size without padding.
enum class DType { BOOL, U8, I8, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64 };

std::string_view dtype_name(DType t);
std::optional<DType> dtype_from_name(std::string_view name);
std::size_t dtype_size(DType t);
bool dtype_is_float(DType t);

// Half-precision decoding (exact: every f16 and bf16 value is a float).
float f16_to_f32(std::uint16_t bits);
float bf16_to_f32(std::uint16_t bits);

struct TensorInfo {
  DType dtype;
  std::vector<std::int64_t> shape;  // empty: a scalar with one element
  std::size_t numel() const;
  std::size_t nbytes() const { return numel() * dtype_size(dtype); }
};

class SafetensorsWriter {
public:
  // Copies the bytes (row-major, little-endian); their size must match dtype and shape.
  // Throws mm::Error on a duplicate name, an empty name, "__metadata__", or a size mismatch.
  void add(const std::string& name, DType dtype, std::vector<std::int64_t> shape,
           std::span<const std::byte> bytes);
  void add(const std::string& name, std::vector<std::int64_t> shape, std::span<const double> v);
  void add(const std::string& name, std::vector<std::int64_t> shape, std::span<const float> v);
  void add(const std::string& name, std::vector<std::int64_t> shape, std::span<const std::int64_t> v);
  void add(const std::string& name, std::vector<std::int64_t> shape, std::span<const std::int32_t> v);
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

  // The whole file as bytes, and the same written atomically (throws mm::Error naming the path).
  std::string serialize() const;
  void write(const std::filesystem::path& path) const;

private:
  struct Entry {
    TensorInfo info;
    std::vector<std::byte> bytes;
  };
  std::map<std::string, Entry> tensors_;
  std::map<std::string, std::string> metadata_;
};

class SafetensorsFile {
public:
  // Reads and validates the whole file; every refusal is an mm::Error naming the file.
  static SafetensorsFile read(const std::filesystem::path& path);
  // Same checks on bytes already in memory; `origin` names them in errors.
  static SafetensorsFile parse(std::string bytes, std::string origin);

  std::vector<std::string> names() const;  // sorted
  bool has(std::string_view name) const;
  const TensorInfo& info(std::string_view name) const;  // throws mm::Error naming the tensor if absent
  std::span<const std::byte> raw(std::string_view name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& origin() const { return origin_; }

  // Typed copies. Floats convert from any float dtype; integers from any integer dtype when the
  // value is exactly representable. as_i64 refuses float tensors, and values beyond int64 (U64).
  // A conversion that makes no sense throws mm::Error naming the tensor.
  std::vector<double> as_f64(std::string_view name) const;
  std::vector<float> as_f32(std::string_view name) const;
  std::vector<std::int64_t> as_i64(std::string_view name) const;

private:
  struct Entry {
    TensorInfo info;
    std::size_t begin, end;  // absolute offsets into bytes_
  };
  const Entry& entry(std::string_view name) const;
  std::string bytes_;
  std::string origin_;
  std::map<std::string, Entry, std::less<>> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace mm::io
