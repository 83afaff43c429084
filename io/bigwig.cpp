// BigWigWriter over libBigWig (bwCreateHdr, bwCreateChromList, bwAddIntervals/bwAppendIntervals).
#include "io/bigwig.hpp"

#include <bigWig.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <mutex>

#include "io/error.hpp"

namespace mm::io {

namespace {

bigWigFile_t* as_bw(void* p) { return static_cast<bigWigFile_t*>(p); }
constexpr size_t kBatch = 1 << 16;  // intervals handed to libBigWig at once

}  // namespace

BigWigWriter::BigWigWriter(std::string path, std::vector<std::pair<std::string, int64_t>> contigs)
    : path_(std::move(path)), contigs_(std::move(contigs)) {
  static std::once_flag init;
  static int init_status = 0;
  std::call_once(init, [] { init_status = bwInit(1 << 17); });
  if (init_status != 0) throw Error("cannot initialise libBigWig", path_);
  if (path_ == "-") throw Error("bigWig cannot be written to stdout: give a file name", path_);
  std::vector<const char*> names;
  std::vector<uint32_t> lengths;
  for (const auto& [name, len] : contigs_) {
    if (len <= 0 || len > UINT32_MAX) throw Error("contig " + name + " has a length bigWig cannot hold", path_);
    names.push_back(name.c_str());
    lengths.push_back(static_cast<uint32_t>(len));
  }
  // bigWig is written with seeks: a device or a pipe cannot hold one.
  if (is_special_output(path_)) throw UsageError("bigWig output must be a regular file, not " + path_);
  target_ = std::make_unique<OutputTarget>(path_);
  const std::string& temp = target_->write_path();
  // libBigWig's bwOpen crashes when it cannot create the file, so that is tried here first.
  if (std::FILE* probe = std::fopen(temp.c_str(), "w")) {
    std::fclose(probe);
  } else {
    throw Error(std::string("cannot create output: ") + std::strerror(errno), path_);
  }
  bigWigFile_t* bw = bwOpen(temp.c_str(), nullptr, "w");
  if (!bw) {
    target_->discard();
    throw Error("cannot create bigWig output", path_);
  }
  bw->cl = bwCreateChromList(names.data(), lengths.data(), static_cast<int64_t>(names.size()));
  if (bwCreateHdr(bw, 10) || !bw->cl || bwWriteHdr(bw)) {
    bwClose(bw);
    target_->discard();
    throw Error("cannot write the bigWig header", path_);
  }
  bw_ = bw;
}

BigWigWriter::~BigWigWriter() {
  if (!bw_) return;
  bwClose(as_bw(bw_));
  target_->discard();
}

void BigWigWriter::end_run() {
  if (!open_) return;
  starts_.push_back(run_beg_);
  ends_.push_back(run_end_);
  values_.push_back(run_value_);
  open_ = false;
  if (starts_.size() >= kBatch) flush();
}

void BigWigWriter::flush() {
  if (starts_.empty()) return;
  bigWigFile_t* bw = as_bw(bw_);
  const auto n = static_cast<uint32_t>(starts_.size());
  int r;
  if (!contig_started_) {
    std::vector<const char*> chrom(n, contigs_[contig_].first.c_str());
    r = bwAddIntervals(bw, chrom.data(), starts_.data(), ends_.data(), values_.data(), n);
    contig_started_ = true;
  } else {
    r = bwAppendIntervals(bw, starts_.data(), ends_.data(), values_.data(), n);
  }
  if (r) throw Error("libBigWig failed to add intervals on " + contigs_[contig_].first, path_);
  starts_.clear();
  ends_.clear();
  values_.clear();
}

void BigWigWriter::add(const std::string& contig, int64_t beg0, std::span<const float> values) {
  if (!bw_) throw Error("bigWig output already closed", path_);
  if (contig_ < 0 || contigs_[contig_].first != contig) {
    int next = contig_ + 1;
    while (next < static_cast<int>(contigs_.size()) && contigs_[next].first != contig) ++next;
    if (next == static_cast<int>(contigs_.size()))
      throw Error("contig " + contig + " is not among the bigWig's contigs, or comes out of their order", path_);
    end_run();
    flush();
    contig_ = next;
    contig_started_ = false;
    last_end_ = 0;
  }
  const int64_t end = beg0 + static_cast<int64_t>(values.size());
  if (beg0 < last_end_ || end > contigs_[contig_].second)
    throw Error("values for " + contig + ":" + std::to_string(beg0) + "-" + std::to_string(end) +
                    " overlap earlier ones or pass the contig's end", path_);
  last_end_ = end;
  for (size_t i = 0; i < values.size(); ++i) {
    const auto pos = static_cast<uint32_t>(beg0 + static_cast<int64_t>(i));
    const float v = values[i];
    if (open_ && v == run_value_ && pos == run_end_) {
      ++run_end_;
      continue;
    }
    end_run();
    if (std::isnan(v)) continue;
    run_beg_ = pos;
    run_end_ = pos + 1;
    run_value_ = v;
    open_ = true;
  }
}

void BigWigWriter::close() {
  if (!bw_) return;
  end_run();
  flush();
  bwClose(as_bw(bw_));  // writes the index and zoom levels
  bw_ = nullptr;
  std::error_code ec;
  if (std::filesystem::file_size(target_->write_path(), ec) == 0 || ec) {
    target_->discard();
    throw Error("cannot finish writing the bigWig", path_);
  }
  target_->commit();
}

}  // namespace mm::io
