// Why the CPU linears use OpenBLAS: the model's matrix products (out = in · Wᵀ, row-major, the
// shapes of the tiny model over 4 096 rows) timed through OpenBLAS cblas_sgemm and through Eigen,
// single-threaded so the libraries' kernels are compared, not their threading.
// Usage: bench_gemm [rows]   (prints GFLOP/s per shape)
#include <cblas.h>

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

extern "C" void openblas_set_num_threads(int);

namespace {

template <typename F>
double best_seconds(F&& f) {
  f();
  double best = 1e30;
  for (int i = 0; i < 5; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  const long M = argc > 1 ? std::atol(argv[1]) : 4096;
  openblas_set_num_threads(1);
  Eigen::setNbThreads(1);
  struct Shape { const char* what; long I, O; };
  const Shape shapes[] = {{"in_proj", 256, 1024}, {"x_proj", 512, 48}, {"dt_proj", 16, 512},
                          {"out_proj", 512, 256}, {"note gate", 256, 256}, {"head", 256, 8}};
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1, 1);
  std::printf("shape\tM x I -> O\tOpenBLAS GFLOP/s\tEigen GFLOP/s\tmax |difference|\n");
  for (const auto& s : shapes) {
    std::vector<float> in(size_t(M * s.I)), w(size_t(s.O * s.I)), a(size_t(M * s.O)), b(a.size());
    for (auto& x : in) x = u(rng);
    for (auto& x : w) x = u(rng);
    using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    Eigen::Map<const RowMajor> IN(in.data(), M, s.I), W(w.data(), s.O, s.I);
    Eigen::Map<RowMajor> B(b.data(), M, s.O);
    const double t_blas = best_seconds([&] {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(M), int(s.O), int(s.I), 1.0f, in.data(),
                  int(s.I), w.data(), int(s.I), 0.0f, a.data(), int(s.O));
    });
    const double t_eigen = best_seconds([&] { B.noalias() = IN * W.transpose(); });
    float diff = 0;
    for (size_t i = 0; i < a.size(); ++i) diff = std::max(diff, std::abs(a[i] - b[i]));
    const double flop = 2.0 * double(M) * double(s.I) * double(s.O);
    std::printf("%s\t%ld x %ld -> %ld\t%.1f\t%.1f\t%.2g\n", s.what, M, s.I, s.O, flop / t_blas / 1e9,
                flop / t_eigen / 1e9, double(diff));
  }
  return 0;
}
