// DNA tokenizer: one 256-entry table drives encoding, validation and the soft-mask flag at once.
#include "io/tokenizer.hpp"

#include <algorithm>
#include <array>

namespace mm::io {
namespace {

// Table entry: bits 0-2 the token, bit 3 lowercase, bit 7 not an IUPAC letter.
constexpr uint8_t kLower = 0x08, kInvalid = 0x80;

constexpr std::array<uint8_t, 256> make_table() {
  std::array<uint8_t, 256> t{};
  for (auto& e : t) e = kInvalid;
  for (char c : std::string_view("RYSWKMBDHVN")) {
    t[static_cast<uint8_t>(c)] = tok::N;
    t[static_cast<uint8_t>(c - 'A' + 'a')] = tok::N | kLower;
  }
  const std::pair<char, uint8_t> exact[] = {{'A', tok::A}, {'C', tok::C}, {'G', tok::G},
                                            {'T', tok::T}, {'U', tok::T}};
  for (auto [c, v] : exact) {
    t[static_cast<uint8_t>(c)] = v;
    t[static_cast<uint8_t>(c - 'A' + 'a')] = v | kLower;
  }
  return t;
}
constexpr auto kTable = make_table();

constexpr uint8_t kComplement[8] = {tok::PAD, tok::T, tok::G, tok::C, tok::A, tok::N, tok::BOS, 7};

// Blocks keep the validity test out of the inner loop, which then stays a plain table loop
// (load, lookup, store) the compiler unrolls; only a block holding a bad letter is rescanned.
constexpr size_t kBlock = 256;

}  // namespace

bool is_iupac(char c) { return !(kTable[static_cast<uint8_t>(c)] & kInvalid); }

size_t encode(const char* seq, size_t n, uint8_t* out, uint8_t* mask) {
  const auto* s = reinterpret_cast<const uint8_t*>(seq);
  for (size_t b = 0; b < n; b += kBlock) {
    const size_t e = std::min(n, b + kBlock);
    uint8_t any = 0;
    if (mask) {
      for (size_t i = b; i < e; ++i) {
        const uint8_t v = kTable[s[i]];
        any |= v;
        out[i] = v & 7;
        mask[i] = (v >> 3) & 1;
      }
    } else {
      for (size_t i = b; i < e; ++i) {
        const uint8_t v = kTable[s[i]];
        any |= v;
        out[i] = v & 7;
      }
    }
    if (any & kInvalid)
      for (size_t i = b; i < e; ++i)
        if (kTable[s[i]] & kInvalid) return i;
  }
  return npos;
}

std::vector<uint8_t> encode(std::string_view seq, size_t* bad) {
  std::vector<uint8_t> out(seq.size());
  const size_t r = encode(seq.data(), seq.size(), out.data());
  if (bad) *bad = r;
  return out;
}

void decode(const uint8_t* tokens, size_t n, char* out, const uint8_t* mask) {
  static constexpr char kLetters[8] = {'-', 'A', 'C', 'G', 'T', 'N', '^', '?'};
  for (size_t i = 0; i < n; ++i) {
    const char c = kLetters[tokens[i] & 7];
    out[i] = (mask && mask[i] && c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
  }
}

std::string decode(const std::vector<uint8_t>& tokens) {
  std::string s(tokens.size(), '\0');
  decode(tokens.data(), tokens.size(), s.data());
  return s;
}

void reverse_complement(uint8_t* tokens, size_t n, uint8_t* mask) {
  std::reverse(tokens, tokens + n);
  for (size_t i = 0; i < n; ++i) tokens[i] = kComplement[tokens[i] & 7];
  if (mask) std::reverse(mask, mask + n);
}

}  // namespace mm::io
