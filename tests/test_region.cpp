// Regions: every accepted form, every malformed form, and checks against a reference.
#include <gtest/gtest.h>

#include <map>

#include "io/error.hpp"
#include "io/region.hpp"

using namespace mm::io;

namespace {

// A reference with contigs 20, chrX and one whose name holds ':' (as HLA alleles do).
class FakeSource : public SequenceSource {
public:
  const std::vector<std::string>& contigs() const override { return names_; }
  std::string resolve(const std::string& n) const override {
    if (len_.count(n)) return n;
    if (n.rfind("chr", 0) == 0 && len_.count(n.substr(3))) return n.substr(3);
    if (len_.count("chr" + n)) return "chr" + n;
    return {};
  }
  int64_t length(const std::string& c) const override { return len_.at(c); }
  std::string fetch(const std::string&, int64_t, int64_t) const override { return {}; }
  const std::string& path() const override { return path_; }

private:
  std::vector<std::string> names_{"20", "chrX", "HLA-A*01:01"};
  std::map<std::string, int64_t> len_{{"20", 1000}, {"chrX", 500}, {"HLA-A*01:01", 50}};
  std::string path_ = "ref.fa";
};

}  // namespace

TEST(Region, ParsesEveryForm) {
  Region r = parse_region("chr1");
  EXPECT_EQ(r.contig, "chr1");
  EXPECT_EQ(r.beg0, 0);
  EXPECT_EQ(r.end0, -1);

  r = parse_region("20:60001-60100");
  EXPECT_EQ(r.contig, "20");
  EXPECT_EQ(r.beg0, 60000);
  EXPECT_EQ(r.end0, 60100);

  r = parse_region("20:1,000,001-2,000,000");
  EXPECT_EQ(r.beg0, 1000000);
  EXPECT_EQ(r.end0, 2000000);

  r = parse_region("20:500-");
  EXPECT_EQ(r.beg0, 499);
  EXPECT_EQ(r.end0, -1);

  r = parse_region("20:500");  // one base
  EXPECT_EQ(r.beg0, 499);
  EXPECT_EQ(r.end0, 500);

  r = parse_region("20:7-7");
  EXPECT_EQ(r.end0 - r.beg0, 1);
  EXPECT_EQ(to_string(r), "20:7-7");
  EXPECT_EQ(r.text, "20:7-7");
}

TEST(Region, MalformedTextIsRefusedNamingIt) {
  for (const char* bad : {"", ":1-5", "chr1:", "chr1:0-5", "chr1:0", "chr1:5-3", "chr1:a-5",
                          "chr1:5-b", "chr1:-5", "chr1:1-2-3", "chr1:1,,000", "chr1:,100",
                          "chr1:100,", "chr1:1 -5", "chr 1:1-5", "chr1:99999999999999999",
                          "chr1:1.5-2", "chr1:+5"}) {
    try {
      parse_region(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const mm::UsageError& e) {
      EXPECT_NE(std::string(e.what()).find("'" + std::string(bad) + "'"), std::string::npos) << e.what();
    }
  }
}

TEST(Region, ResolvesAgainstReference) {
  FakeSource src;
  Region r = resolve(parse_region("chr20:101-200"), src);
  EXPECT_EQ(r.contig, "20");
  EXPECT_EQ(r.beg0, 100);
  EXPECT_EQ(r.end0, 200);
  r = resolve(parse_region("X:400-"), src);
  EXPECT_EQ(r.contig, "chrX");
  EXPECT_EQ(r.end0, 500);
  r = resolve(parse_region("20"), src);
  EXPECT_EQ(r.end0, 1000);
  r = resolve(parse_region("20:1000"), src);
  EXPECT_EQ(r.beg0, 999);
  r = resolve(parse_region("HLA-A*01:01"), src);  // a contig name, not HLA-A*01 position 1
  EXPECT_EQ(r.contig, "HLA-A*01:01");
  EXPECT_EQ(r.end0, 50);
  r = resolve(parse_region("HLA-A*01:01:5-6"), src);
  EXPECT_EQ(r.contig, "HLA-A*01:01");
  EXPECT_EQ(r.beg0, 4);
}

TEST(Region, OutsideContigNamesRegionAndLength) {
  FakeSource src;
  for (const char* text : {"20:999-1001", "20:1001", "20:1001-", "chrX:1-501"}) {
    try {
      resolve(parse_region(text), src);
      ADD_FAILURE() << "accepted " << text;
    } catch (const mm::Error& e) {
      const std::string m = e.message();
      EXPECT_NE(m.find(text), std::string::npos) << m;
      EXPECT_NE(m.find("length"), std::string::npos) << m;
      EXPECT_NE(m.find("ref.fa"), std::string::npos) << m;
      EXPECT_EQ(e.code(), mm::ExitCode::bad_input);
    }
  }
  try {
    resolve(parse_region("chr7:1-10"), src);
    ADD_FAILURE();
  } catch (const mm::Error& e) {
    EXPECT_NE(e.message().find("'chr7' is not in the reference"), std::string::npos) << e.message();
  }
}
