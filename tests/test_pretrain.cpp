// memmamba pretrain: the training-window source (held-out and excluded bases never trained on,
// determinism), end-to-end CPU training through the CLI, exact resume, SIGINT, and bad input:
// empty/all-N inputs, windows longer than every contig, another config on --resume, an
// unwritable output folder, a full disk, a NaN loss.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <fcntl.h>

#include <chrono>
#include <csignal>
#include <functional>
#include <sstream>
#include <random>
#include <regex>
#include <thread>

#include "model/cuda_training.hpp"
#include "io/error.hpp"
#include "io/tokenizer.hpp"
#include "model/checkpoint.hpp"
#include "pipelines/pretrain.hpp"
#include "pipelines/training_data.hpp"
#include "support/fixtures.hpp"

namespace fs = std::filesystem;
using mmtest::run_cli;

namespace {

const std::string kSample = std::string(MM_TEST_DATA) + "/../../sample_data/chr20_slices.fa.gz";
const std::string kTiny =
    " --d-model 16 --layers 2 --d-state 4 --pool-slots 4 --summary-dim 8 --note-heads 2 --memory-chunk 32"
    " --cross-period 2 --window 128 --batch 2 --warmup 2 --threads 2 --quiet ";

std::string random_dna(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, 'A');
  for (auto& c : s) c = "ACGT"[rng() % 4];
  return s;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  size_t b = 0;
  for (size_t e; (e = text.find('\n', b)) != std::string::npos; b = e + 1) out.push_back(text.substr(b, e - b));
  return out;
}

// The "loss" values of a metrics file, as written (17 significant digits).
std::vector<std::string> losses(const fs::path& metrics) {
  std::vector<std::string> out;
  static const std::regex re("\"loss\":([^,]+),");
  for (const auto& l : lines_of(mmtest::read_text(metrics))) {
    std::smatch m;
    if (std::regex_search(l, m, re)) out.push_back(m[1]);
  }
  return out;
}

