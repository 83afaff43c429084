// Tokenizer: the DESIGN §3 table for every letter, soft-mask flags, reverse complement, errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "io/tokenizer.hpp"

using namespace mm::io;

TEST(Tokenizer, TableForEveryIupacLetterBothCases) {
  const std::pair<char, uint8_t> expected[] = {
      {'A', tok::A}, {'C', tok::C}, {'G', tok::G}, {'T', tok::T}, {'U', tok::T}, {'N', tok::N},
      {'R', tok::N}, {'Y', tok::N}, {'S', tok::N}, {'W', tok::N}, {'K', tok::N}, {'M', tok::N},
      {'B', tok::N}, {'D', tok::N}, {'H', tok::N}, {'V', tok::N}};
  for (auto [c, t] : expected) {
    for (char l : {c, static_cast<char>(c - 'A' + 'a')}) {
      uint8_t out = 99, mask = 99;
      EXPECT_EQ(encode(&l, 1, &out, &mask), npos) << l;
      EXPECT_EQ(out, t) << l;
      EXPECT_EQ(mask, l >= 'a' ? 1 : 0) << l;
      EXPECT_TRUE(is_iupac(l));
    }
  }
  EXPECT_EQ(tok::PAD, 0);
  EXPECT_EQ(tok::BOS, 6);
  EXPECT_EQ(tok::vocab_size, 8);
}

TEST(Tokenizer, EveryOtherByteIsInvalid) {
  const std::string valid = "ACGTUNRYSWKMBDHVacgtunryswkmbdhv";
  for (int b = 0; b < 256; ++b) {
    const char c = static_cast<char>(b);
    if (valid.find(c) != std::string::npos) continue;
    uint8_t out;
    EXPECT_EQ(encode(&c, 1, &out), 0u) << "byte " << b;
    EXPECT_FALSE(is_iupac(c)) << "byte " << b;
  }
}

TEST(Tokenizer, ReportsFirstInvalidPositionAcrossBlocks) {
  std::string s(1000, 'A');
  s[700] = '-';
  s[900] = '*';
  std::vector<uint8_t> out(s.size());
  EXPECT_EQ(encode(s.data(), s.size(), out.data()), 700u);
  EXPECT_EQ(out[699], tok::A);  // everything before it is encoded
  size_t bad = 0;
  encode(std::string_view("ACGTX"), &bad);
  EXPECT_EQ(bad, 4u);
  encode(std::string_view("ACGT"), &bad);
  EXPECT_EQ(bad, npos);
}

TEST(Tokenizer, MaskFlagsLowercase) {
  const std::string s = "ACgtNnAc";
  std::vector<uint8_t> t(s.size()), m(s.size());
  ASSERT_EQ(encode(s.data(), s.size(), t.data(), m.data()), npos);
  EXPECT_EQ(t, (std::vector<uint8_t>{1, 2, 3, 4, 5, 5, 1, 2}));
  EXPECT_EQ(m, (std::vector<uint8_t>{0, 0, 1, 1, 0, 1, 0, 1}));
  std::string back(s.size(), '\0');
  decode(t.data(), t.size(), back.data(), m.data());
  EXPECT_EQ(back, "ACgtNnAc");
}

TEST(Tokenizer, DecodeSpecialTokens) {
  EXPECT_EQ(decode({tok::BOS, tok::A, tok::C, tok::G, tok::T, tok::N, tok::PAD}), "^ACGTN-");
}

TEST(Tokenizer, ReverseComplement) {
  std::vector<uint8_t> t = encode(std::string_view("AACGTN"));
  std::vector<uint8_t> m = {1, 0, 0, 0, 0, 1};
  reverse_complement(t.data(), t.size(), m.data());
  EXPECT_EQ(decode(t), "NACGTT");
  EXPECT_EQ(m, (std::vector<uint8_t>{1, 0, 0, 0, 0, 1}));
  std::vector<uint8_t> special = {tok::BOS, tok::A, tok::PAD};
  reverse_complement(special.data(), special.size());
  EXPECT_EQ(special, (std::vector<uint8_t>{tok::PAD, tok::T, tok::BOS}));
}

TEST(Tokenizer, ReverseComplementRoundTrip) {
  std::mt19937 rng(7);
  const std::string letters = "ACGTNacgtn";
  std::string s(10001, 'A');
  for (char& c : s) c = letters[rng() % letters.size()];
  std::vector<uint8_t> t(s.size()), m(s.size());
  ASSERT_EQ(encode(s.data(), s.size(), t.data(), m.data()), npos);
  auto t2 = t, m2 = m;
  reverse_complement(t2.data(), t2.size(), m2.data());
  EXPECT_NE(t2, t);
  EXPECT_EQ(t2.front(), std::vector<uint8_t>({0, 4, 3, 2, 1, 5})[t.back()]);
  reverse_complement(t2.data(), t2.size(), m2.data());
  EXPECT_EQ(t2, t);
  EXPECT_EQ(m2, m);
}

// Long inputs take the vector path (AVX2 where the CPU has it); it must agree with encoding
// letter by letter, including the position of a bad byte anywhere in a 32-byte group.
TEST(Tokenizer, LongInputsAgreeWithLetterByLetter) {
  std::mt19937 rng(11);
  const std::string letters = "ACGTUNRYSWKMBDHVacgtunryswkmbdhv";
  std::string s(4099, 'A');
  for (char& c : s) c = letters[rng() % letters.size()];
  std::vector<uint8_t> t(s.size()), m(s.size());
  ASSERT_EQ(encode(s.data(), s.size(), t.data(), m.data()), npos);
  for (size_t i = 0; i < s.size(); ++i) {
    uint8_t one, one_mask;
    encode(&s[i], 1, &one, &one_mask);
    ASSERT_EQ(t[i], one) << i;
    ASSERT_EQ(m[i], one_mask) << i;
  }
  for (int b = 0; b < 256; ++b) {
    if (is_iupac(static_cast<char>(b))) continue;
    for (size_t at : {0, 5, 31, 32, 63, 64, 100, 4098}) {
      std::string bad = s;
      bad[at] = static_cast<char>(b);
      std::vector<uint8_t> out(bad.size());
      ASSERT_EQ(encode(bad.data(), bad.size(), out.data()), at) << "byte " << b << " at " << at;
      ASSERT_TRUE(std::equal(out.begin(), out.begin() + at, t.begin())) << "byte " << b << " at " << at;
    }
  }
}
