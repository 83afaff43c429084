// Checkpoints (DESIGN §5): exact round trip, a header any safetensors reader accepts, and a clear
// refusal of truncated, corrupt, wrong-shape or wrong-version files.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cstring>
#include <fstream>

#include "io/error.hpp"
#include "io/safetensors.hpp"
#include "model/checkpoint.hpp"
#include "model/memmamba.hpp"
#include "model/params.hpp"
#include "support/fixtures.hpp"
#include "support/models.hpp"

namespace {

mm::Checkpoint make(bool notes) {
  mm::Config c = mmtest::small_config(notes);
  mm::MemMamba<float> m(c, 7);
  return {c, m.params(), {{"memmamba.provenance", "{\"command\":\"test\"}"}}};
}

std::string refusal(const std::filesystem::path& p) {
  try {
    mm::load_checkpoint(p);
  } catch (const mm::Error& e) {
    EXPECT_NE(e.message().find(p.string()), std::string::npos) << "the error must name the file";
    return e.what();
  }
  ADD_FAILURE() << p << " was accepted";
  return {};
}

// Rewrites a checkpoint with one tensor or metadata entry changed.
std::filesystem::path variant(const std::filesystem::path& dir, const std::string& name,
                              const std::function<void(mm::io::SafetensorsWriter&,
                                                       const mm::io::SafetensorsFile&,
                                                       const std::string& tensor)>& edit) {
  auto src = mm::io::SafetensorsFile::read(dir / "good.safetensors");
  mm::io::SafetensorsWriter w;
  for (const auto& n : src.names()) edit(w, src, n);
  for (const auto& [k, v] : src.metadata()) w.set_metadata(k, v);
  auto out = dir / name;
  w.write(out);
  return out;
}

}  // namespace

TEST(Checkpoint, RoundTripIsExact) {
  auto dir = mmtest::scratch("checkpoint_roundtrip");
  for (bool notes : {true, false}) {
    auto ck = make(notes);
    save_checkpoint(dir / "m.safetensors", ck);
    auto back = mm::load_checkpoint(dir / "m.safetensors");
    EXPECT_EQ(back.params, ck.params);
    EXPECT_EQ(back.config.to_json(), ck.config.to_json());
    EXPECT_EQ(back.metadata.at("memmamba.provenance"), "{\"command\":\"test\"}");
    EXPECT_EQ(back.metadata.at("format"), mm::kCheckpointFormat);
  }
}

TEST(Checkpoint, NotesOffHasNoNoteTensors) {
  auto dir = mmtest::scratch("checkpoint_notes_off");
  save_checkpoint(dir / "m.safetensors", make(false));
  auto f = mm::io::SafetensorsFile::read(dir / "m.safetensors");
  for (const auto& n : f.names()) EXPECT_EQ(n.find("note."), std::string::npos) << n;
  EXPECT_TRUE(f.has("layers.0.mixer.A_log"));
}

TEST(Checkpoint, HeaderIsValidJsonWithCorrectOffsets) {
  // Checked with a JSON parser and arithmetic here, independently of our safetensors reader.
  auto dir = mmtest::scratch("checkpoint_header");
  auto ck = make(true);
  save_checkpoint(dir / "m.safetensors", ck);
  std::string bytes = mmtest::read_text(dir / "m.safetensors");
  ASSERT_GE(bytes.size(), 8u);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  ASSERT_LE(8 + n, bytes.size());
  auto header = nlohmann::json::parse(bytes.substr(8, n));
  ASSERT_TRUE(header.contains("__metadata__"));
  auto cfg = nlohmann::json::parse(header["__metadata__"]["memmamba.config"].get<std::string>());
  EXPECT_EQ(cfg["d_model"], 16);
  mm::ParamTable table(ck.config);
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  for (const auto& p : table.entries()) {
    ASSERT_TRUE(header.contains(p.name)) << p.name;
    const auto& t = header[p.name];
    EXPECT_EQ(t["dtype"], "F32");
    EXPECT_EQ(t["shape"].get<std::vector<int64_t>>(), p.shape) << p.name;
    uint64_t b = t["data_offsets"][0], e = t["data_offsets"][1];
    EXPECT_EQ(e - b, p.size * 4) << p.name;
    spans.push_back({b, e});
    // The bytes at those offsets are the parameters.
    EXPECT_EQ(std::memcmp(bytes.data() + 8 + n + b, ck.params.data() + p.offset, p.size * 4), 0) << p.name;
  }
  EXPECT_EQ(header.size(), table.entries().size() + 1);
  std::sort(spans.begin(), spans.end());
  uint64_t at = 0;
  for (auto [b, e] : spans) {
    EXPECT_EQ(b, at);
    at = e;
  }
  EXPECT_EQ(8 + n + at, bytes.size()) << "the data section is covered exactly";
}

TEST(Checkpoint, PythonSafetensorsLoadsIt) {
  auto dir = mmtest::scratch("checkpoint_python");
  save_checkpoint(dir / "m.safetensors", make(true));
  const std::string cmd = "python3 '" + (mmtest::data("../interop/load.py")).string() + "' '" +
                          (dir / "m.safetensors").string() + "' > '" + (dir / "out.json").string() + "'";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << "python3 with the safetensors package is needed: run scripts/setup";
  auto j = nlohmann::json::parse(mmtest::read_text(dir / "out.json"));
  EXPECT_EQ(j["metadata"]["format"], mm::kCheckpointFormat);
  EXPECT_EQ(j["tensors"]["layers.1.note.cross.q.weight"]["shape"], nlohmann::json({8, 16}));
}