std::vector<std::string> files_in(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

// Runs memmamba with argv in a forked child, after `setup` (limits, uid) runs in the child;
// stderr goes to err_file. Returns the exit code (128 + signal when killed).
int run_child(const std::vector<std::string>& args, const fs::path& err_file,
              const std::function<void()>& setup, pid_t* pid_out = nullptr, bool wait = true) {
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
  if (pid_out) *pid_out = pid;
  if (!wait) return 0;
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

}  // namespace

TEST(Pretrain, WindowSourceNeverTrainsOnHeldOutOrExcludedBases) {
  const fs::path dir = mmtest::scratch("pretrain_source");
  std::string c1 = random_dna(6000, 1), c2 = random_dna(3000, 2);
  for (int i = 4000; i < 4200; ++i) c1[size_t(i)] = 'N';  // a gap that splits the interval
  mmtest::write_text(dir / "in.fa", ">c1\n" + c1 + "\n>chrc2\n" + c2 + "\n");
  mmtest::write_text(dir / "ex.bed", "c1\t3000\t3100\n");
  mm::pipelines::DataOptions o;
  o.inputs = {(dir / "in.fa").string()};
  o.exclude_bed = (dir / "ex.bed").string();
  o.valid_regions = {"c1:1001-2000"};
  o.valid_contigs = {"c2"};  // matches chrc2 through the chr prefix
  auto ds = mm::pipelines::load_training_data(o);
  // Training: c1 [0,1000) [2000,3000) [3100,4000) [4200,6000); validation: c1 [1000,2000) and c2.
  ASSERT_EQ(ds.train.size(), 4u);
  EXPECT_EQ(ds.train[0].beg0, 0);
  EXPECT_EQ(ds.train[0].end0, 1000);
  EXPECT_EQ(ds.train[1].beg0, 2000);
  EXPECT_EQ(ds.train[1].end0, 3000);
  EXPECT_EQ(ds.train[2].beg0, 3100);
  EXPECT_EQ(ds.train[2].end0, 4000);
  EXPECT_EQ(ds.train[3].beg0, 4200);
  EXPECT_EQ(ds.train[3].end0, 6000);
  ASSERT_EQ(ds.valid.size(), 2u);
  EXPECT_EQ(ds.valid[0].contig, "c1");
  EXPECT_EQ(ds.valid[0].beg0, 1000);
  EXPECT_EQ(ds.valid[0].end0, 2000);
  EXPECT_EQ(ds.valid[1].contig, "chrc2");
  EXPECT_EQ(ds.valid[1].end0, 3000);
  EXPECT_EQ(ds.train_bases, 1000 + 1000 + 900 + 1800);
  EXPECT_EQ(ds.valid_bases, 4000);

  mm::pipelines::WindowSpec ws;
  ws.length = 64;
  ws.seed = 7;
  ws.rc_prob = 0;
  mm::pipelines::WindowSampler sampler(ds.train, ws);
  std::vector<int> per_interval(4, 0);
  for (uint64_t i = 0; i < 4000; ++i) {
    auto w = sampler.sample(i);
    const auto& iv = ds.train[w.interval];
    ASSERT_EQ(iv.contig, "c1");
    ASSERT_GE(w.beg0, iv.beg0);
    ASSERT_LE(w.beg0 + 64, iv.end0);
    const bool held_out = w.beg0 < 2000 && w.beg0 + 64 > 1000;
    const bool excluded = w.beg0 < 3100 && w.beg0 + 64 > 3000;
    ASSERT_FALSE(held_out || excluded) << w.beg0;
    ASSERT_EQ(mm::io::decode(std::vector<uint8_t>(w.tokens)), c1.substr(size_t(w.beg0), 64));
    ++per_interval[w.interval];
  }
  for (int n : per_interval) EXPECT_GT(n, 200);  // every interval is drawn from
  // A pure function of (seed, index); another seed gives another order.
  EXPECT_EQ(sampler.sample(123).beg0, sampler.sample(123).beg0);
  ws.seed = 8;
  mm::pipelines::WindowSampler other(ds.train, ws);
  int same = 0;
  for (uint64_t i = 0; i < 50; ++i) same += other.sample(i).beg0 == sampler.sample(i).beg0;
  EXPECT_LT(same, 5);
  // Reverse complement when asked.
  ws.rc_prob = 1;
  mm::pipelines::WindowSampler rc(ds.train, ws);
  auto w = rc.sample(5);
  EXPECT_TRUE(w.reverse);
  auto fwd = std::vector<uint8_t>(ds.train[w.interval].tokens.begin() + (w.beg0 - ds.train[w.interval].beg0),
                                  ds.train[w.interval].tokens.begin() + (w.beg0 - ds.train[w.interval].beg0) + 64);
  mm::io::reverse_complement(fwd.data(), fwd.size());
  EXPECT_EQ(w.tokens, fwd);
  // Validation windows tile the held-out intervals.
  auto vw = mm::pipelines::validation_windows(ds.valid, 1000, 0.1, 0);
  ASSERT_EQ(vw.size(), 4u);
  EXPECT_EQ(vw[0].beg0, 1000);
  EXPECT_EQ(vw[3].beg0, 2000);
}

TEST(Pretrain, WindowSourceRefusesEmptyAllNAndTooShortInputs) {
  const fs::path dir = mmtest::scratch("pretrain_source_bad");
  mmtest::write_text(dir / "n.fa", ">n1\n" + std::string(500, 'N') + "\n");
  mm::pipelines::DataOptions o;
  o.inputs = {(dir / "n.fa").string()};
  try {
    mm::pipelines::load_training_data(o);
    FAIL() << "all-N input accepted";
  } catch (const mm::Error& e) {
    EXPECT_NE(std::string(e.what()).find("no A/C/G/T bases"), std::string::npos) << e.what();
  }
  mmtest::write_text(dir / "s.fa", ">short\n" + random_dna(300, 3) + "\n>shorter\nACGT\n");
  o.inputs = {(dir / "s.fa").string()};
  auto ds = mm::pipelines::load_training_data(o);
  mm::pipelines::WindowSpec ws;
  ws.length = 1000;
  try {
    mm::pipelines::WindowSampler s(ds.train, ws);
    FAIL() << "window longer than every contig accepted";
  } catch (const mm::Error& e) {
    EXPECT_NE(e.message().find("short:1-300 (300 bases"), std::string::npos) << e.message();
  }
  o.valid_regions = {"nowhere:1-10"};
  EXPECT_THROW(mm::pipelines::load_training_data(o), mm::Error);
  o.valid_regions = {"short:200-400"};  // beyond the contig end
  EXPECT_THROW(mm::pipelines::load_training_data(o), mm::Error);
}

TEST(Pretrain, TrainsEndToEndThroughTheCliAndInfoReadsTheCheckpoint) {
  const fs::path dir = mmtest::scratch("pretrain_e2e");
  auto r = run_cli("pretrain -o " + (dir / "out").string() + kTiny +
                   "--steps 4 --save-every 2 --keep 1 --eval-every 2 --valid-region slice20:90001-100000 " + kSample);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(files_in(dir / "out"), (std::vector<std::string>{"metrics.jsonl", "step-00000004.md",
                                                             "step-00000004.safetensors",
                                                             "step-00000004.state.safetensors"}));
  auto lines = lines_of(mmtest::read_text(dir / "out" / "metrics.jsonl"));
  ASSERT_EQ(lines.size(), 4u);
  for (const char* key : {"\"step\":1,", "\"tokens\":256,", "\"loss\":", "\"bits_per_base\":", "\"lr\":",
                          "\"grad_norm\":", "\"tokens_per_s\":"})
    EXPECT_NE(lines[0].find(key), std::string::npos) << key << " in " << lines[0];
  EXPECT_EQ(lines[0].find("valid_bits_per_base"), std::string::npos);
  EXPECT_NE(lines[1].find("\"valid_bits_per_base\":"), std::string::npos);
  EXPECT_NE(lines[3].find("\"valid_bits_per_base\":"), std::string::npos);
  EXPECT_TRUE(r.out.empty());   // nothing on stdout
  EXPECT_TRUE(r.err.empty());   // --quiet

  auto ck = mm::load_checkpoint(dir / "out" / "step-00000004.safetensors");
  EXPECT_EQ(ck.config.d_model, 16);
  EXPECT_EQ(ck.metadata.at("memmamba.steps"), "4");
  EXPECT_EQ(ck.metadata.at("memmamba.tokens_seen"), "1024");
  ASSERT_TRUE(ck.metadata.count("memmamba.markov"));
  auto mk = mm::pipelines::MarkovResult::from_json(ck.metadata.at("memmamba.markov"));
  EXPECT_GT(mk.order, 0);
  EXPECT_LT(mk.bits_per_base, 2.0);
  EXPECT_EQ(mk.valid_bases, 10000);

  auto info = run_cli("info " + (dir / "out" / "step-00000004.safetensors").string());
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_NE(info.out.find("parameters\t"), std::string::npos);
  EXPECT_NE(info.out.find("parameters.notes\t"), std::string::npos);
  EXPECT_NE(info.out.find("memmamba.markov\t"), std::string::npos);
  EXPECT_NE(info.out.find("memmamba.command\tmemmamba pretrain -o"), std::string::npos);
  EXPECT_NE(info.out.find("# MemMamba checkpoint, step 4"), std::string::npos);  // the model card

  auto markov = run_cli("pretrain --markov-only --quiet --valid-region slice20:90001-100000 " + kSample);
  ASSERT_EQ(markov.exit_code, 0) << markov.err;
  EXPECT_NE(markov.out.find("order\tbits_per_base\n0\t"), std::string::npos) << markov.out;
  EXPECT_NE(markov.out.find("\tbest"), std::string::npos);
}

TEST(Pretrain, ResumeGivesTheSameLossesBitForBit) {
  const fs::path dir = mmtest::scratch("pretrain_resume");
  const std::string common = kTiny + "--steps 6 --save-every 100 --eval-every 3 --rc-prob 0.5 --seed 5 "
                                     "--valid-contigs slice20b " + kSample;
  auto straight = run_cli("pretrain -o " + (dir / "a").string() + common);
  ASSERT_EQ(straight.exit_code, 0) << straight.err;
  auto first = run_cli("pretrain -o " + (dir / "b").string() + " --stop-at 3" + common);
  ASSERT_EQ(first.exit_code, 0) << first.err;
  EXPECT_TRUE(fs::exists(dir / "b" / "step-00000003.state.safetensors"));
  auto second = run_cli("pretrain --resume " + (dir / "b").string() + common);
  ASSERT_EQ(second.exit_code, 0) << second.err;
  auto a = losses(dir / "a" / "metrics.jsonl"), b = losses(dir / "b" / "metrics.jsonl");
  ASSERT_EQ(a.size(), 6u);
  EXPECT_EQ(a, b);
  // The final weights agree too.
  auto ca = mm::load_checkpoint(dir / "a" / "step-00000006.safetensors");
  auto cb = mm::load_checkpoint(dir / "b" / "step-00000006.safetensors");
  EXPECT_EQ(ca.params, cb.params);
  EXPECT_EQ(cb.metadata.at("memmamba.tokens_seen"), "1536");

  // A checkpoint of another config is refused, naming it.
  auto other = run_cli("pretrain --resume " + (dir / "b").string() + common + " --d-model 32");
  EXPECT_EQ(other.exit_code, 1);
  EXPECT_NE(other.err.find("another model config"), std::string::npos) << other.err;
  auto missing = run_cli("pretrain --resume " + (dir / "nothing").string() + common);
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.err.find("nothing"), std::string::npos) << missing.err;
}

