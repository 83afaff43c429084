// VcfReader / VcfWriter: every ALT kind of a hand-written VCF, the real ExAC slice of
// vcfanno-examples, REF checks against GRCh37 chr20 (vt-examples), bad input, and outputs read
// back with bcftools.
#include <gtest/gtest.h>
#include <htslib/faidx.h>

#include <cmath>
#include <cstdio>
#include <fcntl.h>
#include <map>
#include <unistd.h>

#include "io/error.hpp"
#include "io/vcf.hpp"
#include "support/fixtures.hpp"

using namespace mm::io;
namespace fs = std::filesystem;

namespace {

std::string sh(const std::string& cmd) { return mmtest::shell(cmd); }

// A reference held in memory; resolves "chrX" <-> "X" like the real ones may.
class MemorySource : public SequenceSource {
public:
  explicit MemorySource(std::map<std::string, std::string> seqs) : seqs_(std::move(seqs)) {
    for (const auto& [name, s] : seqs_) names_.push_back(name);
  }
  const std::vector<std::string>& contigs() const override { return names_; }
  std::string resolve(const std::string& name) const override {
    if (seqs_.count(name)) return name;
    if (name.rfind("chr", 0) == 0 && seqs_.count(name.substr(3))) return name.substr(3);
    return {};
  }
  int64_t length(const std::string& c) const override { return seqs_.at(c).size(); }
  std::string fetch(const std::string& c, int64_t b, int64_t e) const override { return seqs_.at(c).substr(b, e - b); }
  const std::string& path() const override { return path_; }

private:
  std::map<std::string, std::string> seqs_;
  std::vector<std::string> names_;
  std::string path_ = "memory.fa";
};

// chr20 through htslib faidx, as the test's own SequenceSource.
class FaidxSource : public SequenceSource {
public:
  explicit FaidxSource(const fs::path& fa) : path_(fa), fai_(fai_load(fa.c_str())) {
    if (!fai_) throw std::runtime_error("cannot load " + path_);
    for (int i = 0; i < faidx_nseq(fai_); ++i) names_.emplace_back(faidx_iseq(fai_, i));
  }
  ~FaidxSource() override { fai_destroy(fai_); }
  const std::vector<std::string>& contigs() const override { return names_; }
  std::string resolve(const std::string& name) const override { return faidx_has_seq(fai_, name.c_str()) ? name : ""; }
  int64_t length(const std::string& c) const override { return faidx_seq_len(fai_, c.c_str()); }
  std::string fetch(const std::string& c, int64_t b, int64_t e) const override {
    hts_pos_t len = 0;
    char* s = faidx_fetch_seq64(fai_, c.c_str(), b, e - 1, &len);
    std::string out(s, len);
    free(s);
    return out;
  }
  const std::string& path() const override { return path_; }

private:
  std::string path_;
  faidx_t* fai_;
  std::vector<std::string> names_;
};

const MemorySource& tiny_ref() {
  static const MemorySource ref(std::map<std::string, std::string>{{"t1", "ACGTACGTAAACCCGGGTTTACGTACGTACGTACGT"}});
  return ref;
}

std::vector<VcfRecord> read_all(const std::string& path, VcfReadOptions opt = {}) {
  VcfReader r(path, opt);
  std::vector<VcfRecord> out;
  VcfRecord rec;
  while (r.next(rec)) out.push_back(std::move(rec));
  return out;
}

// The message a test expects thrown, with the file and line it names.
mm::Error error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const mm::Error& e) {
    return e;
  }
  ADD_FAILURE() << "no mm::Error thrown";
  return mm::Error("none");
}

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

const char* kExac = "/usr/share/doc/vcfanno-examples/example/exac.vcf.gz";
const char* kVtNormalize = "/usr/share/doc/vt/examples/normalize/01_IN.vcf.gz";

}  // namespace

