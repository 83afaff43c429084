// memmamba embed: .npy read back with NumPy and TSV, against an independent whole forward pass
// with Taps (mean / last of the chosen layer's rows, norm_f for 'final'), pieces equal the whole
// pass, regions and BED, the ids sidecar, errors and atomic output.
#include <gtest/gtest.h>

#include <stdlib.h>

#include <cmath>
#include <cstdlib>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "io/tokenizer.hpp"
#include "kernels/rmsnorm.hpp"
#include "memmamba/version.hpp"
#include "model/checkpoint.hpp"
#include "pipelines/embed.hpp"
#include "support/fixtures.hpp"
#include "support/models.hpp"

namespace fs = std::filesystem;
using mmtest::run_cli;

namespace {

struct Fixture {
  fs::path dir, fasta, model;
  std::map<std::string, std::string> seq;
  std::vector<std::string> order;
  mm::Config cfg = mmtest::small_config();
  std::unique_ptr<mm::MemMamba<float>> net;
};

Fixture& fixture() {
  static Fixture f = [] {
    Fixture f;
    f.dir = mmtest::scratch("embed");
    std::mt19937_64 rng(5);
    auto random_bases = [&](size_t n) { return mmtest::random_bases(n, rng); };
    std::string a = random_bases(300);
    for (size_t i = 120; i < 130; ++i) a[i] = 'N';
    for (size_t i = 40; i < 60; ++i) a[i] = static_cast<char>(std::tolower(a[i]));
    f.seq["seqA"] = a;
    f.seq["seqB"] = random_bases(40);
    f.seq["one"] = "G";
    f.seq["long"] = random_bases(3000);
    f.order = {"seqA", "seqB", "one", "long"};
    std::vector<std::pair<std::string, std::string>> records;
    for (const auto& name : f.order) records.emplace_back(name, f.seq[name]);
    f.fasta = f.dir / "in.fa";
    mmtest::write_text(f.fasta, mmtest::fasta_text(records, "test record"));
    f.net = std::make_unique<mm::MemMamba<float>>(mmtest::live_model<float>(f.cfg, 13));
    f.model = mmtest::save_model(f.dir / "model.safetensors", *f.net);
    return f;
  }();
  return f;
}

std::string base(const std::string& extra) {
  const Fixture& f = fixture();
  return "embed -q -m '" + f.model.string() + "' " + extra + " '" + f.fasta.string() + "'";
}

// Independent vector: one whole forward pass over BOS + letters with Taps; the chosen layer's
// rows at the bases (BOS excluded), norm_f applied for 'final' (layer −1), mean or last, in double.
std::vector<double> whole_pass(const std::string& letters, int layer, bool last) {
  mm::MemMamba<float>& m = *fixture().net;
  const mm::Config& c = m.config();
  std::vector<int32_t> tk = {mm::io::tok::BOS};
  for (uint8_t t : mm::io::encode(letters)) tk.push_back(t);
  const int64_t T = static_cast<int64_t>(tk.size()), D = c.d_model;
  std::vector<float> logits(static_cast<size_t>(T * c.vocab));
  mm::Taps<float> taps;
  m.forward(tk.data(), 1, T, logits.data(), nullptr, &taps);
  std::vector<float> rows = taps.layers.at(size_t(layer < 0 ? c.n_layer - 1 : layer)).output;
  if (layer < 0) {
    std::vector<float> y(rows.size());
    mm::cpu::rmsnorm_forward(y.data(), static_cast<float*>(nullptr), rows.data(),
                             m.params().data() + m.table().norm_f(), T, D, c.rms_eps);
    rows = y;
  }
  std::vector<double> v(size_t(D), 0.0);
  if (last) {
    for (int64_t k = 0; k < D; ++k) v[size_t(k)] = rows[size_t((T - 1) * D + k)];
    return v;
  }
  for (int64_t t = 1; t < T; ++t)
    for (int64_t k = 0; k < D; ++k) v[size_t(k)] += rows[size_t(t * D + k)];
  for (auto& x : v) x /= double(T - 1);
  return v;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream ss(text);
  std::string line;
  while (std::getline(ss, line)) out.push_back(line);
  return out;
}

std::vector<std::string> fields(const std::string& line, char sep = '\t') {
  std::vector<std::string> out;
  std::stringstream ss(line);
  std::string f;
  while (std::getline(ss, f, sep)) out.push_back(f);
  return out;
}

// Loads a .npy with NumPy: "shape dtype" on the first line, then the rows (space separated).
struct Npy {
  std::string shape;
  std::vector<std::vector<double>> rows;
};
Npy load_npy(const fs::path& p) {
  const std::string out = mmtest::shell(
      "python3 -c \"import sys, numpy as np; a = np.load(sys.argv[1]); "
      "print(a.shape, a.dtype); np.savetxt(sys.stdout, a, fmt='%.9g')\" '" + p.string() + "'");
  Npy n;
  const auto ls = lines_of(out);
  if (ls.empty()) return n;
  n.shape = ls[0];
  for (size_t i = 1; i < ls.size(); ++i) {
    std::vector<double> r;
    for (const auto& x : fields(ls[i], ' ')) r.push_back(std::stod(x));
    n.rows.push_back(r);
  }
  return n;
}

void expect_vec(const std::vector<double>& got, const std::vector<double>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t k = 0; k < got.size(); ++k)
    EXPECT_NEAR(got[k], want[k], 1e-5 * std::max(1.0, std::abs(want[k]))) << what << " [" << k << "]";
}

