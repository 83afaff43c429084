// BamReader against samtools on real data: the lambda phage reads of bowtie2-examples, the ExAC
// region BAM of vcfanno-examples, and a CRAM made at test time from lambda reads on its reference.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <sstream>

#include "io/bam.hpp"
#include "io/error.hpp"
#include "support/fixtures.hpp"

using namespace mm::io;
namespace fs = std::filesystem;

namespace {

std::string sh(const std::string& cmd) { return mmtest::shell(cmd); }

long samtools_count(const std::string& args) { return std::stol(sh("samtools view -c " + args)); }

BamOptions filters(int mapq, uint16_t require, uint16_t exclude, bool primary = false) {
  BamOptions o;
  o.min_mapq = mapq;
  o.require_flags = require;
  o.exclude_flags = exclude;
  o.primary_only = primary;
  return o;
}

BamOptions with(ReadOrientation orientation, std::string reference = {}) {
  BamOptions o;
  o.orientation = orientation;
  o.reference = std::move(reference);
  return o;
}

long count(const fs::path& bam, BamOptions opt, const BamRegion* region = nullptr) {
  BamReader r(bam, opt);
  if (region) r.query(*region);
  Read read;
  long n = 0;
  while (r.next(read)) ++n;
  return n;
}

std::string revcomp(std::string s) {
  std::reverse(s.begin(), s.end());
  for (char& c : s) c = c == 'A' ? 'T' : c == 'C' ? 'G' : c == 'G' ? 'C' : c == 'T' ? 'A' : c;
  return s;
}

// The vcfanno example BAM (coordinate-sorted, on GRCh37 chromosome 1) with its index.
fs::path ex_bam() {
  fs::path dir = mmtest::scratch("bam_ex");
  mmtest::gunzip(mmtest::package_file("/usr/share/doc/vcfanno-examples/example/ex.bam.gz"), dir / "ex.bam");
  fs::copy_file(mmtest::package_file("/usr/share/doc/vcfanno-examples/example/ex.bam.bai"), dir / "ex.bam.bai");
  return dir / "ex.bam";
}

const char* kLambdaReads = "/usr/share/doc/bowtie2/examples/reads/combined_reads.bam.gz";
const char* kLambdaRef = "/usr/share/doc/bowtie2/examples/reference/lambda_virus.fa.gz";

}  // namespace

TEST(Bam, LambdaReadsWholeFileMatchSamtoolsUnderFilters) {
  fs::path dir = mmtest::scratch("bam_lambda");
  fs::path bam = dir / "lambda.bam";
  mmtest::gunzip(mmtest::package_file(kLambdaReads), bam);
  // These reads are unaligned (flags 77/141, no @SQ): there is no coordinate order to sort into,
  // so they serve the whole-file path and the flag filters.
  EXPECT_EQ(sh("samtools view -H " + bam.string() + " | grep -c '^@SQ' || true"), "0\n");
  const std::string b = bam.string();
  EXPECT_EQ(count(bam, {}), samtools_count(b));
  EXPECT_EQ(count(bam, filters(0, 0x40, 0)), samtools_count("-f 0x40 " + b));
  EXPECT_EQ(count(bam, filters(0, 0, 0x40)), samtools_count("-F 0x40 " + b));
  EXPECT_EQ(count(bam, filters(0, 0x84, 0)), samtools_count("-f 0x84 " + b));
  EXPECT_EQ(count(bam, filters(1, 0, 0)), samtools_count("-q 1 " + b));
  EXPECT_GT(count(bam, {}), 0);

  // Unmapped reads are never reverse-complemented: both orientations give the stored bases.
  std::istringstream sam(sh("samtools view " + b + " | head -50 | cut -f 1,10"));
  BamReader r(bam);
  Read read;
  std::string name, seq;
  while (sam >> name >> seq) {
    ASSERT_TRUE(r.next(read));
    EXPECT_EQ(read.name, name);
    EXPECT_EQ(read.seq, seq);
    EXPECT_EQ(read.contig, "*");
    EXPECT_EQ(read.pos, -1);
  }
}

