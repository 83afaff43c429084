// memmamba score: coordinates, values against an independent whole forward pass, strands, contig
// edges, N runs, context, output formats read back, errors and atomic output.
#include <bigWig.h>
#include <gtest/gtest.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "io/tokenizer.hpp"
#include "memmamba/version.hpp"
#include "model/checkpoint.hpp"
#include "model/stream_model.hpp"
#include "pipelines/score.hpp"
#include "support/fixtures.hpp"
#include "support/models.hpp"

namespace fs = std::filesystem;
using mmtest::run_cli;

namespace {

const float NaN = std::numeric_limits<float>::quiet_NaN();

// chrA: 300 bases with a soft-masked stretch, an N run at 0-based [120, 130) and an R at 200;
// chrB: 40 bases.
struct Fixture {
  fs::path dir, fasta, model;
  std::map<std::string, std::string> seq;
  mm::Config cfg = mmtest::small_config();
  std::unique_ptr<mm::MemMamba<float>> net;
};

Fixture& fixture() {
  static Fixture f = [] {
    Fixture f;
    f.dir = mmtest::scratch("score");
    std::mt19937_64 rng(7);
    auto random_bases = [&](size_t n) { return mmtest::random_bases(n, rng); };
    std::string a = random_bases(300);
    for (size_t i = 120; i < 130; ++i) a[i] = 'N';
    a[200] = 'R';
    for (size_t i = 40; i < 60; ++i) a[i] = static_cast<char>(std::tolower(a[i]));
    f.seq["chrA"] = a;
    f.seq["chrB"] = random_bases(40);
    f.fasta = f.dir / "ref.fa";
    mmtest::write_text(f.fasta, mmtest::fasta_text({{"chrA", f.seq["chrA"]}, {"chrB", f.seq["chrB"]}}, "test contig"));
    f.net = std::make_unique<mm::MemMamba<float>>(mmtest::live_model<float>(f.cfg, 11));
    f.model = mmtest::save_model(f.dir / "model.safetensors", *f.net);
    return f;
  }();
  return f;
}

std::string base_args() {
  const Fixture& f = fixture();
  return "score -q -m '" + f.model.string() + "' '" + f.fasta.string() + "'";
}

// Independent values: one whole forward pass over BOS + letters, log-softmax over A/C/G/T in
// double. NaN where the letter is not A/C/G/T.
struct Values {
  std::vector<double> logp, entropy;
};
Values whole_pass(const std::string& letters) {
  mm::MemMamba<float>& m = *fixture().net;
  std::vector<int32_t> tk = {mm::io::tok::BOS};
  for (uint8_t t : mm::io::encode(letters)) tk.push_back(t);
  const int64_t T = static_cast<int64_t>(tk.size());
  const int V = m.config().vocab;
  std::vector<float> logits(static_cast<size_t>(T * V));
  m.forward(tk.data(), 1, T, logits.data());
  Values v;
  for (size_t i = 0; i < letters.size(); ++i) {
    const int32_t t = tk[i + 1];
    const float* row = logits.data() + i * V;
    if (t < 1 || t > 4) {
      v.logp.push_back(NaN);
      v.entropy.push_back(NaN);
      continue;
    }
    double z = 0;
    for (int k = 1; k <= 4; ++k) z += std::exp(double(row[k]));
    double h = 0;
    for (int k = 1; k <= 4; ++k) {
      const double lp = double(row[k]) - std::log(z);
      h -= std::exp(lp) * lp;
    }
    v.logp.push_back(double(row[t]) - std::log(z));
    v.entropy.push_back(h);
  }
  return v;
}

std::string reverse_complement(const std::string& s) {
  std::string r(s.rbegin(), s.rend());
  for (char& c : r) {
    switch (std::toupper(static_cast<unsigned char>(c))) {
      case 'A': c = 'T'; break;
      case 'C': c = 'G'; break;
      case 'G': c = 'C'; break;
      case 'T': c = 'A'; break;
      default: c = 'N';
    }
  }
  return r;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream ss(text);
  std::string line;
  while (std::getline(ss, line)) out.push_back(line);
  return out;
}

std::vector<std::string> fields(const std::string& line) {
  std::vector<std::string> out;
  std::stringstream ss(line);
  std::string f;
  while (std::getline(ss, f, '\t')) out.push_back(f);
  return out;
}

struct Interval {
  std::string contig;
  int64_t beg, end;
  double value;
};
// bedGraph data lines (track and '#' lines skipped).
std::vector<Interval> bedgraph(const std::string& text) {
  std::vector<Interval> out;
  for (const auto& l : lines_of(text)) {
    if (l.rfind("track", 0) == 0 || l.rfind("#", 0) == 0) continue;
    auto f = fields(l);
    EXPECT_EQ(f.size(), 4u) << l;
    if (f.size() != 4) continue;
    out.push_back({f[0], std::stoll(f[1]), std::stoll(f[2]), std::stod(f[3])});
  }
  return out;
}
// Per-position values of a bedGraph (runs expanded).
std::map<int64_t, double> expand(const std::vector<Interval>& iv, const std::string& contig) {
  std::map<int64_t, double> out;
  for (const auto& i : iv)
    if (i.contig == contig)
      for (int64_t p = i.beg; p < i.end; ++p) out[p] = i.value;
  return out;
}

struct Row {
  std::string contig;
  int64_t beg, end;
  char base;
  double logp, entropy;
};
std::vector<Row> tsv(const std::string& text) {
  std::vector<Row> out;
  for (const auto& l : lines_of(text)) {
    if (l.rfind("#", 0) == 0) continue;
    auto f = fields(l);
    EXPECT_EQ(f.size(), 6u) << l;
    if (f.size() != 6) continue;
    auto num = [](const std::string& s) { return s == "." ? double(NaN) : std::stod(s); };
    out.push_back({f[0], std::stoll(f[1]), std::stoll(f[2]), f[3][0], num(f[4]), num(f[5])});
  }
  return out;
}

void expect_close(double got, double want, const std::string& what) {
  if (std::isnan(want)) {
    EXPECT_TRUE(std::isnan(got)) << what;
    return;
  }
  EXPECT_NEAR(got, want, 1e-5 * std::max(1.0, std::abs(want))) << what;
}

// The TSV of `extra` arguments (logp and entropy), checked to have succeeded.
std::vector<Row> score_tsv(const std::string& extra) {
  auto r = run_cli(base_args() + " -O tsv --value both " + extra);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return tsv(r.out);
}

}  // namespace

