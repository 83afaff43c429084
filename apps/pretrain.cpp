// memmamba pretrain: argument parsing for pipelines/pretrain (CPU or CUDA training), and the
// data-parallel modes: --ranks N / --gpus N start N rank processes (pipelines/ranks.hpp); a process
// whose environment names a rank (MEMMAMBA_MASTER_ADDR ...) trains as that rank.
#include <tbb/global_control.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include "apps/cli.hpp"
#include "apps/commands.hpp"
#include "model/collective.hpp"
#include "model/cuda_training.hpp"
#include "pipelines/pretrain.hpp"
#include "pipelines/ranks.hpp"

namespace mm::cli {

namespace {

volatile std::sig_atomic_t g_stop_signal = 0;

extern "C" void on_stop_signal(int sig) {
  if (g_stop_signal) {  // a second signal: stop at once
    std::signal(sig, SIG_DFL);
    std::raise(sig);
    return;
  }
  g_stop_signal = sig;
}

// The launcher passes every stop signal on to its ranks (the second one stops them at once).
volatile std::sig_atomic_t g_launcher_signals = 0, g_launcher_last = 0;

extern "C" void on_launcher_signal(int sig) {
  g_launcher_last = sig;
  g_launcher_signals = g_launcher_signals + 1;
}

int count_arg(const Args& a, const std::string& name) {
  const long v = a.get_int(name);
  if (v < 1 || v > 4096) throw UsageError("--" + name + " wants a number of ranks in 1..4096, got " + std::to_string(v));
  return int(v);
}

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

int positive_int(const Args& a, const std::string& name) {
  long v = a.get_int(name);
  if (v < 0 || v > 1 << 24) throw UsageError("--" + name + " wants a non-negative integer, got " + std::to_string(v));
  return int(v);
}

}  // namespace

int pretrain_main(int argc, char** argv) {
  const Config d = Config::tiny();
  const TrainConfig t;
  Args args("pretrain", "[options] -o DIR <in.fa[.gz]|in.bam|in.cram>...",
            {{'o', "output", "DIR", "checkpoint folder (step-N.safetensors, .state.safetensors, .md)", ""},
             {'R', "regions", "BED", "train only on these regions", ""},
             {0, "exclude", "BED", "never use these regions", ""},
             {0, "valid-regions", "BED", "hold these regions out for validation", ""},
             {0, "valid-region", "LIST", "hold out chr:beg-end regions (comma-separated, 1-based)", ""},
             {0, "valid-contigs", "LIST", "hold out whole contigs (comma-separated)", ""},
             {'q', "min-MQ", "INT", "BAM/CRAM: skip reads with MAPQ below this", "0"},
             {'f', "require-flags", "INT", "BAM/CRAM: only reads with all these flag bits", "0"},
             {'F', "exclude-flags", "INT", "BAM/CRAM: skip reads with any of these flag bits", "0"},
             {0, "primary-only", "", "BAM/CRAM: skip secondary and supplementary reads", ""},
             {'T', "reference", "FASTA", "reference for CRAM decoding", ""},
             {0, "config", "JSON", "model config file (fields not given keep the defaults)", ""},
             {0, "d-model", "INT", "model width d", std::to_string(d.d_model)},
             {0, "layers", "INT", "number of layers", std::to_string(d.n_layer)},
             {0, "expand", "INT", "mixer expansion E/d", std::to_string(d.expand)},
             {0, "d-state", "INT", "SSM state size N", std::to_string(d.d_state)},
             {0, "d-conv", "INT", "conv width k", std::to_string(d.d_conv)},
             {0, "pool-slots", "INT", "note pool slots K", std::to_string(d.pool_slots)},
             {0, "summary-dim", "INT", "note summary width d_s", std::to_string(d.summary_dim)},
             {0, "note-heads", "INT", "note read heads H", std::to_string(d.note_heads)},
             {0, "memory-chunk", "INT", "note write chunk C", std::to_string(d.memory_chunk)},
             {0, "cross-period", "INT", "cross-layer read period p (0: none)", std::to_string(d.cross_layer_period)},
             {0, "notes", "on|off", "note pool (off: plain Mamba)", "on"},
             {0, "window", "INT", "bases per training window (up to 1048576)", "1024"},
             {0, "stride", "INT", "window starts lie on multiples of this within an interval", "1"},
             {0, "batch", "INT", "windows per micro-batch", "8"},
             {0, "max-n", "FLOAT", "redraw windows with a larger fraction of N", "0.1"},
             {0, "rc-prob", "FLOAT", "probability of reverse-complementing a window", "0.5"},
             {0, "lr", "FLOAT", "peak learning rate (AdamW)", "0.001"},
             {0, "min-lr-ratio", "FLOAT", "cosine floor as a fraction of --lr", "0.1"},
             {0, "warmup", "INT", "linear warmup steps", std::to_string(t.warmup_steps)},
             {0, "steps", "INT", "optimizer steps in all (sets the cosine schedule)", std::to_string(t.total_steps)},
             {0, "weight-decay", "FLOAT", "AdamW weight decay", "0.1"},
             {0, "clip", "FLOAT", "max global gradient norm (0: no clipping)", "1"},
             {0, "accumulate", "INT", "micro-batches per optimizer step", "1"},
             {0, "seed", "INT", "seed of the initial weights and of the data order", "1"},
             {0, "save-every", "INT", "checkpoint every this many steps (and at the end)", "1000"},
             {0, "keep", "INT", "keep the last this many checkpoints", "3"},
             {0, "eval-every", "INT", "validation bits/base every this many steps (and at the end)", "1000"},
             {0, "valid-windows", "INT", "at most this many validation windows, evenly spread (0: all)", "64"},
             {0, "metrics", "FILE", "JSON-lines metrics, appended [DIR/metrics.jsonl]", ""},
             {0, "resume", "PATH", "continue from a checkpoint file or a folder's latest checkpoint", ""},
             {0, "stop-at", "INT", "stop after this step with a checkpoint, as if interrupted (0: no)", "0"},
             {0, "max-time", "SECONDS", "stop with a checkpoint once this much wall time has passed, as if interrupted (0: no limit)", "0"},
             {0, "no-markov", "", "skip the k-mer Markov reference", ""},
             {0, "markov-only", "", "print the Markov reference by order and stop (no training)", ""},
             {0, "markov-max-order", "INT", "highest Markov order tried", "12"},
             {0, "markov-smoothing", "NAME", "witten-bell or additive", "witten-bell"},
             {'@', "threads", "INT", "CPU threads (0: all cores)", "0"},
             {0, "device", "DEV", "auto, cpu or cuda (auto: cuda when built with it and a GPU is present)", "auto"},
             {0, "ranks", "N", "data parallel: N processes split every step's --batch x --accumulate windows and sum their gradients (same results as one process); with --device cuda, rank r uses GPU r mod the GPUs visible", ""},
             {0, "gpus", "N", "--device cuda --ranks N with one GPU per rank (N at most the GPUs visible)", ""},
             {0, "transport", "NAME", "how the ranks sum gradients: auto (nccl for CUDA ranks when built with NCCL, else socket), nccl or socket", "auto"},
             {0, "quiet", "", "no notes on stderr", ""}});
  return run("pretrain", argc, argv, [&] {
    if (!args.parse(argc, argv)) {
      std::cout << args.help() <<
          "\nSeveral processes (data parallel): --ranks N or --gpus N starts N ranks on this host. To start\n"
          "the ranks yourself (mpirun, srun, several hosts), run the same command once per rank with\n"
          "MEMMAMBA_MASTER_ADDR=unix:PATH or HOST[:PORT] (rank 0 listens), MEMMAMBA_RANK (else\n"
          "OMPI_COMM_WORLD_RANK or SLURM_PROCID), MEMMAMBA_WORLD_SIZE (else OMPI_COMM_WORLD_SIZE or\n"
          "SLURM_NTASKS), MEMMAMBA_LOCAL_RANK (the GPU; else the launcher's local rank, else the rank),\n"
          "MEMMAMBA_MASTER_PORT [29500] and MEMMAMBA_DIST_TIMEOUT [300 s]; inputs and the output\n"
          "folder must be the same files on every host. Rank 0 writes checkpoints and metrics; --resume\n"
          "works with any number of ranks.\n";
      return 0;
    }
    std::string dev = args.get("device");
    if (dev != "auto" && dev != "cpu" && dev != "cuda") throw UsageError("--device wants auto, cpu or cuda, got '" + dev + "'");
    const std::string transport = args.get("transport");
    if (transport != "auto" && transport != "socket" && transport != "nccl")
      throw UsageError("--transport wants auto, nccl or socket, got '" + transport + "'");
    const bool gpus = args.has("gpus");
    int ranks = 0;  // 0: one process, no ranks asked for
    if (gpus) {
      ranks = count_arg(args, "gpus");
      if (args.has("ranks") && count_arg(args, "ranks") != ranks)
        throw UsageError("--gpus " + std::to_string(ranks) + " and --ranks " + args.get("ranks") + " disagree");
      if (dev == "cpu") throw UsageError("--gpus trains on GPUs: leave out --device cpu (or use --ranks)");
      dev = "cuda";
    } else if (args.has("ranks")) {
      ranks = count_arg(args, "ranks");
    }
    const pipelines::RankEnvironment env = pipelines::rank_environment();
    const bool launcher = ranks > 0 && !env.present;
    if (env.present && ranks > 0 && ranks != env.size)
      throw UsageError("--" + std::string(gpus ? "gpus " : "ranks ") + std::to_string(ranks) + " but this rank's environment says " +
                       std::to_string(env.size) + " ranks (MEMMAMBA_WORLD_SIZE)");
    if (transport == "nccl" && !nccl_available())
      throw UsageError("--transport nccl: this build has no NCCL (configure with CUDA and NCCL)");
    if (launcher || env.present) {
      // CUDA ranks: each picks its GPU before anything creates a CUDA context (on GPU 0).
      const int visible = cuda_device_count();
      if (dev == "auto") dev = visible > 0 ? "cuda" : "cpu";
      if (dev == "cuda" && visible == 0)
        throw UsageError(std::string(gpus ? "--gpus" : "--device cuda") +
                         ": no CUDA device here, or this build has no CUDA backend (--ranks N --device cpu trains on the CPU)");
      if (gpus && ranks > visible)
        throw UsageError("--gpus " + std::to_string(ranks) + ": only " + std::to_string(visible) +
                         " CUDA device" + (visible == 1 ? "" : "s") + " visible (--ranks N --device cuda shares them)");
      if (env.present && dev == "cuda") {
        if (gpus && env.local_rank >= visible)
          throw UsageError("rank " + std::to_string(env.rank) + " wants GPU " + std::to_string(env.local_rank) +
                           " (MEMMAMBA_LOCAL_RANK) but " + std::to_string(visible) + " are visible");
        cuda_use_device(env.local_rank % visible);
      }
      if (transport == "nccl" && dev != "cuda") throw UsageError("--transport nccl needs CUDA ranks (--gpus or --device cuda)");
    }
    if (!launcher) {  // (the launcher itself never touches the GPUs: its ranks do)
      if (dev == "auto") dev = cuda_training_available() ? "cuda" : "cpu";
      if (dev == "cuda" && !cuda_training_available())
        throw UsageError("--device cuda: no CUDA device here, or this build has no CUDA backend");
    }

    pipelines::PretrainOptions o;
    o.cuda = dev == "cuda";
    o.data.inputs = args.positional();
    if (o.data.inputs.empty()) throw UsageError("no input files (see 'memmamba pretrain --help')");
    o.data.regions_bed = args.get("regions");
    o.data.exclude_bed = args.get("exclude");
    o.data.valid_bed = args.get("valid-regions");
    o.data.valid_regions = split_list(args.get("valid-region"));
    o.data.valid_contigs = split_list(args.get("valid-contigs"));
    o.data.bam.min_mapq = positive_int(args, "min-MQ");
    o.data.bam.require_flags = uint16_t(positive_int(args, "require-flags"));
    o.data.bam.exclude_flags = uint16_t(positive_int(args, "exclude-flags"));
    o.data.bam.primary_only = args.flag("primary-only");
    o.data.bam.reference = args.get("reference");

    Config c = Config::tiny();
    if (args.has("config")) {
      std::ifstream in(args.get("config"));
      if (!in) throw Error("cannot read the config file", args.get("config"));
      std::stringstream ss;
      ss << in.rdbuf();
      c = Config::from_json(ss.str(), args.get("config"));
      o.model_given = true;
    }
    auto set = [&](const char* name, int& field) {
      if (args.has(name)) {
        field = positive_int(args, name);
        o.model_given = true;
      }
    };
    set("d-model", c.d_model);
    set("layers", c.n_layer);
    set("expand", c.expand);
    set("d-state", c.d_state);
    set("d-conv", c.d_conv);
    set("pool-slots", c.pool_slots);
    set("summary-dim", c.summary_dim);
    set("note-heads", c.note_heads);
    set("memory-chunk", c.memory_chunk);
    set("cross-period", c.cross_layer_period);
    if (args.has("notes")) {
      const std::string v = args.get("notes");
      if (v != "on" && v != "off") throw UsageError("--notes wants on or off, got '" + v + "'");
      c.notes = v == "on";
      o.model_given = true;
    }
    try {
      c.validate();
    } catch (const Error& e) {
      throw UsageError(std::string("bad model config: ") + e.what());
    }
    o.model = c;

    o.train.lr = args.get_double("lr");
    o.train.min_lr_ratio = args.get_double("min-lr-ratio");
    o.train.warmup_steps = args.get_int("warmup");
    o.train.total_steps = args.get_int("steps");
    o.train.weight_decay = args.get_double("weight-decay");
    o.train.clip = args.get_double("clip");
    o.train.accumulation = args.get_int("accumulate");
    o.windows.length = args.get_int("window");
    o.windows.stride = args.get_int("stride");
    o.windows.max_n_fraction = args.get_double("max-n");
    o.windows.rc_prob = args.get_double("rc-prob");
    o.windows.seed = uint64_t(args.get_int("seed"));
    o.batch = args.get_int("batch");
    o.output = args.get("output");
    o.metrics = args.get("metrics");
    o.save_every = args.get_int("save-every");
    o.keep = args.get_int("keep");
    o.eval_every = args.get_int("eval-every");
    o.valid_windows = args.get_int("valid-windows");
    o.resume = args.get("resume");
    o.stop_at = args.get_int("stop-at");
    o.markov = !args.flag("no-markov");
    o.markov_only = args.flag("markov-only");
    o.markov_max_order = int(args.get_int("markov-max-order"));
    const std::string sm = args.get("markov-smoothing");
    if (sm == "witten-bell") o.markov_smoothing = pipelines::MarkovSmoothing::witten_bell;
    else if (sm == "additive") o.markov_smoothing = pipelines::MarkovSmoothing::additive;
    else throw UsageError("--markov-smoothing wants witten-bell or additive, got '" + sm + "'");
    o.command = command_line(argc, argv);
    if (const char* p = std::getenv("MEMMAMBA_TEST_POISON_STEP")) o.poison_step = std::atoll(p);

    const long threads = args.get_int("threads");
    if (threads < 0) throw UsageError("--threads must not be negative");
    tbb::global_control limit(tbb::global_control::max_allowed_parallelism,
                              threads > 0 ? size_t(threads) : std::max(1u, std::thread::hardware_concurrency()));

    g_stop_signal = 0;
    std::signal(SIGINT, on_stop_signal);
    std::signal(SIGTERM, on_stop_signal);
    const double max_time = args.get_double("max-time");
    if (max_time < 0) throw UsageError("--max-time must not be negative");
    const auto started = std::chrono::steady_clock::now();
    o.should_stop = [max_time, started] {
      return g_stop_signal != 0 ||
             (max_time > 0 && std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count() >= max_time);
    };

    // Ranks other than 0 keep quiet (their errors still print).
    const Reporter rep = stderr_reporter("pretrain", args.flag("quiet") || (env.present && env.rank > 0));
    if (launcher) {
      pipelines::check_pretrain_options(o, ranks);  // usage errors once, before any rank starts
      std::signal(SIGINT, on_launcher_signal);
      std::signal(SIGTERM, on_launcher_signal);
      pipelines::LaunchOptions lo;
      lo.ranks = ranks;
      // Each rank runs this command line; ranks other than 0 quietly (their errors still print).
      lo.argv = [argc, argv](int r) {
        std::vector<std::string> a{"memmamba", argv[0]};
        if (r > 0) a.push_back("--quiet");
        for (int i = 1; i < argc; ++i) a.push_back(argv[i]);
        return a;
      };
      lo.signals = [] { return std::pair<int, int>(int(g_launcher_signals), int(g_launcher_last)); };
      rep.say("starting " + std::to_string(ranks) + " ranks (" + dev + ")");
      return pipelines::launch_ranks(lo, rep);
    }
    std::unique_ptr<Collective> collective;
    pipelines::PretrainResult r;
    try {
      if (env.present) {
        const bool nccl = transport == "nccl" || (transport == "auto" && dev == "cuda" && nccl_available());
        collective = nccl ? make_nccl_collective(env.rendezvous) : make_socket_collective(env.rendezvous);
        o.collective = collective.get();
        if (const char* f = std::getenv("MEMMAMBA_TEST_FAIL_RANK")) {
          long fr = -1, fs = 0;
          if (std::sscanf(f, "%ld:%ld", &fr, &fs) != 2) throw UsageError("MEMMAMBA_TEST_FAIL_RANK wants RANK:STEP");
          o.fail_rank = int(fr);
          o.fail_step = fs;
        }
        rep.say("rank 0 of " + std::to_string(env.size) + " (" + dev + ", " + collective->transport() + " transport)");
      }
      r = pipelines::pretrain(o, rep);
    } catch (const Error& e) {
      if (env.present && env.rank > 0)  // say which rank
        throw Error("rank " + std::to_string(env.rank) + ": " + e.what(), e.file(), e.line(), e.code());
      throw;
    }
    if (o.markov_only) {
      std::cout << "order\tbits_per_base\n";
      for (size_t k = 0; k < r.markov->by_order.size(); ++k)
        std::cout << k << "\t" << r.markov->by_order[k] << (int(k) == r.markov->order ? "\tbest" : "") << "\n";
      return 0;
    }
    if (r.interrupted) return 128 + int(g_stop_signal);
    return 0;
  });
}

}  // namespace mm::cli