// TSV rows: id → values.
std::vector<std::pair<std::string, std::vector<double>>> tsv(const std::string& text) {
  std::vector<std::pair<std::string, std::vector<double>>> out;
  for (const auto& l : lines_of(text)) {
    auto f = fields(l);
    std::vector<double> v;
    for (size_t i = 1; i < f.size(); ++i) v.push_back(std::stod(f[i]));
    out.emplace_back(f.empty() ? "" : f[0], v);
  }
  return out;
}

}  // namespace

TEST(Embed, NpyLoadsWithNumpyAndEqualsTheFinalNormMeanOfAWholePass) {
  const Fixture& f = fixture();
  const fs::path out = f.dir / "final.npy";
  auto r = run_cli(base("-o '" + out.string() + "'"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // The header pads the data to a multiple of 64 bytes.
  const std::string bytes = mmtest::read_text(out);
  ASSERT_GT(bytes.size(), 10u);
  EXPECT_EQ(bytes.substr(0, 6), "\x93NUMPY");
  const size_t hl = size_t(uint8_t(bytes[8])) | (size_t(uint8_t(bytes[9])) << 8);
  EXPECT_EQ((10 + hl) % 64, 0u);
  EXPECT_EQ(bytes.size(), 10 + hl + f.order.size() * size_t(f.cfg.d_model) * 4);
  const Npy n = load_npy(out);
  EXPECT_EQ(n.shape, "(4, " + std::to_string(f.cfg.d_model) + ") float32");
  ASSERT_EQ(n.rows.size(), f.order.size());
  for (size_t i = 0; i < f.order.size(); ++i)
    expect_vec(n.rows[i], whole_pass(f.seq.at(f.order[i]), -1, false), f.order[i]);
  // The sidecar: one line per row, the record name.
  const auto ids = lines_of(mmtest::read_text(out.string() + ".ids.tsv"));
  EXPECT_EQ(ids, f.order);
}

TEST(Embed, EveryLayerAndLastPooling) {
  const Fixture& f = fixture();
  for (int layer = -1; layer < f.cfg.n_layer; ++layer)
    for (bool last : {false, true}) {
      std::string name = std::to_string(layer);  // appends: GCC 12 warns falsely on "lit" + string
      name += last ? "last.npy" : "mean.npy";
      const fs::path out = f.dir / ("l" + name);
      const std::string ls = layer < 0 ? "final" : std::to_string(layer);
      auto r = run_cli(base("--layer " + ls + " --pool " + (last ? "last" : "mean") + " -o '" + out.string() + "'"));
      ASSERT_EQ(r.exit_code, 0) << r.err;
      const Npy n = load_npy(out);
      ASSERT_EQ(n.rows.size(), f.order.size());
      for (size_t i = 0; i < f.order.size(); ++i)
        expect_vec(n.rows[i], whole_pass(f.seq.at(f.order[i]), layer, last),
                   f.order[i] + " layer " + ls + (last ? " last" : " mean"));
    }
}

TEST(Embed, LongSequenceStreamedInPiecesEqualsTheWholePass) {
  const Fixture& f = fixture();
  for (const std::string pool : {"mean", "last"}) {
    auto r = run_cli(base("--piece 257 --layer 1 --pool " + pool + " -O tsv"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto rows = tsv(r.out);
    ASSERT_EQ(rows.size(), f.order.size());
    EXPECT_EQ(rows[3].first, "long");
    expect_vec(rows[3].second, whole_pass(f.seq.at("long"), 1, pool == "last"), "long " + pool);
  }
  // The library directly: any split of feed() calls.
  mm::MemMamba<float>& m = *f.net;
  const auto tk = mm::io::encode(f.seq.at("long"));
  mm::pipelines::StreamEmbedder em(m, mm::pipelines::kFinalLayer, mm::pipelines::EmbedPool::mean, 1000);
  for (size_t at = 0, step = 1; at < tk.size(); at += step, step = step * 3 + 1)
    em.feed(tk.data() + at, std::min(step, tk.size() - at));
  EXPECT_EQ(em.fed(), int64_t(tk.size()));
  const auto v = em.result();
  expect_vec(std::vector<double>(v.begin(), v.end()), whole_pass(f.seq.at("long"), -1, false), "split feed");
}

TEST(Embed, TsvOutputOnStdoutAndToAFile) {
  const Fixture& f = fixture();
  auto r = run_cli(base("--pool last"));  // -o - is the default: TSV
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto rows = tsv(r.out);
  ASSERT_EQ(rows.size(), f.order.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(rows[i].first, f.order[i]);
    expect_vec(rows[i].second, whole_pass(f.seq.at(f.order[i]), -1, true), f.order[i]);
  }
  const fs::path out = f.dir / "e.tsv";
  r = run_cli(base("--pool last -o '" + out.string() + "'"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(mmtest::read_text(out), run_cli(base("--pool last")).out);
  EXPECT_FALSE(fs::exists(out.string() + ".ids.tsv"));
}

TEST(Embed, RegionsAndBedWithTheIdsSidecar) {
  const Fixture& f = fixture();
  const fs::path bed = f.dir / "r.bed";
  mmtest::write_text(bed, "seqA\t10\t200\tfirst\nlong\t0\t3000\n");
  const fs::path out = f.dir / "reg.npy";
  auto r = run_cli(base("-r seqB:5-30 -r seqA:121-140 -R '" + bed.string() + "' -o '" + out.string() + "'"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Npy n = load_npy(out);
  EXPECT_EQ(n.shape, "(4, " + std::to_string(f.cfg.d_model) + ") float32");
  ASSERT_EQ(n.rows.size(), 4u);
  expect_vec(n.rows[0], whole_pass(f.seq.at("seqB").substr(4, 26), -1, false), "seqB:5-30");
  expect_vec(n.rows[1], whole_pass(f.seq.at("seqA").substr(120, 20), -1, false), "seqA:121-140");
  expect_vec(n.rows[2], whole_pass(f.seq.at("seqA").substr(10, 190), -1, false), "bed first");
  expect_vec(n.rows[3], whole_pass(f.seq.at("long"), -1, false), "bed long");
  const auto ids = lines_of(mmtest::read_text(out.string() + ".ids.tsv"));
  const std::vector<std::string> want = {"seqB:5-30\tseqB\t4\t30", "seqA:121-140\tseqA\t120\t140",
                                         "first\tseqA\t10\t200", "long:1-3000\tlong\t0\t3000"};
  EXPECT_EQ(ids, want);
}

TEST(Embed, Errors) {
  const Fixture& f = fixture();
  const std::string m = "embed -q -m '" + f.model.string() + "' ";
  // Missing FASTA.
  const fs::path out = f.dir / "err.npy";
  auto r = run_cli(m + "-o '" + out.string() + "' '" + (f.dir / "missing.fa").string() + "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("memmamba embed: error: " + (f.dir / "missing.fa").string()), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out));
  // Bad regions.
  r = run_cli(m + "-r seqA:abc '" + f.fasta.string() + "'");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("seqA:abc"), std::string::npos) << r.err;
  r = run_cli(m + "-r seqA:290-310 '" + f.fasta.string() + "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("lies outside contig seqA (length 300)"), std::string::npos) << r.err;
  r = run_cli(m + "-r chrZ:1-5 '" + f.fasta.string() + "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("chrZ"), std::string::npos) << r.err;
  // Unknown layer: the message says how many layers the model has.
  for (const std::string bad : {"3", "-1", "last", "x"}) {
    r = run_cli(m + "--layer " + bad + " '" + f.fasta.string() + "'");
    EXPECT_EQ(r.exit_code, 2) << bad;
    EXPECT_NE(r.err.find("the model has 3 layers"), std::string::npos) << r.err;
  }
  r = run_cli(m + "--pool max '" + f.fasta.string() + "'");
  EXPECT_EQ(r.exit_code, 2);
  r = run_cli(m + "-o x.bin '" + f.fasta.string() + "'");
  EXPECT_EQ(r.exit_code, 2);
  r = run_cli(m + "-O npy '" + f.fasta.string() + "'");  // npy to stdout
  EXPECT_EQ(r.exit_code, 2);
  // A record without bases: the file and the record are named, no output is left.
  const fs::path empty = f.dir / "empty.fa";
  mmtest::write_text(empty, ">ok\nACGT\n>hollow\n>after\nGG\n");
  r = run_cli(m + "-o '" + out.string() + "' '" + empty.string() + "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find(empty.string()), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("record 'hollow' has no"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out));
  EXPECT_FALSE(fs::exists(out.string() + ".ids.tsv"));
  // Models: a missing file is bad input (1), no model at all is bad usage (2).
  r = run_cli("embed -q -m '" + (f.dir / "nope.safetensors").string() + "' '" + f.fasta.string() + "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("nope.safetensors"), std::string::npos) << r.err;
  // No -m, no MEMMAMBA_MODEL and no shipped model: usage error (with the shipped model in
  // sample_data/models this branch cannot run; test_score checks that the shipped one is used).
  const char* old = std::getenv("MEMMAMBA_MODEL");
  const std::string saved = old ? old : "";
  ::unsetenv("MEMMAMBA_MODEL");
  if (!fs::exists(fs::path(mm::kSourceDir) / "sample_data/models/default.safetensors")) {
    r = run_cli("embed -q '" + f.fasta.string() + "'");
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.err.find("give -m/--model"), std::string::npos) << r.err;
  }
  if (!saved.empty()) ::setenv("MEMMAMBA_MODEL", saved.c_str(), 1);
  r = run_cli(m);  // no FASTA
  EXPECT_EQ(r.exit_code, 2);
}

TEST(Embed, ReadsAFastaFromStdin) {
  const Fixture& f = fixture();
  const std::string m = "embed -q -m '" + f.model.string() + "' ";
  auto r = run_cli(m + "-", f.fasta.string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, run_cli(base("")).out);
  r = run_cli(m + "-r seqA:1-10 -", f.fasta.string());  // regions need an indexed file
  EXPECT_EQ(r.exit_code, 2);
}
