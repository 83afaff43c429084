// safetensors reading (strict) and writing (Python package's layout), nlohmann_json for the header.
#include "io/safetensors.hpp"

#include <algorithm>
#include <bit>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>

#include <nlohmann/json.hpp>

#include "io/atomic_file.hpp"
#include "io/error.hpp"

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; a big-endian host needs byte swapping here");

namespace mm::io {
namespace {

using json = nlohmann::json;

struct DTypeRow {
  DType type;
  std::string_view name;
  std::size_t size;
};
constexpr DTypeRow kDTypes[] = {
    {DType::BOOL, "BOOL", 1}, {DType::U8, "U8", 1},   {DType::I8, "I8", 1},     {DType::I16, "I16", 2},
    {DType::U16, "U16", 2},   {DType::F16, "F16", 2}, {DType::BF16, "BF16", 2}, {DType::I32, "I32", 4},
    {DType::U32, "U32", 4},   {DType::F32, "F32", 4}, {DType::F64, "F64", 8},   {DType::I64, "I64", 8},
    {DType::U64, "U64", 8},
};
const DTypeRow& row(DType t) { return kDTypes[static_cast<int>(t)]; }

template <class T> T load(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

double float_at(DType t, const char* p) {
  switch (t) {
    case DType::F64: return load<double>(p);
    case DType::F32: return load<float>(p);
    case DType::F16: return f16_to_f32(load<std::uint16_t>(p));
    case DType::BF16: return bf16_to_f32(load<std::uint16_t>(p));
    default: return 0;  // callers only pass float dtypes
  }
}

// Wide enough for every integer dtype, U64 included, so range checks are plain comparisons.
__int128 int_at(DType t, const char* p) {
  switch (t) {
    case DType::BOOL: return load<std::uint8_t>(p) != 0;
    case DType::U8: return load<std::uint8_t>(p);
    case DType::I8: return load<std::int8_t>(p);
    case DType::I16: return load<std::int16_t>(p);
    case DType::U16: return load<std::uint16_t>(p);
    case DType::I32: return load<std::int32_t>(p);
    case DType::U32: return load<std::uint32_t>(p);
    case DType::I64: return load<std::int64_t>(p);
    case DType::U64: return load<std::uint64_t>(p);
    default: return 0;  // callers only pass integer dtypes
  }
}

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

// Integer to float type F when exact; float dtypes the caller converts itself.
template <class F>
std::vector<F> to_float(const TensorInfo& info, const char* p, const std::string& name,
                        const std::string& origin) {
  const std::size_t n = info.numel(), step = dtype_size(info.dtype);
  std::vector<F> out(n);
  for (std::size_t i = 0; i < n; ++i, p += step) {
    if (dtype_is_float(info.dtype)) {
      double d = float_at(info.dtype, p);
      if constexpr (std::is_same_v<F, float>)
        if (std::isfinite(d) && std::fabs(d) > FLT_MAX)
          throw Error("tensor '" + name + "': value " + std::to_string(d) + " at index " +
                          std::to_string(i) + " does not fit in float32",
                      origin);
      out[i] = static_cast<F>(d);
    } else {
      __int128 v = int_at(info.dtype, p);
      F f = static_cast<F>(v);
      if (static_cast<__int128>(f) != v)
        throw Error("tensor '" + name + "': " + std::string(dtype_name(info.dtype)) + " value at index " +
                        std::to_string(i) + " is not exactly representable as " +
                        (sizeof(F) == 8 ? "float64" : "float32"),
                    origin);
      out[i] = f;
    }
  }
  return out;
}

}  // namespace

std::string_view dtype_name(DType t) { return row(t).name; }
std::size_t dtype_size(DType t) { return row(t).size; }
bool dtype_is_float(DType t) {
  return t == DType::F64 || t == DType::F32 || t == DType::F16 || t == DType::BF16;
}
std::optional<DType> dtype_from_name(std::string_view name) {
  for (const auto& r : kDTypes)
    if (r.name == name) return r.type;
  return std::nullopt;
}

float f16_to_f32(std::uint16_t h) {
  const std::uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (exp == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));  // inf, NaN
  float v = exp == 0 ? std::ldexp(static_cast<float>(mant), -24)
                     : std::ldexp(static_cast<float>(mant | 0x400u), static_cast<int>(exp) - 25);
  return sign ? -v : v;
}
float bf16_to_f32(std::uint16_t bits) { return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16); }