TEST(Pretrain, SigintFinishesTheStepWritesACheckpointAndStops) {
  const fs::path dir = mmtest::scratch("pretrain_sigint");
  pid_t pid = 0;
  run_child(words("pretrain -o " + (dir / "out").string() + kTiny + "--steps 1000000 --save-every 1000000 --no-markov " + kSample),
            dir / "err.txt", [] {}, &pid, false);
  // Wait for the first metrics line, then interrupt.
  const auto t0 = std::chrono::steady_clock::now();
  while (mmtest::read_text(dir / "out" / "metrics.jsonl").find('\n') == std::string::npos &&
         std::chrono::steady_clock::now() - t0 < std::chrono::seconds(60))
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  kill(pid, SIGINT);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status)) << mmtest::read_text(dir / "err.txt");
  EXPECT_EQ(WEXITSTATUS(status), 130);
  const auto n = lines_of(mmtest::read_text(dir / "out" / "metrics.jsonl")).size();
  ASSERT_GE(n, 1u);
  char name[64];
  std::snprintf(name, sizeof name, "step-%08zu.safetensors", n);
  EXPECT_TRUE(fs::exists(dir / "out" / name)) << mmtest::read_text(dir / "err.txt");
  EXPECT_TRUE(fs::exists(dir / "out" / mm::pipelines::state_path(name)));
  for (const auto& f : files_in(dir / "out")) EXPECT_EQ(f.find(".tmp"), std::string::npos) << f;
}

