#include "apps/commands.hpp"

namespace mm::cli {

const std::vector<Command>& commands() {
  static const std::vector<Command> list = {
  };
  return list;
}

}  // namespace mm::cli