TEST(Vcf, ClassifiesEveryKindOfRecord) {
  using K = AltKind;
  const std::map<std::string, std::vector<K>> expected = {
      {"snv1", {K::snv}},
      {"mnv1", {K::mnv}},
      {"ins1", {K::insertion}},
      {"del1", {K::deletion}},
      {"cpx1", {K::complex}},
      {"multi1", {K::snv, K::insertion, K::symbolic}},
      {"sym1", {K::symbolic}},
      {"span1", {K::snv, K::spanning_deletion}},
      {"miss1", {K::missing}},
      {"gvcf1", {K::symbolic}},
      {"bnd1", {K::breakend}},
  };
  VcfReadOptions opt{&tiny_ref(), RefCheck::error};
  const auto recs = read_all(mmtest::data("records/kinds.vcf"), opt);
  ASSERT_EQ(recs.size(), expected.size());
  for (const auto& r : recs) {
    ASSERT_TRUE(expected.count(r.id)) << r.id;
    EXPECT_EQ(r.kinds, expected.at(r.id)) << r.id;
    EXPECT_EQ(r.kinds.size(), r.alts.size());
    EXPECT_EQ(r.multiallelic(), r.id == "multi1" || r.id == "span1") << r.id;
    EXPECT_FALSE(r.ref_mismatch);
  }
  EXPECT_EQ(recs[0].line, 9);  // 8 header lines
  EXPECT_EQ(recs[5].alts, (std::vector<std::string>{"A", "CT", "<DEL>"}));
  EXPECT_EQ(recs[8].alts, std::vector<std::string>{"."});
  EXPECT_EQ(recs[2].pos0, 3);
  EXPECT_EQ(classify_alt("A", "A"), K::no_change);
  EXPECT_EQ(classify_alt("ATG", "ACG"), K::snv);  // shared bases trimmed first
  EXPECT_EQ(classify_alt("G", ".G"), K::breakend);
}

TEST(Vcf, ReadsTheExacSliceLikeBcftools) {
  const std::string exac = mmtest::package_file(kExac);
  const auto recs = read_all(exac);
  std::istringstream want(sh("bcftools query -f '%CHROM %POS %REF %ALT\\n' " + exac));
  std::string chrom, ref, alt;
  long pos;
  size_t i = 0, multi = 0, indels = 0;
  while (want >> chrom >> pos >> ref >> alt) {
    ASSERT_LT(i, recs.size());
    const auto& r = recs[i++];
    EXPECT_EQ(r.contig, chrom);
    EXPECT_EQ(r.pos0 + 1, pos);
    EXPECT_EQ(r.ref, ref);
    std::string alts;
    for (const auto& a : r.alts) alts += (alts.empty() ? "" : ",") + a;
    EXPECT_EQ(alts, alt);
    multi += r.multiallelic();
    for (auto k : r.kinds) indels += k == AltKind::insertion || k == AltKind::deletion;
  }
  EXPECT_EQ(i, recs.size());
  EXPECT_EQ(recs.size(), 148u);
  EXPECT_EQ(multi, std::stoul(sh("bcftools view -H -m3 " + exac + " | wc -l")));
  EXPECT_GT(indels, 0u);
}

TEST(Vcf, RefCheckedAgainstChr20) {
  FaidxSource chr20(mmtest::chr20());
  const std::string in = mmtest::package_file(kVtNormalize);
  EXPECT_EQ(read_all(in, {&chr20, RefCheck::error}).size(), 194u);

  // The same file with one REF base changed, on the 3rd record (line = header lines + 3).
  fs::path dir = mmtest::scratch("vcf_ref");
  const std::string body = sh("zcat " + in);
  const long header_lines = std::stol(sh("zcat " + in + " | grep -c '^#'"));
  std::string bad = body;
  const size_t at = bad.find("\t1340527\t.\tT\t");
  ASSERT_NE(at, std::string::npos);
  bad[at + 11] = 'G';
  mmtest::write_text(dir / "bad.vcf", bad);
  const auto e = error_of([&] { read_all(dir / "bad.vcf", {&chr20, RefCheck::error}); });
  EXPECT_EQ(e.file(), (dir / "bad.vcf").string());
  EXPECT_EQ(e.line(), header_lines + 3);
  EXPECT_TRUE(has(e.what(), "20:1340527")) << e.what();
  const auto flagged = read_all(dir / "bad.vcf", {&chr20, RefCheck::flag});
  ASSERT_EQ(flagged.size(), 194u);
  for (size_t i = 0; i < flagged.size(); ++i) EXPECT_EQ(flagged[i].ref_mismatch, i == 2) << i;

  // A contig the reference lacks.
  std::string other = body;
  const size_t line = other.find("\n20\t421808");
  other.replace(line + 1, 2, "21");
  mmtest::write_text(dir / "contig.vcf", other);
  const auto c = error_of([&] { read_all(dir / "contig.vcf", {&chr20, RefCheck::error}); });
  EXPECT_EQ(c.file(), (dir / "contig.vcf").string());
  EXPECT_TRUE(has(c.what(), "'21'")) << c.what();
  EXPECT_TRUE(has(c.what(), chr20.path())) << c.what();
}

