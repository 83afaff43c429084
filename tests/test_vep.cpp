// memmamba vep: MM_LLR against independent whole forward passes following the documented rule
// (SNV, MNV, insertion, deletion, multi-allelic, contig edges, N in the window, both strands),
// skips, records and header lines kept in order, VCF.gz/BCF read back with bcftools, stdin, errors.
#include <gtest/gtest.h>
#include <htslib/vcf.h>
#include <stdlib.h>

#include <cstdio>

#include <cmath>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "io/tokenizer.hpp"
#include "memmamba/version.hpp"
#include "model/checkpoint.hpp"
#include "model/stream_model.hpp"
#include "pipelines/score.hpp"
#include "pipelines/vep.hpp"
#include "support/fixtures.hpp"
#include "support/models.hpp"

namespace fs = std::filesystem;
using mmtest::run_cli;

namespace {

// chrA: 300 random bases with an N run at 0-based [150, 155); chrB: 40 bases.
struct Fixture {
  fs::path dir, fasta, model, vcf;
  std::map<std::string, std::string> seq;
  mm::Config cfg = mmtest::small_config();
  std::unique_ptr<mm::MemMamba<float>> net;
};

struct Variant {
  std::string contig;
  int64_t pos0;
  std::string id, ref, alts;  // alts: the VCF ALT column
};

Fixture& fixture() {
  static Fixture f = [] {
    Fixture f;
    f.dir = mmtest::scratch("vep");
    std::mt19937_64 rng(17);
    auto random_bases = [&](size_t n) { return mmtest::random_bases(n, rng); };
    std::string a = random_bases(300);
    for (size_t i = 150; i < 155; ++i) a[i] = 'N';
    f.seq["chrA"] = a;
    f.seq["chrB"] = random_bases(40);
    f.fasta = f.dir / "ref.fa";
    mmtest::write_text(f.fasta, mmtest::fasta_text({{"chrA", f.seq["chrA"]}, {"chrB", f.seq["chrB"]}}));
    f.net = std::make_unique<mm::MemMamba<float>>(mmtest::live_model<float>(f.cfg, 23));
    f.model = mmtest::save_model(f.dir / "model.safetensors", *f.net);
    return f;
  }();
  return f;
}

std::string other(char c) { return c == 'A' ? "C" : c == 'C' ? "G" : c == 'G' ? "T" : "A"; }
std::string ref_at(const std::string& contig, int64_t p, int64_t n) { return fixture().seq[contig].substr(p, n); }

// The test VCF: every kind of record. Returns its records in order.
std::vector<Variant> variants() {
  std::vector<Variant> v;
  auto snv = [&](const std::string& c, int64_t p, const std::string& id) {
    const std::string r = ref_at(c, p, 1);
    v.push_back({c, p, id, r, other(r[0])});
  };
  snv("chrA", 100, "snv");
  {
    const std::string r = ref_at("chrA", 110, 3);
    v.push_back({"chrA", 110, "mnv", r, other(r[0]) + other(r[1]) + other(r[2])});
  }
  v.push_back({"chrA", 120, "ins", ref_at("chrA", 120, 1), ref_at("chrA", 120, 1) + "GGT"});
  v.push_back({"chrA", 130, "del", ref_at("chrA", 130, 4), ref_at("chrA", 130, 1)});
  {
    const std::string r = ref_at("chrA", 140, 1);
    v.push_back({"chrA", 140, "multi", r, other(r[0]) + "," + other(other(r[0])[0]) + "," + r + "TT"});
  }
  v.push_back({"chrA", 147, "nwin", ref_at("chrA", 147, 1), other(ref_at("chrA", 147, 1)[0])});
  v.push_back({"chrA", 160, "sym", ref_at("chrA", 160, 1), "<DEL>"});
  v.push_back({"chrA", 165, "symmix", ref_at("chrA", 165, 1), other(ref_at("chrA", 165, 1)[0]) + ",<DUP>"});
  v.push_back({"chrA", 170, "span", ref_at("chrA", 170, 1), "*"});
  v.push_back({"chrA", 180, "miss", ref_at("chrA", 180, 1), "."});
  v.push_back({"chrA", 190, "mismatch", other(ref_at("chrA", 190, 1)[0]), ref_at("chrA", 190, 1)});
  v.push_back({"chrA", 200, "altn", ref_at("chrA", 200, 1), "N"});
  v.push_back({"chrZ", 10, "unknown", "A", "C"});
  {
    const std::string r = ref_at("chrA", 210, 2);
    v.push_back({"chrA", 210, "complex", r, other(r[0]) + "TTA"});
  }
  v.push_back({"chrA", 220, "bnd", ref_at("chrA", 220, 1), ref_at("chrA", 220, 1) + "[chrB:5["});
  snv("chrA", 0, "first");
  snv("chrA", 299, "last");
  v.push_back({"chrB", 38, "lastdel", ref_at("chrB", 38, 2), ref_at("chrB", 38, 1)});
  snv("chrB", 0, "firstB");
  return v;
}

std::string vcf_text(const std::vector<Variant>& vs) {
  std::string t =
      "##fileformat=VCFv4.2\n"
      "##source=test_vep\n"
      "##contig=<ID=chrA,length=300>\n"
      "##contig=<ID=chrB,length=40>\n"
      "##contig=<ID=chrZ,length=100>\n"
      "##INFO=<ID=DP,Number=1,Type=Integer,Description=\"Depth\">\n"
      "##ALT=<ID=DEL,Description=\"Deletion\">\n"
      "##ALT=<ID=DUP,Description=\"Duplication\">\n"
      "##comment=kept as is\n"
      "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n";
  int dp = 1;
  for (const auto& v : vs)
    t += v.contig + "\t" + std::to_string(v.pos0 + 1) + "\t" + v.id + "\t" + v.ref + "\t" + v.alts +
         "\t50\tPASS\tDP=" + std::to_string(dp++) + "\n";
  return t;
}

fs::path input_vcf() {
  static fs::path p = [] {
    fs::path p = fixture().dir / "in.vcf";
    mmtest::write_text(p, vcf_text(variants()));
    return p;
  }();
  return p;
}

// Σ ln p over letters[from..] of one whole forward pass over BOS + letters (double, A/C/G/T only).
double logp_from(const std::string& letters, size_t from) {
  mm::MemMamba<float>& m = *fixture().net;
  std::vector<int32_t> tk = {mm::io::tok::BOS};
  for (uint8_t t : mm::io::encode(letters)) tk.push_back(t);
  const int64_t T = static_cast<int64_t>(tk.size());
  const int V = m.config().vocab;
  std::vector<float> logits(static_cast<size_t>(T * V));
  m.forward(tk.data(), 1, T, logits.data());
  double sum = 0;
  for (size_t i = from; i < letters.size(); ++i) {
    const int32_t t = tk[i + 1];
    if (t < 1 || t > 4) continue;
    const float* row = logits.data() + i * V;
    double z = 0;
    for (int k = 1; k <= 4; ++k) z += std::exp(double(row[k]));
    sum += double(row[t]) - std::log(z);
  }
  return sum;
}

std::string revcomp(const std::string& s) {
  std::string r(s.rbegin(), s.rend());
  for (char& c : r) c = c == 'A' ? 'T' : c == 'T' ? 'A' : c == 'C' ? 'G' : c == 'G' ? 'C' : c;
  return r;
}

// The documented rule, computed independently.
double expected_llr(const std::string& contig, int64_t p, const std::string& ref, const std::string& alt,
                    int64_t U, int64_t W, bool both = false) {
  const std::string& s = fixture().seq[contig];
  const int64_t L = static_cast<int64_t>(s.size()), lr = static_cast<int64_t>(ref.size());
  const int64_t b = std::max<int64_t>(0, p - U), e = std::min<int64_t>(L, p + lr + W);
  const std::string up = s.substr(b, p - b), down = s.substr(p + lr, e - p - lr);
  const std::string rs = up + ref + down, as = up + alt + down;
  const double fwd = logp_from(as, up.size()) - logp_from(rs, up.size());
  if (!both) return fwd;
  const double rev = logp_from(revcomp(as), down.size()) - logp_from(revcomp(rs), down.size());
  return 0.5 * (fwd + rev);
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  std::istringstream in(s);
  while (std::getline(in, cur, sep)) out.push_back(cur);
  if (!s.empty() && s.back() == sep) out.push_back("");
  return out;
}

struct OutRecord {
  std::vector<std::string> cols;
  std::map<std::string, std::string> info;
};

std::vector<OutRecord> body(const std::string& vcf) {
  std::vector<OutRecord> out;
  for (const auto& line : split(vcf, '\n')) {
    if (line.empty() || line[0] == '#') continue;
    OutRecord r;
    r.cols = split(line, '\t');
    for (const auto& kv : split(r.cols.at(7), ';')) {
      const auto eq = kv.find('=');
      r.info[kv.substr(0, eq)] = eq == std::string::npos ? "" : kv.substr(eq + 1);
    }
    out.push_back(std::move(r));
  }
  return out;
}

std::vector<std::string> header_lines(const std::string& vcf) {
  std::vector<std::string> out;
  for (const auto& line : split(vcf, '\n'))
    if (!line.empty() && line[0] == '#') out.push_back(line);
  return out;
}

std::string base_args(const std::string& extra = "") {
  const Fixture& f = fixture();
  // --device cpu: the values are checked against float32 CPU passes, also on a machine with a GPU.
  return "vep -q --device cpu -m '" + f.model.string() + "' -f '" + f.fasta.string() + "' " + extra + " ";
}

void expect_llr(const std::string& got, double want, const std::string& what) {
  ASSERT_FALSE(got.empty()) << what;
  ASSERT_NE(got, ".") << what;
  const double g = std::stod(got);
  EXPECT_NEAR(g, want, 1e-4 + 2e-5 * std::fabs(want)) << what;
}

std::string shell_out(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  pclose(p);
  return out;
}

// Body lines with the MM_ INFO fields removed (bcftools view -H).
std::string without_mm(const std::string& bcftools_body) {
  std::string out;
  for (const auto& line : split(bcftools_body, '\n')) {
    if (line.empty()) continue;
    auto cols = split(line, '\t');
    std::string info;
    for (const auto& kv : split(cols.at(7), ';'))
      if (kv.rfind("MM_", 0) != 0) info += (info.empty() ? "" : ";") + kv;
    cols[7] = info.empty() ? "." : info;
    std::string l;
    for (size_t i = 0; i < cols.size(); ++i) l += (i ? "\t" : "") + cols[i];
    out += l + "\n";
  }
  return out;
}

}  // namespace

