// memmamba info: what a checkpoint is (config, parameter counts, provenance, model card), or what
// a classifier from `memmamba finetune` is (labels, features, head, and its backbone likewise).
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "apps/cli.hpp"
#include "apps/commands.hpp"
#include "model/checkpoint.hpp"
#include "model/params.hpp"
#include "pipelines/classifier.hpp"

namespace mm::cli {

namespace {

// Parameter counts of a backbone by part.
nlohmann::json parameter_counts(const Config& config) {
  const ParamTable table(config);
  size_t embedding = 0, mixer = 0, notes = 0, other = 0;
  for (const auto& p : table.entries()) {
    if (p.name == "embedding.weight") embedding += p.size;
    else if (p.name.find(".note.") != std::string::npos) notes += p.size;
    else if (p.name.rfind("layers.", 0) == 0) mixer += p.size;
    else other += p.size;
  }
  return {{"total", table.total()}, {"embedding", embedding}, {"mixer", mixer}, {"notes", notes}, {"final_norm", other}};
}

void print_counts(const nlohmann::json& n) {
  std::cout << "parameters\t" << n["total"].get<size_t>() << "\n";
  for (const char* k : {"embedding", "mixer", "notes", "final_norm"})
    std::cout << "parameters." << k << "\t" << n[k].get<size_t>() << "\n";
}

// Provenance and other metadata, without what the lines above already show.
nlohmann::json other_metadata(const std::map<std::string, std::string>& metadata) {
  nlohmann::json meta = nlohmann::json::object();
  for (const auto& [k, v] : metadata)
    if (k != "memmamba.config" && k != "memmamba.classifier") meta[k] = v;
  return meta;
}

}  // namespace

int info_main(int argc, char** argv) {
  Args args("info", "[options] MODEL.safetensors",
            {{0, "json", "", "print one JSON object instead of text", ""}});
  return run("info", argc, argv, [&] {
    if (!args.parse(argc, argv)) {
      std::cout << args.help();
      return 0;
    }
    if (args.positional().size() != 1) throw UsageError("info wants exactly one checkpoint file");
    const std::filesystem::path path = args.positional()[0];
    std::filesystem::path card = path;
    card.replace_extension(".md");
    std::string card_text;
    if (std::filesystem::exists(card)) {
      std::ifstream in(card);
      card_text.assign(std::istreambuf_iterator<char>(in), {});
    }
    nlohmann::json j = {{"file", path.string()}};
    std::string config_text;  // as written (nlohmann::json would sort its keys)
    if (pipelines::checkpoint_format(path) == pipelines::kClassifierFormat) {
      const pipelines::Classifier c = pipelines::load_classifier(path);
      j["kind"] = "classifier";
      j["labels"] = c.labels;
      j["features"] = nlohmann::json::parse(c.spec.to_json());
      j["head"] = {{"classes", c.head.C}, {"features", c.head.F}};
      if (c.has_backbone) {
        config_text = c.config.to_json();
        j["config"] = nlohmann::json::parse(config_text);
        j["parameters"] = parameter_counts(c.config);
      }
      j["metadata"] = other_metadata(c.metadata);
    } else {
      const Checkpoint ck = load_checkpoint(path);
      j["kind"] = "model";
      config_text = ck.config.to_json();
      j["config"] = nlohmann::json::parse(config_text);
      j["parameters"] = parameter_counts(ck.config);
      j["metadata"] = other_metadata(ck.metadata);
    }
    if (args.flag("json")) {
      if (!card_text.empty()) j["model_card"] = card_text;
      std::cout << j.dump(2) << "\n";
      return 0;
    }
    std::cout << "file\t" << path.string() << "\n";
    std::cout << "kind\t" << j["kind"].get<std::string>() << "\n";
    if (j.contains("labels")) {
      std::string labels;
      for (const auto& l : j["labels"]) labels += (labels.empty() ? "" : ",") + l.get<std::string>();
      std::cout << "labels\t" << labels << "\n";
      std::cout << "features\t" << j["features"].dump() << "\n";
      std::cout << "head\t" << j["head"]["classes"].get<int64_t>() << " classes x " << j["head"]["features"].get<int64_t>()
                << " features\n";
    }
    if (j.contains("config")) {
      std::cout << "config\t" << config_text << "\n";
      print_counts(j["parameters"]);
    }
    for (const auto& [k, v] : j["metadata"].items()) std::cout << k << "\t" << v.get<std::string>() << "\n";
    if (!card_text.empty()) std::cout << "\n" << card_text;
    return 0;
  });
}

}  // namespace mm::cli
