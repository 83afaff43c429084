// BedReader: every column count, skipped lines, the real fitCons BED of vcfanno-examples, bad lines.
#include <gtest/gtest.h>

#include "io/bed.hpp"
#include "io/error.hpp"
#include "support/fixtures.hpp"

using namespace mm::io;
namespace fs = std::filesystem;

namespace {

mm::Error error_of(const std::string& path) {
  try {
    read_bed(path);
  } catch (const mm::Error& e) {
    return e;
  }
  ADD_FAILURE() << "no mm::Error for " << path;
  return mm::Error("none");
}

}  // namespace

TEST(Bed, EveryColumnCountAndSkippedLines) {
  const auto recs = read_bed(mmtest::data("records/columns.bed"));
  ASSERT_EQ(recs.size(), 11u);
  for (size_t i = 0; i < 10; ++i) {
    EXPECT_EQ(recs[i].extra.size(), i) << i;  // 3 + i columns
    EXPECT_EQ(recs[i].beg, i < 9 ? 10 * static_cast<int64_t>(i) : 100);
    if (i > 0) {
      EXPECT_EQ(recs[i].name().substr(1), std::to_string(i + 3));  // n4 .. n12
    }
  }
  EXPECT_EQ(recs[0].contig, "chr1");
  EXPECT_EQ(recs[0].end, 10);
  EXPECT_EQ(recs[0].line, 5);
  EXPECT_EQ(recs[0].strand(), '.');
  EXPECT_EQ(recs[2].extra[1], "500");
  EXPECT_EQ(recs[3].strand(), '+');
  EXPECT_EQ(recs[4].strand(), '-');
  EXPECT_EQ(recs[9].contig, "chr2");
  EXPECT_EQ(recs[9].end, 200);
  EXPECT_EQ(recs[9].extra.back(), "0,80,");
  EXPECT_EQ(recs[9].line, 15);
  // Space-separated line, zero-length interval.
  EXPECT_EQ(recs[10].contig, "chr3");
  EXPECT_EQ(recs[10].beg, 5);
  EXPECT_EQ(recs[10].end, 5);
  EXPECT_EQ(recs[10].name(), "zero-length");
}

TEST(Bed, ReadsRealBgzippedBedLikePlain) {
  fs::path dir = mmtest::scratch("bed_real");
  const std::string gz = mmtest::package_file("/usr/share/doc/vcfanno-examples/example/fitcons.bed.gz");
  mmtest::gunzip(gz, dir / "fitcons.bed");
  const auto a = read_bed(gz), b = read_bed(dir / "fitcons.bed");
  ASSERT_EQ(a.size(), 537u);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].contig, b[i].contig);
    EXPECT_EQ(a[i].beg, b[i].beg);
    EXPECT_EQ(a[i].end, b[i].end);
    EXPECT_EQ(a[i].extra, b[i].extra);
    EXPECT_LT(a[i].beg, a[i].end);
  }
  EXPECT_EQ(a[1].beg, 10000);
  EXPECT_EQ(a[1].end, 10154);
  EXPECT_EQ(a[1].extra, std::vector<std::string>{"0.070013"});
}

TEST(Bed, BadLinesNameFileAndLine) {
  fs::path dir = mmtest::scratch("bed_bad");
  const std::string head = "# header\ntrack name=x\nchr1\t0\t10\n";  // the bad line is line 4
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"two_columns", "chr1\t5"},
      {"end_before_start", "chr1\t50\t40"},
      {"text_start", "chr1\tfive\t40"},
      {"negative", "chr1\t-5\t40"},
      {"float_end", "chr1\t5\t40.5"},
      {"bad_strand", "chr1\t5\t40\tname\t0\tx"},
      {"empty_end", "chr1\t5\t\tname"},
  };
  for (const auto& [name, line] : cases) {
    const fs::path f = dir / (name + ".bed");
    mmtest::write_text(f, head + line + "\nchr1\t100\t200\n");
    const auto e = error_of(f);
    EXPECT_EQ(e.file(), f.string()) << name;
    EXPECT_EQ(e.line(), 4) << name << ": " << e.what();
  }
  // Missing file; truncated bgzip; a BAM passed as BED.
  EXPECT_EQ(error_of((dir / "missing.bed").string()).file(), (dir / "missing.bed").string());
  const std::string bytes = mmtest::read_text("/usr/share/doc/vcfanno-examples/example/fitcons.bed.gz");
  mmtest::write_text(dir / "cut.bed.gz", bytes.substr(0, bytes.size() / 2));
  EXPECT_EQ(error_of((dir / "cut.bed.gz").string()).file(), (dir / "cut.bed.gz").string());
  mmtest::gunzip("/usr/share/doc/vcfanno-examples/example/ex.bam.gz", dir / "ex.bam");
  EXPECT_EQ(error_of((dir / "ex.bam").string()).file(), (dir / "ex.bam").string());
}