std::size_t TensorInfo::numel() const {
  std::size_t n = 1;
  for (auto d : shape) n *= static_cast<std::size_t>(d);
  return n;
}

// ---- writer ----

void SafetensorsWriter::add(const std::string& name, DType dtype, std::vector<std::int64_t> shape,
                            std::span<const std::byte> bytes) {
  if (name.empty() || name == "__metadata__")
    throw Error("safetensors: '" + name + "' cannot name a tensor");
  if (tensors_.count(name)) throw Error("safetensors: tensor '" + name + "' added twice");
  for (auto d : shape)
    if (d < 0) throw Error("safetensors: tensor '" + name + "' has a negative dimension " + shape_text(shape));
  TensorInfo info{dtype, std::move(shape)};
  if (info.nbytes() != bytes.size())
    throw Error("safetensors: tensor '" + name + "' is " + std::string(dtype_name(dtype)) + " " +
                shape_text(info.shape) + " (" + std::to_string(info.nbytes()) + " bytes) but " +
                std::to_string(bytes.size()) + " bytes were given");
  tensors_[name] = Entry{std::move(info), {bytes.begin(), bytes.end()}};
}
void SafetensorsWriter::add(const std::string& name, std::vector<std::int64_t> shape, std::span<const double> v) {
  add(name, DType::F64, std::move(shape), std::as_bytes(v));
}
void SafetensorsWriter::add(const std::string& name, std::vector<std::int64_t> shape, std::span<const float> v) {
  add(name, DType::F32, std::move(shape), std::as_bytes(v));
}
void SafetensorsWriter::add(const std::string& name, std::vector<std::int64_t> shape,
                            std::span<const std::int64_t> v) {
  add(name, DType::I64, std::move(shape), std::as_bytes(v));
}
void SafetensorsWriter::add(const std::string& name, std::vector<std::int64_t> shape,
                            std::span<const std::int32_t> v) {
  add(name, DType::I32, std::move(shape), std::as_bytes(v));
}

namespace {
// The 8-byte length and padded header, plus the tensors in data order.
template <class Entry>
std::pair<std::string, std::vector<std::pair<const std::string*, const Entry*>>> layout(
    const std::map<std::string, Entry>& tensors, const std::map<std::string, std::string>& metadata) {
  std::vector<std::pair<const std::string*, const Entry*>> order;
  for (const auto& [name, e] : tensors) order.emplace_back(&name, &e);
  // Largest dtype first (the reference enum order), then by name: aligned and without holes.
  std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    return a.second->info.dtype > b.second->info.dtype;
  });
  nlohmann::ordered_json h = nlohmann::ordered_json::object();
  if (!metadata.empty()) h["__metadata__"] = metadata;
  std::size_t offset = 0;
  for (const auto& [name, e] : order) {
    const std::size_t n = e->bytes.size();
    h[*name] = {{"dtype", dtype_name(e->info.dtype)}, {"shape", e->info.shape}, {"data_offsets", {offset, offset + n}}};
    offset += n;
  }
  std::string text;
  try {
    text = h.dump();
  } catch (const nlohmann::json::exception& ex) {
    throw Error(std::string("safetensors: a tensor name or metadata entry is not valid UTF-8: ") + ex.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string head(8, '\0');
  const std::uint64_t n = text.size();
  std::memcpy(head.data(), &n, 8);
  return {head + text, std::move(order)};
}
}  // namespace

std::string SafetensorsWriter::serialize() const {
  auto [out, order] = layout(tensors_, metadata_);
  for (const auto& [name, e] : order) out.append(reinterpret_cast<const char*>(e->bytes.data()), e->bytes.size());
  return out;
}

