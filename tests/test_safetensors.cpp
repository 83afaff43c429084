// safetensors reader/writer and AtomicFile: exact round trips, the header checked independently,
// interoperability with the Python `safetensors` package, strict refusal of damaged files, and
// atomic replacement including write failures (full file-size limit in a forked child).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <csignal>
#include <cstring>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "io/atomic_file.hpp"
#include "io/error.hpp"
#include "io/safetensors.hpp"
#include "support/fixtures.hpp"

namespace {

namespace fs = std::filesystem;
using mm::io::AtomicFile;
using mm::io::DType;
using mm::io::SafetensorsFile;
using mm::io::SafetensorsWriter;
using json = nlohmann::json;

const fs::path kInterop = fs::path(MM_TEST_DATA).parent_path() / "interop";

template <class T> std::span<const std::byte> bytes_of(const std::vector<T>& v) { return std::as_bytes(std::span(v)); }

std::vector<std::byte> raw_copy(std::span<const std::byte> s) { return {s.begin(), s.end()}; }

// The message of the mm::Error that fn throws (fails the test when it throws nothing).
template <class Fn> std::string error_of(Fn fn) {
  try {
    fn();
  } catch (const mm::Error& e) {
    return e.message();
  }
  ADD_FAILURE() << "no mm::Error thrown";
  return {};
}

std::vector<fs::path> listing(const fs::path& dir) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename());
  return out;
}

bool python_ready() { return std::system("python3 -c 'import safetensors, numpy' >/dev/null 2>&1") == 0; }
const char* kNeedPython =
    "python3 with the `safetensors` and `numpy` packages is needed for this interoperability test: run scripts/setup";

// One tensor of every dtype, with values whose decoding the tests know exactly.
SafetensorsWriter every_dtype() {
  SafetensorsWriter w;
  w.add("f64", {2, 2}, std::vector<double>{1.0, -0.1, 1e300, 5e-324});
  w.add("f32", {3}, std::vector<float>{1.5f, -0.0f, 3.25e-20f});
  w.add("f16", DType::F16, {4}, bytes_of(std::vector<std::uint16_t>{0x3C00, 0xC000, 0x0001, 0x7BFF}));
  w.add("bf16", DType::BF16, {3}, bytes_of(std::vector<std::uint16_t>{0x3F80, 0xC040, 0x4049}));
  w.add("i64", {2}, std::vector<std::int64_t>{-(std::int64_t(1) << 53), 42});
  w.add("i32", {1, 2}, std::vector<std::int32_t>{-7, 2147483647});
  w.add("i16", DType::I16, {2}, bytes_of(std::vector<std::int16_t>{-32768, 5}));
  w.add("u16", DType::U16, {1}, bytes_of(std::vector<std::uint16_t>{65535}));
  w.add("u32", DType::U32, {1}, bytes_of(std::vector<std::uint32_t>{4000000000u}));
  w.add("u64", DType::U64, {1}, bytes_of(std::vector<std::uint64_t>{18446744073709551615ull}));
  w.add("i8", DType::I8, {2}, bytes_of(std::vector<std::int8_t>{-128, 127}));
  w.add("u8", DType::U8, {3}, bytes_of(std::vector<std::uint8_t>{0, 128, 255}));
  w.add("bool", DType::BOOL, {2}, bytes_of(std::vector<std::uint8_t>{1, 0}));
  w.add("scalar", {}, std::vector<double>{2.5});
  w.add("empty", {0, 3}, std::vector<float>{});
  w.set_metadata("format", "memmamba-test");
  w.set_metadata("memmamba.config", R"({"d_model": 16, "note": "ünïcode"})");
  return w;
}

