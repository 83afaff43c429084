// The command-line toolkit every command file uses: option parsing with defaults in the help,
// the one error printer, the end-of-run log line, and the Reporter that prints to stderr.
#pragma once
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "io/error.hpp"

namespace mm::cli {

struct Option {
  char short_name = 0;          // 0: long form only
  std::string long_name;
  std::string arg;              // empty: a switch; otherwise the value's placeholder (FILE, INT)
  std::string help;
  std::string default_value;    // shown in the help; returned when the option is not given
};

class Args {
public:
  Args(std::string command, std::string usage, std::vector<Option> options);
  // Throws UsageError on unknown options or missing values. Returns false when --help was asked.
  bool parse(int argc, char** argv);
  std::string help() const;

  bool has(const std::string& long_name) const;           // given on the command line
  bool flag(const std::string& long_name) const { return has(long_name); }
  std::string get(const std::string& long_name) const;    // value or default (the last if repeated)
  std::vector<std::string> get_all(const std::string& long_name) const;  // every value given, in order
  long get_int(const std::string& long_name) const;
  double get_double(const std::string& long_name) const;
  const std::vector<std::string>& positional() const { return positional_; }

private:
  const Option& find(const std::string& long_name) const;
  std::string command_, usage_;
  std::vector<Option> options_;
  std::map<std::string, std::string> values_;
  std::map<std::string, std::vector<std::string>> all_values_;
  std::vector<std::string> positional_;
};

// Runs a command body: prints errors as "memmamba <cmd>: error: <file>:<line>: <what>", returns
// the exit code of DESIGN §6, and logs version, command line and wall time at the end (unless quiet).
int run(const std::string& command, int argc, char** argv, const std::function<int()>& body);

// A Reporter for stderr: notes always (unless quiet), a progress bar only when stderr is a terminal.
Reporter stderr_reporter(const std::string& command, bool quiet);

// "memmamba <command> <args>" from a command's argc/argv (argv[0] is the command's name), for
// provenance lines.
std::string command_line(int argc, char** argv);

bool ends_with(const std::string& s, const std::string& suffix);

// What score and embed take alike: one FASTA, -r regions (repeatable, comma lists), -R BED, -o.
struct SequenceInputs {
  std::string fasta, regions_bed, output;
  std::vector<std::string> regions;
};
// Throws UsageError for a missing or extra FASTA, an empty -r or an empty -o; `what` names the
// FASTA in messages ("reference FASTA").
SequenceInputs sequence_inputs(const Args& args, const std::string& command, const std::string& what);

}  // namespace mm::cli
