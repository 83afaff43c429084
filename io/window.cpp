// Windowing: a buffer that always starts at the next window's first base.
#include "io/window.hpp"

#include <algorithm>

#include "io/error.hpp"
#include "io/tokenizer.hpp"

namespace mm::io {

WindowMaker::WindowMaker(std::string contig, int64_t start0, WindowOptions options, Sink sink)
    : contig_(std::move(contig)), opt_(options), sink_(std::move(sink)), next_beg_(start0),
      covered_end_(start0) {
  if (opt_.length < 1) throw UsageError("window length must be at least 1");
  if (opt_.stride < 1) throw UsageError("window stride must be at least 1");
  if (!(opt_.max_n_fraction >= 0.0 && opt_.max_n_fraction <= 1.0))
    throw UsageError("maximum N fraction must lie in [0, 1]");
}

void WindowMaker::push(const uint8_t* tokens, size_t n, const uint8_t* mask) {
  has_mask_ = has_mask_ || mask;
  // Bases between windows (S > L) never enter the buffer.
  const size_t skip = static_cast<size_t>(std::min<int64_t>(skip_, static_cast<int64_t>(n)));
  skip_ -= static_cast<int64_t>(skip);
  next_beg_ += static_cast<int64_t>(skip);
  tokens += skip;
  if (mask) mask += skip;
  n -= skip;

  const size_t L = static_cast<size_t>(opt_.length);
  while (n > 0) {
    // Fill up to one window, emit, advance; this keeps the buffer at most L long.
    const size_t take = std::min(n, L - buf_.size());
    buf_.insert(buf_.end(), tokens, tokens + take);
    if (has_mask_) {
      mask_buf_.resize(buf_.size() - take, 0);  // pieces pushed before the first mask: unmasked
      if (mask) mask_buf_.insert(mask_buf_.end(), mask, mask + take);
      else mask_buf_.resize(buf_.size(), 0);
    }
    tokens += take;
    if (mask) mask += take;
    n -= take;
    if (buf_.size() < L) break;

    emit(L);
    covered_end_ = next_beg_ + opt_.length;
    const int64_t S = opt_.stride;
    if (S <= opt_.length) {
      buf_.erase(buf_.begin(), buf_.begin() + S);
      if (has_mask_) mask_buf_.erase(mask_buf_.begin(), mask_buf_.begin() + S);
      next_beg_ += S;
    } else {
      buf_.clear();
      mask_buf_.clear();
      next_beg_ += opt_.length;
      const size_t gap = static_cast<size_t>(std::min<int64_t>(S - opt_.length, static_cast<int64_t>(n)));
      skip_ = S - opt_.length - static_cast<int64_t>(gap);
      next_beg_ += static_cast<int64_t>(gap);
      tokens += gap;
      if (mask) mask += gap;
      n -= gap;
    }
  }
}

void WindowMaker::finish() {
  if (finished_) return;
  finished_ = true;
  const int64_t end = next_beg_ + static_cast<int64_t>(buf_.size());
  if (opt_.keep_last_partial && !buf_.empty() && end > covered_end_) emit(buf_.size());
  buf_.clear();
  mask_buf_.clear();
}

void WindowMaker::emit(size_t count) {
  const auto n_count = std::count(buf_.begin(), buf_.begin() + static_cast<std::ptrdiff_t>(count), tok::N);
  if (static_cast<double>(n_count) > opt_.max_n_fraction * static_cast<double>(count)) {
    ++dropped_;
    return;
  }
  Window w;
  w.contig = contig_;
  w.beg0 = next_beg_;
  w.end0 = next_beg_ + static_cast<int64_t>(count);
  w.tokens.assign(buf_.begin(), buf_.begin() + static_cast<std::ptrdiff_t>(count));
  if (has_mask_) w.mask.assign(mask_buf_.begin(), mask_buf_.begin() + static_cast<std::ptrdiff_t>(count));
  ++emitted_;
  sink_(std::move(w));
}

std::vector<Window> make_windows(const std::string& contig, int64_t start0,
                                 const std::vector<uint8_t>& tokens, const WindowOptions& options,
                                 const std::vector<uint8_t>* mask) {
  std::vector<Window> out;
  WindowMaker maker(contig, start0, options, [&](Window&& w) { out.push_back(std::move(w)); });
  maker.push(tokens.data(), tokens.size(), mask ? mask->data() : nullptr);
  maker.finish();
  return out;
}

}  // namespace mm::io