// A file from a header text and data bytes, padded as the format asks.
std::string handmade(std::string header, const std::string& data) {
  header.append((8 - header.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  const std::uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  return out + header + data;
}

// ---------------------------------------------------------------- round trip and layout

TEST(Safetensors, RoundTripIsExactForEveryDtypeScalarAndEmpty) {
  const fs::path file = mmtest::scratch("st_roundtrip") / "all.safetensors";
  SafetensorsWriter w = every_dtype();
  w.write(file);
  const SafetensorsFile f = SafetensorsFile::read(file);
  const SafetensorsFile again = SafetensorsFile::parse(w.serialize(), "memory");

  EXPECT_EQ(f.names(), (std::vector<std::string>{"bf16", "bool", "empty", "f16", "f32", "f64", "i16", "i32", "i64",
                                                  "i8", "scalar", "u16", "u32", "u64", "u8"}));
  const std::map<std::string, std::string> meta{{"format", "memmamba-test"},
                                                 {"memmamba.config", R"({"d_model": 16, "note": "ünïcode"})"}};
  EXPECT_EQ(f.metadata(), meta);
  EXPECT_EQ(f.info("f64").dtype, DType::F64);
  EXPECT_EQ(f.info("f64").shape, (std::vector<std::int64_t>{2, 2}));
  EXPECT_EQ(f.info("scalar").shape, std::vector<std::int64_t>{});
  EXPECT_EQ(f.info("scalar").numel(), 1u);
  EXPECT_EQ(f.info("empty").shape, (std::vector<std::int64_t>{0, 3}));
  EXPECT_EQ(f.raw("empty").size(), 0u);
  EXPECT_EQ(f.as_f32("empty"), std::vector<float>{});
  for (const auto& name : f.names()) {
    EXPECT_EQ(raw_copy(f.raw(name)), raw_copy(again.raw(name))) << name;
    EXPECT_EQ(f.info(name).shape, again.info(name).shape) << name;
  }

  EXPECT_EQ(f.as_f64("f64"), (std::vector<double>{1.0, -0.1, 1e300, 5e-324}));
  EXPECT_EQ(f.as_f64("scalar"), std::vector<double>{2.5});
  std::vector<float> f32 = f.as_f32("f32");
  EXPECT_EQ(f32, (std::vector<float>{1.5f, -0.0f, 3.25e-20f}));
  EXPECT_TRUE(std::signbit(f32[1]));
  EXPECT_EQ(f.as_f64("f16"), (std::vector<double>{1.0, -2.0, std::ldexp(1.0, -24), 65504.0}));
  EXPECT_EQ(f.as_f32("bf16"), (std::vector<float>{1.0f, -3.0f, 3.140625f}));
  EXPECT_EQ(f.as_i64("i64"), (std::vector<std::int64_t>{-(std::int64_t(1) << 53), 42}));
  EXPECT_EQ(f.as_f64("i64"), (std::vector<double>{-9007199254740992.0, 42.0}));
  EXPECT_EQ(f.as_i64("i32"), (std::vector<std::int64_t>{-7, 2147483647}));
  EXPECT_EQ(f.as_i64("i16"), (std::vector<std::int64_t>{-32768, 5}));
  EXPECT_EQ(f.as_i64("u16"), std::vector<std::int64_t>{65535});
  EXPECT_EQ(f.as_f64("u32"), std::vector<double>{4000000000.0});
  EXPECT_EQ(f.as_i64("i8"), (std::vector<std::int64_t>{-128, 127}));
  EXPECT_EQ(f.as_f32("u8"), (std::vector<float>{0.f, 128.f, 255.f}));
  EXPECT_EQ(f.as_i64("bool"), (std::vector<std::int64_t>{1, 0}));
}

TEST(Safetensors, ConversionsThatMakeNoSenseNameTheTensor) {
  const SafetensorsFile f = SafetensorsFile::parse(every_dtype().serialize(), "mem.safetensors");
  std::string m = error_of([&] { f.as_i64("f32"); });
  EXPECT_NE(m.find("mem.safetensors: tensor 'f32' is F32, not an integer tensor"), std::string::npos) << m;
  m = error_of([&] { f.as_i64("u64"); });
  EXPECT_NE(m.find("tensor 'u64': U64 value at index 0 does not fit in int64"), std::string::npos) << m;
  m = error_of([&] { f.as_f64("u64"); });
  EXPECT_NE(m.find("tensor 'u64': U64 value at index 0 is not exactly representable as float64"), std::string::npos) << m;
  m = error_of([&] { f.as_f32("i32"); });  // 2^31 - 1 has more than 24 significant bits
  EXPECT_NE(m.find("tensor 'i32': I32 value at index 1 is not exactly representable as float32"), std::string::npos) << m;
  m = error_of([&] { f.as_f32("f64"); });  // 1e300
  EXPECT_NE(m.find("tensor 'f64': value"), std::string::npos) << m;
  EXPECT_NE(m.find("does not fit in float32"), std::string::npos) << m;
  m = error_of([&] { SafetensorsFile::read("/nonexistent/x.safetensors"); });
  EXPECT_EQ(m, "/nonexistent/x.safetensors: no such file");
  m = error_of([&] { f.info("absent"); });
  EXPECT_NE(m.find("no tensor 'absent'"), std::string::npos) << m;
}

TEST(Safetensors, WriterRefusesInconsistentTensors) {
  SafetensorsWriter w;
  w.add("a", {2}, std::vector<double>{1, 2});
  EXPECT_NE(error_of([&] { w.add("a", {1}, std::vector<double>{1}); }).find("added twice"), std::string::npos);
  EXPECT_NE(error_of([&] { w.add("b", {3}, std::vector<double>{1, 2}); }).find("(24 bytes) but 16 bytes"),
            std::string::npos);
  EXPECT_NE(error_of([&] { w.add("__metadata__", {1}, std::vector<double>{1}); }).find("cannot name a tensor"),
            std::string::npos);
  EXPECT_NE(error_of([&] { w.add("c", {-1}, std::vector<double>{}); }).find("negative dimension"), std::string::npos);
}

// The header parsed here with nlohmann_json, not with our reader.
TEST(Safetensors, HeaderIsPaddedSortedContiguousAndAligned) {
  const std::string bytes = every_dtype().serialize();
  std::uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  ASSERT_LE(n + 8, bytes.size());
  EXPECT_EQ(n % 8, 0u);
  const std::string text = bytes.substr(8, n);
  EXPECT_EQ(text.find_last_not_of(' ') + 1, text.find_last_of('}') + 1) << "padding must be spaces after the JSON";
  const json h = json::parse(text);
  EXPECT_EQ(h["__metadata__"]["format"], "memmamba-test");

  struct Row { std::string name; DType dtype; std::uint64_t begin, end; };
  std::vector<Row> rows;
  for (const auto& [name, v] : h.items())
    if (name != "__metadata__")
      rows.push_back({name, *mm::io::dtype_from_name(v["dtype"].get<std::string>()), v["data_offsets"][0], v["data_offsets"][1]});
  ASSERT_EQ(rows.size(), 15u);
  std::sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) { return std::tie(a.begin, a.end) < std::tie(b.begin, b.end); });
  std::uint64_t cursor = 0;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(rows[i].begin, cursor) << rows[i].name;
    EXPECT_EQ(rows[i].begin % mm::io::dtype_size(rows[i].dtype), 0u) << rows[i].name << " is not aligned";
    cursor = rows[i].end;
    if (i > 0) {  // as the Python package lays out: larger dtypes first, then by name
      EXPECT_TRUE(rows[i - 1].dtype > rows[i].dtype || (rows[i - 1].dtype == rows[i].dtype && rows[i - 1].name < rows[i].name))
          << rows[i - 1].name << " before " << rows[i].name;
    }
  }
  EXPECT_EQ(cursor, bytes.size() - 8 - n) << "data section must be covered exactly";
  EXPECT_EQ(rows.front().name, "u64");
  EXPECT_EQ(rows.back().name, "bool");
}