void SafetensorsWriter::write(const std::filesystem::path& path) const {
  auto [head, order] = layout(tensors_, metadata_);
  AtomicFile f(path);
  f.write(head);
  for (const auto& [name, e] : order) f.write(e->bytes.data(), e->bytes.size());
  f.commit();
}

// ---- reader ----

SafetensorsFile SafetensorsFile::read(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) throw Error("no such file", path.string());
  if (!std::filesystem::is_regular_file(path, ec)) throw Error("not a regular file", path.string());
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(std::string("cannot open: ") + std::strerror(errno), path.string());
  std::string bytes(std::filesystem::file_size(path, ec), '\0');
  if (ec || !in.read(bytes.data(), static_cast<std::streamsize>(bytes.size())) || in.peek() != EOF)
    throw Error("read failed or the file changed while being read", path.string());
  return parse(std::move(bytes), path.string());
}

SafetensorsFile SafetensorsFile::parse(std::string bytes, std::string origin) {
  auto bad = [&](const std::string& what) { return Error(what, origin); };
  const std::size_t size = bytes.size();
  if (size < 8)
    throw bad("not a safetensors file: " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
  const auto n = load<std::uint64_t>(bytes.data());
  if (n > size - 8)
    throw bad("safetensors header length " + std::to_string(n) + " exceeds the file size (" + std::to_string(size) +
              " bytes): truncated or not a safetensors file");

  // nlohmann keeps the last of duplicate keys silently; track keys per open object to refuse them.
  std::vector<std::set<std::string>> open;
  std::string dup;
  auto cb = [&](int, json::parse_event_t ev, json& parsed) {
    if (ev == json::parse_event_t::object_start) open.emplace_back();
    else if (ev == json::parse_event_t::object_end && !open.empty()) open.pop_back();
    else if (ev == json::parse_event_t::key && dup.empty() && !open.back().insert(parsed.get<std::string>()).second)
      dup = parsed.get<std::string>();
    return true;
  };
  const char* hb = bytes.data() + 8;
  json h = json::parse(hb, hb + n, cb, /*allow_exceptions=*/false);
  if (h.is_discarded()) throw bad("safetensors header is not valid JSON");
  if (!h.is_object()) throw bad("safetensors header is not a JSON object");
  if (!dup.empty()) throw bad("safetensors header has the key '" + dup + "' twice");

  SafetensorsFile f;
  const std::size_t data_start = 8 + n, data_size = size - data_start;
  for (const auto& [name, v] : h.items()) {
    if (name == "__metadata__") {
      if (!v.is_object()) throw bad("safetensors __metadata__ is not a JSON object");
      for (const auto& [k, s] : v.items()) {
        if (!s.is_string()) throw bad("safetensors __metadata__ value for '" + k + "' is not a string");
        f.metadata_[k] = s.get<std::string>();
      }
      continue;
    }
    auto bad_tensor = [&](const std::string& what) { return bad("tensor '" + name + "': " + what); };
    if (!v.is_object() || v.size() != 3 || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets"))
      throw bad_tensor("entry must be an object with exactly dtype, shape and data_offsets");
    const json &jd = v["dtype"], &js = v["shape"], &jo = v["data_offsets"];
    auto dtype = jd.is_string() ? dtype_from_name(jd.get<std::string>()) : std::nullopt;
    if (!dtype) throw bad_tensor("unknown dtype " + jd.dump());
    if (!js.is_array()) throw bad_tensor("shape is not an array");
    TensorInfo info{*dtype, {}};
    std::size_t bytes_needed = dtype_size(*dtype);
    for (const auto& d : js) {
      if (!d.is_number_unsigned()) throw bad_tensor("shape " + js.dump() + " is not a list of non-negative integers");
      const auto dim = d.get<std::uint64_t>();
      if (dim > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()) ||
          (dim && bytes_needed > std::numeric_limits<std::size_t>::max() / dim))
        throw bad_tensor("shape " + js.dump() + " is too large");
      bytes_needed *= dim;
      info.shape.push_back(static_cast<std::int64_t>(dim));
    }
    if (!jo.is_array() || jo.size() != 2 || !jo[0].is_number_unsigned() || !jo[1].is_number_unsigned())
      throw bad_tensor("data_offsets must be two non-negative integers, not " + jo.dump());
    const auto begin = jo[0].get<std::uint64_t>(), end = jo[1].get<std::uint64_t>();
    if (begin > end) throw bad_tensor("data_offsets " + jo.dump() + " end before they begin");
    if (end > data_size)
      throw bad_tensor("data_offsets " + jo.dump() + " lie beyond the data section (" + std::to_string(data_size) +
                       " bytes): truncated file or wrong offsets");
    if (end - begin != bytes_needed)
      throw bad_tensor("data_offsets " + jo.dump() + " span " + std::to_string(end - begin) + " bytes but " +
                       std::string(dtype_name(*dtype)) + " " + js.dump() + " needs " + std::to_string(bytes_needed));
    f.tensors_.emplace(name, Entry{std::move(info), data_start + begin, data_start + end});
  }

  // The format requires the tensors to tile the data section exactly.
  std::vector<std::pair<const std::string*, const Entry*>> by_offset;
  for (const auto& [name, e] : f.tensors_) by_offset.emplace_back(&name, &e);
  std::sort(by_offset.begin(), by_offset.end(), [](const auto& a, const auto& b) {
    return std::pair(a.second->begin, a.second->end) < std::pair(b.second->begin, b.second->end);
  });
  std::size_t cursor = data_start;
  const std::string* prev = nullptr;
  for (const auto& [name, e] : by_offset) {
    if (e->begin < cursor) throw bad("tensors '" + *prev + "' and '" + *name + "' overlap in the data section");
    if (e->begin > cursor)
      throw bad("hole of " + std::to_string(e->begin - cursor) + " bytes in the data section before tensor '" +
                *name + "'");
    cursor = e->end;
    prev = name;
  }
  if (cursor != size)
    throw bad(std::to_string(size - cursor) + " trailing bytes after the last tensor");
  f.bytes_ = std::move(bytes);
  f.origin_ = std::move(origin);
  return f;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  for (const auto& [name, e] : tensors_) out.push_back(name);
  return out;
}
bool SafetensorsFile::has(std::string_view name) const { return tensors_.find(name) != tensors_.end(); }

const SafetensorsFile::Entry& SafetensorsFile::entry(std::string_view name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw Error("no tensor '" + std::string(name) + "' in the file", origin_);
  return it->second;
}
const TensorInfo& SafetensorsFile::info(std::string_view name) const { return entry(name).info; }
std::span<const std::byte> SafetensorsFile::raw(std::string_view name) const {
  const Entry& e = entry(name);
  return std::as_bytes(std::span(bytes_.data() + e.begin, e.end - e.begin));
}

std::vector<double> SafetensorsFile::as_f64(std::string_view name) const {
  const Entry& e = entry(name);
  return to_float<double>(e.info, bytes_.data() + e.begin, std::string(name), origin_);
}
std::vector<float> SafetensorsFile::as_f32(std::string_view name) const {
  const Entry& e = entry(name);
  return to_float<float>(e.info, bytes_.data() + e.begin, std::string(name), origin_);
}
std::vector<std::int64_t> SafetensorsFile::as_i64(std::string_view name) const {
  const Entry& e = entry(name);
  if (dtype_is_float(e.info.dtype))
    throw Error("tensor '" + std::string(name) + "' is " + std::string(dtype_name(e.info.dtype)) +
                    ", not an integer tensor",
                origin_);
  const std::size_t n = e.info.numel(), step = dtype_size(e.info.dtype);
  std::vector<std::int64_t> out(n);
  const char* p = bytes_.data() + e.begin;
  for (std::size_t i = 0; i < n; ++i, p += step) {
    __int128 v = int_at(e.info.dtype, p);
    if (v > std::numeric_limits<std::int64_t>::max())
      throw Error("tensor '" + std::string(name) + "': U64 value at index " + std::to_string(i) +
                      " does not fit in int64",
                  origin_);
    out[i] = static_cast<std::int64_t>(v);
  }
  return out;
}

}  // namespace mm::io
