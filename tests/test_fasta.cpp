// FASTA: indexed access (checked against samtools faidx on real GRCh37 chr20), index problems,
// aliases, and streaming over plain, gzip, bgzip and stdin with every kind of bad input.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <fcntl.h>
#include <random>

#include "io/error.hpp"
#include "io/fasta.hpp"
#include "io/region.hpp"
#include "support/fixtures.hpp"

using namespace mm::io;
namespace fs = std::filesystem;

namespace {

using mmtest::shell;

// The sequence samtools faidx prints for a region, line breaks removed.
std::string samtools_faidx(const fs::path& fa, const std::string& region) {
  const std::string out = shell("samtools faidx '" + fa.string() + "' '" + region + "'");
  std::string seq;
  for (size_t nl = out.find('\n'); nl != std::string::npos && nl + 1 < out.size();) {
    const size_t next = out.find('\n', nl + 1);
    seq += out.substr(nl + 1, next - nl - 1);
    nl = next;
  }
  return seq;
}

// Expects `f` to throw mm::Error whose message holds every one of `parts`.
template <class F>
void expect_error(F&& f, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "no error";
  } catch (const mm::Error& e) {
    for (const auto& p : parts) EXPECT_NE(e.message().find(p), std::string::npos) << "'" << p << "' not in: " << e.message();
  }
}

void write_gzip(const fs::path& p, const std::string& s) {
  gzFile g = gzopen(p.c_str(), "wb");
  gzwrite(g, s.data(), static_cast<unsigned>(s.size()));
  gzclose(g);
}

void bgzip(const fs::path& plain, const fs::path& out) {
  ASSERT_EQ(std::system(("bgzip -c '" + plain.string() + "' > '" + out.string() + "'").c_str()), 0);
}

struct Record {
  std::string name, description, seq;
  bool operator==(const Record&) const = default;
};

std::vector<Record> read_records(const std::string& path, size_t chunk = 7) {
  std::vector<Record> out;
  FastaReader r(path);
  while (r.next_record()) {
    Record rec{r.name(), r.description(), {}};
    for (std::string_view p; !(p = r.read_chunk(chunk)).empty();) rec.seq.append(p);
    out.push_back(rec);
  }
  return out;
}

const std::string kSmall =
    ">one first record\nACGTACGTAC\nGGTT\n>two\nacgtNNNNryk\n\n>three  spaced  words\nA\n";
const std::vector<Record> kSmallRecords = {
    {"one", "first record", "ACGTACGTACGGTT"}, {"two", "", "acgtNNNNryk"}, {"three", "spaced  words", "A"}};

std::string random_fasta(size_t bases, int line_width, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s = ">r1\n";
  for (size_t i = 0; i < bases; ++i) {
    s += "ACGT"[rng() % 4];
    if ((i + 1) % line_width == 0) s += '\n';
  }
  return s + "\n";
}

}  // namespace

// ---- indexed access -------------------------------------------------------------------------

TEST(IndexedFasta, Chr20SlicesMatchSamtools) {
  const fs::path fa = mmtest::chr20();
  IndexedFasta ref(fa.string());
  ASSERT_EQ(ref.contigs(), std::vector<std::string>{"20"});
  EXPECT_EQ(ref.length("20"), 63025520);
  const std::string a = ref.fetch("20", 60000, 60100);
  EXPECT_EQ(a.size(), 100u);
  EXPECT_EQ(a, samtools_faidx(fa, "20:60001-60100"));
  const std::string b = ref.fetch("20", 63025520 - 1000, 63025520);
  EXPECT_EQ(b, samtools_faidx(fa, "20:63024521-63025520"));
  EXPECT_EQ(ref.fetch("20", 5, 5), "");
  const Region r = resolve(parse_region("20:1,000,001-1,000,250"), ref);
  EXPECT_EQ(ref.fetch(r.contig, r.beg0, r.end0), samtools_faidx(fa, "20:1000001-1000250"));
  expect_error([&] { ref.fetch("20", 63025000, 63025521); }, {fa.string(), "outside contig 20", "63025520"});
  expect_error([&] { ref.length("21"); }, {"'21'"});
}

