// bigWig output of per-base values through libBigWig: runs of equal values become one interval,
// NaN = no data. Written to a temp file beside the output and renamed on close.
#pragma once
#include "io/output_target.hpp"
#include <memory>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace mm::io {

class BigWigWriter {
public:
  // `contigs`: names and lengths, in the order values will be added.
  BigWigWriter(std::string path, std::vector<std::pair<std::string, int64_t>> contigs);
  ~BigWigWriter();  // without close(): no output file is left
  BigWigWriter(const BigWigWriter&) = delete;
  BigWigWriter& operator=(const BigWigWriter&) = delete;

  // Values of positions beg0, beg0+1, ...; contigs in constructor order, positions increasing.
  void add(const std::string& contig, int64_t beg0, std::span<const float> values);
  void close();

private:
  void end_run();
  void flush();
  std::string path_;
  std::unique_ptr<OutputTarget> target_;
  std::vector<std::pair<std::string, int64_t>> contigs_;
  void* bw_ = nullptr;  // bigWigFile_t*, kept out of this header with libBigWig's
  int contig_ = -1;     // index of the contig being written
  bool contig_started_ = false;  // first block of contig_ already given to libBigWig
  int64_t last_end_ = 0;
  bool open_ = false;   // a run is open: [run_beg_, run_end_) = run_value_
  uint32_t run_beg_ = 0, run_end_ = 0;
  float run_value_ = 0;
  std::vector<uint32_t> starts_, ends_;
  std::vector<float> values_;
};

}  // namespace mm::io
