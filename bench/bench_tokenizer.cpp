// Tokenizer throughput on one core: GRCh37 chr20 (real case mix and N runs) read once by the
// streaming reader (no index written next to the package file), then encoded repeatedly until
// ~256 MB have passed, with and without mask flags. Usage: bench_tokenizer [FASTA [MB]].
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "io/error.hpp"
#include "io/fasta.hpp"
#include "io/tokenizer.hpp"

int main(int argc, char** argv) {
  const std::string path = argc > 1 ? argv[1] : "/usr/share/doc/vt/examples/ref/20.fa.gz";
  const double target_mb = argc > 2 ? std::stod(argv[2]) : 256.0;
  try {
    mm::io::FastaReader reader(path);
    reader.next_record();
    const std::string seq = reader.read_all();
    std::vector<uint8_t> tokens(seq.size()), mask(seq.size());
    for (bool with_mask : {false, true}) {
      size_t done = 0, checksum = 0;
      const auto t0 = std::chrono::steady_clock::now();
      while (done < target_mb * 1e6) {
        if (mm::io::encode(seq.data(), seq.size(), tokens.data(), with_mask ? mask.data() : nullptr) != mm::io::npos) {
          std::fprintf(stderr, "bench_tokenizer: error: %s: invalid character\n", path.c_str());
          return 1;
        }
        checksum += tokens[done % tokens.size()];
        done += seq.size();
      }
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::printf("tokenizer encode%s: %.0f MB in %.3f s = %.0f MB/s (checksum %zu)\n",
                  with_mask ? "+mask" : "     ", done / 1e6, s, done / 1e6 / s, checksum);
    }
  } catch (const mm::Error& e) {
    std::fprintf(stderr, "bench_tokenizer: error: %s\n", e.message().c_str());
    return 1;
  }
  return 0;
}