TEST(Vcf, BadInputNamesFileAndLine) {
  fs::path dir = mmtest::scratch("vcf_bad");
  const std::string good = mmtest::read_text(mmtest::data("records/kinds.vcf"));
  struct Case { std::string name, line; };
  for (const auto& [name, text] : std::vector<Case>{
           {"garbage", "this is not a record"},
           {"short", "t1\t5\t.\tA"},
           {"pos", "t1\tfive\t.\tA\tG\t.\t.\t."}}) {
    // Garbage replaces the 4th record: line 12.
    std::string s = good;
    size_t p = 0;
    for (int i = 0; i < 11; ++i) p = s.find('\n', p) + 1;
    s.replace(p, s.find('\n', p) - p, text);
    const fs::path f = dir / (name + ".vcf");
    mmtest::write_text(f, s);
    sh("bgzip -c " + f.string() + " > " + f.string() + ".gz");
    for (const fs::path& file : {f, fs::path(f.string() + ".gz")}) {
      const auto e = error_of([&] { read_all(file); });
      EXPECT_EQ(e.file(), file.string()) << name;
      EXPECT_EQ(e.line(), 12) << name << " " << e.what();
    }
  }
  // Truncated bgzip in the middle of a block.
  std::string bytes = mmtest::read_text(mmtest::package_file(kExac));
  mmtest::write_text(dir / "cut.vcf.gz", bytes.substr(0, bytes.size() / 2));
  EXPECT_EQ(error_of([&] { read_all(dir / "cut.vcf.gz"); }).file(), (dir / "cut.vcf.gz").string());
  // Missing file, a file that is no VCF, a header without #CHROM.
  EXPECT_EQ(error_of([&] { read_all(dir / "missing.vcf"); }).file(), (dir / "missing.vcf").string());
  mmtest::write_text(dir / "notvcf.vcf", "hello\nworld\n");
  EXPECT_EQ(error_of([&] { read_all(dir / "notvcf.vcf"); }).file(), (dir / "notvcf.vcf").string());
  mmtest::write_text(dir / "nochrom.vcf", "##fileformat=VCFv4.2\nt1\t1\t.\tA\tG\t.\t.\t.\n");
  EXPECT_EQ(error_of([&] { read_all(dir / "nochrom.vcf"); }).file(), (dir / "nochrom.vcf").string());
  // REF mismatch on the tiny file: error names the record, flag mode marks it.
  std::string s = good;
  s.replace(s.find("\tcpx1\tAAA"), 9, "\tcpx1\tAAT");
  mmtest::write_text(dir / "ref.vcf", s);
  const auto e = error_of([&] { read_all(dir / "ref.vcf", {&tiny_ref(), RefCheck::error}); });
  EXPECT_EQ(e.line(), 13);
  EXPECT_TRUE(has(e.what(), "t1:9")) << e.what();
  EXPECT_EQ(read_all(dir / "ref.vcf", {&tiny_ref(), RefCheck::flag})[4].ref_mismatch, true);
}

TEST(Vcf, ReadsStdin) {
  const int saved = dup(0);
  const int fd = open(mmtest::data("records/kinds.vcf").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  dup2(fd, 0);
  close(fd);
  size_t n = 0;
  {
    VcfReader r("-");
    VcfRecord rec;
    while (r.next(rec)) ++n;
  }
  dup2(saved, 0);
  close(saved);
  EXPECT_EQ(n, 11u);
}

namespace {

// Writes `in` to `out` with three added INFO fields; returns how many records were written.
size_t annotate(const std::string& in, const std::string& out, VcfFormat format = VcfFormat::from_name) {
  VcfReader r(in);
  VcfWriter w(out, r, {{"MM_SCORE", "A", "Float", "Score per ALT"},
                       {"MM_INDEL", "0", "Flag", "Some ALT is an indel"},
                       {"MM_KINDS", "1", "String", "ALT kinds"}}, format);
  VcfRecord rec;
  size_t n = 0;
  while (r.next(rec)) {
    std::vector<float> score;
    std::string kinds;
    bool indel = false;
    for (size_t i = 0; i < rec.alts.size(); ++i) {
      score.push_back(0.25f * (i + 1) + static_cast<float>(n));
      if (i) kinds += '|';
      kinds += to_string(rec.kinds[i]);
      indel |= rec.kinds[i] == AltKind::insertion || rec.kinds[i] == AltKind::deletion;
    }
    w.set_floats(rec, "MM_SCORE", score);
    w.set_string(rec, "MM_KINDS", kinds);
    w.set_flag(rec, "MM_INDEL", indel);
    w.write(rec);
    ++n;
  }
  w.close();
  return n;
}

}  // namespace

TEST(Vcf, WriterKeepsEverythingAndAddsInfo) {
  fs::path dir = mmtest::scratch("vcf_write");
  const std::string tiny = mmtest::data("records/kinds.vcf").string();
  for (const std::string& in : {tiny, std::string(mmtest::package_file(kExac))}) {
    const std::string in_header = sh("bcftools view -h --no-version " + in);
    const std::string chrom_line = in_header.substr(in_header.rfind("#CHROM"));
    const std::string want_header =
        in_header.substr(0, in_header.rfind("#CHROM")) +
        "##INFO=<ID=MM_SCORE,Number=A,Type=Float,Description=\"Score per ALT\">\n"
        "##INFO=<ID=MM_INDEL,Number=0,Type=Flag,Description=\"Some ALT is an indel\">\n"
        "##INFO=<ID=MM_KINDS,Number=1,Type=String,Description=\"ALT kinds\">\n" + chrom_line;
    const std::string in_body = sh("bcftools view -H " + in);
    for (const std::string name : {"out.vcf", "out.vcf.gz", "out.bcf"}) {
      const std::string out = (dir / name).string();
      const size_t n = annotate(in, out);
      EXPECT_EQ(sh("bcftools view -h --no-version " + out), want_header) << name;
      EXPECT_EQ(sh("bcftools annotate --no-version -x INFO/MM_SCORE,INFO/MM_INDEL,INFO/MM_KINDS " + out +
                   " | bcftools view -H"), in_body) << name;
      std::istringstream q(sh("bcftools query -f '%MM_SCORE\\t%MM_KINDS\\t%MM_INDEL\\n' " + out));
      std::string score, kinds, flag;
      size_t i = 0, flagged = 0;
      while (q >> score >> kinds >> flag) {
        EXPECT_EQ(std::stof(score.substr(0, score.find(','))), 0.25f + i) << name << " " << i;
        EXPECT_EQ(std::count(score.begin(), score.end(), ','), std::count(kinds.begin(), kinds.end(), '|'));
        flagged += flag == "1";
        ++i;
      }
      EXPECT_EQ(i, n) << name;
      EXPECT_GT(flagged, 0u);
      EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1) << "temp file left";
      fs::remove(out);
    }
  }
  // Explicit format wins over the name.
  annotate(tiny, (dir / "x.out").string(), VcfFormat::bcf);
  EXPECT_EQ(sh("bcftools query -f '%ID\\n' " + (dir / "x.out").string()), sh("bcftools query -f '%ID\\n' " + tiny));
  EXPECT_EQ(sh("head -c 3 " + (dir / "x.out").string() + " | od -An -c | tr -d ' \\n'"), "037213\\b");
}

