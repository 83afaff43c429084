// Random access to reference sequence by contig name: what VCF REF checks, BED-to-sequence and
// windowing need from a reference, whatever file it comes from.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace mm::io {

class SequenceSource {
public:
  virtual ~SequenceSource() = default;
  // Contig names in file order.
  virtual const std::vector<std::string>& contigs() const = 0;
  // The name this source uses for `name`, after alias resolution (chr20 <-> 20) when enabled;
  // empty when unknown.
  virtual std::string resolve(const std::string& name) const = 0;
  // Length of a contig given by its resolved name; throws mm::Error when unknown.
  virtual int64_t length(const std::string& contig) const = 0;
  // Bases [beg, end) 0-based half-open of a resolved contig, as stored (case kept).
  // Throws mm::Error when the interval is outside the contig.
  virtual std::string fetch(const std::string& contig, int64_t beg, int64_t end) const = 0;
  // The file it reads, for error messages.
  virtual const std::string& path() const = 0;
};

}  // namespace mm::io
