// Data-parallel pretraining on the CPU: the socket collective (sums, barrier, agreement checks,
// lost and out-of-step ranks), the split of a step's windows over the ranks, and the CLI: 1, 2 and
// 3 ranks give the losses and weights of one process at the same global batch, resume with
// another number of ranks continues the run, ranks started by hand over TCP, a failing or killed
// rank stops the others, SIGINT to the launcher, and bad rank counts (exit 2).
#include <gtest/gtest.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <functional>
#include <regex>
#include <sstream>
#include <thread>

#include "io/tokenizer.hpp"
#include "model/checkpoint.hpp"
#include "model/collective.hpp"
#include "model/cuda_training.hpp"
#include "pipelines/pretrain.hpp"
#include "support/fixtures.hpp"

namespace fs = std::filesystem;
using mmtest::run_cli;

namespace {

const std::string kSample = std::string(MM_TEST_DATA) + "/../../sample_data/chr20_slices.fa.gz";
const std::string kTinyLoud =
    " --d-model 16 --layers 2 --d-state 4 --pool-slots 4 --summary-dim 8 --note-heads 2 --memory-chunk 32"
    " --cross-period 2 --window 128 --warmup 2 --threads 1 --no-markov ";
const std::string kTiny = kTinyLoud + "--quiet ";

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  size_t b = 0;
  for (size_t e; (e = text.find('\n', b)) != std::string::npos; b = e + 1) out.push_back(text.substr(b, e - b));
  return out;
}

std::vector<double> losses(const fs::path& metrics) {
  std::vector<double> out;
  static const std::regex re("\"loss\":([^,]+),");
  for (const auto& l : lines_of(mmtest::read_text(metrics))) {
    std::smatch m;
    if (std::regex_search(l, m, re)) out.push_back(std::stod(m[1]));
  }
  return out;
}