TEST(Pretrain, BadInputIsAClearErrorWithExitCode1) {
  const fs::path dir = mmtest::scratch("pretrain_bad");
  mmtest::write_text(dir / "empty.fa", "");
  mmtest::write_text(dir / "n.fa", ">allN\n" + std::string(1000, 'N') + "\n");
  auto empty = run_cli("pretrain -o " + (dir / "o1").string() + kTiny + (dir / "empty.fa").string());
  EXPECT_EQ(empty.exit_code, 1);
  EXPECT_NE(empty.err.find("empty.fa: no FASTA records: the file is empty"), std::string::npos) << empty.err;
  auto alln = run_cli("pretrain -o " + (dir / "o2").string() + kTiny + (dir / "n.fa").string());
  EXPECT_EQ(alln.exit_code, 1);
  EXPECT_NE(alln.err.find("no A/C/G/T bases"), std::string::npos) << alln.err;
  auto longw = run_cli("pretrain -o " + (dir / "o3").string() + kTiny + "--window 200000 " + kSample);
  EXPECT_EQ(longw.exit_code, 1);
  EXPECT_NE(longw.err.find("--window 200000 is longer than every training interval; the longest is slice20:1-100000"),
            std::string::npos) << longw.err;
  auto missing = run_cli("pretrain -o " + (dir / "o4").string() + kTiny + (dir / "absent.fa").string());
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.err.find("absent.fa"), std::string::npos) << missing.err;
  // Usage errors: exit 2.
  if (!mm::cuda_training_available()) {  // a CPU-only build or machine: --device cuda is a usage error
    auto cuda = run_cli("pretrain -o " + (dir / "o5").string() + kTiny + "--device cuda " + kSample);
    EXPECT_EQ(cuda.exit_code, 2);
    EXPECT_NE(cuda.err.find("no CUDA device here, or this build has no CUDA backend"), std::string::npos) << cuda.err;
  }
  EXPECT_EQ(run_cli("pretrain -o " + (dir / "o5").string() + kTiny + "--device tpu " + kSample).exit_code, 2);
  EXPECT_EQ(run_cli("pretrain -o " + (dir / "o6").string() + kTiny + "--batch 0 " + kSample).exit_code, 2);
  EXPECT_EQ(run_cli("pretrain " + kTiny + kSample).exit_code, 2);  // no -o
  EXPECT_EQ(run_cli("pretrain -o " + (dir / "o7").string() + kTiny).exit_code, 2);  // no input
}

