#include "model/config.hpp"

#include <nlohmann/json.hpp>

#include "io/error.hpp"

namespace mm {

void Config::validate() const {
  auto need = [](bool ok, const std::string& what) {
    if (!ok) throw Error("invalid model config: " + what);
  };
  need(vocab >= 7, "vocab must be at least 7 (PAD A C G T N BOS)");
  need(d_model > 0 && d_model <= 65536, "d_model must be in 1..65536");
  need(n_layer > 0 && n_layer <= 1024, "n_layer must be in 1..1024");
  need(expand > 0, "expand must be positive");
  need(d_state > 0 && d_state <= 256, "d_state must be in 1..256");
  need(d_conv >= 1 && d_conv <= 16, "d_conv must be in 1..16");
  need(dt_rank >= 0, "dt_rank must be >= 0 (0: ceil(d_model/16))");
  need(tau1 >= 0 && tau1 < 1, "tau1 must be in [0, 1)");
  need(rms_eps > 0, "rms_eps must be positive");
  if (notes) {
    need(pool_slots > 0, "pool_slots must be positive when notes are on");
    need(summary_dim > 0 && note_heads > 0, "summary_dim and note_heads must be positive");
    need(summary_dim % note_heads == 0,
         "summary_dim (" + std::to_string(summary_dim) + ") must be a multiple of note_heads (" +
             std::to_string(note_heads) + ")");
    need(memory_chunk > 0, "memory_chunk must be positive");
    need(cross_layer_period >= 0 && cross_layer_period <= n_layer,
         "cross_layer_period must be in 0..n_layer");
  }
}

std::string Config::to_json() const {
  nlohmann::ordered_json j = {
      {"vocab", vocab},           {"d_model", d_model},
      {"n_layer", n_layer},       {"expand", expand},
      {"d_state", d_state},       {"d_conv", d_conv},
      {"dt_rank", rank()},        {"pool_slots", pool_slots},
      {"summary_dim", summary_dim}, {"note_heads", note_heads},
      {"memory_chunk", memory_chunk}, {"cross_layer_period", cross_layer_period},
      {"tau1", tau1},             {"rms_eps", rms_eps},
      {"notes", notes}};
  return j.dump();
}

Config Config::from_json(const std::string& text, const std::string& where) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    throw Error(std::string("model config is not valid JSON: ") + e.what(), where);
  }
  if (!j.is_object()) throw Error("model config must be a JSON object", where);
  Config c;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    const auto& v = it.value();
    auto as_int = [&](int& field) {
      if (!v.is_number_integer()) throw Error("model config: " + k + " must be an integer", where);
      field = v.get<int>();
    };
    auto as_num = [&](double& field) {
      if (!v.is_number()) throw Error("model config: " + k + " must be a number", where);
      field = v.get<double>();
    };
    if (k == "vocab") as_int(c.vocab);
    else if (k == "d_model") as_int(c.d_model);
    else if (k == "n_layer") as_int(c.n_layer);
    else if (k == "expand") as_int(c.expand);
    else if (k == "d_state") as_int(c.d_state);
    else if (k == "d_conv") as_int(c.d_conv);
    else if (k == "dt_rank") as_int(c.dt_rank);
    else if (k == "pool_slots") as_int(c.pool_slots);
    else if (k == "summary_dim") as_int(c.summary_dim);
    else if (k == "note_heads") as_int(c.note_heads);
    else if (k == "memory_chunk") as_int(c.memory_chunk);
    else if (k == "cross_layer_period") as_int(c.cross_layer_period);
    else if (k == "tau1") as_num(c.tau1);
    else if (k == "rms_eps") as_num(c.rms_eps);
    else if (k == "notes") {
      if (!v.is_boolean()) throw Error("model config: notes must be true or false", where);
      c.notes = v.get<bool>();
    } else {
      throw Error("model config: unknown field '" + k + "'", where);
    }
  }
  try {
    c.validate();
  } catch (const Error& e) {
    throw Error(e.what(), where);
  }
  return c;
}

}  // namespace mm
