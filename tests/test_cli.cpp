// The executable's surface: version, help, exit codes of DESIGN §6.
#include <gtest/gtest.h>

#include "memmamba/version.hpp"
#include "support/fixtures.hpp"

using mmtest::run_cli;

TEST(Cli, VersionPrintsTheProjectVersion) {
  auto r = run_cli("--version");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.out, std::string("memmamba ") + mm::kVersion + "\n");
}

TEST(Cli, HelpGoesToStdoutAndSucceeds) {
  auto r = run_cli("--help");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("Usage:   memmamba <command>"), std::string::npos);
}

TEST(Cli, NoCommandIsBadUsage) {
  auto r = run_cli("");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("Usage:"), std::string::npos);
}

TEST(Cli, UnknownCommandIsBadUsage) {
  auto r = run_cli("frobnicate");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("unknown command 'frobnicate'"), std::string::npos);
}