TEST(Pretrain, UnwritableOutputFolderIsRefusedBeforeTraining) {
  const fs::path dir = mmtest::scratch("pretrain_unwritable");
  fs::create_directories(dir / "locked");
  fs::permissions(dir / "locked", fs::perms::owner_read | fs::perms::owner_exec | fs::perms::group_read |
                                      fs::perms::group_exec | fs::perms::others_read | fs::perms::others_exec);
  const bool root = geteuid() == 0;
  const auto args = words("pretrain -o " + (dir / "locked" / "out").string() + kTiny + "--steps 2 " + kSample);
  const int code = run_child(args, dir / "err.txt", [root] {
    if (root && (setgid(65534) != 0 || setuid(65534) != 0)) _exit(99);
  });
  const std::string err = mmtest::read_text(dir / "err.txt");
  if (code == 99) GTEST_SKIP() << "cannot drop to uid 65534 to test permissions";
  EXPECT_EQ(code, 1) << err;
  EXPECT_NE(err.find("cannot create the output folder"), std::string::npos) << err;
  EXPECT_NE(err.find("locked/out"), std::string::npos) << err;
  EXPECT_FALSE(fs::exists(dir / "locked" / "out"));
}

TEST(Pretrain, FullDiskFailsCleanlyLeavingNoPartialCheckpoint) {
  const fs::path dir = mmtest::scratch("pretrain_diskfull");
  // The tiny model's checkpoint is ~37 KB: a 16 KB file-size limit lets the metrics through but
  // not the checkpoint, as a full disk would.
  const auto args = words("pretrain -o " + (dir / "out").string() + kTiny + "--steps 2 --no-markov " + kSample);
  const int code = run_child(args, dir / "err.txt", [] {
    std::signal(SIGXFSZ, SIG_IGN);
    rlimit rl{16384, 16384};
    if (setrlimit(RLIMIT_FSIZE, &rl) != 0) _exit(99);
  });
  const std::string err = mmtest::read_text(dir / "err.txt");
  ASSERT_NE(code, 99);
  EXPECT_EQ(code, 1) << err;
  EXPECT_NE(err.find("step-00000002.safetensors"), std::string::npos) << err;
  EXPECT_EQ(files_in(dir / "out"), std::vector<std::string>{"metrics.jsonl"});
}

