// BedGraphWriter: runs of equal values become one line; shortest round-trip float text.
#include "io/bedgraph.hpp"

#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "io/error.hpp"

namespace mm::io {

BedGraphWriter::BedGraphWriter(std::string path, BedGraphOptions options)
    : path_(std::move(path)), options_(std::move(options)) {
  if (path_ == "-") {
    out_ = stdout;
  } else {
    target_ = std::make_unique<OutputTarget>(path_);
    out_ = std::fopen(target_->write_path().c_str(), "w");
    if (!out_) throw Error(std::string("cannot create output: ") + std::strerror(errno), path_);
  }
  if (options_.header) {
    std::string line = "track type=bedGraph";
    if (!options_.track_name.empty()) line += " name=\"" + options_.track_name + "\"";
    std::fprintf(out_, "%s\n", line.c_str());
  }
}

BedGraphWriter::~BedGraphWriter() {
  if (!out_ || out_ == stdout) return;
  std::fclose(out_);  // target_ discards the unfinished file
}

void BedGraphWriter::flush_run() {
  if (!open_) return;
  char num[32];
  auto res = std::to_chars(num, num + sizeof num, value_);
  *res.ptr = '\0';
  std::fprintf(out_, "%s\t%lld\t%lld\t%s\n", contig_.c_str(), static_cast<long long>(beg_),
               static_cast<long long>(end_), num);
  open_ = false;
}

void BedGraphWriter::add(const std::string& contig, int64_t beg0, std::span<const float> values) {
  if (!out_) throw Error("bedGraph output already closed", path_);
  for (size_t i = 0; i < values.size(); ++i) {
    const int64_t pos = beg0 + static_cast<int64_t>(i);
    const float v = values[i];
    if (std::isnan(v)) {
      flush_run();
      continue;
    }
    if (open_ && options_.merge && v == value_ && pos == end_ && contig == contig_) {
      ++end_;
      continue;
    }
    flush_run();
    contig_ = contig;
    beg_ = pos;
    end_ = pos + 1;
    value_ = v;
    open_ = true;
  }
}

void BedGraphWriter::close() {
  if (!out_) return;
  flush_run();
  std::FILE* f = out_;
  out_ = nullptr;
  if (f == stdout) {
    if (std::fflush(f) != 0) throw Error("cannot write bedGraph to stdout", path_);
    return;
  }
  const bool failed = std::ferror(f) != 0;
  if (std::fclose(f) != 0 || failed) {
    target_->discard();
    throw Error("cannot write bedGraph (disk full?)", path_);
  }
  target_->commit();
}

}  // namespace mm::io