// ---------------------------------------------------------------- Python interoperability

TEST(SafetensorsInterop, PythonPackageLoadsOurFile) {
  if (!python_ready()) FAIL() << kNeedPython;
  const fs::path dir = mmtest::scratch("st_py_load");
  every_dtype().write(dir / "ours.safetensors");
  const std::string cmd = "python3 '" + (kInterop / "load.py").string() + "' '" + (dir / "ours.safetensors").string() +
                          "' > '" + (dir / "out.json").string() + "' 2> '" + (dir / "err.txt").string() + "'";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << mmtest::read_text(dir / "err.txt");
  const json py = json::parse(mmtest::read_text(dir / "out.json"));

  const SafetensorsFile f = SafetensorsFile::read(dir / "ours.safetensors");
  const auto py_meta = py["metadata"].get<std::map<std::string, std::string>>();
  EXPECT_EQ(py_meta, f.metadata());
  ASSERT_EQ(py["tensors"].size(), f.names().size());
  for (const auto& name : f.names()) {
    const json& t = py["tensors"][name];
    EXPECT_EQ(t["dtype"], mm::io::dtype_name(f.info(name).dtype)) << name;
    EXPECT_EQ(t["shape"].get<std::vector<std::int64_t>>(), f.info(name).shape) << name;
    double sum = 18446744073709551615.0;  // u64's one value: not representable as double, numpy rounds it
    if (name != "u64") {
      sum = 0;
      for (double v : f.as_f64(name)) sum += v;
    }
    EXPECT_DOUBLE_EQ(t["sum"].get<double>(), sum) << name;
  }
}

