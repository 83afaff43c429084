// Genomic regions as users type them (-r chr:beg-end, 1-based inclusive) and as code uses them
// (0-based half-open), checked against a reference.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

#include "io/sequence_source.hpp"

namespace mm::io {

struct Region {
  std::string contig;
  int64_t beg0 = 0;   // 0-based, inclusive
  int64_t end0 = -1;  // 0-based, exclusive; -1 = to the end of the contig
  std::string text;   // as the user wrote it, for messages
};

// Parses `chr`, `chr:beg-end`, `chr:beg-` (to the contig end) and `chr:pos` (that one base, as
// bcftools and tabix read it; samtools faidx would read it as `chr:pos-`). Numbers are 1-based
// inclusive and may contain thousands separators (1,000,000). Malformed text throws
// mm::UsageError naming the text.
Region parse_region(std::string_view text);

// Checks a parsed region against a reference: the contig must exist (aliases as the source
// allows) and the interval must lie within it. Returns the region with the source's contig name
// and end0 filled in. A name containing ':' that is itself a contig of the source wins over its
// reading as chr:pos. Throws mm::Error naming the region, the reference file and the contig length.
Region resolve(const Region& region, const SequenceSource& source);

// "contig:beg-end", 1-based inclusive.
std::string to_string(const Region& region);

}  // namespace mm::io
