#include "model/checkpoint.hpp"

#include <cmath>
#include <set>

#include "io/error.hpp"
#include "io/safetensors.hpp"
#include "kernels/tensor.hpp"
#include "memmamba/version.hpp"
#include "model/params.hpp"

namespace mm {

void save_checkpoint(const std::filesystem::path& path, const Checkpoint& ckpt) {
  ParamTable table(ckpt.config);
  if (ckpt.params.size() != table.total())
    throw Error("checkpoint has " + std::to_string(ckpt.params.size()) +
                " parameters, its config wants " + std::to_string(table.total()), path.string());
  io::SafetensorsWriter w;
  for (const auto& p : table.entries())
    w.add(p.name, p.shape, std::span<const float>(ckpt.params.data() + p.offset, p.size));
  for (const auto& [k, v] : ckpt.metadata) w.set_metadata(k, v);
  w.set_metadata("format", kCheckpointFormat);
  w.set_metadata("memmamba.config", ckpt.config.to_json());
  w.set_metadata("memmamba.version", kVersion);
  w.write(path);
}

Checkpoint load_checkpoint(const std::filesystem::path& path) {
  const std::string where = path.string();
  io::SafetensorsFile f = io::SafetensorsFile::read(path);
  const auto& meta = f.metadata();
  auto fmt = meta.find("format");
  if (fmt == meta.end())
    throw Error("not a memmamba checkpoint (no 'format' in the safetensors metadata)", where);
  if (fmt->second != kCheckpointFormat)
    throw Error("checkpoint format '" + fmt->second + "' is not supported (this is memmamba " +
                kVersion + ", which reads " + kCheckpointFormat + ")", where);
  auto cfg_text = meta.find("memmamba.config");
  if (cfg_text == meta.end()) throw Error("checkpoint has no 'memmamba.config' metadata", where);
  Checkpoint ck;
  ck.config = Config::from_json(cfg_text->second, where);
  ck.metadata = meta;
  ParamTable table(ck.config);
  ck.params.assign(table.total(), 0.0f);
  std::set<std::string> expected;
  for (const auto& p : table.entries()) {
    expected.insert(p.name);
    if (!f.has(p.name)) throw Error("checkpoint lacks tensor '" + p.name + "'", where);
    const auto& info = f.info(p.name);
    if (info.shape != p.shape)
      throw Error("tensor '" + p.name + "' has shape " + shape_string(info.shape) + ", the config wants " +
                  shape_string(p.shape), where);
    if (!io::dtype_is_float(info.dtype))
      throw Error("tensor '" + p.name + "' is not floating point", where);
    auto v = f.as_f32(p.name);
    for (size_t i = 0; i < v.size(); ++i) {
      if (!std::isfinite(v[i])) throw Error("tensor '" + p.name + "' holds NaN or Inf", where);
      ck.params[p.offset + i] = v[i];
    }
  }
  for (const auto& n : f.names())
    if (!expected.count(n))
      throw Error("checkpoint has tensor '" + n + "' that its config does not define", where);
  return ck;
}

}  // namespace mm