TEST(Vep, ScoreWindowMatchesIndependentPasses) {
  auto& f = fixture();
  const std::string& s = f.seq["chrA"];
  mm::pipelines::LocalWindow w{s.substr(40, 60), s.substr(100, 1), {other(s[100]), other(other(s[100])[0])}, s.substr(101, 30)};
  const auto v = mm::pipelines::score_window(*f.net, w, mm::pipelines::VepStrand::fwd, 7);  // small pieces
  ASSERT_EQ(v.size(), 2u);
  EXPECT_NEAR(v[0], expected_llr("chrA", 100, w.ref, w.alts[0], 60, 30), 1e-4);
  EXPECT_NEAR(v[1], expected_llr("chrA", 100, w.ref, w.alts[1], 60, 30), 1e-4);
  const auto b = mm::pipelines::score_window(*f.net, w, mm::pipelines::VepStrand::both);
  EXPECT_NEAR(b[0], expected_llr("chrA", 100, w.ref, w.alts[0], 60, 30, true), 1e-4);
}

TEST(Vep, ValuesFollowTheDocumentedRule) {
  for (const auto& [U, W] : std::vector<std::pair<int64_t, int64_t>>{{50, 20}, {1024, 128}}) {
    const std::string ctx = "--upstream " + std::to_string(U) + " --downstream " + std::to_string(W);
    auto r = run_cli(base_args(ctx) + "'" + input_vcf().string() + "'");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto recs = body(r.out);
    const auto vs = variants();
    ASSERT_EQ(recs.size(), vs.size());
    for (size_t i = 0; i < vs.size(); ++i) {
      const auto& v = vs[i];
      const auto& info = recs[i].info;
      const std::string what = v.id + " " + ctx;
      ASSERT_EQ(recs[i].cols[2], v.id);
      if (v.id == "snv" || v.id == "mnv" || v.id == "ins" || v.id == "del" || v.id == "nwin" ||
          v.id == "first" || v.id == "last" || v.id == "lastdel" || v.id == "firstB" || v.id == "complex") {
        expect_llr(info.count("MM_LLR") ? info.at("MM_LLR") : "", expected_llr(v.contig, v.pos0, v.ref, v.alts, U, W), what);
        EXPECT_EQ(info.count("MM_SKIP"), 0u) << what;
      } else if (v.id == "multi") {
        const auto alts = split(v.alts, ',');
        const auto got = split(info.at("MM_LLR"), ',');
        ASSERT_EQ(got.size(), 3u) << what;
        for (size_t k = 0; k < 3; ++k) expect_llr(got[k], expected_llr(v.contig, v.pos0, v.ref, alts[k], U, W), what);
        EXPECT_EQ(info.count("MM_SKIP"), 0u);
      } else if (v.id == "symmix") {
        const auto got = split(info.at("MM_LLR"), ',');
        ASSERT_EQ(got.size(), 2u) << what;
        expect_llr(got[0], expected_llr(v.contig, v.pos0, v.ref, split(v.alts, ',')[0], U, W), what);
        EXPECT_EQ(got[1], ".");
        EXPECT_EQ(info.at("MM_SKIP"), ".,symbolic");
      } else {
        const std::map<std::string, std::string> reason = {
            {"sym", "symbolic"}, {"span", "spanning_deletion"}, {"miss", "missing_alt"},
            {"mismatch", "ref_mismatch"}, {"altn", "n_context"}, {"unknown", "contig_missing"}, {"bnd", "breakend"}};
        EXPECT_EQ(info.count("MM_LLR"), 0u) << what;
        ASSERT_EQ(info.count("MM_SKIP"), 1u) << what;
        EXPECT_EQ(info.at("MM_SKIP"), reason.at(v.id)) << what;
      }
    }
  }
}