TEST(SafetensorsInterop, WeReadPythonFilesAndWriteTheSameBytes) {
  if (!python_ready()) FAIL() << kNeedPython;
  const fs::path dir = mmtest::scratch("st_py_save");
  const std::string cmd = "python3 '" + (kInterop / "save.py").string() + "' '" + dir.string() + "' 2> '" +
                          (dir / "err.txt").string() + "'";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << mmtest::read_text(dir / "err.txt");

  const SafetensorsFile f = SafetensorsFile::read(dir / "python.safetensors");
  const std::map<std::string, std::string> meta{{"format", "python-test"}, {"note", "written by safetensors.numpy"}};
  EXPECT_EQ(f.metadata(), meta);
  EXPECT_EQ(f.as_f64("f64"), (std::vector<double>{-0.5, -0.25, 0.0, 0.25, 0.5, 0.75}));
  EXPECT_EQ(f.info("f64").shape, (std::vector<std::int64_t>{2, 3}));
  EXPECT_EQ(f.as_f32("f32"), (std::vector<float>{1.5f, -2.25f, 0.375f}));
  EXPECT_EQ(f.as_f64("f16"), (std::vector<double>{1.0, -2.0, 0.5, 65504.0, std::ldexp(1.0, -24)}));
  EXPECT_EQ(f.as_i64("i64"), (std::vector<std::int64_t>{-(std::int64_t(1) << 62), 7, (std::int64_t(1) << 53) + 1}));
  EXPECT_EQ(f.as_i64("i32"), (std::vector<std::int64_t>{1, -2, 3, -4}));
  EXPECT_EQ(f.info("i32").shape, (std::vector<std::int64_t>{2, 2}));
  EXPECT_EQ(f.as_i64("u8"), (std::vector<std::int64_t>{0, 255}));
  EXPECT_EQ(f.info("bool").dtype, DType::BOOL);
  EXPECT_EQ(f.as_i64("bool"), (std::vector<std::int64_t>{1, 0, 1}));
  EXPECT_EQ(f.info("scalar").shape, std::vector<std::int64_t>{});
  EXPECT_EQ(f.as_f64("scalar"), std::vector<double>{3.5});
  EXPECT_EQ(f.info("empty").shape, (std::vector<std::int64_t>{0, 4}));
  EXPECT_NE(error_of([&] { f.as_f64("i64"); }).find("tensor 'i64': I64 value at index 2 is not exactly representable"),
            std::string::npos);

  // The same tensors through our writer: identical bytes, header and layout included.
  SafetensorsWriter w;
  for (const auto& name : f.names()) w.add(name, f.info(name).dtype, f.info(name).shape, f.raw(name));
  EXPECT_EQ(w.serialize(), mmtest::read_text(dir / "plain.safetensors"));
}

