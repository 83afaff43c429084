#include "support/fixtures.hpp"

#include <gtest/gtest.h>
#include <zlib.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <sys/wait.h>
#include <unistd.h>

namespace mmtest {

fs::path scratch(const std::string& name) {
  // ctest runs tests of one program in parallel processes: each process gets its own folders.
  fs::path p = fs::path(MM_TEST_WORK) / (name + "." + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

fs::path data(const std::string& name) { return fs::path(MM_TEST_DATA) / name; }

fs::path package_file(const std::string& path) {
  if (!fs::exists(path))
    throw std::runtime_error(path + " is missing: run scripts/setup (Debian data packages)");
  return path;
}

void gunzip(const fs::path& src, const fs::path& dst) {
  gzFile in = gzopen(src.c_str(), "rb");
  if (!in) throw std::runtime_error("cannot open " + src.string());
  std::ofstream out(dst, std::ios::binary);
  std::array<char, 1 << 16> buf;
  int n;
  while ((n = gzread(in, buf.data(), buf.size())) > 0) out.write(buf.data(), n);
  gzclose(in);
  if (n < 0) throw std::runtime_error("cannot decompress " + src.string());
}

fs::path chr20() {
  const fs::path src = "/usr/share/doc/vt/examples/ref/20.fa.gz";
  package_file(src.string());
  fs::path dir = fs::path(MM_TEST_WORK) / "chr20";
  fs::path fa = dir / "20.fa.gz";
  if (!fs::exists(fa.string() + ".gzi")) {
    // Built in a private folder and renamed into place, since parallel tests may race here.
    fs::path tmp = fs::path(MM_TEST_WORK) / ("chr20.tmp." + std::to_string(::getpid()));
    fs::remove_all(tmp);
    fs::create_directories(tmp);
    fs::create_symlink(src, tmp / "20.fa.gz");
    fs::copy_file(src.string() + ".fai", tmp / "20.fa.gz.fai");
    gunzip(src.string() + ".gzi.gz", tmp / "20.fa.gz.gzi");
    std::error_code ec;
    fs::rename(tmp, dir, ec);  // fails harmlessly when another process got there first
    fs::remove_all(tmp, ec);
  }
  return fa;
}

std::string shell(const std::string& cmd) {
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) throw std::runtime_error("cannot run " + cmd);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  if (pclose(p) != 0) throw std::runtime_error("failed: " + cmd);
  return out;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_text(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary);
  out << s;
}

RunResult run_cli(const std::string& args, const std::string& stdin_file) {
  fs::path dir = fs::path(MM_TEST_WORK) / "cli";
  fs::create_directories(dir);
  static int counter = 0;
  std::string tag = std::to_string(::getpid()) + "_" + std::to_string(counter++);
  fs::path out = dir / (tag + ".out"), err = dir / (tag + ".err");
  std::string cmd = std::string("'") + MM_BINARY + "' " + args + " >'" + out.string() + "' 2>'" +
                    err.string() + "'";
  if (!stdin_file.empty()) cmd += " <'" + stdin_file + "'";
  else cmd += " </dev/null";
  int status = std::system(cmd.c_str());
  RunResult r{WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), read_text(out),
              read_text(err)};
  fs::remove(out);
  fs::remove(err);
  return r;
}

}  // namespace mmtest
