// FASTA through htslib: faidx for random access, bgzf (which reads plain, gzip and bgzip alike)
// for streaming. htslib's own log lines are silenced here; every problem becomes an mm::Error.
#include "io/fasta.hpp"

#include <htslib/bgzf.h>
#include <htslib/faidx.h>
#include <htslib/hts_log.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "io/tokenizer.hpp"

namespace fs = std::filesystem;

namespace mm::io {
namespace {

// htslib prints to stderr on failure; libraries must not, so quiet it while we call in.
class QuietHts {
public:
  QuietHts() : saved_(hts_get_log_level()) { hts_set_log_level(HTS_LOG_OFF); }
  ~QuietHts() { hts_set_log_level(saved_); }

private:
  enum htsLogLevel saved_;
};

std::string shown(char c) {
  if (std::isprint(static_cast<unsigned char>(c))) return std::string("'") + c + "'";
  char b[8];
  std::snprintf(b, sizeof b, "0x%02x", static_cast<unsigned char>(c));
  return b;
}

bool newer(const fs::path& a, const fs::path& b) {
  std::error_code ea, eb;
  const auto ta = fs::last_write_time(a, ea), tb = fs::last_write_time(b, eb);
  return !ea && !eb && ta > tb;
}

std::string rebuild_hint(const std::string& path) {
  return "rebuild it with `samtools faidx " + path + "`";
}

bool writable_dir(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  return !ec && ::access(dir.c_str(), W_OK) == 0;
}

}  // namespace

std::string index_cache_dir() {
  auto env = [](const char* name) -> std::string {
    const char* v = std::getenv(name);
    return v && *v ? v : "";
  };
  if (auto v = env("MEMMAMBA_CACHE"); !v.empty()) return v;
  if (auto v = env("XDG_CACHE_HOME"); !v.empty()) return (fs::path(v) / "memmamba").string();
  if (auto home = env("HOME"); !home.empty() && writable_dir(fs::path(home) / ".cache" / "memmamba"))
    return (fs::path(home) / ".cache" / "memmamba").string();
  const std::string tmp = env("TMPDIR").empty() ? "/tmp" : env("TMPDIR");
  return (fs::path(tmp) / ("memmamba-cache-" + std::to_string(::getuid()))).string();
}

// ---------------------------------------------------------------------------------------------
// IndexedFasta

IndexedFasta::IndexedFasta(std::string path, FastaOptions options)
    : path_(std::move(path)), fai_path_(path_ + ".fai"), gzi_path_(path_ + ".gzi"), opt_(std::move(options)) {
  QuietHts quiet;
  if (!fs::is_regular_file(path_))
    throw Error(fs::exists(path_) ? "not a regular file" : "cannot open FASTA: no such file", path_);
  bool compressed = false;
  {
    BGZF* probe = bgzf_open(path_.c_str(), "r");
    if (!probe) throw Error(std::string("cannot open FASTA: ") + std::strerror(errno), path_);
    const bool gzip = probe->is_compressed && probe->is_gzip;
    compressed = probe->is_compressed;
    bgzf_close(probe);
    if (gzip)
      throw Error("compressed with plain gzip, which allows no random access: recompress it with "
                  "bgzip (zcat " + path_ + " | bgzip > copy.fa.gz) or read it as a stream",
                  path_);
  }
  ensure_index(compressed);
  read_fai(compressed);
  fai_ = fai_load3(path_.c_str(), fai_path_.c_str(), compressed ? gzi_path_.c_str() : nullptr, 0);
  if (!fai_) throw Error("cannot load the FASTA index " + fai_path_ + ": " + rebuild_hint(path_), path_);
  if (faidx_nseq(fai_) != static_cast<int>(names_.size()))
    throw Error("htslib reads a different number of contigs from " + fai_path_ + ": " +
                    rebuild_hint(path_), path_);
}

IndexedFasta::~IndexedFasta() {
  if (fai_) fai_destroy(fai_);
}

void IndexedFasta::ensure_index(bool compressed) {
  auto have = [&](const std::string& fai, const std::string& gzi) {
    return fs::exists(fai) && (!compressed || fs::exists(gzi));
  };
  auto check_fresh = [&](const std::string& fai, const std::string& gzi) {
    for (const std::string& idx : {fai, compressed ? gzi : fai})
      if (newer(path_, idx))
        throw Error("index " + idx + " is older than the FASTA (stale): " + rebuild_hint(path_), path_);
  };
  if (have(fai_path_, gzi_path_)) return check_fresh(fai_path_, gzi_path_);
  const std::string missing = fs::exists(fai_path_) ? gzi_path_ : fai_path_;
  if (!opt_.build_index)
    throw Error("no index " + missing + ": create it with `samtools faidx " + path_ + "`", path_);
  // A read-only folder (a system package's data, say): the index goes to the cache instead,
  // under a name made of the FASTA's absolute path.
  const fs::path dir = fs::absolute(path_).parent_path();
  bool in_cache = false;
  if (::access(dir.c_str(), W_OK) != 0) {
    std::string key = fs::absolute(path_).lexically_normal().string();
    for (char& c : key)
      if (c == '/') c = '%';
    const fs::path cache = fs::path(index_cache_dir()) / "faidx";
    const std::string fai = (cache / (key + ".fai")).string(), gzi = (cache / (key + ".gzi")).string();
    if (have(fai, gzi) && !newer(path_, fai) && (!compressed || !newer(path_, gzi))) {
      fai_path_ = fai;
      gzi_path_ = gzi;
      return;
    }
    if (!writable_dir(cache))
      throw Error("no index " + missing + ", its folder is not writable and neither is the index cache " +
                      cache.string() + " (set MEMMAMBA_CACHE): run `samtools faidx FILE` on a copy of the "
                      "FASTA in a writable folder and use that copy",
                  path_);
    fai_path_ = fai;
    gzi_path_ = gzi;
    in_cache = true;
  }
  // faidx would keep the first of two records with one name and drop the other without an
  // error, so the names are checked by one streaming pass first (which also checks the bases).
  {
    FastaReader check(path_);
    while (check.next_record()) {}
  }
  // Built under temporary names and renamed, so a concurrent reader never sees half an index.
  const std::string tmp_fai = fai_path_ + ".tmp" + std::to_string(::getpid()),
                    tmp_gzi = gzi_path_ + ".tmp" + std::to_string(::getpid());
  if (fai_build3(path_.c_str(), tmp_fai.c_str(), compressed ? tmp_gzi.c_str() : nullptr) != 0) {
    std::error_code ec;
    fs::remove(tmp_fai, ec);
    fs::remove(tmp_gzi, ec);
    throw Error("cannot build the index " + missing + ": " + std::strerror(errno), path_);
  }
  std::error_code ec;
  if (compressed) fs::rename(tmp_gzi, gzi_path_, ec);
  if (!ec) fs::rename(tmp_fai, fai_path_, ec);
  if (ec) throw Error("cannot write the index " + fai_path_ + ": " + ec.message(), path_);
  opt_.reporter.say(in_cache ? "built FASTA index for " + path_ + " in " + fai_path_ + " (its folder is not writable)"
                             : "built FASTA index for " + path_);
}

void IndexedFasta::read_fai(bool compressed) {
  std::ifstream in(fai_path_);
  if (!in) throw Error("cannot read index", fai_path_);
  std::unordered_map<std::string, long> first_line;
  const auto file_size = compressed ? -1 : static_cast<int64_t>(fs::file_size(path_));
  std::string line;
  for (long no = 1; std::getline(in, line); ++no) {
    if (line.empty()) continue;
    std::vector<std::string> f;
    for (size_t b = 0;;) {
      const size_t t = line.find('\t', b);
      f.push_back(line.substr(b, t - b));
      if (t == std::string::npos) break;
      b = t + 1;
    }
    int64_t len = 0, offset = 0, line_bases = 0, line_width = 0;
    try {
      if (f.size() < 5) throw std::invalid_argument("fields");
      len = std::stoll(f[1]), offset = std::stoll(f[2]);
      line_bases = std::stoll(f[3]), line_width = std::stoll(f[4]);
    } catch (const std::exception&) {
      throw Error("malformed index line (expected name, length, offset, line bases, line width): " +
                      rebuild_hint(path_), fai_path_, no);
    }
    if (len < 0 || offset < 0 || line_bases < 1 || line_width < line_bases)
      throw Error("malformed index line: " + rebuild_hint(path_), fai_path_, no);
    if (auto [it, fresh] = first_line.emplace(f[0], no); !fresh)
      throw Error("duplicate contig name '" + f[0] + "' (also on line " + std::to_string(it->second) +
                      "): contig names must be unique", fai_path_, no);
    // Where the record's last base lies; past the end of the file means the FASTA changed.
    const int64_t last = offset + (len / line_bases) * line_width + len % line_bases;
    if (file_size >= 0 && last > file_size)
      throw Error("index does not match the FASTA (contig " + f[0] + " would end at byte " +
                      std::to_string(last) + " of a " + std::to_string(file_size) +
                      "-byte file): " + rebuild_hint(path_), fai_path_, no);
    names_.push_back(f[0]);
    lengths_[f[0]] = len;
  }
}

std::string IndexedFasta::resolve(const std::string& name) const {
  if (lengths_.count(name)) return name;
  if (!opt_.allow_alias) return {};
  std::vector<std::string> candidates;
  if (name.rfind("chr", 0) == 0) {
    const std::string bare = name.substr(3);
    candidates.push_back(bare == "M" ? "MT" : bare);
  } else {
    candidates.push_back(name == "MT" ? "chrM" : "chr" + name);
  }
  for (const std::string& c : candidates) {
    if (!lengths_.count(c)) continue;
    std::lock_guard lock(mutex_);
    if (reported_.insert(name).second)
      opt_.reporter.say("contig " + name + " resolved to " + c + " in " + path_);
    return c;
  }
  return {};
}

int64_t IndexedFasta::length(const std::string& contig) const {
  const auto it = lengths_.find(contig);
  if (it == lengths_.end()) throw Error("contig '" + contig + "' is not in the FASTA index", path_);
  return it->second;
}

std::string IndexedFasta::fetch(const std::string& contig, int64_t beg, int64_t end) const {
  const int64_t len = length(contig);
  if (beg < 0 || end > len || beg > end)
    throw Error("interval " + std::to_string(beg) + "-" + std::to_string(end) + " (0-based) is outside contig " +
                    contig + " (length " + std::to_string(len) + ")", path_);
  if (beg == end) return {};
  hts_pos_t got = 0;
  char* s = nullptr;
  {
    std::lock_guard lock(mutex_);
    QuietHts quiet;
    s = faidx_fetch_seq64(fai_, contig.c_str(), beg, end - 1, &got);
  }
  if (!s) throw Error("cannot read " + contig + " from the FASTA: truncated or corrupt file, or a stale index (" +
                          rebuild_hint(path_) + ")", path_);
  std::string out(s, static_cast<size_t>(got));
  std::free(s);
  if (got != end - beg)
    throw Error("read " + std::to_string(got) + " bases of " + contig + " where the index promises " +
                    std::to_string(end - beg) + ": the index is stale, " + rebuild_hint(path_), path_);
  // A stale index points into headers or other records; their text gives it away.
  for (size_t i = 0; i < out.size(); ++i)
    if (!std::isalpha(static_cast<unsigned char>(out[i])))
      throw Error(contig + " at position " + std::to_string(beg + static_cast<int64_t>(i) + 1) + " holds " +
                      shown(out[i]) + ", not a base: the index is stale, " + rebuild_hint(path_), path_);
  return out;
}

// ---------------------------------------------------------------------------------------------
// FastaReader

FastaReader::FastaReader(std::string path) : path_(std::move(path)), buf_(1 << 16) {
  QuietHts quiet;
  if (path_ != "-" && !fs::exists(path_)) throw Error("cannot open FASTA: no such file", path_);
  errno = 0;
  fp_ = bgzf_open(path_.c_str(), "r");
  if (!fp_) throw Error(std::string("cannot open FASTA: ") + (errno ? std::strerror(errno) : "unknown error"), path_);
}

FastaReader::~FastaReader() {
  if (fp_) bgzf_close(fp_);
}

void FastaReader::fail(const std::string& what, long line) const { throw Error(what, path_, line); }

bool FastaReader::fill() {
  if (pos_ < len_) return true;
  if (eof_) return false;
  QuietHts quiet;
  const ssize_t n = bgzf_read(fp_, buf_.data(), buf_.size());
  if (n < 0)
    fail(fp_->is_compressed ? "truncated or corrupt compressed file" : "read error", line_);
  pos_ = 0;
  len_ = static_cast<size_t>(n);
  eof_ = n == 0;
  return !eof_;
}

bool FastaReader::next_record() {
  while (in_record_) read_chunk(buf_.size());
  // Between records: blank lines are tolerated, anything else must be a header.
  while (fill()) {
    const char c = buf_[pos_];
    if (c == '\n' || c == '\r') {
      if (c == '\n') ++line_;
      ++pos_;
      continue;
    }
    if (c != '>')
      fail("FASTA without a header line: expected '>' before the sequence", line_);
    break;
  }
  if (!fill()) {
    if (seen_.empty()) fail("no FASTA records: the file is empty", 0);
    return false;
  }
  // Header line, '>' included.
  std::string header;
  header_line_ = line_;
  for (bool done = false; !done && fill();) {
    const char* b = buf_.data() + pos_;
    const void* nl = std::memchr(b, '\n', len_ - pos_);
    const size_t n = nl ? static_cast<size_t>(static_cast<const char*>(nl) - b) : len_ - pos_;
    header.append(b, n);
    pos_ += n;
    if (nl) {
      ++pos_;
      ++line_;
      done = true;
    }
    if (header.size() > (1u << 20)) fail("header line longer than 1 MiB", header_line_);
  }
  if (!header.empty() && header.back() == '\r') header.pop_back();
  const size_t name_end = header.find_first_of(" \t", 1);
  name_ = header.substr(1, name_end == std::string::npos ? std::string::npos : name_end - 1);
  description_.clear();
  if (name_end != std::string::npos) {
    const size_t d = header.find_first_not_of(" \t", name_end);
    if (d != std::string::npos) description_ = header.substr(d);
  }
  if (name_.empty()) fail("header line without a record name", header_line_);
  if (auto [it, fresh] = seen_.emplace(name_, header_line_); !fresh)
    fail("duplicate record name '" + name_ + "' (first on line " + std::to_string(it->second) + ")",
         header_line_);
  in_record_ = true;
  at_line_start_ = true;
  record_bases_ = 0;
  return true;
}

void FastaReader::end_record() {
  in_record_ = false;
  if (record_bases_ == 0) fail("record '" + name_ + "' has no sequence", header_line_);
}

std::string_view FastaReader::read_chunk(size_t max_bases) {
  if (max_bases == 0) throw UsageError("FastaReader::read_chunk needs max_bases > 0");
  if (chunk_.size() < max_bases) chunk_.resize(max_bases);
  size_t n = 0;
  while (in_record_ && n < max_bases) {
    if (!fill() || (at_line_start_ && buf_[pos_] == '>')) {
      end_record();
      break;
    }
    const char* b = buf_.data();
    const void* nl = std::memchr(b + pos_, '\n', len_ - pos_);
    const size_t seg_end = nl ? static_cast<size_t>(static_cast<const char*>(nl) - b) : len_;
    size_t i = pos_;
    const size_t before = n;
    for (; i < seg_end && n < max_bases; ++i) {
      const char c = b[i];
      if (is_iupac(c)) chunk_[n++] = c;
      else if (c != '\r')
        fail("invalid character " + shown(c) + " in the sequence of record '" + name_ +
                 "' (only IUPAC nucleotide letters are allowed)", line_);
    }
    record_bases_ += static_cast<int64_t>(n - before);
    at_line_start_ = false;
    pos_ = i;
    if (nl && i == seg_end) {
      ++pos_;
      ++line_;
      at_line_start_ = true;
    }
  }
  return {chunk_.data(), n};
}

std::string FastaReader::read_all() {
  std::string all;
  for (std::string_view piece; !(piece = read_chunk(1 << 20)).empty();) all.append(piece);
  return all;
}

}  // namespace mm::io
