// The one place that knows every command. Each command lives in apps/<name>.cpp and is listed
// here only once it works.
#pragma once
#include <string>
#include <vector>

namespace mm::cli {

struct Command {
  const char* name;
  const char* summary;
  int (*main)(int argc, char** argv);  // argv[0] is the command name
};

const std::vector<Command>& commands();

}  // namespace mm::cli
