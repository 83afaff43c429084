// Cutting a long tokenized sequence into fixed-length windows with exact coordinates, either
// from a whole sequence in memory or from pieces streamed in (whole chromosomes never need to
// be held at once).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace mm::io {

struct WindowOptions {
  int64_t length = 1024;        // L, tokens per window
  int64_t stride = 1024;        // S, start-to-start distance (S < L overlaps, S > L skips)
  bool keep_last_partial = true;  // emit a shorter final window covering the tail
  double max_n_fraction = 1.0;  // drop windows whose fraction of N tokens exceeds this
};

struct Window {
  std::string contig;
  int64_t beg0 = 0, end0 = 0;   // 0-based half-open, in contig coordinates
  std::vector<uint8_t> tokens;  // end0 - beg0 of them
  std::vector<uint8_t> mask;    // soft-mask flags, empty when none were given
};

// Stateful windowing over a sequence fed in pieces. Holds at most L + one piece of tokens.
// A final partial window is emitted by finish() when kept and when it covers bases no full
// window covered.
class WindowMaker {
public:
  using Sink = std::function<void(Window&&)>;
  // `start0`: contig coordinate of the first token that will be pushed. Throws mm::UsageError
  // for L < 1, S < 1 or a threshold outside [0, 1].
  WindowMaker(std::string contig, int64_t start0, WindowOptions options, Sink sink);
  // The next n tokens of the contig (mask may be null, but consistently so).
  void push(const uint8_t* tokens, size_t n, const uint8_t* mask = nullptr);
  void finish();
  int64_t emitted() const { return emitted_; }
  int64_t dropped() const { return dropped_; }  // removed by the N filter

private:
  void emit(size_t count);

  std::string contig_;
  WindowOptions opt_;
  Sink sink_;
  std::vector<uint8_t> buf_, mask_buf_;  // tokens from next_beg_ onwards
  int64_t next_beg_;                     // contig coordinate of buf_[0] = next window start
  int64_t skip_ = 0;                     // tokens still to discard before next_beg_ (S > L)
  int64_t covered_end_;                  // end of the last full window
  int64_t emitted_ = 0, dropped_ = 0;
  bool has_mask_ = false, finished_ = false;
};

// Whole-sequence convenience: the windows WindowMaker gives for one push of everything.
std::vector<Window> make_windows(const std::string& contig, int64_t start0,
                                 const std::vector<uint8_t>& tokens, const WindowOptions& options,
                                 const std::vector<uint8_t>* mask = nullptr);

}  // namespace mm::io