TEST(IndexedFasta, AliasResolvedOnceReportedAndRefusableByOption) {
  const fs::path fa = mmtest::chr20();
  std::vector<std::string> notes;
  FastaOptions opt;
  opt.reporter.note = [&](std::string_view s) { notes.emplace_back(s); };
  IndexedFasta ref(fa.string(), opt);
  EXPECT_EQ(ref.resolve("20"), "20");
  EXPECT_TRUE(notes.empty());
  EXPECT_EQ(ref.resolve("chr20"), "20");
  EXPECT_EQ(ref.resolve("chr20"), "20");
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_EQ(notes[0], "contig chr20 resolved to 20 in " + fa.string());
  EXPECT_EQ(ref.resolve("chr21"), "");
  EXPECT_EQ(ref.resolve("chrM"), "");
  EXPECT_EQ(resolve(parse_region("chr20:60001-60100"), ref).contig, "20");

  opt.allow_alias = false;
  IndexedFasta strict(fa.string(), opt);
  EXPECT_EQ(strict.resolve("chr20"), "");
  expect_error([&] { resolve(parse_region("chr20:1-10"), strict); }, {"'chr20' is not in the reference", fa.string()});
}

TEST(IndexedFasta, MitochondrialAlias) {
  const fs::path dir = mmtest::scratch("fasta_mt");
  mmtest::write_text(dir / "mt.fa", ">MT\nACGT\n>chr7\nGG\n");
  IndexedFasta ref((dir / "mt.fa").string());
  EXPECT_EQ(ref.resolve("chrM"), "MT");
  EXPECT_EQ(ref.resolve("7"), "chr7");
  EXPECT_EQ(ref.fetch(ref.resolve("chrM"), 1, 3), "CG");
}

TEST(IndexedFasta, PlainFastaMissingIndexIsBuilt) {
  const fs::path dir = mmtest::scratch("fasta_plain");
  const fs::path fa = dir / "small.fa";
  mmtest::write_text(fa, kSmall);
  std::vector<std::string> notes;
  FastaOptions opt;
  opt.reporter.note = [&](std::string_view s) { notes.emplace_back(s); };
  IndexedFasta ref(fa.string(), opt);
  EXPECT_TRUE(fs::exists(fa.string() + ".fai"));
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_NE(notes[0].find("built FASTA index"), std::string::npos);
  EXPECT_EQ(ref.contigs(), (std::vector<std::string>{"one", "two", "three"}));
  EXPECT_EQ(ref.fetch("one", 8, 14), "ACGGTT");  // across a line break
  EXPECT_EQ(ref.fetch("two", 0, 11), "acgtNNNNryk");  // case kept
  EXPECT_EQ(ref.fetch("one", 8, 14), samtools_faidx(fa, "one:9-14"));
  EXPECT_EQ(ref.length("three"), 1);
}

TEST(IndexedFasta, BgzipWithoutIndexIsBuiltToo) {
  const fs::path dir = mmtest::scratch("fasta_bgzf_build");
  mmtest::write_text(dir / "r.fa", random_fasta(200000, 60, 1));
  bgzip(dir / "r.fa", dir / "r.fa.gz");
  IndexedFasta plain((dir / "r.fa").string());
  IndexedFasta packed((dir / "r.fa.gz").string());
  EXPECT_TRUE(fs::exists(dir / "r.fa.gz.gzi"));
  EXPECT_EQ(packed.fetch("r1", 123456, 130000), plain.fetch("r1", 123456, 130000));
}

TEST(IndexedFasta, MissingIndexWithBuildingOffSaysHow) {
  const fs::path dir = mmtest::scratch("fasta_nobuild");
  mmtest::write_text(dir / "a.fa", ">a\nACGT\n");
  FastaOptions opt;
  opt.build_index = false;
  expect_error([&] { IndexedFasta((dir / "a.fa").string(), opt); }, {"samtools faidx", (dir / "a.fa").string()});
  EXPECT_FALSE(fs::exists(dir / "a.fa.fai"));
}

