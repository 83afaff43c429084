// Helpers shared by the tests: scratch folders, the real data of DESIGN §7, running the CLI.
#pragma once
#include <filesystem>
#include <string>

namespace mmtest {

namespace fs = std::filesystem;

// A fresh, empty folder under the build tree for one test (removed and recreated).
fs::path scratch(const std::string& name);

// Test data committed in tests/data.
fs::path data(const std::string& name);

// GRCh37 chromosome 20 from vt-examples, ready for indexed access (bgzip + .fai + .gzi),
// linked into the build tree because the package ships the .gzi gzipped. Empty path when the
// package is not installed (tests then fail with a message naming scripts/setup).
fs::path chr20();

// A Debian example file by its installed path; fails the test when missing.
fs::path package_file(const std::string& path);

struct RunResult {
  int exit_code;
  std::string out, err;
};
// Runs `memmamba <args>` through the shell (args are shell words, quote yourself), optional stdin file.
RunResult run_cli(const std::string& args, const std::string& stdin_file = {});

// Runs a shell command and returns its stdout; throws when it cannot start or exits non-zero.
std::string shell(const std::string& cmd);

std::string read_text(const fs::path& p);
void write_text(const fs::path& p, const std::string& s);
// Decompresses a gzip file to dst with zlib (plain gzip or bgzip).
void gunzip(const fs::path& src, const fs::path& dst);

}  // namespace mmtest