TEST(Checkpoint, RefusesTruncatedFiles) {
  auto dir = mmtest::scratch("checkpoint_truncated");
  save_checkpoint(dir / "good.safetensors", make(true));
  std::string bytes = mmtest::read_text(dir / "good.safetensors");
  for (size_t cut : {size_t(3), size_t(100), bytes.size() / 2, bytes.size() - 1}) {
    mmtest::write_text(dir / "cut.safetensors", bytes.substr(0, cut));
    EXPECT_FALSE(refusal(dir / "cut.safetensors").empty()) << "cut at " << cut;
  }
}

TEST(Checkpoint, RefusesCorruptHeader) {
  auto dir = mmtest::scratch("checkpoint_corrupt");
  save_checkpoint(dir / "good.safetensors", make(true));
  std::string bytes = mmtest::read_text(dir / "good.safetensors");
  bytes[12] = '#';  // inside the JSON header
  mmtest::write_text(dir / "bad.safetensors", bytes);
  EXPECT_FALSE(refusal(dir / "bad.safetensors").empty());
  mmtest::write_text(dir / "text.safetensors", "this is not a checkpoint at all\n");
  EXPECT_FALSE(refusal(dir / "text.safetensors").empty());
  EXPECT_NE(refusal(dir / "missing.safetensors").find("no such file"), std::string::npos);
}

TEST(Checkpoint, RefusesWrongShapeMissingAndExtraTensors) {
  auto dir = mmtest::scratch("checkpoint_shape");
  save_checkpoint(dir / "good.safetensors", make(true));
  auto copy = [](mm::io::SafetensorsWriter& w, const mm::io::SafetensorsFile& f, const std::string& n) {
    w.add(n, f.info(n).dtype, f.info(n).shape, f.raw(n));
  };
  auto wrong = variant(dir, "shape.safetensors", [&](auto& w, const auto& f, const std::string& n) {
    if (n == "layers.0.mixer.D") {
      auto v = f.as_f32(n);
      v.pop_back();
      w.add(n, {int64_t(v.size())}, std::span<const float>(v));
    } else copy(w, f, n);
  });
  EXPECT_NE(refusal(wrong).find("layers.0.mixer.D"), std::string::npos);
  auto missing = variant(dir, "missing.safetensors", [&](auto& w, const auto& f, const std::string& n) {
    if (n != "norm_f.weight") copy(w, f, n);
  });
  EXPECT_NE(refusal(missing).find("norm_f.weight"), std::string::npos);
  auto extra = variant(dir, "extra.safetensors", [&](auto& w, const auto& f, const std::string& n) {
    copy(w, f, n);
    if (n == "norm_f.weight") w.add("lm_head.weight", f.info(n).dtype, f.info(n).shape, f.raw(n));
  });
  EXPECT_NE(refusal(extra).find("lm_head.weight"), std::string::npos);
}

TEST(Checkpoint, RefusesOtherFormatVersionsAndBadConfigs) {
  auto dir = mmtest::scratch("checkpoint_version");
  save_checkpoint(dir / "good.safetensors", make(true));
  auto f = mm::io::SafetensorsFile::read(dir / "good.safetensors");
  auto rewrite = [&](const std::string& name, const std::string& key, const std::string& value) {
    mm::io::SafetensorsWriter w;
    for (const auto& n : f.names()) w.add(n, f.info(n).dtype, f.info(n).shape, f.raw(n));
    for (const auto& [k, v] : f.metadata()) w.set_metadata(k, k == key ? value : v);
    w.write(dir / name);
    return dir / name;
  };
  EXPECT_NE(refusal(rewrite("v2.safetensors", "format", "memmamba-checkpoint-2")).find("not supported"), std::string::npos);
  EXPECT_NE(refusal(rewrite("cfg.safetensors", "memmamba.config", "{\"d_model\": 16, \"note_heads\": 3}"))
                .find("multiple of note_heads"), std::string::npos);
  EXPECT_NE(refusal(rewrite("ref.safetensors", "format", "memmamba-reference-1")).find("not supported"), std::string::npos);
}

TEST(Checkpoint, ConfigJsonRefusesImpossibleShapes) {
  EXPECT_THROW(mm::Config::from_json("{\"d_model\": 0}"), mm::Error);
  EXPECT_THROW(mm::Config::from_json("{\"summary_dim\": 10, \"note_heads\": 4}"), mm::Error);
  EXPECT_THROW(mm::Config::from_json("{\"frobnicate\": 1}"), mm::Error);
  EXPECT_THROW(mm::Config::from_json("{\"d_model\": \"big\"}"), mm::Error);
  EXPECT_THROW(mm::Config::from_json("[1, 2]"), mm::Error);
  EXPECT_THROW(mm::Config::from_json("{"), mm::Error);
  EXPECT_NO_THROW(mm::Config::from_json("{\"d_model\": 64, \"notes\": false}"));
}
