// BED intervals (3 to 12+ columns, .bed or .bed.gz): comments, track and browser lines and blank
// lines skipped; columns after the third kept as strings.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace mm::io {

struct BedRecord {
  std::string contig;
  int64_t beg = 0, end = 0;        // 0-based half-open
  std::vector<std::string> extra;  // name, score, strand, ... as written
  long line = 0;
  std::string name() const { return extra.size() > 0 ? extra[0] : ""; }
  char strand() const { return extra.size() > 2 ? extra[2][0] : '.'; }
};

class BedReader {
public:
  explicit BedReader(std::string path);  // "-": stdin
  ~BedReader();
  BedReader(const BedReader&) = delete;
  BedReader& operator=(const BedReader&) = delete;
  bool next(BedRecord& rec);
  const std::string& path() const { return path_; }

private:
  struct Handles;
  std::string path_;
  std::unique_ptr<Handles> h_;
};

std::vector<BedRecord> read_bed(const std::string& path);

}  // namespace mm::io
