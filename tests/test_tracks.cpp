// bedGraph and bigWig writers: exact bedGraph text, bigWig read back through libBigWig, ordering
// errors, and no partial output files.
#include <gtest/gtest.h>
#include <bigWig.h>

#include <cmath>
#include <fcntl.h>
#include <unistd.h>

#include "io/bedgraph.hpp"
#include "io/bigwig.hpp"
#include "io/error.hpp"
#include "support/fixtures.hpp"

using namespace mm::io;
namespace fs = std::filesystem;

namespace {

const float NaN = std::nanf("");

size_t files_in(const fs::path& dir) {
  return std::distance(fs::directory_iterator(dir), fs::directory_iterator());
}

}  // namespace

TEST(BedGraph, MergedRunsExactText) {
  fs::path dir = mmtest::scratch("bedgraph");
  const fs::path out = dir / "s.bedGraph";
  BedGraphOptions opt;
  opt.header = true;
  opt.track_name = "memmamba score";
  BedGraphWriter w(out.string(), opt);
  w.add("chr1", 10, std::vector<float>{0.5f, 0.5f, 0.5f, 1.f, NaN, NaN, 1.f, 1.f});
  w.add("chr1", 18, std::vector<float>{1.f, -2.25f});      // continues the run of 1 at 16-18
  w.add("chr1", 30, std::vector<float>{-2.25f, 0.1f});     // a gap ends the run even with equal value
  w.add("chr2", 0, std::vector<float>{0.1f, 1e-7f, 3e9f});  // new contig
  EXPECT_FALSE(fs::exists(out));  // nothing in place before close
  w.close();
  EXPECT_EQ(mmtest::read_text(out),
            "track type=bedGraph name=\"memmamba score\"\n"
            "chr1\t10\t13\t0.5\n"
            "chr1\t13\t14\t1\n"
            "chr1\t16\t19\t1\n"
            "chr1\t19\t20\t-2.25\n"
            "chr1\t30\t31\t-2.25\n"
            "chr1\t31\t32\t0.1\n"
            "chr2\t0\t1\t0.1\n"
            "chr2\t1\t2\t1e-07\n"
            "chr2\t2\t3\t3e+09\n");
  EXPECT_EQ(files_in(dir), 1u);
}

TEST(BedGraph, UnmergedAndStdout) {
  fs::path dir = mmtest::scratch("bedgraph_stdout");
  fflush(stdout);
  const int saved = dup(1);
  const int fd = open((dir / "out.txt").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  dup2(fd, 1);
  close(fd);
  {
    BedGraphOptions opt;
    opt.merge = false;
    BedGraphWriter w("-", opt);
    w.add("c", 0, std::vector<float>{2.f, 2.f, NaN, 3.f});
    w.close();
  }
  fflush(stdout);
  dup2(saved, 1);
  close(saved);
  EXPECT_EQ(mmtest::read_text(dir / "out.txt"), "c\t0\t1\t2\nc\t1\t2\t2\nc\t3\t4\t3\n");
}

TEST(BedGraph, AbandonedOutputLeavesNoFile) {
  fs::path dir = mmtest::scratch("bedgraph_abandon");
  {
    BedGraphWriter w((dir / "x.bedGraph").string());
    w.add("c", 0, std::vector<float>{1.f, 2.f});
  }
  EXPECT_EQ(files_in(dir), 0u);
  EXPECT_THROW(BedGraphWriter((dir / "no/such/dir/x.bedGraph").string()), mm::Error);
}

TEST(BigWig, ReadBackThroughLibBigWig) {
  fs::path dir = mmtest::scratch("bigwig");
  const fs::path out = dir / "s.bw";
  // chrA: runs, gaps and a long stretch of distinct values (several batches of intervals).
  std::vector<float> a(300000);
  for (size_t i = 0; i < a.size(); ++i) a[i] = i < 1000 ? std::floor(i / 100.f) : static_cast<float>(i) * 0.5f;
  for (size_t i = 5000; i < 5100; ++i) a[i] = NaN;
  std::vector<float> b = {NaN, 1.5f, 1.5f, NaN, -3.f};
  {
    BigWigWriter w(out.string(), {{"chrA", 400000}, {"chrEmpty", 1000}, {"chrB", 50}});
    w.add("chrA", 0, std::span<const float>(a).first(150000));
    w.add("chrA", 150000, std::span<const float>(a).subspan(150000));
    w.add("chrB", 10, b);
    EXPECT_FALSE(fs::exists(out));
    w.close();
  }
  EXPECT_EQ(files_in(dir), 1u);

  ASSERT_EQ(bwInit(1 << 17), 0);
  bigWigFile_t* bw = bwOpen(out.c_str(), nullptr, "r");
  ASSERT_NE(bw, nullptr);
  ASSERT_EQ(bw->cl->nKeys, 3);
  EXPECT_STREQ(bw->cl->chrom[0], "chrA");
  EXPECT_EQ(bw->cl->len[0], 400000u);
  auto values = [&](const char* chrom, uint32_t len) {
    bwOverlappingIntervals_t* o = bwGetValues(bw, chrom, 0, len, 1);
    EXPECT_NE(o, nullptr);
    std::vector<float> v(o->value, o->value + o->l);
    bwDestroyOverlappingIntervals(o);
    return v;
  };
  const auto got_a = values("chrA", 400000);
  ASSERT_EQ(got_a.size(), 400000u);
  for (size_t i = 0; i < got_a.size(); ++i) {
    const float want = i < a.size() ? a[i] : NaN;
    if (std::isnan(want)) EXPECT_TRUE(std::isnan(got_a[i])) << i;
    else ASSERT_EQ(got_a[i], want) << i;
  }
  const auto got_b = values("chrB", 50);
  for (size_t i = 0; i < 50; ++i) {
    const float want = i >= 10 && i < 15 ? b[i - 10] : NaN;
    if (std::isnan(want)) EXPECT_TRUE(std::isnan(got_b[i])) << i;
    else EXPECT_EQ(got_b[i], want) << i;
  }
  bwClose(bw);
}

TEST(BigWig, OrderErrorsLeaveNoFile) {
  fs::path dir = mmtest::scratch("bigwig_bad");
  const std::string out = (dir / "x.bw").string();
  const std::vector<float> v = {1.f, 2.f};
  {
    BigWigWriter w(out, {{"c1", 100}, {"c2", 100}});
    w.add("c2", 0, v);
    EXPECT_THROW(w.add("c1", 0, v), mm::Error);  // out of contig order
  }
  {
    BigWigWriter w(out, {{"c1", 100}});
    w.add("c1", 10, v);
    EXPECT_THROW(w.add("c1", 11, v), mm::Error);  // overlaps
    EXPECT_THROW(w.add("c1", 99, v), mm::Error);  // past the end
    EXPECT_THROW(w.add("nope", 0, v), mm::Error);
  }
  EXPECT_EQ(files_in(dir), 0u);
  EXPECT_THROW(BigWigWriter((dir / "no/dir/x.bw").string(), {{"c1", 100}}), mm::Error);
  EXPECT_THROW(BigWigWriter("-", {{"c1", 100}}), mm::Error);
  EXPECT_EQ(files_in(dir), 0u);
}
