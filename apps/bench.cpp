// memmamba bench: speed figures of this machine (DESIGN §8). Results on stdout, notes on stderr.
#include <iostream>
#include <sstream>

#include "apps/cli.hpp"
#include "apps/commands.hpp"
#include "model/checkpoint.hpp"
#include "pipelines/bench.hpp"
#ifdef MEMMAMBA_HAVE_CUDA
#include "kernels/cuda/ops.hpp"
#endif

namespace mm::cli {

namespace {
bool cuda_device_present() {
#ifdef MEMMAMBA_HAVE_CUDA
  return cuda::available();
#else
  return false;
#endif
}

std::vector<int64_t> parse_lengths(const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    char* end = nullptr;
    long long v = std::strtoll(item.c_str(), &end, 10);
    if (item.empty() || *end || v <= 0) throw UsageError("--lengths wants positive integers separated by commas, got '" + s + "'");
    out.push_back(v);
  }
  return out;
}
}  // namespace

int bench_main(int argc, char** argv) {
  Args args("bench", "[options]",
            {{'m', "model", "FILE", "take the config from this checkpoint (weights are not needed)", "the tiny model of DESIGN §3"},
             {0, "device", "DEV", "auto, cpu or cuda (auto: cuda when built and a GPU is present)", "auto"},
             {0, "lengths", "LIST", "inference lengths in tokens, batch 1 [cuda: 131072,1048576,4194304]", "16384,65536"},
             {0, "train-length", "INT", "tokens per timed training step, batch 1 (0: skip) [cuda: 131072]", "8192"},
             {0, "scan-length", "INT", "L of the scan benchmark at E=512, N=16 (0: skip) [cuda: 1048576]", "65536"},
             {0, "repeats", "INT", "timed runs per figure; the median is printed", "3"},
             {0, "seed", "INT", "seed of the random weights and inputs", "1"},
             {'q', "quiet", "", "no notes on stderr", ""}});
  return run("bench", argc, argv, [&] {
    if (!args.parse(argc, argv)) {
      std::cout << args.help();
      return 0;
    }
    if (!args.positional().empty()) throw UsageError("bench takes no file arguments");
    std::string dev = args.get("device");
    if (dev != "auto" && dev != "cpu" && dev != "cuda")
      throw UsageError("--device wants auto, cpu or cuda, got '" + dev + "'");
    if (dev == "auto") dev = pipelines::cuda_built() && cuda_device_present() ? "cuda" : "cpu";
    pipelines::BenchOptions o;
    if (args.has("model")) o.config = load_checkpoint(args.get("model")).config;
    const bool gpu = dev == "cuda";
    o.infer_lengths = parse_lengths(args.has("lengths") || !gpu ? args.get("lengths") : "131072,1048576,4194304");
    o.train_length = args.has("train-length") || !gpu ? args.get_int("train-length") : 131072;
    o.scan_length = args.has("scan-length") || !gpu ? args.get_int("scan-length") : 1048576;
    o.repeats = int(args.get_int("repeats"));
    o.seed = uint64_t(args.get_int("seed"));
    const Reporter rep = stderr_reporter("bench", args.flag("quiet"));
    auto report = gpu ? pipelines::bench_cuda(o, rep) : pipelines::bench_cpu(o, rep);
    std::cout << pipelines::format_report(report);
    return 0;
  });
}

}  // namespace mm::cli