TEST(Vcf, WriterLeavesNoPartialFile) {
  fs::path dir = mmtest::scratch("vcf_atomic");
  const std::string tiny = mmtest::data("records/kinds.vcf").string();
  {
    VcfReader r(tiny);
    VcfWriter w((dir / "out.vcf.gz").string(), r, {{"X", "1", "Float", "x"}});
    VcfRecord rec;
    ASSERT_TRUE(r.next(rec));
    w.write(rec);
    EXPECT_THROW(w.set_floats(rec, "UNDECLARED", std::vector<float>{1.f}), mm::Error);
    // Abandoned without close(): as when a later record fails.
  }
  EXPECT_TRUE(fs::is_empty(dir));
  // The reader fails mid-file: the output never appears.
  std::string s = mmtest::read_text(tiny);
  s += "garbage\n";
  mmtest::write_text(dir / "bad.vcf", s);
  EXPECT_THROW(annotate((dir / "bad.vcf").string(), (dir / "out.vcf").string()), mm::Error);
  EXPECT_FALSE(fs::exists(dir / "out.vcf"));
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1);
}

TEST(Vcf, WritesStdoutAndFollowsContigsWithoutHeaderLines) {
  fs::path dir = mmtest::scratch("vcf_stdout");
  // No ##contig lines: htslib learns contigs from the records; the output must follow.
  mmtest::write_text(dir / "in.vcf",
                     "##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
                     "a\t1\t.\tA\tG\t.\t.\t.\nb\t2\t.\tC\tT\t.\t.\t.\nc\t3\t.\tG\tGA\t.\t.\t.\n");
  size_t n = 0;
  {
    // stdout goes to a file while the writer streams to "-"; restored whatever happens.
    struct Redirect {
      int saved = dup(1);
      explicit Redirect(const fs::path& to) {
        fflush(stdout);
        const int fd = open(to.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 1);
        close(fd);
      }
      ~Redirect() {
        fflush(stdout);
        dup2(saved, 1);
        close(saved);
      }
    } redirect(dir / "stdout.vcf");
    n = annotate((dir / "in.vcf").string(), "-");
  }
  EXPECT_EQ(n, 3u);
  EXPECT_EQ(sh("bcftools query -f '%CHROM:%POS %MM_KINDS\\n' " + (dir / "stdout.vcf").string() + " 2>/dev/null"),
            "a:1 snv\nb:2 snv\nc:3 insertion\n");
  // BCF needs the contigs declared: a clear error, no output.
  EXPECT_THROW(annotate((dir / "in.vcf").string(), (dir / "out.bcf").string()), mm::Error);
  EXPECT_FALSE(fs::exists(dir / "out.bcf"));
}