TEST(Vep, BothStrands) {
  auto r = run_cli(base_args("--upstream 40 --downstream 15 --strand both") + "'" + input_vcf().string() + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto recs = body(r.out);
  const auto vs = variants();
  for (size_t i = 0; i < vs.size(); ++i)
    if (vs[i].id == "snv" || vs[i].id == "ins" || vs[i].id == "del" || vs[i].id == "first" || vs[i].id == "last")
      expect_llr(recs[i].info.at("MM_LLR"), expected_llr(vs[i].contig, vs[i].pos0, vs[i].ref, vs[i].alts, 40, 15, true), vs[i].id);
}

TEST(Vep, KeepsRecordsAndHeaderLinesInOrder) {
  const fs::path out = fixture().dir / "kept.vcf";
  auto r = run_cli(base_args("--upstream 30 --downstream 10 -@ 2") + "-o '" + out.string() + "' '" + input_vcf().string() + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string in_body = shell_out("bcftools view -H '" + input_vcf().string() + "'");
  const std::string out_body = shell_out("bcftools view -H '" + out.string() + "'");
  ASSERT_FALSE(in_body.empty());
  EXPECT_EQ(without_mm(out_body), without_mm(in_body));
  // Header: the input's lines first, in order, then ours; #CHROM last.
  const auto hin = header_lines(mmtest::read_text(input_vcf()));
  auto hout = header_lines(mmtest::read_text(out));
  // htslib declares FILTER PASS in every header it writes (as bcftools does); the input had none.
  const std::string pass = "##FILTER=<ID=PASS,Description=\"All filters passed\">";
  ASSERT_EQ(hout.at(1), pass);
  hout.erase(hout.begin() + 1);
  ASSERT_EQ(hout.size(), hin.size() + 3);
  for (size_t i = 0; i + 1 < hin.size(); ++i) EXPECT_EQ(hout[i], hin[i]);
  EXPECT_EQ(hout[hin.size() - 1].rfind("##memmamba=version=", 0), 0u) << hout[hin.size() - 1];
  EXPECT_NE(hout[hin.size() - 1].find("command=memmamba vep"), std::string::npos);
  EXPECT_EQ(hout[hin.size()].rfind("##INFO=<ID=MM_LLR,Number=A,Type=Float,", 0), 0u);
  EXPECT_EQ(hout[hin.size() + 1].rfind("##INFO=<ID=MM_SKIP,Number=.,Type=String,", 0), 0u);
  EXPECT_EQ(hout.back(), hin.back());
  // Deterministic whatever the threads and batch.
  auto r1 = run_cli(base_args("--upstream 30 --downstream 10 -@ 1 --batch 1") + "'" + input_vcf().string() + "'");
  ASSERT_EQ(r1.exit_code, 0);
  EXPECT_EQ(body(r1.out).size(), body(mmtest::read_text(out)).size());
  std::string a, b;
  for (const auto& x : body(r1.out)) a += x.cols[7] + "\n";
  for (const auto& x : body(mmtest::read_text(out))) b += x.cols[7] + "\n";
  EXPECT_EQ(a, b);
}

TEST(Vep, CompressedAndBcfOutputReadBack) {
  const auto ref = run_cli(base_args("--upstream 30 --downstream 10") + "'" + input_vcf().string() + "'");
  ASSERT_EQ(ref.exit_code, 0) << ref.err;
  const fs::path tmp = fixture().dir / "plain.vcf";
  mmtest::write_text(tmp, ref.out);
  const std::string want = shell_out("bcftools view -H '" + tmp.string() + "'");
  for (const auto& [name, flag] : std::vector<std::pair<std::string, std::string>>{
           {"out.vcf.gz", ""}, {"out.bcf", ""}, {"out_z", "-O z"}, {"out_b", "-O b"}}) {
    const fs::path out = fixture().dir / name;
    auto r = run_cli(base_args("--upstream 30 --downstream 10 " + flag) + "-o '" + out.string() + "' '" + input_vcf().string() + "'");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(shell_out("bcftools view -H '" + out.string() + "' 2>&1"), want) << name;
    EXPECT_NE(shell_out("bcftools view -h '" + out.string() + "'").find("##memmamba="), std::string::npos);
  }
}

TEST(Vep, ReadsStdin) {
  const auto a = run_cli(base_args("--upstream 30 --downstream 10") + "'" + input_vcf().string() + "'");
  const auto b = run_cli(base_args("--upstream 30 --downstream 10") + "-", input_vcf().string());
  ASSERT_EQ(b.exit_code, 0) << b.err;
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_EQ(body(a.out).size(), variants().size());
  std::string x, y;
  for (const auto& r : body(a.out)) x += r.cols[7] + "\n";
  for (const auto& r : body(b.out)) y += r.cols[7] + "\n";
  EXPECT_EQ(x, y);
}

TEST(Vep, StrictMakesRefMismatchAnError) {
  const fs::path out = fixture().dir / "strict.vcf";
  auto r = run_cli(base_args("--strict") + "-o '" + out.string() + "' '" + input_vcf().string() + "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find(input_vcf().string() + ":"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("does not match"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out));
}

TEST(Vep, Errors) {
  const Fixture& f = fixture();
  // Missing VCF.
  auto r = run_cli(base_args() + "'" + (f.dir / "missing.vcf").string() + "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("memmamba vep: error: " + (f.dir / "missing.vcf").string()), std::string::npos) << r.err;
  // A garbage line names the line; no output file is left.
  const fs::path bad = f.dir / "bad.vcf", out = f.dir / "bad_out.vcf";
  std::string text = vcf_text(variants());
  text += "chrA\tnot_a_number\tx\tA\tC\t.\t.\t.\n";
  mmtest::write_text(bad, text);
  const int line = static_cast<int>(std::count(text.begin(), text.end(), '\n'));
  r = run_cli(base_args() + "-o '" + out.string() + "' '" + bad.string() + "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find(bad.string() + ":" + std::to_string(line) + ":"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out));
  // Missing FASTA.
  r = run_cli("vep -q -m '" + f.model.string() + "' -f '" + (f.dir / "missing.fa").string() + "' '" + input_vcf().string() + "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find((f.dir / "missing.fa").string()), std::string::npos) << r.err;
  // No -m and no MEMMAMBA_MODEL: the shipped model when the checkout has one (the ##memmamba
  // line names it), else a usage error.
  unsetenv("MEMMAMBA_MODEL");
  r = run_cli("vep -q -f '" + f.fasta.string() + "' --upstream 20 --downstream 5 '" + input_vcf().string() + "'");
  if (fs::exists(fs::path(mm::kSourceDir) / "sample_data/models/default.safetensors")) {
    EXPECT_EQ(r.exit_code, 0) << r.err;
    const auto prov = r.out.find("##memmamba=");
    ASSERT_NE(prov, std::string::npos);
    const std::string line = r.out.substr(prov, r.out.find('\n', prov) - prov);
    EXPECT_NE(line.find("models/default.safetensors"), std::string::npos) << line;
    EXPECT_EQ(body(r.out).size(), variants().size());
  } else {
    EXPECT_EQ(r.exit_code, 2) << r.err;
  }
  // Bad usage.
  EXPECT_EQ(run_cli(base_args()).exit_code, 2);
  EXPECT_EQ(run_cli(base_args("--upstream 2000000") + "'" + input_vcf().string() + "'").exit_code, 2);
  EXPECT_EQ(run_cli(base_args("-O x") + "'" + input_vcf().string() + "'").exit_code, 2);
  EXPECT_EQ(run_cli("vep -q -m '" + f.model.string() + "' '" + input_vcf().string() + "'").exit_code, 2);
}

// ---------------------------------------------------------------------------------------------
// The stream computation (--upstream all): one pass per contig, forked at each variant.

namespace {

// A sorted VCF with every kind of record, variants at the contig edges and close together
// (same position, adjacent, inside another's REF, across a memory-chunk boundary), N in the
// window, and skipped records between scored ones.
std::vector<Variant> sorted_variants() {
  std::vector<Variant> v;
  auto add = [&](const std::string& c, int64_t p, const std::string& id, int64_t lr, const std::string& alts) {
    v.push_back({c, p, id, ref_at(c, p, lr), alts});
  };
  auto snv = [&](const std::string& c, int64_t p, const std::string& id) { add(c, p, id, 1, other(ref_at(c, p, 1)[0])); };
  snv("chrA", 0, "s0");
  add("chrA", 0, "i0", 1, ref_at("chrA", 0, 1) + "AC");
  add("chrA", 1, "d1", 3, ref_at("chrA", 1, 1));
  snv("chrA", 2, "s2");  // inside d1's REF
  add("chrA", 17, "m17", 2, other(ref_at("chrA", 17, 1)[0]) + other(ref_at("chrA", 18, 1)[0]));
  {
    const std::string r = ref_at("chrA", 40, 3);
    add("chrA", 40, "multi40", 3,
        r.substr(0, 1) + "," + other(r[0]) + r.substr(1) + "," + r + "G," + r.substr(0, 1) + "T");
  }
  snv("chrA", 41, "c41");
  snv("chrA", 42, "c42");
  snv("chrA", 63, "s63");  // the last position of a memory chunk (C = 8)
  snv("chrA", 64, "s64");  // the first of the next
  add("chrA", 100, "cx", 2, other(ref_at("chrA", 100, 1)[0]) + "TTA");
  snv("chrA", 148, "nwin");                        // N run [150, 155) in the downstream window
  v.push_back({"chrA", 152, "nref", "N", "A"});    // REF N: skipped, no fork
  v.push_back({"chrA", 160, "mm", other(ref_at("chrA", 160, 1)[0]), "A"});  // REF mismatch: skipped
  add("chrA", 170, "sym", 1, "<DEL>");
  add("chrA", 200, "bigdel", 10, ref_at("chrA", 200, 1));
  add("chrA", 230, "mixed", 1, other(ref_at("chrA", 230, 1)[0]) + ",*");
  snv("chrA", 290, "s290");
  add("chrA", 295, "enddel", 5, ref_at("chrA", 295, 1));  // deletes to the contig end
  snv("chrA", 299, "last");
  add("chrA", 299, "lastins", 1, ref_at("chrA", 299, 1) + "GA");
  v.push_back({"chrZ", 10, "unknown", "A", "C"});
  snv("chrB", 0, "b0");
  add("chrB", 20, "bdel", 2, ref_at("chrB", 20, 1));
  snv("chrB", 39, "blast");
  return v;
}

fs::path sorted_vcf() {
  static fs::path p = [] {
    fs::path p = fixture().dir / "sorted.vcf";
    mmtest::write_text(p, vcf_text(sorted_variants()));
    return p;
  }();
  return p;
}

struct Values {
  std::vector<std::vector<float>> llr;  // per record, per ALT (NaN: missing); empty: no MM_LLR
  std::vector<std::string> skip;        // per record: MM_SKIP or ""
};

// MM_LLR as stored (float32) and MM_SKIP of every record of a VCF/BCF, read with htslib.
Values read_values(const fs::path& path) {
  Values out;
  htsFile* fp = hts_open(path.c_str(), "r");
  if (!fp) throw std::runtime_error("cannot open " + path.string());
  bcf_hdr_t* hdr = bcf_hdr_read(fp);
  bcf1_t* rec = bcf_init();
  float* f = nullptr;
  int nf = 0;
  char* str = nullptr;
  int ns = 0;
  while (bcf_read(fp, hdr, rec) == 0) {
    bcf_unpack(rec, BCF_UN_INFO);
    std::vector<float> v;
    const int n = bcf_get_info_float(hdr, rec, "MM_LLR", &f, &nf);
    for (int i = 0; i < n; ++i) v.push_back(bcf_float_is_missing(f[i]) ? NAN : f[i]);
    out.llr.push_back(v);
    out.skip.push_back(bcf_get_info_string(hdr, rec, "MM_SKIP", &str, &ns) > 0 ? std::string(str) : "");
  }
  free(f);
  free(str);
  bcf_destroy(rec);
  bcf_hdr_destroy(hdr);
  hts_close(fp);
  return out;
}

// Runs the CLI to a BCF and reads it back.
Values run_values(const std::string& args, const std::string& name, const fs::path& vcf = sorted_vcf()) {
  const fs::path out = fixture().dir / (name + ".bcf");
  auto r = run_cli(base_args(args) + "-o '" + out.string() + "' '" + vcf.string() + "'");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return read_values(out);
}

// Largest |a − b| over the values of two runs; fails when the records or skips differ.
double max_difference(const Values& a, const Values& b, const std::string& what) {
  double worst = 0;
  EXPECT_EQ(a.llr.size(), b.llr.size()) << what;
  EXPECT_EQ(a.skip, b.skip) << what;
  for (size_t i = 0; i < std::min(a.llr.size(), b.llr.size()); ++i) {
    EXPECT_EQ(a.llr[i].size(), b.llr[i].size()) << what << " record " << i;
    for (size_t k = 0; k < std::min(a.llr[i].size(), b.llr[i].size()); ++k) {
      EXPECT_EQ(std::isnan(a.llr[i][k]), std::isnan(b.llr[i][k])) << what << " record " << i;
      if (!std::isnan(a.llr[i][k])) worst = std::max(worst, std::fabs(double(a.llr[i][k]) - double(b.llr[i][k])));
    }
  }
  return worst;
}

}  // namespace

TEST(VepStream, ForkContinuesLikeTheStreamItCopies) {
  auto& f = fixture();
  const auto tk = mmtest::random_tokens(150, 5);  // BOS + bases; 150 = 18 chunks of 8 + 6
  const int V = f.cfg.vocab;
  // One whole pass.
  std::vector<float> whole(tk.size() * V);
  f.net->forward(tk.data(), 1, static_cast<int64_t>(tk.size()), whole.data());
  for (const int64_t cut : {1, 61, 67, 140}) {  // the fork points (mid-chunk and at a boundary)
    mm::CpuStreamModel a(*f.net);
    std::vector<float> logits(tk.size() * V);
    a.forward(tk.data(), cut, logits.data());
    const auto b = a.fork();
    EXPECT_EQ(b->position(), cut);
    if (cut > 60) {  // the copy is not trivial: notes in the pools, candidates of the open chunk
      const auto& st = dynamic_cast<const mm::CpuStreamModel&>(*b).state();
      EXPECT_GT(st.layers[0].pool[0].used(), 0) << cut;
      if (cut % f.cfg.memory_chunk) {
        EXPECT_GT(st.layers[0].cand[0].count(), 0) << cut;
      }
    }
    // The original goes on with other tokens first: the fork must not share its state.
    std::vector<int32_t> noise(20, mm::io::tok::G);
    std::vector<float> scratch(noise.size() * V);
    a.forward(noise.data(), static_cast<int64_t>(noise.size()), scratch.data());
    const int64_t rest = static_cast<int64_t>(tk.size()) - cut;
    std::vector<float> tail(static_cast<size_t>(rest * V));
    b->forward(tk.data() + cut, rest, tail.data());
    double worst = 0;
    for (size_t i = 0; i < tail.size(); ++i) worst = std::max(worst, std::fabs(double(tail[i]) - whole[cut * V + i]));
    EXPECT_LT(worst, 1e-4) << "fork at " << cut;
  }
}

TEST(VepStream, EqualsTheWindowedComputation) {
  // --upstream all streams each contig once (auto mode); --mode window runs one stream per
  // record from the contig start; --upstream 1000000 is the plain windowed computation with a
  // context longer than the contigs. All three are the same values within float rounding, and
  // the documented rule computed from independent whole passes.
  const auto vs = sorted_variants();
  for (const int64_t W : {0, 7, 50, 400}) {
    const std::string w = " --downstream " + std::to_string(W);
    const Values stream = run_values("--upstream all" + w, "stream" + std::to_string(W));
    const Values window_all = run_values("--upstream all --mode window" + w, "window_all" + std::to_string(W));
    const Values window = run_values("--upstream 1000000" + w, "window" + std::to_string(W));
    const double d1 = max_difference(stream, window_all, "W=" + std::to_string(W));
    const double d2 = max_difference(stream, window, "W=" + std::to_string(W));
    EXPECT_LT(d1, 1e-4) << "W=" << W;
    EXPECT_LT(d2, 1e-4) << "W=" << W;
    std::printf("W=%lld: stream vs window from the contig start %.3g, vs --upstream 1000000 %.3g (max |diff|)\n",
                static_cast<long long>(W), d1, d2);
    ASSERT_EQ(stream.llr.size(), vs.size());
    int scored = 0;
    for (size_t i = 0; i < vs.size(); ++i) {
      const auto alts = split(vs[i].alts, ',');
      for (size_t k = 0; k < stream.llr[i].size(); ++k) {
        if (std::isnan(stream.llr[i][k])) continue;
        const double want = expected_llr(vs[i].contig, vs[i].pos0, vs[i].ref, alts[k], 1000000, W);
        EXPECT_NEAR(stream.llr[i][k], want, 1e-4 + 1e-6 * std::fabs(want)) << vs[i].id << " ALT " << k << " W=" << W;
        ++scored;
      }
    }
    EXPECT_EQ(scored, 24);  // every scored ALT checked
    // The skips are those of the window path.
    const std::map<std::string, std::string> skip = {{"nref", "n_context"}, {"mm", "ref_mismatch"}, {"sym", "symbolic"},
                                                     {"mixed", ".,spanning_deletion"}, {"unknown", "contig_missing"}};
    for (size_t i = 0; i < vs.size(); ++i)
      EXPECT_EQ(stream.skip[i], skip.count(vs[i].id) ? skip.at(vs[i].id) : "") << vs[i].id;
  }
}

TEST(VepStream, LibraryRunCostsTheContigPlusTheForks) {
  // Through the library with tiny pieces (the contig's pass and every fork split in many forward
  // calls): the same values, and the tokens through the model are BOS + the contig up to its
  // last variant, plus each scored allele and its downstream window, nothing else.
  auto& f = fixture();
  const Values want = run_values("--upstream all --downstream 9", "lib_want");
  mm::pipelines::VepOptions o;
  o.fasta = f.fasta.string();
  o.input = sorted_vcf().string();
  o.output = (f.dir / "lib.bcf").string();
  o.upstream = mm::pipelines::kUpstreamAll;
  o.downstream = 9;
  o.mode = mm::pipelines::VepMode::stream;
  o.piece = 3;
  o.batch = 5;
  const auto st = mm::pipelines::vep(*f.net, o, mm::Reporter{});
  EXPECT_LT(max_difference(read_values(f.dir / "lib.bcf"), want, "piece 3"), 1e-4);
  EXPECT_EQ(st.contigs_streamed, 2);
  int64_t fed = 0;
  std::map<std::string, int64_t> last_pos;
  const Values got = read_values(f.dir / "lib.bcf");
  const auto vs = sorted_variants();
  for (size_t i = 0; i < vs.size(); ++i) {
    if (got.llr[i].empty()) continue;  // not scored: no fork
    const auto& v = vs[i];
    const int64_t L = static_cast<int64_t>(f.seq[v.contig].size()), lr = static_cast<int64_t>(v.ref.size());
    const int64_t down = std::min<int64_t>(L, v.pos0 + lr + 9) - v.pos0 - lr;
    last_pos[v.contig] = v.pos0;
    const auto alts = split(v.alts, ',');
    fed += lr + down;  // the REF continuation
    for (size_t k = 0; k < alts.size(); ++k)
      if (!std::isnan(got.llr[i][k])) fed += static_cast<int64_t>(alts[k].size()) + down;
  }
  for (const auto& [contig, p] : last_pos) fed += 1 + p;  // BOS + ref[0, last variant)
  EXPECT_EQ(st.fed, fed);
  EXPECT_EQ(st.alts_scored, 24);
}

TEST(VepStream, DeterministicWhateverTheThreadsAndBatch) {
  const fs::path a = fixture().dir / "det_a.vcf", b = fixture().dir / "det_b.vcf";
  auto ra = run_cli(base_args("--upstream all --downstream 12 -@ 1 --batch 1") + "-o '" + a.string() + "' '" + sorted_vcf().string() + "'");
  auto rb = run_cli(base_args("--upstream all --downstream 12 -@ 2 --batch 64") + "-o '" + b.string() + "' '" + sorted_vcf().string() + "'");
  ASSERT_EQ(ra.exit_code, 0) << ra.err;
  ASSERT_EQ(rb.exit_code, 0) << rb.err;
  EXPECT_EQ(shell_out("bcftools view -H '" + a.string() + "'"), shell_out("bcftools view -H '" + b.string() + "'"));
}

TEST(VepStream, UnsortedInputIsRefusedAndWindowModeTakesIt) {
  const Fixture& f = fixture();
  const fs::path out = f.dir / "unsorted_out.vcf";
  // The first test VCF is not sorted (chrA 220 then chrA 0).
  auto r = run_cli(base_args("--upstream all") + "-o '" + out.string() + "' '" + input_vcf().string() + "'");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("not sorted: chrA:1 comes after chrA:211"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(input_vcf().string() + ":"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("bcftools sort"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out));
  // A contig that comes back after another one.
  auto vs = sorted_variants();
  vs.push_back({"chrA", 299, "again", ref_at("chrA", 299, 1), other(ref_at("chrA", 299, 1)[0])});
  const fs::path back = f.dir / "contig_back.vcf";
  mmtest::write_text(back, vcf_text(vs));
  r = run_cli(base_args("--upstream all") + "-o '" + out.string() + "' '" + back.string() + "'");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("chrA:300 comes after records of other contigs"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out));
  // --mode window scores the unsorted file, with the values of the stream on the sorted one.
  const Values unsorted = run_values("--upstream all --mode window --downstream 11", "unsorted_window", back);
  const Values sorted = run_values("--upstream all --downstream 11", "sorted_stream");
  ASSERT_EQ(unsorted.llr.size(), sorted.llr.size() + 1);
  ASSERT_EQ(unsorted.llr.back().size(), 1u);
  size_t last = 0;  // "again" is "last" once more
  while (vs[last].id != "last") ++last;
  ASSERT_EQ(sorted.llr.at(last).size(), 1u);
  EXPECT_NEAR(unsorted.llr.back()[0], sorted.llr[last][0], 1e-4);
  Values head = unsorted;
  head.llr.pop_back();
  head.skip.pop_back();
  EXPECT_LT(max_difference(head, sorted, "window on the unsorted file"), 1e-4);
}

TEST(VepStream, UsageAndBothStrands) {
  const std::string in = "'" + sorted_vcf().string() + "'";
  EXPECT_EQ(run_cli(base_args("--mode stream") + in).exit_code, 2);                      // needs --upstream all
  EXPECT_EQ(run_cli(base_args("--mode stream --upstream 500") + in).exit_code, 2);
  EXPECT_EQ(run_cli(base_args("--upstream all --strand both") + in).exit_code, 2);       // stream is forward only
  EXPECT_EQ(run_cli(base_args("--upstream all --mode stream --strand both") + in).exit_code, 2);
  EXPECT_EQ(run_cli(base_args("--mode fast") + in).exit_code, 2);
  EXPECT_EQ(run_cli(base_args("--upstream some") + in).exit_code, 2);
  // --mode stream, said explicitly, is the auto choice; the header records U=all.
  const fs::path a = fixture().dir / "explicit.bcf";
  auto r = run_cli(base_args("--upstream all --mode stream --downstream 5") + "-o '" + a.string() + "' " + in);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(shell_out("bcftools view -h '" + a.string() + "'").find("(U=all,W=5,strand=fwd)"), std::string::npos);
  EXPECT_EQ(max_difference(read_values(a), run_values("--upstream all --downstream 5", "auto5"), "explicit"), 0.0);
  // Both strands over the whole prefix run as windows.
  const Values both = run_values("--upstream all --mode window --strand both --downstream 6", "both_all");
  const auto vs = sorted_variants();
  for (size_t i = 0; i < vs.size(); ++i)
    if (vs[i].id == "s0" || vs[i].id == "d1" || vs[i].id == "cx" || vs[i].id == "last" || vs[i].id == "bdel") {
      EXPECT_NEAR(both.llr[i][0], expected_llr(vs[i].contig, vs[i].pos0, vs[i].ref, vs[i].alts, 1000000, 6, true), 1e-4)
          << vs[i].id;
    }
}

TEST(VepStream, CudaForkContinuesLikeTheStream) {
  if (!mm::cuda_stream_model_available()) GTEST_SKIP() << "no CUDA backend or no GPU";
  auto& f = fixture();
  const auto g = mm::make_cuda_stream_model(f.cfg, f.net->params());
  // The tokens and the fork point of the CPU test, where the pools hold notes and the open chunk
  // has candidates.
  const auto tk = mmtest::random_tokens(150, 5);
  const int64_t cut = 67, rest = static_cast<int64_t>(tk.size()) - cut;
  const int V = f.cfg.vocab;
  std::vector<float> head(static_cast<size_t>(cut * V)), want(static_cast<size_t>(rest * V)),
      got(static_cast<size_t>(rest * V));
  // The stream itself, fed the same two pieces: what the fork must give.
  g->forward(tk.data(), cut, head.data());
  g->forward(tk.data() + cut, rest, want.data());
  g->reset();
  g->forward(tk.data(), cut, head.data());
  const auto b = g->fork();
  EXPECT_EQ(b->position(), cut);
  EXPECT_FALSE(b->concurrent());
  // The original goes on with other tokens first: the fork must not share its state.
  std::vector<int32_t> noise(20, mm::io::tok::G);
  std::vector<float> scratch(noise.size() * V);
  g->forward(noise.data(), static_cast<int64_t>(noise.size()), scratch.data());
  b->forward(tk.data() + cut, rest, got.data());
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::fabs(double(got[i]) - want[i]));
  EXPECT_LE(worst, 1e-6) << "the same kernels on the same inputs";
  // And against the CPU model's whole pass, within the bf16 tolerance.
  std::vector<float> cpu(tk.size() * V);
  f.net->forward(tk.data(), 1, static_cast<int64_t>(tk.size()), cpu.data());
  double dev = 0, scale = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    dev = std::max(dev, std::fabs(double(got[i]) - cpu[cut * V + i]));
    scale = std::max(scale, std::fabs(double(cpu[cut * V + i])));
  }
  EXPECT_LT(dev, 2e-2 * std::max(1.0, scale));
  std::printf("CUDA fork: max |diff| %.3g against the stream, %.3g against the CPU (logits up to %.3g)\n", worst, dev, scale);
}
