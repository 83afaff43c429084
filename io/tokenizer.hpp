// DNA tokenizer (DESIGN §3): letters <-> tokens, soft-mask flags, reverse complement.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mm::io {

namespace tok {
inline constexpr uint8_t PAD = 0, A = 1, C = 2, G = 3, T = 4, N = 5, BOS = 6;
inline constexpr int vocab_size = 8;  // 7 used, padded to 8
}  // namespace tok

inline constexpr size_t npos = static_cast<size_t>(-1);

// Encodes n letters into tokens: A C G T (U -> T), every other IUPAC code -> N, case ignored.
// When mask is non-null, mask[i] = 1 for lowercase (soft-masked) letters, else 0.
// Returns the index of the first character that is not an IUPAC letter, or npos. On an invalid
// character the outputs before it are valid and those after it are unspecified.
size_t encode(const char* seq, size_t n, uint8_t* out, uint8_t* mask = nullptr);

// Convenience form that throws nothing: returns tokens; `bad` receives encode's result.
std::vector<uint8_t> encode(std::string_view seq, size_t* bad = nullptr);

// Tokens back to letters (PAD '-', BOS '^', unused '?'); lowercase where mask[i] != 0.
void decode(const uint8_t* tokens, size_t n, char* out, const uint8_t* mask = nullptr);
std::string decode(const std::vector<uint8_t>& tokens);

// In-place reverse complement: reverses order and swaps A<->T, C<->G; N, PAD and BOS keep their
// value. A mask, when given, is reversed alongside.
void reverse_complement(uint8_t* tokens, size_t n, uint8_t* mask = nullptr);

// Whether c is one of the letters encode accepts (IUPAC nucleotide codes and U, any case).
bool is_iupac(char c);

}  // namespace mm::io