TEST(IndexedFasta, MissingIndexInUnwritableFolder) {
  // A FASTA in a read-only folder (a system package's data, say): the index is built in the
  // index cache and used from there; with the cache unwritable too, a clear error.
  const fs::path dir = mmtest::scratch("fasta_readonly");
  const fs::path fa = dir / "a.fa";
  mmtest::write_text(fa, ">a\nACGTAC\n>b\nGGT\n");
  const fs::path cache = mmtest::scratch("fasta_readonly_cache");
  fs::permissions(cache, fs::perms::all);  // nobody may write here
  fs::permissions(dir, fs::perms::owner_read | fs::perms::owner_exec | fs::perms::group_read |
                           fs::perms::group_exec | fs::perms::others_read | fs::perms::others_exec);
  // Root ignores folder permissions; then the check runs in a child that drops to nobody.
  const bool root = ::geteuid() == 0;
  const pid_t pid = root ? fork() : 0;
  int outcome = 0;  // 0 as expected, 1 wrong outcome, 4 permissions not enforced
  if (pid == 0) {
    if (root && (setgid(65534) != 0 || setuid(65534) != 0)) _exit(4);
    if (::access(dir.c_str(), W_OK) == 0 || ::access(fa.c_str(), R_OK) != 0) {
      outcome = 4;
    } else {
      try {
        ::setenv("MEMMAMBA_CACHE", cache.c_str(), 1);
        {
          IndexedFasta ref(fa.string());
          if (ref.fetch("b", 0, 3) != "GGT" || ref.length("a") != 6) outcome = 1;
        }
        IndexedFasta again(fa.string());  // the cached index is found, not rebuilt
        if (again.fetch("a", 2, 4) != "GT") outcome = 1;
        std::string key = fs::absolute(fa).lexically_normal().string();
        std::replace(key.begin(), key.end(), '/', '%');
        if (!fs::exists(cache / "faidx" / (key + ".fai"))) outcome = 1;
        // The cache unwritable as well: an error naming the file, the cache and the way out.
        ::setenv("MEMMAMBA_CACHE", (dir / "cache").c_str(), 1);
        try {
          IndexedFasta nope(fa.string());
          outcome = 1;
        } catch (const mm::Error& e) {
          const std::string m = e.message();
          if (!(m.find(fa.string()) == 0 && m.find("not writable") != std::string::npos &&
                m.find("MEMMAMBA_CACHE") != std::string::npos && m.find("samtools faidx") != std::string::npos))
            outcome = 1;
        }
      } catch (const mm::Error&) {
        outcome = 1;
      }
    }
    if (root) _exit(outcome);
  } else {
    int status = 0;
    waitpid(pid, &status, 0);
    outcome = WIFEXITED(status) ? WEXITSTATUS(status) : 1;
  }
  fs::permissions(dir, fs::perms::owner_all);
  if (outcome == 4) GTEST_SKIP() << "folder permissions are not enforced here (root without a user to drop to)";
  EXPECT_EQ(outcome, 0) << "expected the index in the cache, and an error naming the file, 'not writable', "
                           "MEMMAMBA_CACHE and 'samtools faidx' when the cache is unwritable too";
  EXPECT_FALSE(fs::exists(fa.string() + ".fai"));
}

TEST(IndexedFasta, IndexOlderThanFastaIsStale) {
  const fs::path dir = mmtest::scratch("fasta_stale_time");
  const fs::path fa = dir / "a.fa";
  mmtest::write_text(fa, ">a\nACGT\n");
  { IndexedFasta build(fa.string()); }
  mmtest::write_text(fa, ">a\nACGTACGTAA\nGG\n");
  fs::last_write_time(fa, fs::last_write_time(fa.string() + ".fai") + std::chrono::seconds(10));
  expect_error([&] { IndexedFasta(fa.string()); }, {fa.string(), "older than the FASTA", "samtools faidx"});
}