TEST(Score, BedGraphCoordinatesAreZeroBasedHalfOpen) {
  auto r = run_cli(base_args() + " -r chrA:3-7");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto lines = lines_of(r.out);
  ASSERT_FALSE(lines.empty());
  EXPECT_EQ(lines[0].rfind("track type=bedGraph", 0), 0u) << lines[0];
  EXPECT_NE(lines[0].find(std::string("description=\"memmamba ") + mm::kVersion), std::string::npos) << lines[0];
  EXPECT_NE(lines[0].find("memmamba score -q -m"), std::string::npos) << lines[0];
  EXPECT_NE(lines[0].find("-r chrA:3-7"), std::string::npos) << lines[0];
  const auto iv = bedgraph(r.out);
  ASSERT_FALSE(iv.empty());
  EXPECT_EQ(iv.front().contig, "chrA");
  EXPECT_EQ(iv.front().beg, 2);
  EXPECT_EQ(iv.back().end, 7);
  for (size_t i = 1; i < iv.size(); ++i) {
    EXPECT_EQ(iv[i].beg, iv[i - 1].end);
    EXPECT_NE(iv[i].value, iv[i - 1].value) << "runs merge only when equal";
  }
  // Values of a region with no context: the whole pass over the region's bases alone.
  const auto want = whole_pass(fixture().seq["chrA"].substr(2, 5));
  const auto got = expand(iv, "chrA");
  ASSERT_EQ(got.size(), 5u);
  for (int64_t p = 2; p < 7; ++p) expect_close(got.at(p), want.logp[size_t(p - 2)], "pos " + std::to_string(p));
}

