#include "apps/commands.hpp"

namespace mm::cli {

int bench_main(int argc, char** argv);

const std::vector<Command>& commands() {
  static const std::vector<Command> list = {
      {"bench", "speed of the model and its kernels on this machine", bench_main},
  };
  return list;
}

}  // namespace mm::cli
