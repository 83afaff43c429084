// The CUDA model against the CPU model and the golden reference (fp32 path within 1e-4, bf16
// within 2e-2, DESIGN §4): inference, and the training pass (loss, logits, every parameter
// gradient); the streaming contract on the GPU. Skips without a GPU.
#include <gtest/gtest.h>

#include <random>
#include <set>

#include "io/error.hpp"
#include "io/safetensors.hpp"
#include "kernels/cuda/ops.hpp"
#include "model/memmamba.hpp"
#include "model/memmamba_cuda.hpp"
#include "model/cuda_training.hpp"
#include "model/memmamba_train_cuda.hpp"
#include "model/trainer.hpp"
#include "model/stream_model.hpp"
#include "support/compare.hpp"
#include "support/fixtures.hpp"
#include "support/models.hpp"

namespace {

#define NEED_GPU() \
  if (!mm::cuda::available()) GTEST_SKIP() << "no CUDA device on this machine: run the GPU tests on the GPU machine"

std::vector<float> cpu_logits(mm::MemMamba<float>& m, const std::vector<int32_t>& tok, int64_t B, int64_t T,
                              mm::StreamState<float>* st = nullptr) {
  std::vector<float> out(size_t(B * T * m.config().vocab));
  m.forward(tok.data(), B, T, out.data(), st);
  return out;
}

void expect_same_pools(const mm::StreamState<float>& cpu, const mm::MemMambaCuda& g,
                       const mm::MemMambaCuda::State& gs, int64_t B) {
  for (int l = 0; l < g.config().n_layer; ++l)
    for (int64_t b = 0; b < B; ++b) {
      const auto& want = cpu.layers[size_t(l)].pool[size_t(b)].pos;
      auto got = g.pool_positions(gs, l, b);
      EXPECT_EQ(std::set<int64_t>(got.begin(), got.end()), std::set<int64_t>(want.begin(), want.end()))
          << "layer " << l << " sequence " << b;
    }
}

void compare_with_cpu(mm::cuda::DType dt, double tol, bool notes) {
  auto cfg = mmtest::small_config(notes);
  mm::MemMamba<float> cpu = mmtest::live_model<float>(cfg, 13);
  mm::MemMambaCuda gpu(cfg, cpu.params(), dt);
  const int64_t B = 2, T = 301;
  auto tok = mmtest::random_tokens(B * T, 6);
  auto cst = cpu.new_state(B);
  auto want = cpu_logits(cpu, tok, B, T, &cst);
  auto gst = gpu.new_state(B);
  std::vector<float> got(want.size(), NAN);
  gpu.forward(tok.data(), B, T, got.data(), gst.get());
  const double err = mmtest::rel_error(got, want);
  std::printf("CUDA %s vs CPU logits, notes %s: rel error %.3g\n", dt == mm::cuda::DType::f32 ? "fp32" : "bf16",
              notes ? "on" : "off", err);
  EXPECT_LT(err, tol);
  if (notes && dt == mm::cuda::DType::f32) expect_same_pools(cst, gpu, *gst, B);
}

}  // namespace

TEST(CudaModel, Fp32MatchesCpuNotesOn) { NEED_GPU(); compare_with_cpu(mm::cuda::DType::f32, 1e-4, true); }
TEST(CudaModel, Fp32MatchesCpuNotesOff) { NEED_GPU(); compare_with_cpu(mm::cuda::DType::f32, 1e-4, false); }
TEST(CudaModel, Bf16MatchesCpuNotesOn) { NEED_GPU(); compare_with_cpu(mm::cuda::DType::bf16, 2e-2, true); }

TEST(CudaModel, Fp32MatchesTheGoldenReference) {
  NEED_GPU();
  auto f = mm::io::SafetensorsFile::read(mmtest::data("reference/memmamba-tiny-reference.safetensors"));
  auto cfg = mm::Config::from_json(f.metadata().at("memmamba.config"));
  mm::ParamTable table(cfg);
  std::vector<float> params(table.total());
  for (const auto& p : table.entries()) {
    auto v = f.as_f64("param." + p.name);
    std::copy(v.begin(), v.end(), params.begin() + long(p.offset));
  }
  std::vector<int32_t> tok;
  for (auto t : f.as_i64("input.tokens")) tok.push_back(int32_t(t));
  mm::MemMambaCuda gpu(cfg, params, mm::cuda::DType::f32);
  std::vector<float> got(tok.size() * size_t(cfg.vocab), NAN);
  gpu.forward(tok.data(), 1, int64_t(tok.size()), got.data());
  const double err = mmtest::rel_error(got, f.as_f64("output.logits"));
  std::printf("CUDA fp32 vs golden logits: rel error %.3g\n", err);
  EXPECT_LT(err, 1e-4);
}