// ---------------------------------------------------------------- the committed golden file

TEST(Safetensors, ReadsTheGoldenReferenceFile) {
  const SafetensorsFile f = SafetensorsFile::read(mmtest::data("reference/memmamba-tiny-reference.safetensors"));
  EXPECT_EQ(f.metadata().at("format"), "memmamba-reference-1");
  const json config = json::parse(f.metadata().at("memmamba.config"));
  EXPECT_EQ(config["vocab"], 8);
  EXPECT_EQ(config["d_model"], 16);

  EXPECT_EQ(f.info("input.tokens").dtype, DType::I64);
  EXPECT_EQ(f.info("input.tokens").shape, std::vector<std::int64_t>{61});
  for (std::int64_t t : f.as_i64("input.tokens")) EXPECT_TRUE(t >= 0 && t < 8) << t;
  EXPECT_EQ(f.info("output.logits").dtype, DType::F64);
  EXPECT_EQ(f.info("output.logits").shape, (std::vector<std::int64_t>{61, 8}));
  EXPECT_EQ(f.as_f64("output.logits").size(), 61u * 8u);
  EXPECT_EQ(f.info("param.embedding.weight").shape, (std::vector<std::int64_t>{8, 16}));
  EXPECT_EQ(f.info("act.layers.0.note.pool_index").shape, (std::vector<std::int64_t>{8, 4}));
  const double loss = f.as_f64("output.loss").at(0);
  EXPECT_TRUE(std::isfinite(loss) && loss > 0) << loss;
}

// ---------------------------------------------------------------- refusing damaged files

// Writes bytes to a file and expects the reader to refuse it with a message naming the file.
void expect_refused(const std::string& bytes, const std::string& phrase) {
  const fs::path file = mmtest::scratch("st_bad") / "bad.safetensors";
  mmtest::write_text(file, bytes);
  const std::string m = error_of([&] { SafetensorsFile::read(file); });
  EXPECT_EQ(m.rfind(file.string() + ": ", 0), 0u) << m;
  EXPECT_NE(m.find(phrase), std::string::npos) << "expected '" << phrase << "' in: " << m;
}

const std::string kTwoF32 = std::string(8, '\x01');  // data for F32 [2]

TEST(SafetensorsRefuses, TruncatedFiles) {
  const std::string good = every_dtype().serialize();
  std::uint64_t n;
  std::memcpy(&n, good.data(), 8);
  expect_refused(good.substr(0, 5), "5 bytes, shorter than the 8-byte header length");
  expect_refused(good.substr(0, 8 + n / 2), "exceeds the file size");
  expect_refused(good.substr(0, good.size() - 3), "lie beyond the data section");
  expect_refused(good.substr(0, 8 + n), "lie beyond the data section");
}

TEST(SafetensorsRefuses, GarbageHeaders) {
  expect_refused(handmade("{\"a\": {\"dtype\": \"F32\",", kTwoF32), "header is not valid JSON");
  expect_refused(handmade("\x89PNG\r\n\x1a\n", ""), "header is not valid JSON");
  expect_refused(handmade("[1, 2]", ""), "header is not a JSON object");
  expect_refused(handmade(R"({"__metadata__": {"format": 1}})", ""), "__metadata__ value for 'format' is not a string");
  expect_refused(handmade(R"({"__metadata__": ["x"]})", ""), "__metadata__ is not a JSON object");
  expect_refused(handmade(R"({"a": {"dtype": "F128", "shape": [2], "data_offsets": [0, 8]}})", kTwoF32),
                 "tensor 'a': unknown dtype \"F128\"");
  expect_refused(handmade(R"({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", kTwoF32),
                 "tensor 'a': shape [-2] is not a list of non-negative integers");
  expect_refused(handmade(R"({"a": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}})", kTwoF32),
                 "is not a list of non-negative integers");
  expect_refused(handmade(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "extra": 1}})", kTwoF32),
                 "tensor 'a': entry must be an object with exactly dtype, shape and data_offsets");
  expect_refused(handmade(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
                          R"( "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", kTwoF32),
                 "has the key 'a' twice");
}

