// Reads of a SAM, BAM or CRAM file (htslib), over a region or the whole file, with samtools-style
// filters, each read's bases in read or reference orientation.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace mm::io {

// A region already parsed by the caller: contig name and 0-based half-open [beg0, end0);
// end0 < 0 means "to the end of the contig".
struct BamRegion {
  std::string contig;
  int64_t beg0 = 0;
  int64_t end0 = -1;
};

enum class ReadOrientation {
  read,       // as sequenced: reverse-strand reads (0x10) are reverse-complemented back
  reference,  // as stored in the file, along the reference
};

struct BamOptions {
  std::string reference;      // FASTA for CRAM decoding (samtools -T); empty: none
  int min_mapq = 0;           // samtools -q
  uint16_t require_flags = 0; // samtools -f: every bit must be set
  uint16_t exclude_flags = 0; // samtools -F: no bit may be set
  bool primary_only = false;  // drop secondary (0x100) and supplementary (0x800)
  ReadOrientation orientation = ReadOrientation::read;
};

struct Read {
  std::string name;
  std::string contig;  // "*" when unplaced
  int64_t pos = -1;    // 0-based leftmost position, -1 when unplaced
  uint16_t flag = 0;
  int mapq = 0;
  std::string seq;     // uppercase IUPAC letters; empty when the file stores none ("*")
};

class BamReader {
public:
  explicit BamReader(std::string path, BamOptions options = {});
  ~BamReader();
  BamReader(const BamReader&) = delete;
  BamReader& operator=(const BamReader&) = delete;

  // Restricts the following next() calls to reads overlapping `region`; needs an index
  // (.bai/.csi/.crai). May be called again for another region.
  void query(const BamRegion& region);
  // Next read passing the filters; false at the end.
  bool next(Read& read);

  const std::vector<std::string>& contigs() const { return contigs_; }
  const std::string& path() const { return path_; }

private:
  struct Handles;
  std::string path_;
  BamOptions options_;
  std::vector<std::string> contigs_;
  std::unique_ptr<Handles> h_;
};

}  // namespace mm::io