TEST(CudaModel, StreamingPiecesMatchTheWholePass) {
  NEED_GPU();
  auto cfg = mmtest::small_config(true);
  mm::MemMamba<float> cpu = mmtest::live_model<float>(cfg, 14);
  mm::MemMambaCuda gpu(cfg, cpu.params(), mm::cuda::DType::f32);
  const int64_t B = 2, T = 257, V = cfg.vocab;
  auto tok = mmtest::random_tokens(B * T, 7);
  auto whole_state = gpu.new_state(B);
  std::vector<float> whole(size_t(B * T * V), NAN);
  gpu.forward(tok.data(), B, T, whole.data(), whole_state.get());
  std::mt19937_64 rng(3);
  for (int trial = 0; trial < 3; ++trial) {
    auto st = gpu.new_state(B);
    std::vector<float> got(whole.size(), NAN);
    for (int64_t t0 = 0; t0 < T;) {
      const int64_t len = std::min<int64_t>(T - t0, 1 + int64_t(rng() % 40));
      std::vector<int32_t> piece(size_t(B * len));
      for (int64_t b = 0; b < B; ++b) std::copy_n(tok.begin() + b * T + t0, len, piece.begin() + b * len);
      std::vector<float> out(size_t(B * len * V), NAN);
      gpu.forward(piece.data(), B, len, out.data(), st.get());
      for (int64_t b = 0; b < B; ++b) std::copy_n(out.begin() + b * len * V, len * V, got.begin() + (b * T + t0) * V);
      t0 += len;
    }
    EXPECT_LT(mmtest::rel_error(got, whole), 1e-5) << "trial " << trial;
    for (int l = 0; l < cfg.n_layer; ++l)
      for (int64_t b = 0; b < B; ++b) {
        auto x = gpu.pool_positions(*st, l, b), y = gpu.pool_positions(*whole_state, l, b);
        EXPECT_EQ(std::set<int64_t>(x.begin(), x.end()), std::set<int64_t>(y.begin(), y.end()));
      }
  }
  // The model's own piecing (max_piece) is the same contract.
  gpu.max_piece = 29;
  std::vector<float> pieced(whole.size(), NAN);
  gpu.forward(tok.data(), B, T, pieced.data());
  EXPECT_LT(mmtest::rel_error(pieced, whole), 1e-5);
}

TEST(CudaModel, StreamModelMatchesTheCpuStreamModel) {
  NEED_GPU();
  auto cfg = mmtest::small_config(true);
  mm::MemMamba<float> cpu = mmtest::live_model<float>(cfg, 15);
  mm::CpuStreamModel a(cpu);
  auto b = mm::make_cuda_stream_model(cfg, cpu.params());
  auto tok = mmtest::random_tokens(200, 9);
  for (int round = 0; round < 2; ++round) {  // the second round checks reset()
    a.reset();
    b->reset();
    std::vector<float> la(tok.size() * size_t(cfg.vocab)), lb(la.size(), NAN);
    for (int64_t t0 : {0, 37, 150}) {
      const int64_t len = (t0 == 0 ? 37 : t0 == 37 ? 113 : 50);
      a.forward(tok.data() + t0, len, la.data() + t0 * cfg.vocab);
      b->forward(tok.data() + t0, len, lb.data() + t0 * cfg.vocab);
    }
    EXPECT_LT(mmtest::rel_error(lb, la), 2e-2) << "round " << round;
  }
}

namespace {

// The CUDA training pass in fp32 against the CPU model's forward_backward: logits, loss and every
// parameter gradient (each tensor within tol, relative).
void compare_training(const mm::Config& cfg, int64_t B, int64_t T, uint64_t seed, double tol) {
  mm::MemMamba<float> cpu = mmtest::live_model<float>(cfg, seed);
  auto tok = mmtest::random_tokens(B * T, seed + 1);
  auto targets = mm::MemMamba<float>::next_token_targets(tok.data(), B, T);
  const int64_t V = cfg.vocab;
  std::vector<float> want_logits(size_t(B * T * V)), got_logits(want_logits.size(), NAN);
  int64_t want_n = 0, got_n = 0;
  cpu.zero_grads();
  const double want_loss = cpu.forward_backward(tok.data(), targets.data(), B, T, 1.0, &want_n, want_logits.data());
  mm::MemMambaCudaTraining gpu(cfg, mm::cuda::DType::f32);
  gpu.set_params(cpu.params());
  std::vector<float> grads(cpu.params().size(), 0.0f);
  const double got_loss = gpu.forward_backward(tok.data(), targets.data(), B, T, 1.0, &got_n, grads.data(),
                                               got_logits.data());
  EXPECT_EQ(got_n, want_n);
  EXPECT_NEAR(got_loss, want_loss, tol * std::abs(want_loss));
  EXPECT_LT(mmtest::rel_error(got_logits, want_logits), tol) << "logits";
  double worst = 0;
  std::string worst_name;
  for (const auto& p : cpu.table().entries()) {
    const double e = mmtest::rel_error(grads.data() + p.offset, cpu.grads().data() + p.offset, p.size);
    if (!(e <= worst)) {
      worst = e;
      worst_name = p.name;
    }
    EXPECT_LT(e, tol) << "grad." << p.name;
  }
  std::printf("CUDA fp32 training vs CPU (notes %s, B=%lld T=%lld): loss %.6f vs %.6f, worst gradient rel error %.3g (%s)\n",
              cfg.notes ? "on" : "off", (long long)B, (long long)T, got_loss, want_loss, worst, worst_name.c_str());
}

}  // namespace

