// memmamba info: what a checkpoint is (config, parameter counts, provenance, model card).
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "apps/cli.hpp"
#include "apps/commands.hpp"
#include "model/checkpoint.hpp"
#include "model/params.hpp"

namespace mm::cli {

int info_main(int argc, char** argv) {
  Args args("info", "[options] MODEL.safetensors", {{0, "json", "", "print one JSON object instead of text", ""}});
  return run("info", argc, argv, [&] {
    if (!args.parse(argc, argv)) {
      std::cout << args.help();
      return 0;
    }
    if (args.positional().size() != 1) throw UsageError("info wants exactly one checkpoint file");
    const std::filesystem::path path = args.positional()[0];
    const Checkpoint ck = load_checkpoint(path);
    const ParamTable table(ck.config);
    size_t embedding = 0, mixer = 0, notes = 0, other = 0;
    for (const auto& p : table.entries()) {
      if (p.name == "embedding.weight") embedding += p.size;
      else if (p.name.find(".note.") != std::string::npos) notes += p.size;
      else if (p.name.rfind("layers.", 0) == 0) mixer += p.size;
      else other += p.size;
    }
    std::filesystem::path card = path;
    card.replace_extension(".md");
    std::string card_text;
    if (std::filesystem::exists(card)) {
      std::ifstream in(card);
      card_text.assign(std::istreambuf_iterator<char>(in), {});
    }
    nlohmann::json meta = nlohmann::json::object();
    for (const auto& [k, v] : ck.metadata)
      if (k != "memmamba.config") meta[k] = v;
    if (args.flag("json")) {
      nlohmann::json j = {{"file", path.string()},
                          {"config", nlohmann::json::parse(ck.config.to_json())},
                          {"parameters", {{"total", table.total()}, {"embedding", embedding}, {"mixer", mixer},
                                          {"notes", notes}, {"final_norm", other}}},
                          {"metadata", meta}};
      if (!card_text.empty()) j["model_card"] = card_text;
      std::cout << j.dump(2) << "\n";
      return 0;
    }
    std::cout << "file\t" << path.string() << "\n";
    std::cout << "config\t" << ck.config.to_json() << "\n";
    std::cout << "parameters\t" << table.total() << "\n";
    std::cout << "parameters.embedding\t" << embedding << "\n";
    std::cout << "parameters.mixer\t" << mixer << "\n";
    std::cout << "parameters.notes\t" << notes << "\n";
    std::cout << "parameters.final_norm\t" << other << "\n";
    for (const auto& [k, v] : meta.items()) std::cout << k << "\t" << v.get<std::string>() << "\n";
    if (!card_text.empty()) std::cout << "\n" << card_text;
    return 0;
  });
}

}  // namespace mm::cli
