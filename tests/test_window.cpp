// Windowing: exact coordinates, stride, the last partial window, the N filter, streamed pieces.
#include <gtest/gtest.h>

#include <random>

#include "io/error.hpp"
#include "io/tokenizer.hpp"
#include "io/window.hpp"

using namespace mm::io;

namespace {

std::vector<uint8_t> iota_tokens(size_t n) {
  std::vector<uint8_t> t(n);
  for (size_t i = 0; i < n; ++i) t[i] = static_cast<uint8_t>(1 + i % 4);
  return t;
}

std::vector<std::pair<int64_t, int64_t>> spans(const std::vector<Window>& ws) {
  std::vector<std::pair<int64_t, int64_t>> s;
  for (const auto& w : ws) s.emplace_back(w.beg0, w.end0);
  return s;
}

}  // namespace

TEST(Window, CoordinatesAndContentAreExact) {
  const auto t = iota_tokens(10);
  WindowOptions o{4, 4, true, 1.0};
  const auto ws = make_windows("chr20", 1000, t, o);
  ASSERT_EQ(spans(ws), (std::vector<std::pair<int64_t, int64_t>>{{1000, 1004}, {1004, 1008}, {1008, 1010}}));
  for (const auto& w : ws) {
    EXPECT_EQ(w.contig, "chr20");
    ASSERT_EQ(static_cast<int64_t>(w.tokens.size()), w.end0 - w.beg0);
    for (int64_t i = w.beg0; i < w.end0; ++i) EXPECT_EQ(w.tokens[i - w.beg0], t[i - 1000]);
    EXPECT_TRUE(w.mask.empty());
  }
}

TEST(Window, StrideOverlapAndGap) {
  const auto t = iota_tokens(11);
  EXPECT_EQ(spans(make_windows("c", 0, t, {4, 2, true, 1.0})),
            (std::vector<std::pair<int64_t, int64_t>>{{0, 4}, {2, 6}, {4, 8}, {6, 10}, {8, 11}}));
  // Length 10: the last full window already reaches the end, so no partial one.
  EXPECT_EQ(spans(make_windows("c", 0, iota_tokens(10), {4, 2, true, 1.0})),
            (std::vector<std::pair<int64_t, int64_t>>{{0, 4}, {2, 6}, {4, 8}, {6, 10}}));
  EXPECT_EQ(spans(make_windows("c", 0, t, {3, 5, true, 1.0})),
            (std::vector<std::pair<int64_t, int64_t>>{{0, 3}, {5, 8}, {10, 11}}));
  EXPECT_EQ(spans(make_windows("c", 0, t, {3, 5, false, 1.0})),
            (std::vector<std::pair<int64_t, int64_t>>{{0, 3}, {5, 8}}));
}

TEST(Window, LastPartialKeptOrDropped) {
  const auto t = iota_tokens(10);
  EXPECT_EQ(make_windows("c", 0, t, {4, 4, false, 1.0}).size(), 2u);
  EXPECT_EQ(make_windows("c", 0, t, {4, 4, true, 1.0}).size(), 3u);
  EXPECT_EQ(make_windows("c", 0, iota_tokens(3), {4, 4, false, 1.0}).size(), 0u);
  EXPECT_EQ(spans(make_windows("c", 5, iota_tokens(3), {4, 4, true, 1.0})),
            (std::vector<std::pair<int64_t, int64_t>>{{5, 8}}));
}

TEST(Window, NFractionFilter) {
  // Windows [0,4) with 1 N, [4,8) with 3 N, [8,10) with 2 N of 2.
  const auto t = encode(std::string_view("ANCGNNNTNN"));
  EXPECT_EQ(spans(make_windows("c", 0, t, {4, 4, true, 0.5})),
            (std::vector<std::pair<int64_t, int64_t>>{{0, 4}}));
  EXPECT_EQ(make_windows("c", 0, t, {4, 4, true, 0.75}).size(), 2u);
  EXPECT_EQ(make_windows("c", 0, t, {4, 4, true, 0.0}).size(), 0u);
  std::vector<Window> out;
  WindowMaker m("c", 0, {4, 4, true, 0.25}, [&](Window&& w) { out.push_back(std::move(w)); });
  m.push(t.data(), t.size());
  m.finish();
  EXPECT_EQ(m.emitted(), 1);
  EXPECT_EQ(m.dropped(), 2);
}

TEST(Window, MaskTravelsWithTokens) {
  const std::string s = "ACgtNNacGT";
  std::vector<uint8_t> t(s.size()), mask(s.size());
  ASSERT_EQ(encode(s.data(), s.size(), t.data(), mask.data()), npos);
  const auto ws = make_windows("c", 0, t, {4, 3, true, 1.0}, &mask);
  ASSERT_EQ(ws.size(), 3u);
  EXPECT_EQ(ws[1].mask, (std::vector<uint8_t>{1, 0, 0, 1}));
  EXPECT_EQ(ws[2].mask, (std::vector<uint8_t>{1, 1, 0, 0}));
}

TEST(Window, PiecesFedEqualWhole) {
  std::mt19937 rng(3);
  std::vector<uint8_t> t(5000), mask(5000);
  for (size_t i = 0; i < t.size(); ++i) {
    t[i] = static_cast<uint8_t>(1 + rng() % 5);
    mask[i] = rng() % 2;
  }
  for (WindowOptions o : {WindowOptions{128, 128, true, 1.0}, WindowOptions{128, 50, true, 0.3},
                          WindowOptions{100, 317, true, 1.0}, WindowOptions{64, 1, false, 0.2},
                          WindowOptions{7000, 10, true, 1.0}}) {
    const auto whole = make_windows("chr1", 12345, t, o, &mask);
    std::vector<Window> pieces;
    WindowMaker m("chr1", 12345, o, [&](Window&& w) { pieces.push_back(std::move(w)); });
    for (size_t at = 0; at < t.size();) {
      const size_t n = std::min<size_t>(t.size() - at, rng() % 300);
      m.push(t.data() + at, n, mask.data() + at);
      at += n;
    }
    m.finish();
    ASSERT_EQ(pieces.size(), whole.size()) << o.length << "/" << o.stride;
    EXPECT_GT(whole.size(), 0u);
    for (size_t i = 0; i < whole.size(); ++i) {
      EXPECT_EQ(pieces[i].beg0, whole[i].beg0);
      EXPECT_EQ(pieces[i].end0, whole[i].end0);
      EXPECT_EQ(pieces[i].tokens, whole[i].tokens);
      EXPECT_EQ(pieces[i].mask, whole[i].mask);
      EXPECT_EQ(std::vector<uint8_t>(t.begin() + (whole[i].beg0 - 12345), t.begin() + (whole[i].end0 - 12345)),
                whole[i].tokens);
    }
  }
}

TEST(Window, BadOptionsAreUsageErrors) {
  auto sink = [](Window&&) {};
  EXPECT_THROW(WindowMaker("c", 0, {0, 1, true, 1.0}, sink), mm::UsageError);
  EXPECT_THROW(WindowMaker("c", 0, {4, 0, true, 1.0}, sink), mm::UsageError);
  EXPECT_THROW(WindowMaker("c", 0, {4, 4, true, 1.5}, sink), mm::UsageError);
}