TEST(CudaTraining, Fp32GradientsMatchCpuNotesOn) { NEED_GPU(); compare_training(mmtest::small_config(true), 2, 301, 21, 1e-4); }
TEST(CudaTraining, Fp32GradientsMatchCpuNotesOff) { NEED_GPU(); compare_training(mmtest::small_config(false), 2, 301, 22, 1e-4); }

TEST(CudaTraining, Fp32GradientsMatchCpuDefaultShapes) {
  NEED_GPU();
  // DESIGN §3's tiny-model shapes, fewer layers: every kernel's real tile sizes run.
  mm::Config cfg;
  cfg.n_layer = 4;
  compare_training(cfg, 1, 1500, 23, 1e-4);
}

TEST(CudaTraining, Fp32MatchesTheGoldenReference) {
  NEED_GPU();
  auto f = mm::io::SafetensorsFile::read(mmtest::data("reference/memmamba-tiny-reference.safetensors"));
  auto cfg = mm::Config::from_json(f.metadata().at("memmamba.config"));
  mm::ParamTable table(cfg);
  std::vector<float> params(table.total());
  for (const auto& p : table.entries()) {
    auto v = f.as_f64("param." + p.name);
    std::copy(v.begin(), v.end(), params.begin() + long(p.offset));
  }
  std::vector<int32_t> tok;
  for (auto t : f.as_i64("input.tokens")) tok.push_back(int32_t(t));
  const int64_t T = int64_t(tok.size());
  auto targets = mm::MemMamba<float>::next_token_targets(tok.data(), 1, T);
  int64_t n = 0;
  for (auto t : targets) n += t >= 0;
  mm::MemMambaCudaTraining gpu(cfg, mm::cuda::DType::f32);
  gpu.set_params(params);
  std::vector<float> grads(params.size(), 0.0f), logits(size_t(T * cfg.vocab), NAN);
  int64_t counted = 0;
  const double loss = gpu.forward_backward(tok.data(), targets.data(), 1, T, double(n), &counted, grads.data(),
                                           logits.data()) / double(n);
  EXPECT_EQ(counted, n);
  EXPECT_NEAR(loss, f.as_f64("output.loss")[0], 1e-4 * std::abs(loss));
  EXPECT_LT(mmtest::rel_error(logits, f.as_f64("output.logits")), 1e-4);
  double worst = 0;
  for (const auto& p : table.entries()) {
    const double e = mmtest::rel_error(grads.data() + p.offset, f.as_f64("grad." + p.name).data(), p.size);
    worst = std::max(worst, e);
    EXPECT_LT(e, 1e-4) << "grad." << p.name;
  }
  std::printf("CUDA fp32 training vs golden: loss %.8f, worst gradient rel error %.3g\n", loss, worst);
}

TEST(CudaTraining, RefusesWhatItCannotDo) {
  NEED_GPU();
  auto cfg = mmtest::small_config(true);
  EXPECT_THROW(mm::MemMambaCudaTraining(cfg, mm::cuda::DType::bf16), mm::Error);
  mm::MemMambaCudaTraining gpu(cfg, mm::cuda::DType::f32);
  EXPECT_THROW(gpu.set_params(std::vector<float>(3, 0.0f)), mm::Error);
}

TEST(CudaTraining, TrainerStepsTrackTheCpu) {
  NEED_GPU();
  // Five AdamW steps through the CUDA gradient pass (TF32 products) and through the CPU model,
  // from the same weights on the same batches: the losses stay within TF32's rounding.
  auto cfg = mmtest::small_config(true);
  mm::MemMamba<float> a = mmtest::live_model<float>(cfg, 31), b = mmtest::live_model<float>(cfg, 31);
  mm::TrainConfig tc;
  tc.lr = 3e-3;
  tc.warmup_steps = 1;
  tc.total_steps = 5;
  mm::Trainer<float> cpu(a, tc), gpu(b, tc, mm::make_cuda_gradient_pass(cfg));
  for (int step = 0; step < 5; ++step) {
    mm::Batch batch;
    batch.B = 2;
    batch.T = 200;
    batch.tokens = mmtest::random_tokens(batch.B * batch.T, 100 + uint64_t(step));
    batch.targets = mm::MemMamba<float>::next_token_targets(batch.tokens.data(), batch.B, batch.T);
    const auto rc = cpu.step([&](int64_t) { return batch; });
    const auto rg = gpu.step([&](int64_t) { return batch; });
    std::printf("step %d: loss CPU %.6f, CUDA %.6f; grad norm %.5f vs %.5f\n", step + 1, rc.loss, rg.loss, rc.grad_norm,
                rg.grad_norm);
    EXPECT_NEAR(rg.loss, rc.loss, 2e-3 * rc.loss);
    EXPECT_NEAR(rg.grad_norm, rc.grad_norm, 2e-2 * rc.grad_norm);
  }
  EXPECT_LT(mmtest::rel_error(b.params(), a.params()), 1e-3);
}