TEST(Pretrain, NanLossStopsWithAClearMessageAndKeepsTheLastGoodCheckpoint) {
  // Test hook: MEMMAMBA_TEST_POISON_STEP=k sets a parameter to NaN before step k.
  const fs::path dir = mmtest::scratch("pretrain_nan");
  setenv("MEMMAMBA_TEST_POISON_STEP", "3", 1);
  auto bad = run_cli("pretrain -o " + (dir / "nan").string() + kTiny + "--steps 5 --save-every 2 --no-markov " + kSample);
  unsetenv("MEMMAMBA_TEST_POISON_STEP");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("training diverged"), std::string::npos) << bad.err;
  EXPECT_NE(bad.err.find("at step 3"), std::string::npos) << bad.err;
  EXPECT_NE(bad.err.find("last good checkpoint is " + (dir / "nan" / "step-00000002.safetensors").string()),
            std::string::npos) << bad.err;
  EXPECT_NO_THROW(mm::load_checkpoint(dir / "nan" / "step-00000002.safetensors"));
  EXPECT_FALSE(fs::exists(dir / "nan" / "step-00000003.safetensors"));
  EXPECT_EQ(lines_of(mmtest::read_text(dir / "nan" / "metrics.jsonl")).size(), 2u);
}

TEST(Pretrain, AlignmentReadsAreSequencesWithFiltersAndHeldOutRegions) {
  const fs::path dir = mmtest::scratch("pretrain_sam");
  const std::string r1 = random_dna(50, 11), r2 = random_dna(50, 12), r3 = random_dna(50, 13),
                    r4 = random_dna(50, 14), r5 = random_dna(50, 15);
  const std::string q(50, 'I');
  mmtest::write_text(dir / "in.sam",
                     "@HD\tVN:1.6\tSO:coordinate\n@SQ\tSN:c1\tLN:1000\n"
                     "r1\t0\tc1\t101\t60\t50M\t*\t0\t0\t" + r1 + "\t" + q + "\n"
                     "r2\t0\tc1\t301\t5\t50M\t*\t0\t0\t" + r2 + "\t" + q + "\n"      // MAPQ below -q
                     "r3\t256\tc1\t501\t60\t50M\t*\t0\t0\t" + r3 + "\t" + q + "\n"   // secondary
                     "r4\t0\tc1\t801\t60\t50M\t*\t0\t0\t" + r4 + "\t" + q + "\n"     // held out
                     "r5\t4\t*\t0\t20\t*\t*\t0\t0\t" + r5 + "\t" + q + "\n");         // unplaced
  mm::pipelines::DataOptions o;
  o.inputs = {(dir / "in.sam").string()};
  o.bam.min_mapq = 10;
  o.bam.primary_only = true;
  o.valid_regions = {"c1:840-900"};
  auto ds = mm::pipelines::load_training_data(o);
  ASSERT_EQ(ds.train.size(), 1u);
  ASSERT_EQ(ds.valid.size(), 1u);
  EXPECT_EQ(mm::io::decode(ds.train[0].tokens), r1 + "^" + r5);  // joined by BOS
  EXPECT_EQ(mm::io::decode(ds.valid[0].tokens), r4);
  EXPECT_EQ(ds.train_bases, 100);
  // With include regions, only reads overlapping them (unplaced reads dropped).
  mmtest::write_text(dir / "inc.bed", "c1\t100\t120\n");
  o.regions_bed = (dir / "inc.bed").string();
  ds = mm::pipelines::load_training_data(o);
  ASSERT_EQ(ds.train.size(), 1u);
  EXPECT_EQ(mm::io::decode(ds.train[0].tokens), r1);
}