std::vector<std::string> files_in(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

void expect_losses_near(const std::vector<double>& want, const std::vector<double>& got, const std::string& what) {
  ASSERT_EQ(want.size(), got.size()) << what;
  for (size_t i = 0; i < want.size(); ++i)
    EXPECT_NEAR(got[i], want[i], 1e-5 * std::abs(want[i])) << what << ", step " << i + 1;
}

// Weights after a few AdamW steps: the summation order differs between rank counts, and AdamW
// normalises each gradient, so compare with a tolerance well below one update (lr 1e-3).
void expect_params_near(const fs::path& a, const fs::path& b, const std::string& what) {
  auto ca = mm::load_checkpoint(a), cb = mm::load_checkpoint(b);
  ASSERT_EQ(ca.params.size(), cb.params.size()) << what;
  double worst = 0;
  for (size_t i = 0; i < ca.params.size(); ++i) worst = std::max(worst, double(std::abs(ca.params[i] - cb.params[i])));
  EXPECT_LT(worst, 2e-6) << what << ": largest weight difference " << worst;
}

// Runs memmamba with `args` in a child (stdout and stderr to err_file) after `setup` runs there.
pid_t start_child(const std::vector<std::string>& args, const fs::path& err_file, const std::function<void()>& setup) {
  const pid_t pid = fork();
  if (pid == 0) {
    const int fd = open(err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0666);
    if (fd >= 0) {
      dup2(fd, 2);
      dup2(fd, 1);
    }
    setup();
    std::vector<char*> argv;
    argv.push_back(const_cast<char*>(MM_BINARY));
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(MM_BINARY, argv.data());
    _exit(127);
  }
  return pid;
}

int wait_child(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::vector<std::string> words(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

// A TCP port that was free a moment ago.
int free_port() {
  const int s = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
  close(s);
  return ntohs(a.sin_port);
}

void wait_for_metrics_line(const fs::path& metrics) {
  const auto t0 = std::chrono::steady_clock::now();
  while (mmtest::read_text(metrics).find('\n') == std::string::npos &&
         std::chrono::steady_clock::now() - t0 < std::chrono::seconds(60))
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
}

// Runs body(rank, collective) on `n` threads joined through the socket collective at `address`;
// returns each rank's error message ("" when it returned).
std::vector<std::string> on_ranks(int n, const std::string& address,
                                  const std::function<void(int, mm::Collective&)>& body) {
  std::vector<std::string> errors(static_cast<size_t>(n));
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r)
    threads.emplace_back([&, r] {
      try {
        mm::Rendezvous rv;
        rv.rank = r;
        rv.size = n;
        rv.address = address;
        rv.timeout_s = 30;
        auto c = mm::make_socket_collective(rv);
        body(r, *c);
      } catch (const std::exception& e) {
        errors[size_t(r)] = e.what();
        if (errors[size_t(r)].empty()) errors[size_t(r)] = "?";
      }
    });
  for (auto& t : threads) t.join();
  return errors;
}

}  // namespace

TEST(Distributed, RankWindowsSplitEveryStepIntoContiguousSharesInRankOrder) {
  for (int64_t W : {1, 2, 5, 6, 8, 13, 64})
    for (int N = 1; N <= std::min<int64_t>(W, 7); ++N) {
      int64_t next = 0, smallest = W, largest = 0;
      for (int r = 0; r < N; ++r) {
        auto [lo, hi] = mm::pipelines::rank_windows(W, r, N);
        EXPECT_EQ(lo, next) << W << " windows, rank " << r << " of " << N;
        EXPECT_GE(hi, lo + 1);
        smallest = std::min(smallest, hi - lo);
        largest = std::max(largest, hi - lo);
        next = hi;
      }
      EXPECT_EQ(next, W);
      EXPECT_LE(largest - smallest, 1);
    }
  EXPECT_EQ(mm::pipelines::rank_windows(8, 0, 1), std::make_pair(int64_t(0), int64_t(8)));
  EXPECT_EQ(mm::pipelines::rank_windows(8, 2, 3), std::make_pair(int64_t(5), int64_t(8)));
  EXPECT_THROW(mm::pipelines::rank_windows(8, 3, 3), mm::Error);
}

TEST(Distributed, SocketCollectiveSumsInRankOrderAndEveryRankGetsTheSameBits) {
  const fs::path dir = mmtest::scratch("dist_socket");
  for (const std::string& address :
       {"unix:" + (dir / "s.sock").string(), "127.0.0.1:" + std::to_string(free_port())}) {
    const int n = 3;
    std::vector<std::vector<float>> got(n);
    std::vector<std::vector<double>> got64(n);
    auto errors = on_ranks(n, address, [&](int r, mm::Collective& c) {
      EXPECT_EQ(c.rank(), r);
      EXPECT_EQ(c.size(), n);
      EXPECT_EQ(c.transport(), "socket");
      std::vector<float> x(100003);  // larger than a socket buffer
      for (size_t i = 0; i < x.size(); ++i) x[i] = float(0.1 * double(r + 1) + 1e-7 * double(i));
      c.all_reduce_sum(x.data(), x.size());
      got[size_t(r)] = x;
      std::vector<double> y{double(r), 1.0, -0.5 * r};
      c.all_reduce_sum(y.data(), y.size());
      got64[size_t(r)] = y;
      c.barrier();
      EXPECT_EQ(c.lost_peer(), -1);
      mm::check_same_on_all_ranks(c, 0x123456789abcdefull, "a constant");
    });
    for (int r = 0; r < n; ++r) EXPECT_EQ(errors[size_t(r)], "") << address << " rank " << r;
    for (size_t i = 0; i < got[0].size(); i += 997) {
      // Rank order: ((x0 + x1) + x2) in float.
      float want = float(0.1 + 1e-7 * double(i));
      want += float(0.2 + 1e-7 * double(i));
      want += float(0.3 + 1e-7 * double(i));
      EXPECT_EQ(got[0][i], want) << i;
    }
    EXPECT_EQ(got[1], got[0]);
    EXPECT_EQ(got[2], got[0]);
    EXPECT_EQ(got64[0], (std::vector<double>{3.0, 3.0, -1.5}));
    EXPECT_EQ(got64[2], got64[0]);
  }
}

TEST(Distributed, SocketCollectiveReportsDisagreementOutOfStepAndLostRanks) {
  const fs::path dir = mmtest::scratch("dist_socket_bad");
  // A value that differs on one rank: every rank throws, rank 2 knows it is the odd one.
  auto errors = on_ranks(3, "unix:" + (dir / "a.sock").string(), [](int r, mm::Collective& c) {
    mm::check_same_on_all_ranks(c, r == 2 ? 7 : 5, "the answer");
  });
  for (int r = 0; r < 3; ++r) EXPECT_NE(errors[size_t(r)].find("the ranks disagree on the answer: 1 of 3"), std::string::npos) << errors[size_t(r)];
  EXPECT_NE(errors[2].find("this one among them"), std::string::npos);
  EXPECT_EQ(errors[0].find("this one among them"), std::string::npos);

  // Ranks that call different collectives.
  errors = on_ranks(2, "unix:" + (dir / "b.sock").string(), [](int r, mm::Collective& c) {
    float f = 1;
    double d = 1;
    if (r == 0) c.all_reduce_sum(&f, 1);
    else c.all_reduce_sum(&d, 1);
  });
  EXPECT_NE(errors[0].find("out of step"), std::string::npos) << errors[0];
  EXPECT_NE(errors[1].find("rank 0"), std::string::npos) << errors[1];

  // A rank that leaves: rank 0 names it, rank 1 then loses rank 0; nobody waits for ever.
  errors = on_ranks(3, "unix:" + (dir / "c.sock").string(), [](int r, mm::Collective& c) {
    if (r == 2) throw std::runtime_error("rank 2 gives up");
    std::vector<float> x(10, 1.0f);
    c.all_reduce_sum(x.data(), x.size());
  });
  EXPECT_NE(errors[0].find("lost the connection to rank 2"), std::string::npos) << errors[0];
  EXPECT_NE(errors[1].find("lost the connection to rank 0"), std::string::npos) << errors[1];

  // Rendezvous: a rank started for another number of ranks, and nobody listening.
  std::string e0, e1;
  const std::string addr = "unix:" + (dir / "d.sock").string();
  std::thread t0([&] {
    try {
      mm::make_socket_collective({0, 2, addr, 0, 30});
    } catch (const mm::Error& e) { e0 = e.what(); }
  });
  std::thread t1([&] {
    try {
      mm::make_socket_collective({1, 3, addr, 0, 30});
    } catch (const mm::Error& e) { e1 = e.what(); }
  });
  t0.join();
  t1.join();
  EXPECT_NE(e0.find("started for 3 ranks, rank 0 for 2"), std::string::npos) << e0;
  EXPECT_NE(e1.find("another number of ranks"), std::string::npos) << e1;
  try {
    mm::make_socket_collective({1, 2, "unix:" + (dir / "nobody.sock").string(), 0, 0.3});
    FAIL() << "no rank 0, no error";
  } catch (const mm::Error& e) {
    EXPECT_NE(std::string(e.what()).find("rank 0 did not answer"), std::string::npos) << e.what();
  }
  EXPECT_THROW(mm::make_socket_collective({2, 2, addr, 0, 1}), mm::UsageError);
  EXPECT_THROW(mm::make_socket_collective({0, 2, "somehost:notaport", 0, 1}), mm::UsageError);
}

TEST(Distributed, OneProcessIsTheTrainersOwnMicroBatchLoopBitForBit) {
  // pretrain() now hands the Trainer one pass per step that runs the micro-batches itself (the
  // rank's share): with one process that must be exactly the Trainer's own accumulation loop.
  const fs::path dir = mmtest::scratch("dist_one");
  mm::pipelines::PretrainOptions o;
  o.data.inputs = {kSample};
  o.model.d_model = 16;
  o.model.n_layer = 2;
  o.model.d_state = 4;
  o.model.pool_slots = 4;
  o.model.summary_dim = 8;
  o.model.note_heads = 2;
  o.model.memory_chunk = 32;
  o.model.cross_layer_period = 2;
  o.windows.length = 128;
  o.windows.seed = 3;
  o.batch = 3;
  o.train.accumulation = 2;
  o.train.total_steps = 3;
  o.train.warmup_steps = 2;
  o.markov = false;
  o.output = dir / "out";
  auto res = mm::pipelines::pretrain(o, {});
  ASSERT_EQ(res.steps, 3);

  auto data = mm::pipelines::load_training_data(o.data);
  mm::pipelines::WindowSampler sampler(data.train, o.windows);
  mm::MemMamba<float> model(o.model, o.windows.seed);
  mm::Trainer<float> trainer(model, o.train);
  std::vector<std::string> want;
  for (int64_t step = 1; step <= 3; ++step) {
    auto r = trainer.step([&](int64_t micro) {
      mm::Batch b;
      b.B = o.batch;
      b.T = 129;
      for (int64_t i = 0; i < o.batch; ++i) {
        auto w = sampler.sample(uint64_t(((step - 1) * 2 + micro) * o.batch + i));
        b.tokens.push_back(mm::io::tok::BOS);
        for (uint8_t t : w.tokens) b.tokens.push_back(t);
      }
      b.targets = mm::MemMamba<float>::next_token_targets(b.tokens.data(), b.B, b.T);
      return b;
    });
    char buf[40];
    std::snprintf(buf, sizeof buf, "%.17g", r.loss);
    want.push_back(buf);
  }
  std::vector<std::string> got;
  static const std::regex re("\"loss\":([^,]+),");
  for (const auto& l : lines_of(mmtest::read_text(dir / "out" / "metrics.jsonl"))) {
    std::smatch m;
    if (std::regex_search(l, m, re)) got.push_back(m[1]);
  }
  EXPECT_EQ(got, want);
  EXPECT_EQ(mm::load_checkpoint(dir / "out" / "step-00000003.safetensors").params, model.params());
}

TEST(Distributed, TwoAndThreeRanksGiveTheLossesAndWeightsOfOneProcess) {
  const fs::path dir = mmtest::scratch("dist_match");
  for (const std::string batch : {"--batch 6 --accumulate 1", "--batch 4 --accumulate 2"}) {
    const int64_t step_windows = batch == "--batch 6 --accumulate 1" ? 6 : 8;
    const std::string common = kTiny + batch + " --steps 4 --save-every 2 --keep 5 --rc-prob 0.5 --seed 3 " + kSample;
    auto one = run_cli("pretrain -o " + (dir / "one").string() + common);
    ASSERT_EQ(one.exit_code, 0) << one.err;
    const auto want = losses(dir / "one" / "metrics.jsonl");
    ASSERT_EQ(want.size(), 4u);
    // --ranks 1 goes through the launcher and the socket transport: bit for bit the same.
    auto r1 = run_cli("pretrain --ranks 1 -o " + (dir / "r1").string() + common);
    ASSERT_EQ(r1.exit_code, 0) << r1.err;
    EXPECT_EQ(losses(dir / "r1" / "metrics.jsonl"), want);
    EXPECT_EQ(mm::load_checkpoint(dir / "r1" / "step-00000004.safetensors").params,
              mm::load_checkpoint(dir / "one" / "step-00000004.safetensors").params);
    for (int n : {2, 3}) {
      const fs::path out = dir / ("r" + std::to_string(n));
      auto r = run_cli("pretrain --ranks " + std::to_string(n) + " -o " + out.string() + common);
      ASSERT_EQ(r.exit_code, 0) << r.err;
      EXPECT_TRUE(r.err.empty()) << r.err;  // --quiet: the ranks too
      // Rank 0 alone wrote: the same files as one process, one metrics line per step.
      EXPECT_EQ(files_in(out), files_in(dir / "one"));
      const auto got = losses(out / "metrics.jsonl");
      expect_losses_near(want, got, batch + ", " + std::to_string(n) + " ranks");
      EXPECT_NE(got, want);  // really another summation (else the ranks did not split the work)
      expect_params_near(dir / "one" / "step-00000004.safetensors", out / "step-00000004.safetensors",
                         batch + ", " + std::to_string(n) + " ranks");
      auto ck = mm::load_checkpoint(out / "step-00000004.safetensors");
      EXPECT_NE(ck.metadata.at("memmamba.training").find("\"ranks\":" + std::to_string(n)), std::string::npos);
      EXPECT_NE(ck.metadata.at("memmamba.training").find("\"transport\":\"socket\""), std::string::npos);
      EXPECT_EQ(ck.metadata.at("memmamba.tokens_seen"), std::to_string(4 * step_windows * 128));
      fs::remove_all(out);
    }
    fs::remove_all(dir / "one");
    fs::remove_all(dir / "r1");
  }
}

TEST(Distributed, ResumeWithAnotherNumberOfRanksContinuesTheRun) {
  const fs::path dir = mmtest::scratch("dist_resume");
  const std::string common = kTiny + "--batch 6 --steps 6 --save-every 100 --seed 5 " + kSample;
  auto straight = run_cli("pretrain -o " + (dir / "a").string() + common);
  ASSERT_EQ(straight.exit_code, 0) << straight.err;
  const auto want = losses(dir / "a" / "metrics.jsonl");
  ASSERT_EQ(want.size(), 6u);
  // 2 ranks to step 3, then 3 ranks to the end.
  auto first = run_cli("pretrain --ranks 2 --stop-at 3 -o " + (dir / "b").string() + common);
  ASSERT_EQ(first.exit_code, 0) << first.err;
  EXPECT_TRUE(fs::exists(dir / "b" / "step-00000003.state.safetensors"));
  auto second = run_cli("pretrain --ranks 3 --resume " + (dir / "b").string() + common);
  ASSERT_EQ(second.exit_code, 0) << second.err;
  expect_losses_near(want, losses(dir / "b" / "metrics.jsonl"), "2 then 3 ranks");
  expect_params_near(dir / "a" / "step-00000006.safetensors", dir / "b" / "step-00000006.safetensors", "2 then 3 ranks");
  // One process to step 4, then 2 ranks.
  auto third = run_cli("pretrain --stop-at 4 -o " + (dir / "c").string() + common);
  ASSERT_EQ(third.exit_code, 0) << third.err;
  auto fourth = run_cli("pretrain --ranks 2 --resume " + (dir / "c").string() + common);
  ASSERT_EQ(fourth.exit_code, 0) << fourth.err;
  expect_losses_near(want, losses(dir / "c" / "metrics.jsonl"), "1 then 2 ranks");
  EXPECT_EQ(mm::load_checkpoint(dir / "c" / "step-00000006.safetensors").metadata.at("memmamba.tokens_seen"), "4608");
}

TEST(Distributed, RanksStartedByHandMeetOverTcpAndCheckTheyRunTheSameJob) {
  const fs::path dir = mmtest::scratch("dist_tcp");
  const std::string common = kTiny + "--batch 6 --steps 3 " + kSample;
  auto one = run_cli("pretrain -o " + (dir / "one").string() + common);
  ASSERT_EQ(one.exit_code, 0) << one.err;
  auto start_ranks = [&](const fs::path& out, const std::vector<std::string>& extra) {
    const std::string port = std::to_string(free_port());
    std::vector<pid_t> pids;
    for (int r = 0; r < 2; ++r) {
      auto args = words("pretrain -o " + out.string() + " " + extra[size_t(r)] + common);
      pids.push_back(start_child(args, dir / ("err" + std::to_string(r) + ".txt"), [r, port] {
        // What srun would set, and the port.
        setenv("SLURM_PROCID", std::to_string(r).c_str(), 1);
        setenv("SLURM_NTASKS", "2", 1);
        setenv("MEMMAMBA_MASTER_ADDR", "127.0.0.1", 1);
        setenv("MEMMAMBA_MASTER_PORT", port.c_str(), 1);
      }));
    }
    std::vector<int> codes;
    for (pid_t p : pids) codes.push_back(wait_child(p));
    return codes;
  };
  auto codes = start_ranks(dir / "two", {"", ""});
  EXPECT_EQ(codes, (std::vector<int>{0, 0})) << mmtest::read_text(dir / "err0.txt") << mmtest::read_text(dir / "err1.txt");
  expect_losses_near(losses(dir / "one" / "metrics.jsonl"), losses(dir / "two" / "metrics.jsonl"), "ranks by hand");
  // Another seed on rank 1: both refuse to train.
  codes = start_ranks(dir / "bad", {"--seed 1 ", "--seed 2 "});
  EXPECT_EQ(codes, (std::vector<int>{1, 1}));
  EXPECT_NE(mmtest::read_text(dir / "err0.txt").find("the ranks disagree on the run's settings"), std::string::npos)
      << mmtest::read_text(dir / "err0.txt");
  EXPECT_NE(mmtest::read_text(dir / "err1.txt").find("rank 1: the ranks disagree"), std::string::npos)
      << mmtest::read_text(dir / "err1.txt");
  EXPECT_FALSE(fs::exists(dir / "bad" / "step-00000003.safetensors"));
}

TEST(Distributed, AFailingOrKilledRankStopsTheOthersWithAClearError) {
  const fs::path dir = mmtest::scratch("dist_fail");
  // Rank 1 fails before step 3; the checkpoint of step 2 stays, the run ends with exit 1.
  setenv("MEMMAMBA_TEST_FAIL_RANK", "1:3", 1);
  const auto t0 = std::chrono::steady_clock::now();
  auto r = run_cli("pretrain --ranks 3 -o " + (dir / "out").string() + kTiny +
                   "--batch 6 --steps 6 --save-every 2 " + kSample);
  unsetenv("MEMMAMBA_TEST_FAIL_RANK");
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(60));
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("error: rank 1: failing before step 3"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("lost the connection to rank 1"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("the last good checkpoint is"), std::string::npos) << r.err;
  EXPECT_EQ(lines_of(mmtest::read_text(dir / "out" / "metrics.jsonl")).size(), 2u);
  EXPECT_TRUE(fs::exists(dir / "out" / "step-00000002.safetensors"));
  for (const auto& f : files_in(dir / "out")) EXPECT_EQ(f.find(".tmp"), std::string::npos) << f;

  // A rank killed outright: the launcher names it and returns 128 + 9.
  const pid_t launcher = start_child(words("pretrain --ranks 2 -o " + (dir / "kill").string() + kTinyLoud +
                                           "--batch 6 --steps 1000000 --save-every 1000000 " + kSample),
                                     dir / "kill.txt", [] {
                                       unsetenv("MEMMAMBA_TEST_FAIL_RANK");
                                     });
  wait_for_metrics_line(dir / "kill" / "metrics.jsonl");
  // Rank 1: the launcher's child whose environment says MEMMAMBA_RANK=1.
  pid_t victim = 0;
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string stat = mmtest::read_text(e.path() / "stat");
    const auto close = stat.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream in(stat.substr(close + 2));
    char state;
    long ppid = 0;
    in >> state >> ppid;
    if (ppid != launcher) continue;
    std::string env = mmtest::read_text(e.path() / "environ");
    if (env.find(std::string("MEMMAMBA_RANK=1") + '\0') != std::string::npos) victim = pid_t(std::stol(name));
  }
  ASSERT_GT(victim, 0) << mmtest::read_text(dir / "kill.txt");
  kill(victim, SIGKILL);
  EXPECT_EQ(wait_child(launcher), 137) << mmtest::read_text(dir / "kill.txt");
  const std::string err = mmtest::read_text(dir / "kill.txt");
  EXPECT_NE(err.find("rank 1 was killed by signal 9; the other ranks stop"), std::string::npos) << err;
  EXPECT_NE(err.find("lost the connection to rank 1"), std::string::npos) << err;
}

