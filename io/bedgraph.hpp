// bedGraph output of per-base values: one line per run of equal values (or per base), 0-based
// half-open, NaN = no data (no line). Files are written atomically; "-" streams to stdout.
#pragma once
#include "io/output_target.hpp"
#include <memory>
#include <cstdint>
#include <cstdio>
#include <span>
#include <string>

namespace mm::io {

struct BedGraphOptions {
  bool header = false;     // write a "track type=bedGraph" line first
  std::string track_name;  // name=... on that line, when not empty
  bool merge = true;       // join consecutive equal values into one line
};

class BedGraphWriter {
public:
  explicit BedGraphWriter(std::string path, BedGraphOptions options = {});
  ~BedGraphWriter();  // without close(): no output file is left
  BedGraphWriter(const BedGraphWriter&) = delete;
  BedGraphWriter& operator=(const BedGraphWriter&) = delete;

  // Values of positions beg0, beg0+1, ... of `contig`; calls continue runs across their boundary.
  void add(const std::string& contig, int64_t beg0, std::span<const float> values);
  void close();

private:
  void flush_run();
  std::string path_;
  std::unique_ptr<OutputTarget> target_;  // null for stdout
  BedGraphOptions options_;
  std::FILE* out_ = nullptr;
  std::string contig_;  // the open run
  int64_t beg_ = 0, end_ = 0;
  float value_ = 0;
  bool open_ = false;
};

}  // namespace mm::io