TEST(Bam, RegionsAndFiltersMatchSamtools) {
  const fs::path bam = ex_bam();
  const std::string b = bam.string();
  EXPECT_EQ(count(bam, {}), samtools_count(b));
  struct Case { BamOptions opt; std::string flags; };
  const std::vector<Case> cases = {
      {filters(0, 0, 0), ""},
      {filters(20, 0, 0), "-q 20"},
      {filters(0, 0x2, 0), "-f 0x2"},
      {filters(0, 0, 0x400), "-F 0x400"},
      {filters(0, 0x1, 0x10), "-f 0x1 -F 0x10"},
      {filters(0, 0, 0, true), "-F 0x900"},
      {filters(10, 0, 0, true), "-q 10 -F 0x900"},
  };
  const std::vector<std::pair<BamRegion, std::string>> regions = {
      {{"1", 10000, 20000}, "1:10001-20000"},
      {{"1", 0, -1}, "1"},
      {{"1", 14361, 14362}, "1:14362-14362"},
      {{"2", 0, 1000000}, "2:1-1000000"},
  };
  for (const auto& [region, text] : regions)
    for (const auto& c : cases)
      EXPECT_EQ(count(bam, c.opt, &region), samtools_count(c.flags + " " + b + " " + text))
          << text << " " << c.flags;
  EXPECT_GT(count(bam, {}, &regions[0].first), 100);
}

TEST(Bam, ReadOrientationUndoesReverseStrand) {
  const fs::path bam = ex_bam();
  std::istringstream sam(sh("samtools view " + bam.string() + " 1:30000-40000 | cut -f 1,2,10"));
  BamReader as_read(bam, with(ReadOrientation::read));
  BamReader as_ref(bam, with(ReadOrientation::reference));
  as_read.query({"1", 29999, 40000});
  as_ref.query({"1", 29999, 40000});
  Read a, f;
  std::string name, seq;
  int flag, reversed = 0, n = 0;
  while (sam >> name >> flag >> seq) {
    ASSERT_TRUE(as_read.next(a));
    ASSERT_TRUE(as_ref.next(f));
    EXPECT_EQ(f.name, name);
    EXPECT_EQ(f.flag, flag);
    EXPECT_EQ(f.contig, "1");
    EXPECT_EQ(f.seq, seq);
    EXPECT_EQ(a.seq, (flag & 0x10) ? revcomp(seq) : seq);
    reversed += (flag & 0x10) != 0;
    ++n;
  }
  EXPECT_FALSE(as_read.next(a));
  EXPECT_GT(reversed, 0);
  EXPECT_GT(n, reversed);
}