TEST(IndexedFasta, IndexNotMatchingContentIsStale) {
  const fs::path dir = mmtest::scratch("fasta_stale_content");
  const fs::path fa = dir / "a.fa";
  mmtest::write_text(fa, ">a\nACGT\n>b\nGGCC\n");
  // Claims 8 bases for a: reading runs into the next header.
  mmtest::write_text(fa.string() + ".fai", "a\t8\t3\t4\t5\nb\t4\t11\t4\t5\n");
  IndexedFasta ref(fa.string());
  expect_error([&] { ref.fetch("a", 0, 8); }, {fa.string(), "stale"});
  // Claims more than the file holds.
  mmtest::write_text(fa.string() + ".fai", "a\t4\t3\t4\t5\nb\t400\t11\t4\t5\n");
  expect_error([&] { IndexedFasta r2(fa.string()); }, {fa.string() + ".fai:2:", "does not match"});
}

TEST(IndexedFasta, DuplicateContigNames) {
  const fs::path dir = mmtest::scratch("fasta_dup");
  const fs::path fa = dir / "d.fa";
  mmtest::write_text(fa, ">a\nACGT\n>b\nGG\n>a\nTT\n");
  expect_error([&] { IndexedFasta(fa.string()); }, {fa.string() + ":5:", "duplicate record name 'a'"});
  EXPECT_FALSE(fs::exists(fa.string() + ".fai"));
  mmtest::write_text(fa.string() + ".fai", "a\t4\t3\t4\t5\nb\t2\t11\t2\t3\na\t2\t17\t2\t3\n");
  expect_error([&] { IndexedFasta(fa.string()); }, {fa.string() + ".fai:3:", "duplicate contig name 'a'"});
}

TEST(IndexedFasta, PlainGzipIsRefused) {
  const fs::path dir = mmtest::scratch("fasta_gzip");
  write_gzip(dir / "a.fa.gz", kSmall);
  expect_error([&] { IndexedFasta((dir / "a.fa.gz").string()); }, {(dir / "a.fa.gz").string(), "bgzip", "stream"});
}

TEST(IndexedFasta, MissingFile) {
  expect_error([] { IndexedFasta("/nonexistent/x.fa"); }, {"/nonexistent/x.fa", "no such file"});
}

// ---- streaming ------------------------------------------------------------------------------

TEST(FastaReader, PlainGzipAndBgzipReadAlike) {
  const fs::path dir = mmtest::scratch("stream_formats");
  mmtest::write_text(dir / "a.fa", kSmall);
  write_gzip(dir / "a.gz.fa.gz", kSmall);
  bgzip(dir / "a.fa", dir / "a.fa.gz");
  for (const char* name : {"a.fa", "a.gz.fa.gz", "a.fa.gz"})
    for (size_t chunk : {1, 3, 1000}) EXPECT_EQ(read_records((dir / name).string(), chunk), kSmallRecords) << name;
  FastaReader r((dir / "a.fa").string());
  ASSERT_TRUE(r.next_record());
  EXPECT_EQ(r.read_all(), "ACGTACGTACGGTT");
  ASSERT_TRUE(r.next_record());  // skipping unread records works too
  ASSERT_TRUE(r.next_record());
  EXPECT_EQ(r.name(), "three");
  EXPECT_EQ(r.header_line(), 7);
  EXPECT_FALSE(r.next_record());
}

TEST(FastaReader, StdinPlainAndGzip) {
  const fs::path dir = mmtest::scratch("stream_stdin");
  mmtest::write_text(dir / "a.fa", kSmall);
  write_gzip(dir / "a.fa.gz", kSmall);
  for (const char* name : {"a.fa", "a.fa.gz"}) {
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      const int fd = open((dir / name).c_str(), O_RDONLY);
      if (fd < 0 || dup2(fd, 0) < 0) _exit(2);
      try {
        _exit(read_records("-") == kSmallRecords ? 0 : 1);
      } catch (...) {
        _exit(3);
      }
    }
    int status = 0;
    waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0) << name << " through stdin (1: different records, 3: error)";
  }
}