TEST(SafetensorsRefuses, OffsetsThatDoNotMatchTheTensor) {
  expect_refused(handmade(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 12]}})", kTwoF32 + "1234"),
                 "tensor 'a': data_offsets [0,12] span 12 bytes but F32 [2] needs 8");
  // Wrong dtype size: 8 bytes declared as two F64.
  expect_refused(handmade(R"({"a": {"dtype": "F64", "shape": [2], "data_offsets": [0, 8]}})", kTwoF32),
                 "span 8 bytes but F64 [2] needs 16");
  expect_refused(handmade(R"({"a": {"dtype": "F64", "shape": [2], "data_offsets": [0, 16]}})", kTwoF32),
                 "tensor 'a': data_offsets [0,16] lie beyond the data section (8 bytes)");
  expect_refused(handmade(R"({"a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}})", kTwoF32),
                 "end before they begin");
  expect_refused(handmade(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, -8]}})", kTwoF32),
                 "data_offsets must be two non-negative integers");
}

TEST(SafetensorsRefuses, OverlapsHolesAndTrailingBytes) {
  expect_refused(handmade(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
                          R"( "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})", kTwoF32 + "1234"),
                 "tensors 'a' and 'b' overlap in the data section");
  expect_refused(handmade(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},)"
                          R"( "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}})", kTwoF32 + "1234"),
                 "hole of 4 bytes in the data section before tensor 'b'");
  expect_refused(every_dtype().serialize() + "xyz", "3 trailing bytes after the last tensor");
  expect_refused(handmade("{}", "x"), "1 trailing bytes after the last tensor");
}

TEST(Safetensors, EmptyFileWithNoTensorsIsValid) {
  const SafetensorsFile f = SafetensorsFile::parse(SafetensorsWriter().serialize(), "empty");
  EXPECT_TRUE(f.names().empty());
  EXPECT_FALSE(f.has("a"));
  EXPECT_TRUE(f.metadata().empty());
}

// ---------------------------------------------------------------- AtomicFile

TEST(AtomicFile, CommitReplacesTheDestinationThroughATempFileBesideIt) {
  const fs::path dir = mmtest::scratch("atomic_commit");
  const fs::path dest = dir / "out.bin";
  mmtest::write_text(dest, "old");
  {
    AtomicFile f(dest);
    EXPECT_EQ(f.temp_path().parent_path(), dir);
    EXPECT_EQ(f.temp_path().filename().string().rfind("out.bin.tmp.", 0), 0u) << f.temp_path();
    f.write("new ");
    f.write("content");
    EXPECT_EQ(mmtest::read_text(dest), "old") << "destination must not change before commit";
    EXPECT_TRUE(fs::exists(f.temp_path()));
    f.commit();
    EXPECT_NE(error_of([&] { f.write("late"); }).find("already committed"), std::string::npos);
  }
  EXPECT_EQ(mmtest::read_text(dest), "new content");
  EXPECT_EQ(listing(dir), std::vector<fs::path>{"out.bin"});
  EXPECT_NE(fs::status(dest).permissions() & fs::perms::owner_read, fs::perms::none);
}

