// FASTA input: indexed random access (plain or bgzip, .fai/.gzi, through htslib faidx) and
// streaming record by record in bounded memory (plain, gzip, bgzip or stdin).
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "io/error.hpp"
#include "io/sequence_source.hpp"

struct faidx_t;
struct BGZF;

namespace mm::io {

struct FastaOptions {
  bool allow_alias = true;  // chr20 <-> 20, chrM <-> MT
  bool build_index = true;  // build a missing .fai (and .gzi): beside the FASTA when its folder
                            // is writable, else in the index cache (index_cache_dir())
  Reporter reporter;        // notes: alias used, index built
};

// Where indexes of FASTA files in read-only folders are built and kept: $MEMMAMBA_CACHE, else
// $XDG_CACHE_HOME/memmamba, else ~/.cache/memmamba, else $TMPDIR (or /tmp)/memmamba-cache-<uid>;
// the files are <dir>/faidx/<the FASTA's absolute path, '/' as '%'>.fai and .gzi.
std::string index_cache_dir();

// Random access to a FASTA with a faidx index. The constructor checks the index before any
// fetch: present (or built), not older than the FASTA, consistent with the file size, no
// duplicate contig names; plain gzip is refused (it cannot be indexed). fetch() is thread-safe.
class IndexedFasta final : public SequenceSource {
public:
  explicit IndexedFasta(std::string path, FastaOptions options = {});
  ~IndexedFasta() override;
  IndexedFasta(const IndexedFasta&) = delete;
  IndexedFasta& operator=(const IndexedFasta&) = delete;

  const std::vector<std::string>& contigs() const override { return names_; }
  std::string resolve(const std::string& name) const override;
  int64_t length(const std::string& contig) const override;
  std::string fetch(const std::string& contig, int64_t beg, int64_t end) const override;
  const std::string& path() const override { return path_; }

private:
  void ensure_index(bool compressed);
  void read_fai(bool compressed);

  std::string path_, fai_path_, gzi_path_;
  FastaOptions opt_;
  faidx_t* fai_ = nullptr;
  std::vector<std::string> names_;
  std::unordered_map<std::string, int64_t> lengths_;
  mutable std::mutex mutex_;  // guards fai_ (one shared file handle) and reported_
  mutable std::set<std::string> reported_;
};

// Streams any FASTA record by record. Sequence comes in pieces of at most max_bases (line breaks
// and CR removed, letters as stored), so memory stays bounded whatever the record or line length.
// Every base is checked against the IUPAC codes; errors name the file and line.
class FastaReader {
public:
  explicit FastaReader(std::string path);  // "-" reads stdin
  ~FastaReader();
  FastaReader(const FastaReader&) = delete;
  FastaReader& operator=(const FastaReader&) = delete;

  // Moves to the next record (skipping what is left of the current one); false at the end.
  bool next_record();
  const std::string& name() const { return name_; }
  const std::string& description() const { return description_; }  // header text after the name
  long header_line() const { return header_line_; }
  // The next piece of the current record's sequence; empty when the record is done. The view
  // stays valid until the next call.
  std::string_view read_chunk(size_t max_bases);
  // The rest of the current record at once (for small records).
  std::string read_all();
  const std::string& path() const { return path_; }

private:
  bool fill();  // false at end of file
  void end_record();
  [[noreturn]] void fail(const std::string& what, long line) const;

  std::string path_;
  BGZF* fp_ = nullptr;
  std::vector<char> buf_;
  size_t pos_ = 0, len_ = 0;
  bool eof_ = false, at_line_start_ = true, in_record_ = false;
  long line_ = 1, header_line_ = 0;
  int64_t record_bases_ = 0;
  std::string name_, description_, chunk_;
  std::unordered_map<std::string, long> seen_;  // record name -> header line
};

}  // namespace mm::io
