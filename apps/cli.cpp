#include "apps/cli.hpp"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>

#include "memmamba/version.hpp"
#include "pipelines/score.hpp"  // split_region_list

namespace mm::cli {

Args::Args(std::string command, std::string usage, std::vector<Option> options)
    : command_(std::move(command)), usage_(std::move(usage)), options_(std::move(options)) {}

const Option& Args::find(const std::string& long_name) const {
  for (const auto& o : options_)
    if (o.long_name == long_name) return o;
  throw std::logic_error("option --" + long_name + " is not declared");
}

bool Args::parse(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h" || a == "--help") return false;
    if (a == "--") {
      for (++i; i < argc; ++i) positional_.push_back(argv[i]);
      break;
    }
    if (a.size() < 2 || a[0] != '-') {  // "-" alone is a positional (stdin/stdout)
      positional_.push_back(a);
      continue;
    }
    const Option* opt = nullptr;
    std::optional<std::string> inline_value;
    if (a.rfind("--", 0) == 0) {
      std::string name = a.substr(2);
      if (auto eq = name.find('='); eq != std::string::npos) {
        inline_value = name.substr(eq + 1);
        name = name.substr(0, eq);
      }
      for (const auto& o : options_)
        if (o.long_name == name) opt = &o;
    } else {
      for (const auto& o : options_)
        if (o.short_name == a[1]) opt = &o;
      if (opt && a.size() > 2) inline_value = a.substr(2);
    }
    if (!opt) throw UsageError("unknown option '" + a + "' (see 'memmamba " + command_ + " --help')");
    if (opt->arg.empty()) {
      if (inline_value) throw UsageError("option --" + opt->long_name + " takes no value");
      values_[opt->long_name].assign(1, '1');  // not = "1": GCC 12 warns falsely (-Wrestrict)
      continue;
    }
    if (!inline_value) {
      if (i + 1 >= argc) throw UsageError("option --" + opt->long_name + " needs a value " + opt->arg);
      inline_value = argv[++i];
    }
    values_[opt->long_name] = *inline_value;
    all_values_[opt->long_name].push_back(*inline_value);
  }
  return true;
}

std::vector<std::string> Args::get_all(const std::string& long_name) const {
  find(long_name);
  auto it = all_values_.find(long_name);
  return it == all_values_.end() ? std::vector<std::string>{} : it->second;
}

SequenceInputs sequence_inputs(const Args& args, const std::string& command, const std::string& what) {
  const auto& pos = args.positional();
  if (pos.size() != 1)
    throw UsageError(pos.empty() ? "give the " + what + " (see 'memmamba " + command + " --help')"
                                 : "give one " + what + "; extra argument '" + pos[1] + "'");
  SequenceInputs in;
  in.fasta = pos[0];
  for (const auto& v : args.get_all("region"))
    for (auto& r : pipelines::split_region_list(v)) in.regions.push_back(r);
  if (args.has("region") && in.regions.empty()) throw UsageError("-r/--region wants chr:beg-end");
  in.regions_bed = args.get("regions");
  in.output = args.get("output");
  if (in.output.empty()) throw UsageError("-o/--output wants a file name or '-'");
  return in;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string Args::help() const {
  std::string h = "Usage: memmamba " + command_ + " " + usage_ + "\n\nOptions:\n";
  for (const auto& o : options_) {
    std::string left = "  ";
    left += o.short_name ? std::string("-") + o.short_name + ", " : "    ";
    left += "--" + o.long_name + (o.arg.empty() ? "" : " " + o.arg);
    if (left.size() < 30) left.resize(30, ' ');
    else left += "  ";
    h += left + o.help;
    if (!o.default_value.empty()) h += " [" + o.default_value + "]";
    h += "\n";
  }
  h += "  -h, --help                  this help\n";
  return h;
}

bool Args::has(const std::string& long_name) const {
  find(long_name);
  return values_.count(long_name) > 0;
}

std::string Args::get(const std::string& long_name) const {
  const Option& o = find(long_name);
  auto it = values_.find(long_name);
  return it == values_.end() ? o.default_value : it->second;
}

long Args::get_int(const std::string& long_name) const {
  std::string v = get(long_name);
  char* end = nullptr;
  long x = std::strtol(v.c_str(), &end, 10);
  if (v.empty() || *end) throw UsageError("--" + long_name + " wants an integer, got '" + v + "'");
  return x;
}

double Args::get_double(const std::string& long_name) const {
  std::string v = get(long_name);
  char* end = nullptr;
  double x = std::strtod(v.c_str(), &end);
  if (v.empty() || *end) throw UsageError("--" + long_name + " wants a number, got '" + v + "'");
  return x;
}

std::string command_line(int argc, char** argv) {
  // Commands get argv with argv[0] = their name, so this reads "memmamba <command> <args>".
  std::string s = "memmamba";
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    bool quote = a.empty() || a.find_first_of(" \t'\"$`\\|&;<>()*?") != std::string::npos;
    s += ' ';
    if (quote) s += '\'';
    s += a;
    if (quote) s += '\'';
  }
  return s;
}

int run(const std::string& command, int argc, char** argv, const std::function<int()>& body) {
  const auto t0 = std::chrono::steady_clock::now();
  int code = 0;
  try {
    code = body();
  } catch (const Error& e) {
    std::cerr << "memmamba " << command << ": error: " << e.message() << "\n";
    code = static_cast<int>(e.code());
  } catch (const std::bad_alloc&) {
    std::cerr << "memmamba " << command << ": error: out of memory\n";
    code = 1;
  } catch (const std::exception& e) {
    std::cerr << "memmamba " << command << ": error: " << e.what() << "\n";
    code = 1;
  }
  bool quiet = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-q" || a == "--quiet" || a == "-h" || a == "--help") quiet = true;
  }
  if (!quiet && code != static_cast<int>(ExitCode::usage)) {
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.2f", s);
    std::cerr << "[memmamba " << command << "] Version: " << kVersion << "\n[memmamba " << command
              << "] CMD: " << command_line(argc, argv) << "\n[memmamba " << command
              << "] Real time: " << buf << " sec\n";
  }
  return code;
}

Reporter stderr_reporter(const std::string& command, bool quiet) {
  Reporter r;
  if (quiet) return r;
  r.note = [command](std::string_view s) { std::cerr << "[memmamba " << command << "] " << s << "\n"; };
  if (isatty(STDERR_FILENO)) {
    r.progress = [](double done, double total, std::string_view unit) {
      int pct = total > 0 ? static_cast<int>(100.0 * done / total) : 0;
      int bar = pct / 4;
      std::fprintf(stderr, "\r[%-25.*s] %3d%% %.0f/%.0f %.*s", bar, "#########################", pct,
                   done, total, static_cast<int>(unit.size()), unit.data());
      if (done >= total) std::fputc('\n', stderr);
      std::fflush(stderr);
    };
  }
  return r;
}

}  // namespace mm::cli
