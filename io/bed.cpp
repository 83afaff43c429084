// BedReader over htslib's line reader, which takes plain, gzip and bgzip files alike.
#include "io/bed.hpp"

#include <htslib/bgzf.h>
#include <htslib/hts.h>
#include <htslib/kseq.h>
#include <htslib/kstring.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <string_view>

#include "io/error.hpp"

namespace mm::io {

struct BedReader::Handles {
  htsFile* fp = nullptr;
  kstring_t line = KS_INITIALIZE;
  long lineno = 0;
  ~Handles() {
    ks_free(&line);
    if (fp) hts_close(fp);
  }
};

BedReader::BedReader(std::string path) : path_(std::move(path)), h_(std::make_unique<Handles>()) {
  h_->fp = hts_open(path_.c_str(), "r");
  if (!h_->fp) throw Error(std::string("cannot open BED: ") + std::strerror(errno), path_);
  if (hts_get_format(h_->fp)->category == sequence_data || hts_get_format(h_->fp)->category == variant_data)
    throw Error("not a BED file (looks like an alignment or variant file)", path_);
}

BedReader::~BedReader() = default;

namespace {

std::vector<std::string_view> split(std::string_view s) {
  std::vector<std::string_view> out;
  constexpr auto npos = std::string_view::npos;
  if (s.find('\t') != npos) {
    for (size_t a = 0, b = 0; b != npos; a = b + 1) {
      b = s.find('\t', a);
      out.push_back(s.substr(a, b - a));
    }
  } else {  // UCSC also accepts runs of spaces
    for (size_t a = s.find_first_not_of(' '), b = 0; a != npos; a = s.find_first_not_of(' ', b)) {
      b = s.find(' ', a);
      out.push_back(s.substr(a, b - a));
    }
  }
  return out;
}

bool skipped(std::string_view s) {
  return s.find_first_not_of(" \t\r") == std::string_view::npos || s[0] == '#' ||
         s.rfind("track", 0) == 0 || s.rfind("browser", 0) == 0;
}

}  // namespace

bool BedReader::next(BedRecord& rec) {
  for (;;) {
    const int r = hts_getline(h_->fp, KS_SEP_LINE, &h_->line);
    const bool damaged = h_->fp->format.compression != no_compression && h_->fp->fp.bgzf->errcode;
    if (r < -1 || damaged) throw Error("cannot read (truncated or corrupt compressed file)", path_, h_->lineno + 1);
    if (r == -1) return false;
    ++h_->lineno;
    std::string_view s(h_->line.s, h_->line.l);
    if (skipped(s)) continue;
    const auto cols = split(s);
    auto fail = [&](const std::string& what) { return Error(what, path_, h_->lineno); };
    if (cols.size() < 3) throw fail("a BED line needs at least 3 columns (contig, start, end), found " + std::to_string(cols.size()));
    auto coord = [&](std::string_view c, const char* what) {
      int64_t v = 0;
      auto [p, ec] = std::from_chars(c.data(), c.data() + c.size(), v);
      if (c.empty() || ec != std::errc() || p != c.data() + c.size() || v < 0)
        throw fail(std::string(what) + " '" + std::string(c) + "' is not a non-negative integer");
      return v;
    };
    rec.contig.assign(cols[0]);
    if (rec.contig.empty()) throw fail("empty contig name");
    rec.beg = coord(cols[1], "start");
    rec.end = coord(cols[2], "end");
    if (rec.end < rec.beg)
      throw fail("end " + std::to_string(rec.end) + " is before start " + std::to_string(rec.beg));
    rec.extra.assign(cols.begin() + 3, cols.end());
    if (rec.extra.size() > 2 && rec.extra[2] != "+" && rec.extra[2] != "-" && rec.extra[2] != ".")
      throw fail("strand '" + rec.extra[2] + "' is not +, - or .");
    rec.line = h_->lineno;
    return true;
  }
}

std::vector<BedRecord> read_bed(const std::string& path) {
  BedReader r(path);
  std::vector<BedRecord> out;
  BedRecord rec;
  while (r.next(rec)) out.push_back(rec);
  return out;
}

}  // namespace mm::io