TEST(Distributed, SigintToTheLauncherStopsEveryRankAfterTheSameStepWithACheckpoint) {
  const fs::path dir = mmtest::scratch("dist_sigint");
  // The launcher's rendezvous folder goes to TMPDIR (a short path of our own, to see it removed).
  std::string tmp = "/tmp/mmtest-XXXXXX";
  ASSERT_NE(mkdtemp(tmp.data()), nullptr);
  const pid_t launcher = start_child(words("pretrain --ranks 2 -o " + (dir / "out").string() + kTiny +
                                           "--batch 6 --steps 1000000 --save-every 1000000 " + kSample),
                                     dir / "err.txt", [tmp] { setenv("TMPDIR", tmp.c_str(), 1); });
  wait_for_metrics_line(dir / "out" / "metrics.jsonl");
  kill(launcher, SIGINT);
  EXPECT_EQ(wait_child(launcher), 130) << mmtest::read_text(dir / "err.txt");
  const auto n = lines_of(mmtest::read_text(dir / "out" / "metrics.jsonl")).size();
  ASSERT_GE(n, 1u);
  char name[64];
  std::snprintf(name, sizeof name, "step-%08zu.safetensors", n);
  EXPECT_TRUE(fs::exists(dir / "out" / name)) << mmtest::read_text(dir / "err.txt");
  EXPECT_TRUE(fs::exists(dir / "out" / mm::pipelines::state_path(name)));
  EXPECT_TRUE(fs::is_empty(tmp)) << files_in(tmp).front();  // the rendezvous folder is gone
  fs::remove_all(tmp);
}

