// memmamba: MemMamba language models over DNA. Dispatch only; each command is apps/<name>.cpp.
#include <cstdio>
#include <cstring>
#include <string>

#include "apps/commands.hpp"
#include "memmamba/version.hpp"

namespace {

void usage(FILE* to) {
  std::fprintf(to,
               "\nProgram: memmamba (MemMamba language models over DNA)\nVersion: %s\n\n"
               "Usage:   memmamba <command> [options]\n\nCommands:\n",
               mm::kVersion);
  for (const auto& c : mm::cli::commands()) std::fprintf(to, "  %-12s %s\n", c.name, c.summary);
  if (mm::cli::commands().empty()) std::fprintf(to, "  (none yet)\n");
  std::fprintf(to, "\n  --help       this help\n  --version    print the version\n\n"
                   "Run 'memmamba <command> --help' for a command's options and defaults.\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  std::string cmd = argv[1];
  if (cmd == "--help" || cmd == "-h" || cmd == "help") {
    usage(stdout);
    return 0;
  }
  if (cmd == "--version" || cmd == "version") {
    std::printf("memmamba %s\n", mm::kVersion);
    return 0;
  }
  for (const auto& c : mm::cli::commands())
    if (cmd == c.name) return c.main(argc - 1, argv + 1);
  std::fprintf(stderr, "memmamba: error: unknown command '%s'\n", cmd.c_str());
  usage(stderr);
  return 2;
}