TEST(Score, PiecewiseStreamingEqualsOneWholeForwardPass) {
  const Fixture& f = fixture();
  for (const char* piece : {"7", "37", "65536"}) {
    const auto rows = score_tsv(std::string("-r chrA --piece ") + piece);
    const auto want = whole_pass(f.seq.at("chrA"));
    ASSERT_EQ(rows.size(), f.seq.at("chrA").size()) << piece;
    for (size_t i = 0; i < rows.size(); ++i) {
      EXPECT_EQ(rows[i].beg, int64_t(i));
      EXPECT_EQ(rows[i].end, int64_t(i) + 1);
      EXPECT_EQ(rows[i].base, f.seq.at("chrA")[i]);
      expect_close(rows[i].logp, want.logp[i], std::string("piece ") + piece + " logp " + std::to_string(i));
      expect_close(rows[i].entropy, want.entropy[i], std::string("piece ") + piece + " entropy " + std::to_string(i));
      if (!std::isnan(rows[i].entropy)) {
        EXPECT_GE(rows[i].entropy, -1e-6);
        EXPECT_LE(rows[i].entropy, std::log(4.0) + 1e-6);
      }
    }
  }
}

TEST(Score, LibraryStreamScorerAnySplitEqualsWholePass) {
  const Fixture& f = fixture();
  const std::string& s = f.seq.at("chrA");
  const auto tokens = mm::io::encode(s);
  const auto want = whole_pass(s);
  mm::pipelines::StreamScorer sc(*f.net, 16);
  std::vector<float> lp(s.size()), en(s.size());
  // Uneven feeds, each longer or shorter than the scorer's piece.
  size_t at = 0;
  for (size_t n : {1u, 5u, 40u, 3u, 100u, 151u}) {
    sc.feed(tokens.data() + at, n, lp.data() + at, en.data() + at);
    at += n;
  }
  ASSERT_EQ(at, s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    expect_close(lp[i], want.logp[i], "logp " + std::to_string(i));
    expect_close(en[i], want.entropy[i], "entropy " + std::to_string(i));
  }
}

TEST(Score, WholeContigsWhenNoRegionIsGiven) {
  const Fixture& f = fixture();
  for (const char* extra : {"", "--strand both"}) {  // streaming reader; indexed reader
    const auto rows = score_tsv(extra);
    ASSERT_EQ(rows.size(), 340u) << extra;
    EXPECT_EQ(rows.front().contig, "chrA");
    EXPECT_EQ(rows.back().contig, "chrB");
    EXPECT_EQ(rows.back().end, 40);
  }
  const auto rows = score_tsv("--piece 13");
  const auto want = whole_pass(f.seq.at("chrB"));
  for (size_t i = 0; i < 40; ++i) expect_close(rows[300 + i].logp, want.logp[i], "chrB " + std::to_string(i));
}

TEST(Score, ReverseStrandIsTheForwardModelOnTheReverseComplement) {
  const Fixture& f = fixture();
  const std::string region = f.seq.at("chrA").substr(9, 191);  // chrA:10-200 (ends on the R)
  const auto fwd = whole_pass(region);
  const auto rc = whole_pass(reverse_complement(region));
  const size_t n = region.size();
  const auto rev_rows = score_tsv("-r chrA:10-200 --strand rev --piece 23");
  const auto both_rows = score_tsv("-r chrA:10-200 --strand both --piece 23");
  ASSERT_EQ(rev_rows.size(), n);
  ASSERT_EQ(both_rows.size(), n);
  for (size_t i = 0; i < n; ++i) {
    // Forward position i is position n-1-i of the reverse-complement stream.
    const size_t j = n - 1 - i;
    EXPECT_EQ(rev_rows[i].beg, int64_t(9 + i));
    EXPECT_EQ(rev_rows[i].base, region[i]);
    expect_close(rev_rows[i].logp, rc.logp[j], "rev logp " + std::to_string(i));
    expect_close(rev_rows[i].entropy, rc.entropy[j], "rev entropy " + std::to_string(i));
    expect_close(both_rows[i].logp, 0.5 * (fwd.logp[i] + rc.logp[j]), "both logp " + std::to_string(i));
    expect_close(both_rows[i].entropy, 0.5 * (fwd.entropy[i] + rc.entropy[j]), "both entropy " + std::to_string(i));
  }
}