TEST(AtomicFile, WithoutCommitNothingIsLeftBehind) {
  const fs::path dir = mmtest::scratch("atomic_abandon");
  mmtest::write_text(dir / "keep.bin", "old");
  {
    AtomicFile f(dir / "keep.bin");
    f.write("half-written");
  }
  {
    AtomicFile f(dir / "new.bin");
    f.write("half-written");
  }
  EXPECT_EQ(listing(dir), std::vector<fs::path>{"keep.bin"});
  EXPECT_EQ(mmtest::read_text(dir / "keep.bin"), "old");
}

TEST(AtomicFile, MissingFolderIsNamed) {
  const fs::path folder = mmtest::scratch("atomic_missing") / "no" / "such";
  const std::string m = error_of([&] { AtomicFile f(folder / "x.bin"); });
  EXPECT_NE(m.find("cannot create a file in folder " + folder.string()), std::string::npos) << m;
}

TEST(AtomicFile, UnwritableFolderIsNamed) {
  const fs::path dir = mmtest::scratch("atomic_readonly");
  fs::permissions(dir, fs::perms::owner_read | fs::perms::owner_exec);
  const bool enforced = ::access(dir.c_str(), W_OK) != 0;
  std::string m;
  if (enforced) m = error_of([&] { AtomicFile f(dir / "x.bin"); });
  fs::permissions(dir, fs::perms::owner_all);
  if (!enforced) GTEST_SKIP() << "folder permissions are not enforced for this user (root?): cannot test an unwritable folder";
  EXPECT_NE(m.find("cannot create a file in folder " + dir.string()), std::string::npos) << m;
  EXPECT_NE(m.find("Permission denied"), std::string::npos) << m;
}

// A real failing write, as on a full disk: a child process with RLIMIT_FSIZE (and SIGXFSZ ignored,
// so the write returns EFBIG instead of killing it). Returns the error message, or a note on what
// went wrong in the child.
std::string write_with_file_size_limit(const fs::path& dest, rlim_t limit, std::size_t bytes) {
  int fds[2];
  if (::pipe(fds) != 0) return "pipe failed";
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    std::signal(SIGXFSZ, SIG_IGN);
    rlimit rl{limit, limit};
    std::string out = "setrlimit failed";
    if (::setrlimit(RLIMIT_FSIZE, &rl) == 0) {
      try {
        AtomicFile f(dest);
        f.write(std::string(bytes, 'x'));
        f.commit();
        out = "no error thrown";
      } catch (const mm::Error& e) {
        out = e.message();
      }
    }
    [[maybe_unused]] auto n = ::write(fds[1], out.data(), out.size());
    ::_exit(0);
  }
  ::close(fds[1]);
  std::string msg;
  char buf[512];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) msg.append(buf, n);
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (!WIFEXITED(status)) return "child died with signal " + std::to_string(WTERMSIG(status));
  return msg;
}

TEST(AtomicFile, FailedWriteNamesTheDestinationAndLeavesNothing) {
  const fs::path dir = mmtest::scratch("atomic_full_write");
  const std::string m = write_with_file_size_limit(dir / "big.bin", 4096, 1 << 20);
  EXPECT_NE(m.find("cannot write " + (dir / "big.bin").string() + ": write failed: File too large"), std::string::npos) << m;
  EXPECT_TRUE(listing(dir).empty());
}

TEST(AtomicFile, FailedFlushAtCommitNamesTheDestinationAndLeavesNothing) {
  const fs::path dir = mmtest::scratch("atomic_full_flush");
  mmtest::write_text(dir / "small.bin", "old");
  // 100 bytes stay in the stdio buffer, so the failure surfaces in commit's fflush.
  const std::string m = write_with_file_size_limit(dir / "small.bin", 0, 100);
  EXPECT_NE(m.find("cannot write " + (dir / "small.bin").string() + ": flush failed: File too large"), std::string::npos) << m;
  EXPECT_EQ(listing(dir), std::vector<fs::path>{"small.bin"});
  EXPECT_EQ(mmtest::read_text(dir / "small.bin"), "old");
}

}  // namespace