TEST(Distributed, BadRankCountsAndRankEnvironmentsAreUsageErrors) {
  const fs::path dir = mmtest::scratch("dist_usage");
  const std::string common = " -o " + (dir / "out").string() + kTiny + "--batch 6 --steps 2 " + kSample;
  auto expect_usage = [&](const std::string& args, const std::string& message) {
    auto r = run_cli("pretrain " + args + common);
    EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.err;
    EXPECT_NE(r.err.find(message), std::string::npos) << args << "\n" << r.err;
    EXPECT_FALSE(fs::exists(dir / "out" / "metrics.jsonl")) << args;
  };
  expect_usage("--ranks 0", "--ranks wants a number of ranks in 1..4096, got 0");
  expect_usage("--ranks -2", "--ranks wants a number of ranks in 1..4096, got -2");
  expect_usage("--ranks two", "--ranks wants an integer, got 'two'");
  expect_usage("--gpus 0", "--gpus wants a number of ranks in 1..4096");
  expect_usage("--ranks 7", "each of the 7 ranks needs at least one window per step, but a step has 6");
  expect_usage("--gpus 2 --ranks 3", "--gpus 2 and --ranks 3 disagree");
  expect_usage("--gpus 1 --device cpu", "--gpus trains on GPUs");
  expect_usage("--ranks 2 --transport carrier-pigeon", "--transport wants auto, nccl or socket");
  expect_usage("--ranks 2 --markov-only --valid-region slice20:90001-100000", "--markov-only runs in one process");
  if (mm::cuda_device_count() == 0) expect_usage("--gpus 2", "--gpus: no CUDA device here");
  if (!mm::nccl_available()) expect_usage("--ranks 2 --transport nccl", "this build has no NCCL");
  else if (mm::cuda_device_count() == 0) expect_usage("--ranks 2 --device cpu --transport nccl", "needs CUDA ranks");

  // A rank's environment that does not add up.
  setenv("MEMMAMBA_MASTER_ADDR", ("unix:" + (dir / "s.sock").string()).c_str(), 1);
  setenv("MEMMAMBA_WORLD_SIZE", "2", 1);
  setenv("MEMMAMBA_RANK", "2", 1);
  expect_usage("", "MEMMAMBA_RANK 2 is not in 0..1");
  setenv("MEMMAMBA_RANK", "1", 1);
  expect_usage("--ranks 3", "--ranks 3 but this rank's environment says 2 ranks");
  setenv("MEMMAMBA_WORLD_SIZE", "x", 1);
  expect_usage("", "MEMMAMBA_WORLD_SIZE wants an integer, got 'x'");
  unsetenv("MEMMAMBA_WORLD_SIZE");
  expect_usage("", "MEMMAMBA_MASTER_ADDR is set but not MEMMAMBA_WORLD_SIZE");
  unsetenv("MEMMAMBA_RANK");
  unsetenv("MEMMAMBA_MASTER_ADDR");
  // And the help says how to start ranks by hand.
  auto help = run_cli("pretrain --help");
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.out.find("--ranks N"), std::string::npos);
  EXPECT_NE(help.out.find("MEMMAMBA_MASTER_ADDR"), std::string::npos);
}
