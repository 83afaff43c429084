// DNA tokenizer: one 256-entry table gives token and validity in one lookup per letter.
#include "io/tokenizer.hpp"

#include <algorithm>
#include <array>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace mm::io {
namespace {

// Table entry: bits 0-2 the token, bit 7 set for anything that is not an IUPAC letter.
constexpr uint8_t kInvalid = 0x80;

constexpr std::array<uint8_t, 256> make_table() {
  std::array<uint8_t, 256> t{};
  for (auto& e : t) e = kInvalid;
  for (char c : std::string_view("RYSWKMBDHVN")) {
    t[static_cast<uint8_t>(c)] = tok::N;
    t[static_cast<uint8_t>(c - 'A' + 'a')] = tok::N;
  }
  const std::pair<char, uint8_t> exact[] = {{'A', tok::A}, {'C', tok::C}, {'G', tok::G},
                                            {'T', tok::T}, {'U', tok::T}};
  for (auto [c, v] : exact) {
    t[static_cast<uint8_t>(c)] = v;
    t[static_cast<uint8_t>(c - 'A' + 'a')] = v;
  }
  return t;
}
constexpr auto kTable = make_table();

constexpr uint8_t kComplement[8] = {tok::PAD, tok::T, tok::G, tok::C, tok::A, tok::N, tok::BOS, 7};

// Blocks keep the validity test out of the inner loop, which then stays a plain table loop
// (load, lookup, store) the compiler unrolls; only a block holding a bad letter is rescanned.
constexpr size_t kBlock = 256;


// One block. __restrict because uint8_t stores may otherwise alias the input and the table,
// which forces a reload per byte. The mask is a second pass: for letters, lowercase is bit 5,
// a plain vectorisable loop, where a mask store inside the lookup loop runs 5x slower (measured).
uint8_t encode_block(const uint8_t* __restrict s, size_t n, uint8_t* __restrict out,
                     uint8_t* __restrict mask) {
  uint8_t any = 0;
  for (size_t i = 0; i < n; ++i) {
    const uint8_t v = kTable[s[i]];
    any |= v;
    out[i] = v & 7;
  }
  if (mask)
    for (size_t i = 0; i < n; ++i) mask[i] = (s[i] >> 5) & 1;
  return any;
}

}  // namespace

bool is_iupac(char c) { return !(kTable[static_cast<uint8_t>(c)] & kInvalid); }

namespace {

size_t encode_portable(const uint8_t* s, size_t n, uint8_t* out, uint8_t* mask) {
  for (size_t b = 0; b < n; b += kBlock) {
    const size_t e = std::min(n, b + kBlock);
    if (encode_block(s + b, e - b, out + b, mask ? mask + b : nullptr) & kInvalid)
      for (size_t i = b; i < e; ++i)
        if (kTable[s[i]] & kInvalid) return i;
  }
  return npos;
}

#if defined(__x86_64__)
// AVX2: every letter, either case, folds to 0x40..0x5F by clearing bit 5, so two 16-entry pshufb
// lookups (low nibble; bit 4 picks the half) replace the 256-entry table, 32 bytes at a time.
// The build targets generic x86-64, hence the target attribute and the runtime check below.
__attribute__((target("avx2"))) size_t encode_avx2(const uint8_t* s, size_t n, uint8_t* out,
                                                   uint8_t* mask) {
  alignas(32) uint8_t lo[32], hi[32];
  for (int j = 0; j < 32; ++j) {
    lo[j] = kTable[0x40 + (j & 15)];
    hi[j] = kTable[0x50 + (j & 15)];
  }
  const __m256i tlo = _mm256_load_si256(reinterpret_cast<const __m256i*>(lo));
  const __m256i thi = _mm256_load_si256(reinterpret_cast<const __m256i*>(hi));
  const __m256i fold = _mm256_set1_epi8(static_cast<char>(0xDF)), top3 = _mm256_set1_epi8(static_cast<char>(0xE0));
  const __m256i x40 = _mm256_set1_epi8(0x40), x10 = _mm256_set1_epi8(0x10), x0f = _mm256_set1_epi8(0x0F);
  const __m256i one = _mm256_set1_epi8(1), invalid = _mm256_set1_epi8(static_cast<char>(kInvalid));
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i));
    const __m256i u = _mm256_and_si256(c, fold);
    const __m256i in_range = _mm256_cmpeq_epi8(_mm256_and_si256(u, top3), x40);
    const __m256i nib = _mm256_and_si256(u, x0f);
    const __m256i use_hi = _mm256_cmpeq_epi8(_mm256_and_si256(u, x10), x10);
    __m256i v = _mm256_blendv_epi8(_mm256_shuffle_epi8(tlo, nib), _mm256_shuffle_epi8(thi, nib), use_hi);
    v = _mm256_blendv_epi8(invalid, v, in_range);
    if (_mm256_movemask_epi8(v)) break;  // the portable path finds the exact position
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), v);
    if (mask)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(mask + i),
                          _mm256_and_si256(_mm256_srli_epi16(c, 5), one));
  }
  const size_t r = encode_portable(s + i, n - i, out + i, mask ? mask + i : nullptr);
  return r == npos ? npos : i + r;
}
#endif

}  // namespace

size_t encode(const char* seq, size_t n, uint8_t* out, uint8_t* mask) {
  const auto* s = reinterpret_cast<const uint8_t*>(seq);
#if defined(__x86_64__)
  static const bool avx2 = __builtin_cpu_supports("avx2");
  if (avx2) return encode_avx2(s, n, out, mask);
#endif
  return encode_portable(s, n, out, mask);
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