TEST(Score, ContigEdges) {
  const Fixture& f = fixture();
  const std::string& a = f.seq.at("chrA");
  // First base: predicted from BOS alone, whatever the context (none exists upstream).
  for (const char* ctx : {"0", "50"}) {
    const auto rows = score_tsv(std::string("-r chrA:1-1 --context ") + ctx);
    ASSERT_EQ(rows.size(), 1u);
    EXPECT_EQ(rows[0].beg, 0);
    EXPECT_EQ(rows[0].end, 1);
    expect_close(rows[0].logp, whole_pass(a.substr(0, 1)).logp[0], std::string("first base, context ") + ctx);
  }
  // Last base: with context 5 its prediction reads the 5 bases before it.
  auto rows = score_tsv("-r chrA:300-300 --context 5");
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].beg, 299);
  EXPECT_EQ(rows[0].end, 300);
  expect_close(rows[0].logp, whole_pass(a.substr(294, 6)).logp[5], "last base, context 5");
  // Reverse strand at the last base: no context exists downstream, so BOS alone.
  rows = score_tsv("-r chrA:300-300 --context 5 --strand rev");
  ASSERT_EQ(rows.size(), 1u);
  expect_close(rows[0].logp, whole_pass(reverse_complement(a.substr(299, 1))).logp[0], "last base, rev");
  // Reverse strand at the first base reads the context downstream of it.
  rows = score_tsv("-r chrA:1-1 --context 5 --strand rev");
  ASSERT_EQ(rows.size(), 1u);
  expect_close(rows[0].logp, whole_pass(reverse_complement(a.substr(0, 6))).logp[5], "first base, rev, context 5");
  // A whole short contig given as a region.
  rows = score_tsv("-r chrB:1-40");
  ASSERT_EQ(rows.size(), 40u);
  EXPECT_EQ(rows.back().end, 40);
}

TEST(Score, NRunsGetNoValueAndTheStreamContinuesThroughThem) {
  const Fixture& f = fixture();
  const std::string& a = f.seq.at("chrA");
  auto r = run_cli(base_args() + " -r chrA:101-220 --piece 9");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto got = expand(bedgraph(r.out), "chrA");
  for (int64_t p = 120; p < 130; ++p) EXPECT_EQ(got.count(p), 0u) << "N at " << p;
  EXPECT_EQ(got.count(200), 0u) << "R (ambiguity code) at 200";
  EXPECT_EQ(got.size(), 120u - 11u);
  // After the run, values are those of the one pass that fed the N tokens to the model.
  const auto want = whole_pass(a.substr(100, 120));
  for (int64_t p = 100; p < 220; ++p)
    if (got.count(p)) expect_close(got.at(p), want.logp[size_t(p - 100)], "pos " + std::to_string(p));
  // TSV shows the N with '.' values.
  const auto rows = score_tsv("-r chrA:121-121");
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].base, 'N');
  EXPECT_TRUE(std::isnan(rows[0].logp));
  EXPECT_TRUE(std::isnan(rows[0].entropy));
}

TEST(Score, ContextWarmsTheRegionStart) {
  const Fixture& f = fixture();
  const std::string& a = f.seq.at("chrA");
  const auto cold = score_tsv("-r chrA:211-260");
  const auto warm = score_tsv("-r chrA:211-260 --context 100 --piece 32");
  const auto whole = score_tsv("-r chrA:111-260");
  ASSERT_EQ(cold.size(), 50u);
  ASSERT_EQ(warm.size(), 50u);  // context bases get no value
  ASSERT_EQ(whole.size(), 150u);
  EXPECT_EQ(warm.front().beg, 210);
  const auto want_cold = whole_pass(a.substr(210, 50));
  for (size_t i = 0; i < 50; ++i) {
    expect_close(cold[i].logp, want_cold.logp[i], "cold " + std::to_string(i));
    // With 100 bases of context, the values are those of the stream that started 100 bases earlier.
    expect_close(warm[i].logp, whole[100 + i].logp, "warm " + std::to_string(i));
  }
  // The context changes the first values (the prediction of the first base is no longer from BOS).
  EXPECT_GT(std::abs(warm[0].logp - cold[0].logp), 1e-4);
  // A context longer than what lies upstream is clipped at the contig start.
  const auto clipped = score_tsv("-r chrA:211-260 --context 100000");
  const auto from_start = score_tsv("-r chrA:1-260");
  for (size_t i = 0; i < 50; ++i) expect_close(clipped[i].logp, from_start[210 + i].logp, "clipped " + std::to_string(i));
}

