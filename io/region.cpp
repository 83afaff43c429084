// Region parsing and checking against a reference.
#include "io/region.hpp"

#include "io/error.hpp"

namespace mm::io {
namespace {

[[noreturn]] void bad(std::string_view text, const std::string& why) {
  throw UsageError("bad region '" + std::string(text) + "': " + why);
}

// A 1-based position: digits with optional thousands separators between them.
int64_t parse_position(std::string_view text, std::string_view num) {
  if (num.empty()) bad(text, "missing position");
  std::string quoted = "'";
  quoted.append(num).append("'");
  int64_t v = 0;
  int digits = 0;
  for (size_t i = 0; i < num.size(); ++i) {
    if (num[i] == ',') {
      // Thousands separators only between digits.
      if (i == 0 || i + 1 == num.size() || num[i - 1] == ',') bad(text, "misplaced ',' in " + quoted);
      continue;
    }
    if (num[i] < '0' || num[i] > '9') bad(text, quoted + " is not a position");
    if (++digits > 15) bad(text, "position " + quoted + " is too large");
    v = v * 10 + (num[i] - '0');
  }
  if (v < 1) bad(text, "positions are 1-based, " + quoted + " is not");
  return v;
}

}  // namespace

Region parse_region(std::string_view text) {
  Region r;
  r.text = std::string(text);
  const size_t colon = text.rfind(':');
  const std::string_view name = text.substr(0, colon);
  if (name.empty()) bad(text, "missing contig name");
  for (char c : name)
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') bad(text, "contig name contains white space");
  r.contig = std::string(name);
  if (colon == std::string_view::npos) return r;

  const std::string_view span = text.substr(colon + 1);
  if (span.empty()) bad(text, "nothing after ':'");
  const size_t dash = span.find('-');
  const int64_t beg = parse_position(text, span.substr(0, dash));
  r.beg0 = beg - 1;
  if (dash == std::string_view::npos) {
    r.end0 = beg;
  } else if (dash + 1 < span.size()) {
    const int64_t end = parse_position(text, span.substr(dash + 1));
    if (end < beg) bad(text, "end " + std::to_string(end) + " is before start " + std::to_string(beg));
    r.end0 = end;
  }  // "chr:beg-": end0 stays -1
  return r;
}

Region resolve(const Region& region, const SequenceSource& source) {
  Region r = region;
  if (r.text.find(':') != std::string::npos) {
    if (std::string whole = source.resolve(r.text); !whole.empty()) {
      r.contig = whole;
      r.beg0 = 0;
      r.end0 = -1;
    }
  }
  const std::string name = source.resolve(r.contig);
  if (name.empty())
    throw Error("region '" + r.text + "': contig '" + r.contig + "' is not in the reference",
                source.path());
  r.contig = name;
  const int64_t len = source.length(name);
  if (r.end0 < 0) r.end0 = len;
  if (r.beg0 >= len || r.end0 > len)
    throw Error("region '" + r.text + "' lies outside contig " + name + " (length " +
                    std::to_string(len) + ")",
                source.path());
  return r;
}

std::string to_string(const Region& r) {
  if (r.end0 < 0) return r.contig + ":" + std::to_string(r.beg0 + 1) + "-";
  return r.contig + ":" + std::to_string(r.beg0 + 1) + "-" + std::to_string(r.end0);
}

}  // namespace mm::io