TEST(FastaReader, CrlfGivesIdenticalOutput) {
  const fs::path dir = mmtest::scratch("stream_crlf");
  std::string crlf;
  for (char c : kSmall) crlf += c == '\n' ? std::string("\r\n") : std::string(1, c);
  mmtest::write_text(dir / "a.fa", crlf);
  EXPECT_EQ(read_records((dir / "a.fa").string()), kSmallRecords);
  EXPECT_EQ(read_records((dir / "a.fa").string(), 1), kSmallRecords);
}

TEST(FastaReader, BadInputNamesFileAndLine) {
  const fs::path dir = mmtest::scratch("stream_bad");
  struct Case {
    const char* text;
    std::vector<std::string> expect;
  };
  const Case cases[] = {
      {"ACGT\n>a\nACGT\n", {":1:", "FASTA without a header line"}},
      {"\n\nACGT\n", {":3:", "FASTA without a header line"}},
      {">a\n>b\nACGT\n", {":1:", "record 'a' has no sequence"}},
      {">a\nACGT\n>b\n", {":3:", "record 'b' has no sequence"}},
      {">a\nACGT\n>b\n\n\n", {":3:", "record 'b' has no sequence"}},
      {">a\nACGT\nAC-T\n", {":3:", "invalid character '-'", "record 'a'"}},
      {">a\nACGT\nACXT\n", {":3:", "'X'"}},
      {">a\nACGT\nAC*T\n", {":3:", "'*'"}},
      {">a\nAC GT\n", {":2:", "' '"}},
      {">a\nACGT\n>b\nGG\n>a\nTT\n", {":5:", "duplicate record name 'a' (first on line 1)"}},
      {">\nACGT\n", {":1:", "without a record name"}},
      {"", {"no FASTA records"}},
  };
  int i = 0;
  for (const Case& c : cases) {
    const fs::path p = dir / ("case" + std::to_string(i++) + ".fa");
    mmtest::write_text(p, c.text);
    try {
      read_records(p.string());
      ADD_FAILURE() << "accepted: " << c.text;
    } catch (const mm::Error& e) {
      EXPECT_EQ(e.message().rfind(p.string() + ":", 0), 0u) << e.message();
      for (const auto& part : c.expect) EXPECT_NE(e.message().find(part), std::string::npos) << part << " not in " << e.message();
    }
  }
}

TEST(FastaReader, TruncatedCompressedFiles) {
  const fs::path dir = mmtest::scratch("stream_truncated");
  const std::string text = random_fasta(2000000, 60, 2);
  mmtest::write_text(dir / "r.fa", text);
  write_gzip(dir / "r.gzip.gz", text);
  bgzip(dir / "r.fa", dir / "r.bgzf.gz");
  for (const char* name : {"r.gzip.gz", "r.bgzf.gz"}) {
    const std::string whole = mmtest::read_text(dir / name);
    const fs::path cut = dir / (std::string("half.") + name);
    mmtest::write_text(cut, whole.substr(0, whole.size() / 2));
    expect_error([&] { read_records(cut.string(), 1 << 16); }, {cut.string() + ":", "truncated or corrupt compressed file"});
  }
}

TEST(FastaReader, MissingFile) {
  expect_error([] { FastaReader("/nonexistent/y.fa.gz"); }, {"/nonexistent/y.fa.gz", "no such file"});
}

TEST(FastaReader, WholeChr20InBoundedChunks) {
  const fs::path fa = mmtest::chr20();
  constexpr size_t kChunk = 1 << 20;
  FastaReader r(fa.string());
  ASSERT_TRUE(r.next_record());
  EXPECT_EQ(r.name(), "20");
  IndexedFasta ref(fa.string());
  int64_t total = 0;
  size_t peak = 0;
  for (std::string_view piece; !(piece = r.read_chunk(kChunk)).empty();) {
    if (total == 0) {
      EXPECT_EQ(piece, ref.fetch("20", 0, static_cast<int64_t>(piece.size())));
    }
    total += static_cast<int64_t>(piece.size());
    peak = std::max(peak, piece.size());
  }
  EXPECT_EQ(total, 63025520);
  EXPECT_EQ(total, ref.length("20"));
  EXPECT_LE(peak, kChunk);
  EXPECT_FALSE(r.next_record());
}