TEST(Score, TsvFileHasProvenanceAndColumns) {
  const Fixture& f = fixture();
  const fs::path out = mmtest::scratch("score_tsv") / "x.tsv";
  auto r = run_cli(base_args() + " -r chrA:119-123 --value entropy -o '" + out.string() + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(r.out.empty());
  const auto lines = lines_of(mmtest::read_text(out));
  ASSERT_GE(lines.size(), 4u);
  EXPECT_EQ(lines[0], std::string("# memmamba ") + mm::kVersion);
  EXPECT_EQ(lines[1].rfind("# command: memmamba score", 0), 0u);
  std::vector<std::string> data;
  std::string header;
  for (const auto& l : lines)
    if (l.rfind("#chrom", 0) == 0) header = l;
    else if (l[0] != '#') data.push_back(l);
  EXPECT_EQ(header, "#chrom\tstart\tend\tbase\tentropy");
  ASSERT_EQ(data.size(), 5u);
  EXPECT_EQ(fields(data[0])[0], "chrA");
  EXPECT_EQ(fields(data[0])[1], "118");
  EXPECT_EQ(fields(data[2]), (std::vector<std::string>{"chrA", "120", "121", "N", "."}));
  const auto want = whole_pass(f.seq.at("chrA").substr(118, 5));
  expect_close(std::stod(fields(data[0])[4]), want.entropy[0], "entropy");
}

TEST(Score, BigWigReadsBackTheSameValues) {
  const fs::path dir = mmtest::scratch("score_bw");
  const fs::path out = dir / "x.bw";
  // Given out of order: bigWig output sorts the regions.
  auto r = run_cli(base_args() + " -r chrB:5-20 -r chrA:101-140,chrA:1-10 -o '" + out.string() + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto rows = score_tsv("-r chrA:1-10,chrA:101-140,chrB:5-20");
  std::map<std::pair<std::string, int64_t>, double> want;
  for (const auto& row : rows) want[{row.contig, row.beg}] = row.logp;
  ASSERT_EQ(bwInit(1 << 17), 0);
  bigWigFile_t* bw = bwOpen(out.c_str(), nullptr, "r");
  ASSERT_NE(bw, nullptr);
  ASSERT_EQ(bw->cl->nKeys, 2);
  EXPECT_STREQ(bw->cl->chrom[0], "chrA");
  EXPECT_EQ(bw->cl->len[0], 300u);
  for (const auto& [contig, len] : {std::pair<std::string, uint32_t>{"chrA", 300}, {"chrB", 40}}) {
    bwOverlappingIntervals_t* o = bwGetValues(bw, const_cast<char*>(contig.c_str()), 0, len, 1);
    ASSERT_NE(o, nullptr);
    ASSERT_EQ(o->l, len);
    for (uint32_t p = 0; p < len; ++p) {
      auto it = want.find({contig, p});
      const double w = it == want.end() ? double(NaN) : it->second;
      if (std::isnan(w)) EXPECT_TRUE(std::isnan(o->value[p])) << contig << ":" << p;
      else EXPECT_EQ(o->value[p], float(w)) << contig << ":" << p;
    }
    bwDestroyOverlappingIntervals(o);
  }
  bwClose(bw);
  // Overlapping regions cannot go into one bigWig.
  r = run_cli(base_args() + " -r chrA:1-10,chrA:5-20 -o '" + (dir / "y.bw").string() + "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("overlap"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir / "y.bw"));
}

TEST(Score, RegionsFromBedEqualRegionsFromTheCommandLine) {
  const fs::path dir = mmtest::scratch("score_bed");
  mmtest::write_text(dir / "r.bed", "# regions\nchrA\t2\t7\tfirst\nchrB\t0\t40\n");
  const auto from_bed = score_tsv("-R '" + (dir / "r.bed").string() + "'");
  const auto from_r = score_tsv("-r chrA:3-7 --region=chrB:1-40");
  ASSERT_EQ(from_bed.size(), 45u);
  ASSERT_EQ(from_r.size(), 45u);
  for (size_t i = 0; i < 45; ++i) {
    EXPECT_EQ(from_bed[i].contig, from_r[i].contig);
    EXPECT_EQ(from_bed[i].beg, from_r[i].beg);
    expect_close(from_bed[i].logp, from_r[i].logp, std::to_string(i));
  }
  // A bad BED line is named by file and line.
  mmtest::write_text(dir / "bad.bed", "chrA\t2\t7\nchrZ\t0\t5\n");
  auto r = run_cli(base_args() + " -R '" + (dir / "bad.bed").string() + "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("bad.bed:2:"), std::string::npos) << r.err;
}

TEST(Score, ReadsAStreamedFastaFromStdin) {
  const Fixture& f = fixture();
  auto r = run_cli("score -q -m '" + f.model.string() + "' -O tsv --value both -", f.fasta.string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto rows = tsv(r.out);
  const auto indexed = score_tsv("");
  ASSERT_EQ(rows.size(), indexed.size());
  for (size_t i = 0; i < rows.size(); ++i) expect_close(rows[i].logp, indexed[i].logp, std::to_string(i));
  // Regions need random access.
  r = run_cli("score -q -m '" + f.model.string() + "' -r chrA:1-5 -", f.fasta.string());
  EXPECT_EQ(r.exit_code, 2);
}

TEST(Score, SplitsRegionLists) {
  using mm::pipelines::split_region_list;
  EXPECT_EQ(split_region_list("chr1:1,000-2,000,chr2:5-9"),
            (std::vector<std::string>{"chr1:1,000-2,000", "chr2:5-9"}));
  EXPECT_EQ(split_region_list("20,21"), (std::vector<std::string>{"20", "21"}));
  EXPECT_EQ(split_region_list("20:1-100,21:5-9"), (std::vector<std::string>{"20:1-100", "21:5-9"}));
  EXPECT_EQ(split_region_list("chrA:1,000,000-"), (std::vector<std::string>{"chrA:1,000,000-"}));
  EXPECT_EQ(split_region_list("chrA:5-6,100"), (std::vector<std::string>{"chrA:5-6,100"}));
}

TEST(Score, Errors) {
  const Fixture& f = fixture();
  const std::string m = "score -q -m '" + f.model.string() + "' ";
  auto r = run_cli(m + "'" + (f.dir / "missing.fa").string() + "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("memmamba score: error: " + (f.dir / "missing.fa").string() + ": "), std::string::npos) << r.err;
  r = run_cli(m + "-r chrA:abc '" + f.fasta.string() + "'");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("bad region 'chrA:abc'"), std::string::npos) << r.err;
  r = run_cli(m + "-r chrA:290-310 '" + f.fasta.string() + "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("lies outside contig chrA (length 300)"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(f.fasta.string()), std::string::npos) << r.err;
  r = run_cli(m + "-r chrZ:1-5 '" + f.fasta.string() + "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("contig 'chrZ' is not in the reference"), std::string::npos) << r.err;
  r = run_cli("score -q -m '" + (f.dir / "nope.safetensors").string() + "' '" + f.fasta.string() + "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("nope.safetensors"), std::string::npos) << r.err;
  mmtest::write_text(f.dir / "corrupt.safetensors", std::string("\x10\0\0\0\0\0\0\0{\"a\":", 13));
  r = run_cli("score -q -m '" + (f.dir / "corrupt.safetensors").string() + "' '" + f.fasta.string() + "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("corrupt.safetensors"), std::string::npos) << r.err;
  r = run_cli(m + "--value both '" + f.fasta.string() + "'");
  EXPECT_EQ(r.exit_code, 2);
  r = run_cli(m + "--strand up '" + f.fasta.string() + "'");
  EXPECT_EQ(r.exit_code, 2);
  if (!mm::cuda_stream_model_available()) {  // a CPU-only build, or no GPU: a clear usage error
    r = run_cli(m + "--device cuda '" + f.fasta.string() + "'");
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.err.find("CUDA"), std::string::npos) << r.err;
  }
  r = run_cli(m + "--device tpu '" + f.fasta.string() + "'");
  EXPECT_EQ(r.exit_code, 2);
  r = run_cli(m);
  EXPECT_EQ(r.exit_code, 2);
  r = run_cli(m + "-O bigwig '" + f.fasta.string() + "'");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("stdout"), std::string::npos) << r.err;
}

TEST(Score, ModelFromTheEnvironmentOrAClearUsageError) {
  const Fixture& f = fixture();
  const char* old = std::getenv("MEMMAMBA_MODEL");
  const std::string saved = old ? old : "";
  ::setenv("MEMMAMBA_MODEL", f.model.c_str(), 1);
  auto r = run_cli("score -q -r chrA:3-7 '" + f.fasta.string() + "'");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  const auto with_m = run_cli(base_args() + " -r chrA:3-7").out;
  EXPECT_EQ(r.out.substr(r.out.find('\n')), with_m.substr(with_m.find('\n')));  // all but the track line
  ::unsetenv("MEMMAMBA_MODEL");
  const bool shipped = fs::exists(fs::path(mm::kSourceDir) / "sample_data/models/default.safetensors");
  r = run_cli("score -q -r chrA:3-7 '" + f.fasta.string() + "'");
  if (!shipped) {
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.err.find("give -m/--model"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("MEMMAMBA_MODEL is unset"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("share/memmamba/models/default.safetensors"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("sample_data/models/default.safetensors"), std::string::npos) << r.err;
  } else {
    // The shipped model is the default: five values, from it (its path is in the track line).
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("default.safetensors"), std::string::npos) << r.out.substr(0, 300);
    EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 6) << r.out;
  }
  if (!saved.empty()) ::setenv("MEMMAMBA_MODEL", saved.c_str(), 1);
}

TEST(Score, AFailedRunLeavesNoOutputFile) {
  const Fixture& f = fixture();
  const fs::path dir = mmtest::scratch("score_atomic");
  for (const char* fmt : {"bedgraph", "tsv", "bigwig"}) {
    const fs::path out = dir / (std::string("x.") + fmt);
    // A bad region in the second of two regions.
    auto r = run_cli(base_args() + " -O " + fmt + " -r chrA:1-50 -r chrA:250-400 -o '" + out.string() + "'");
    EXPECT_EQ(r.exit_code, 1) << fmt;
    EXPECT_FALSE(fs::exists(out)) << fmt;
  }
  // A failure in the middle of the run: the second contig of a streamed FASTA holds a bad letter.
  mmtest::write_text(dir / "bad.fa", ">ok\n" + f.seq.at("chrA") + "\n>bad\nACGTAC\nGT!A\n");
  for (const char* fmt : {"bedgraph", "tsv"}) {
    const fs::path out = dir / (std::string("y.") + fmt);
    auto r = run_cli("score -q -m '" + f.model.string() + "' -O " + fmt + " -o '" + out.string() + "' '" +
                     (dir / "bad.fa").string() + "'");
    EXPECT_EQ(r.exit_code, 1) << fmt;
    EXPECT_NE(r.err.find("bad.fa:5:"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(out)) << fmt;
  }
  // Nothing else is left in the folder (no temp files).
  size_t n = 0;
  for (const auto& e : fs::directory_iterator(dir)) n += e.path().filename() == "bad.fa" ? 0 : 1;
  EXPECT_EQ(n, 0u);
}

TEST(Score, WritesIntoAPipeInPlace) {
  // A FIFO (like /dev/null or /dev/stdout) is written in place: the atomic rename would replace it.
  const fs::path dir = mmtest::scratch("score_fifo");
  const fs::path fifo = dir / "pipe.bedgraph";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  std::string got;
  std::thread reader([&] {
    const int fd = ::open(fifo.c_str(), O_RDONLY);
    if (fd < 0) return;
    char buf[4096];
    for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) got.append(buf, size_t(n));
    ::close(fd);
  });
  auto r = run_cli(base_args() + " -r chrA:3-7 -o '" + fifo.string() + "'");
  if (r.exit_code != 0) {  // unblock the reader if the command never opened the pipe
    const int fd = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK);
    if (fd >= 0) ::close(fd);
  }
  reader.join();
  EXPECT_EQ(r.exit_code, 0) << r.err;
  struct stat st{};
  ASSERT_EQ(::stat(fifo.c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));
  EXPECT_EQ(bedgraph(got).size(), 5u) << got;
  r = run_cli(base_args() + " -r chrA:3-7 -O bigwig -o '" + fifo.string() + "'");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(fs::is_fifo(fifo));
}