TEST(Bam, CramWithReferenceGivesTheBamReads) {
  fs::path dir = mmtest::scratch("bam_cram");
  // No reference lookups outside this test: htslib would otherwise try REF_PATH / the EBI server.
  setenv("REF_PATH", (dir / "no_such_cache/%s").c_str(), 1);
  fs::path ref = dir / "lambda.fa";
  mmtest::gunzip(mmtest::package_file(kLambdaRef), ref);
  sh("samtools faidx " + ref.string());
  // Reads cut from the lambda genome on both strands, with a mismatch, soft clip and deletion,
  // so that CRAM has to store differences against the reference.
  std::istringstream fasta(mmtest::read_text(ref));
  std::string contig, genome, line;
  std::getline(fasta, contig);
  contig = contig.substr(1, contig.find_first_of(" \t") - 1);
  while (std::getline(fasta, line)) genome += line;
  ASSERT_GT(genome.size(), 40000u);
  std::ostringstream sam;
  sam << "@HD\tVN:1.6\tSO:coordinate\n@SQ\tSN:" << contig << "\tLN:" << genome.size() << "\n";
  int i = 0;
  for (size_t p = 0; p + 120 < genome.size(); p += 173, ++i) {
    std::string s = genome.substr(p, 100), cigar = "100M";
    if (i % 4 == 1) s[50] = s[50] == 'A' ? 'C' : 'A';
    if (i % 4 == 2) { s = "GGGGG" + genome.substr(p, 95); cigar = "5S95M"; }
    if (i % 4 == 3) { s = genome.substr(p, 40) + genome.substr(p + 43, 60); cigar = "40M3D60M"; }
    sam << "q" << i << "\t" << (i % 3 == 0 ? 16 : 0) << "\t" << contig << "\t" << p + 1
        << "\t" << i % 60 << "\t" << cigar << "\t*\t0\t0\t" << s << "\t*\n";
  }
  mmtest::write_text(dir / "a.sam", sam.str());
  const std::string d = dir.string();
  sh("samtools view -b -o " + d + "/a.bam " + d + "/a.sam && samtools index " + d + "/a.bam");
  sh("samtools view -C -T " + ref.string() + " -o " + d + "/a.cram " + d + "/a.bam && samtools index " + d + "/a.cram");

  for (auto orientation : {ReadOrientation::read, ReadOrientation::reference}) {
    BamReader bam(dir / "a.bam", with(orientation));
    BamReader cram(dir / "a.cram", with(orientation, ref));
    Read x, y;
    int n = 0;
    while (bam.next(x)) {
      ASSERT_TRUE(cram.next(y));
      EXPECT_EQ(x.name, y.name);
      EXPECT_EQ(x.pos, y.pos);
      EXPECT_EQ(x.flag, y.flag);
      EXPECT_EQ(x.mapq, y.mapq);
      EXPECT_EQ(x.seq, y.seq);
      ++n;
    }
    EXPECT_FALSE(cram.next(y));
    EXPECT_EQ(n, i);
  }
  // Region over CRAM (with .crai) against samtools.
  BamRegion reg{contig, 5000, 9000};
  BamOptions cram_q5 = with(ReadOrientation::read, ref);
  cram_q5.min_mapq = 5;
  EXPECT_EQ(count(dir / "a.cram", cram_q5, &reg),
            samtools_count("-q 5 -T " + ref.string() + " " + d + "/a.cram '" + reg.contig + ":5001-9000'"));

  // A CRAM whose reference has gone (its header names a file that no longer exists).
  fs::path gone = dir / "gone.fa";
  fs::copy_file(ref, gone);
  sh("samtools faidx " + gone.string() + " && samtools view -C -T " + gone.string() + " -o " + d + "/b.cram " + d + "/a.bam");
  fs::remove(gone);
  fs::remove(gone.string() + ".fai");
  try {
    BamReader r(dir / "b.cram");
    Read x;
    while (r.next(x)) {}
    FAIL() << "CRAM without its reference was read";
  } catch (const mm::Error& e) {
    EXPECT_EQ(e.file(), (dir / "b.cram").string());
    EXPECT_NE(std::string(e.what()).find("reference"), std::string::npos) << e.what();
  }
  EXPECT_THROW(BamReader(dir / "a.cram", with(ReadOrientation::read, dir / "missing.fa")), mm::Error);
}

TEST(Bam, BadInputGivesClearErrors) {
  fs::path dir = mmtest::scratch("bam_bad");
  mmtest::gunzip(mmtest::package_file("/usr/share/doc/vcfanno-examples/example/ex.bam.gz"), dir / "noindex.bam");
  try {
    BamReader r(dir / "noindex.bam");
    r.query({"1", 0, 1000});
    FAIL();
  } catch (const mm::Error& e) {
    EXPECT_NE(std::string(e.what()).find("without an index"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("samtools index"), std::string::npos);
    EXPECT_EQ(e.file(), (dir / "noindex.bam").string());
  }
  try {
    BamReader(dir / "missing.bam");
    FAIL();
  } catch (const mm::Error& e) {
    EXPECT_EQ(e.file(), (dir / "missing.bam").string());
  }
  const fs::path ex = ex_bam();
  {
    BamReader r(ex);
    EXPECT_THROW(r.query({"chrUn_nope", 0, 10}), mm::Error);
  }
  // Truncated in the middle of the compressed records: an error, never a crash or a silent end.
  std::string bytes = mmtest::read_text(dir / "noindex.bam");
  mmtest::write_text(dir / "cut.bam", bytes.substr(0, bytes.size() / 2));
  EXPECT_THROW(count(dir / "cut.bam", {}), mm::Error);
  mmtest::write_text(dir / "text.bam", "this is not an alignment file\n");
  EXPECT_THROW(count(dir / "text.bam", {}), mm::Error);
}
