#include "pipelines/pretrain.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>

#include "io/atomic_file.hpp"
#include "io/tokenizer.hpp"
#include "model/checkpoint.hpp"
#include "model/cuda_training.hpp"
#include "model/memmamba.hpp"

namespace mm::pipelines {

namespace fs = std::filesystem;

namespace {

std::string fmt_double(double x) {
  if (!std::isfinite(x)) return "null";
  char b[40];
  std::snprintf(b, sizeof b, "%.17g", x);
  return b;
}

std::string fixed(double x, int digits) {
  char b[40];
  std::snprintf(b, sizeof b, "%.*f", digits, x);
  return b;
}

std::string utc_now() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char b[32];
  std::strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return b;
}

fs::path checkpoint_name(const fs::path& dir, int64_t step) {
  char b[48];
  std::snprintf(b, sizeof b, "step-%08lld.safetensors", static_cast<long long>(step));
  return dir / b;
}

// step-N.safetensors files of a folder (not the state files), by step.
std::vector<std::pair<int64_t, fs::path>> checkpoints_in(const fs::path& dir) {
  static const std::regex re(R"(step-(\d+)\.safetensors)");
  std::vector<std::pair<int64_t, fs::path>> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    std::smatch m;
    const std::string name = e.path().filename().string();
    if (std::regex_match(name, m, re)) out.push_back({std::stoll(m[1]), e.path()});
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Mean cross-entropy in bits per base of the model over the validation windows (BOS + window).
// Validation bits/base: each window a whole sequence, on the CPU model or through `gpu`.
double evaluate(MemMamba<float>& m, const std::vector<SampledWindow>& windows, const SequenceForward& gpu) {
  double nats = 0;
  int64_t n = 0;
  const int V = m.config().vocab;
  std::vector<float> logits;
  for (const auto& w : windows) {
    std::vector<int32_t> tokens;
    tokens.reserve(w.tokens.size() + 1);
    tokens.push_back(io::tok::BOS);
    for (uint8_t t : w.tokens) tokens.push_back(t);
    const int64_t T = int64_t(tokens.size());
    logits.assign(size_t(T * V), 0.0f);
    if (gpu) gpu(m.params(), tokens.data(), T, logits.data());
    else m.forward(tokens.data(), 1, T, logits.data());
    auto targets = MemMamba<float>::next_token_targets(tokens.data(), 1, T);
    for (int64_t t = 0; t < T; ++t) {
      if (targets[size_t(t)] < 0) continue;
      const float* l = logits.data() + t * V;
      double mx = l[0];
      for (int v = 1; v < V; ++v) mx = std::max(mx, double(l[v]));
      double s = 0;
      for (int v = 0; v < V; ++v) s += std::exp(double(l[v]) - mx);
      nats += mx + std::log(s) - double(l[targets[size_t(t)]]);
      ++n;
    }
  }
  return n ? nats / double(n) / std::log(2.0) : -1;
}

TokenSpans spans_of(const std::vector<Interval>& ivs) {
  TokenSpans s;
  for (const auto& iv : ivs) s.emplace_back(iv.tokens.data(), iv.tokens.size());
  return s;
}

void check_options(const PretrainOptions& o, int ranks) {
  if (ranks < 1) throw UsageError("the number of ranks must be at least 1, got " + std::to_string(ranks));
  if (o.batch < 1) throw UsageError("--batch must be at least 1");
  if (o.windows.length < 1 || o.windows.length > (int64_t(1) << 20))
    throw UsageError("--window must lie in 1..1048576 bases");
  if (o.train.total_steps < 1) throw UsageError("--steps must be at least 1");
  if (o.train.warmup_steps < 0) throw UsageError("--warmup must not be negative");
  if (!(o.train.lr > 0)) throw UsageError("--lr must be positive");
  if (o.train.weight_decay < 0) throw UsageError("--weight-decay must not be negative");
  if (o.train.clip < 0) throw UsageError("--clip must not be negative (0: no clipping)");
  if (o.train.accumulation < 1) throw UsageError("--accumulate must be at least 1");
  if (o.save_every < 1) throw UsageError("--save-every must be at least 1");
  if (o.keep < 1) throw UsageError("--keep must be at least 1");
  if (o.eval_every < 1) throw UsageError("--eval-every must be at least 1");
  if (o.stop_at < 0) throw UsageError("--stop-at must not be negative");
  if (o.markov_max_order < 0 || o.markov_max_order > MarkovModel::kMaxOrder)
    throw UsageError("--markov-max-order must lie in 0.." + std::to_string(MarkovModel::kMaxOrder));
  if (ranks > 1 && o.markov_only) throw UsageError("--markov-only runs in one process: leave out --ranks/--gpus");
  if (ranks > 1 && o.batch * o.train.accumulation < ranks)
    throw UsageError("each of the " + std::to_string(ranks) + " ranks needs at least one window per step, but a step has " +
                     std::to_string(o.batch * o.train.accumulation) + " (--batch " + std::to_string(o.batch) +
                     " x --accumulate " + std::to_string(o.train.accumulation) + ")");
}

// Parameters and step count as one number, to check that every rank holds the same.
uint64_t state_fingerprint(const std::vector<float>& params, int64_t step) {
  return fingerprint(params.data(), params.size() * sizeof(float), fingerprint(&step, sizeof step));
}

}  // namespace

void check_pretrain_options(const PretrainOptions& o, int ranks) { check_options(o, ranks); }

std::pair<int64_t, int64_t> rank_windows(int64_t step_windows, int rank, int ranks) {
  if (ranks < 1 || rank < 0 || rank >= ranks) throw Error("rank " + std::to_string(rank) + " of " + std::to_string(ranks));
  return {step_windows * rank / ranks, step_windows * (rank + 1) / ranks};
}

fs::path state_path(const fs::path& checkpoint) {
  fs::path p = checkpoint;
  return p.replace_extension(".state.safetensors");
}

fs::path card_path(const fs::path& checkpoint) {
  fs::path p = checkpoint;
  return p.replace_extension(".md");
}

fs::path find_resume_checkpoint(const fs::path& file_or_dir) {
  std::error_code ec;
  if (fs::is_directory(file_or_dir, ec)) {
    auto list = checkpoints_in(file_or_dir);
    for (auto it = list.rbegin(); it != list.rend(); ++it)
      if (fs::exists(state_path(it->second))) return it->second;
    throw Error("no checkpoint with its optimizer state (step-N.safetensors + step-N.state.safetensors) to resume from",
                file_or_dir.string());
  }
  if (!fs::exists(file_or_dir, ec)) throw Error("no such file or folder", file_or_dir.string());
  if (!fs::exists(state_path(file_or_dir)))
    throw Error("its optimizer state " + state_path(file_or_dir).filename().string() +
                    " is missing: cannot resume exactly", file_or_dir.string());
  return file_or_dir;
}

PretrainResult pretrain(const PretrainOptions& o, const Reporter& rep) {
  Collective* const coll = o.collective;
  const int rank = coll ? coll->rank() : 0, ranks = coll ? coll->size() : 1;
  const bool lead = rank == 0;  // writes checkpoints, cards and metrics; validates
  check_options(o, ranks);
  PretrainResult res;

  // Resume: find the checkpoint first, so that a bad one fails before the data is read.
  std::optional<Checkpoint> resumed;
  fs::path resume_ck;
  if (!o.resume.empty()) {
    resume_ck = find_resume_checkpoint(o.resume);
    resumed = load_checkpoint(resume_ck);
    if (o.model_given && resumed->config.to_json() != o.model.to_json())
      throw Error("checkpoint was trained with another model config (" + resumed->config.to_json() +
                      ") than this run asks for (" + o.model.to_json() +
                      "); leave out the model options to continue with the checkpoint's",
                  resume_ck.string());
  }
  fs::path out = o.output.empty() ? (resume_ck.empty() ? fs::path() : resume_ck.parent_path()) : o.output;
  if (!o.markov_only) {
    if (out.empty()) throw UsageError("give the checkpoint folder with -o/--output");
  }
  if (!o.markov_only && lead) {
    std::error_code ec;
    fs::create_directories(out, ec);
    if (ec) throw Error("cannot create the output folder: " + ec.message(), out.string());
    io::AtomicFile probe(out / ".write-test");  // throws naming the folder when it is not writable
  }

  DataSet data = load_training_data(o.data, rep);
  rep.say(data.summary);

  // The Markov reference (reused from the checkpoint on resume).
  if (resumed && resumed->metadata.count("memmamba.markov")) {
    res.markov = MarkovResult::from_json(resumed->metadata.at("memmamba.markov"));
  } else if ((o.markov || o.markov_only) && data.valid_bases > 0 && lead) {
    res.markov = select_markov(spans_of(data.train), spans_of(data.valid), o.markov_max_order, o.markov_smoothing);
  }
  if (res.markov) {
    std::string by;
    for (size_t k = 0; k < res.markov->by_order.size(); ++k)
      by += (k ? ", " : "") + std::to_string(k) + ":" + fixed(res.markov->by_order[k], 4);
    rep.say("Markov reference: order " + std::to_string(res.markov->order) + ", " +
            fixed(res.markov->bits_per_base, 4) + " bits/base on the validation data (by order " + by + ")");
  } else if (data.valid_bases == 0 && lead) {
    rep.say("no validation data (--valid-regions, --valid-region, --valid-contigs): no Markov reference, no valid_bits_per_base");
  }
  if (o.markov_only) {
    if (!res.markov) throw UsageError("--markov-only needs validation data (--valid-regions, --valid-region or --valid-contigs)");
    return res;
  }

  WindowSpec ws = o.windows;
  WindowSampler sampler(data.train, ws);
  auto valid = validation_windows(data.valid, ws.length, ws.max_n_fraction, o.valid_windows);
  if (!lead) valid.clear();  // rank 0 alone validates
  else if (data.valid_bases > 0 && valid.empty())
    rep.say("every validation window has more N than --max-n allows: no valid_bits_per_base");

  MemMamba<float> model = resumed ? MemMamba<float>(resumed->config, resumed->params)
                                  : MemMamba<float>(o.model, ws.seed);
  GradientPass<float> pass;
  SequenceForward gpu_forward;
  if (o.cuda) {
    pass = make_cuda_gradient_pass(model.config());
    gpu_forward = make_cuda_sequence_forward(model.config());
  }
  // One Trainer step = one optimizer step: its gradient pass runs this rank's share of the step's
  // windows as micro-batches, then sums gradients and losses across the ranks.
  const int64_t B = o.batch, L = ws.length, acc = o.train.accumulation;
  int64_t step = 0;  // the step being computed (set in the loop below)
  auto micro_batch = [&](int64_t first, int64_t count) {
    Batch b;
    b.B = count;
    b.T = L + 1;
    b.tokens.reserve(size_t(count * (L + 1)));
    for (int64_t i = 0; i < count; ++i) {
      const uint64_t index = uint64_t((step - 1) * acc * B + first + i);
      SampledWindow w = sampler.sample(index);
      b.tokens.push_back(io::tok::BOS);
      for (uint8_t t : w.tokens) b.tokens.push_back(t);
    }
    b.targets = MemMamba<float>::next_token_targets(b.tokens.data(), count, L + 1);
    return b;
  };
  GradientPass<float> step_pass = [&, pass](MemMamba<float>& m, const Batch&, int64_t* counted) {
    const auto [lo, hi] = rank_windows(acc * B, rank, ranks);
    double loss = 0;
    int64_t n = 0;
    for (int64_t first = lo; first < hi; first += B) {
      const Batch b = micro_batch(first, std::min(B, hi - first));
      int64_t c = 0;
      loss += pass ? pass(m, b, &c) : m.forward_backward(b.tokens.data(), b.targets.data(), b.B, b.T, 1.0, &c);
      n += c;
    }
    if (ranks > 1) {
      coll->all_reduce_sum(m.grads().data(), m.grads().size());
      double sums[2] = {loss, double(n)};
      coll->all_reduce_sum(sums, 2);
      loss = sums[0];
      n = int64_t(sums[1]);
    }
    *counted = n;
    return loss;
  };
  TrainConfig one_pass = o.train;
  one_pass.accumulation = 1;  // the micro-batches are step_pass's
  Trainer<float> trainer(model, one_pass, step_pass);
  int64_t tokens_seen = 0;
  if (resumed) {
    auto meta = trainer.load_state(state_path(resume_ck));
    tokens_seen = meta.count("tokens_seen") ? std::stoll(meta["tokens_seen"]) : 0;
    auto differs = [&](const char* key, const std::string& now) {
      return meta.count(key) && meta[key] != now;
    };
    if (differs("cursor.seed", std::to_string(ws.seed)) || differs("cursor.window", std::to_string(ws.length)) ||
        differs("cursor.batch", std::to_string(o.batch)) ||
        differs("cursor.accumulate", std::to_string(o.train.accumulation)) || differs("data", data.summary))
      rep.say("note: the seed, window, batch, accumulation or data differ from the run being resumed: "
              "training continues, but not as the uninterrupted run would have");
    rep.say("resuming from " + resume_ck.string() + " at step " + std::to_string(trainer.steps_done()));
  }

  const fs::path metrics_path = o.metrics.empty() ? out / "metrics.jsonl" : o.metrics;
  std::ofstream metrics;
  if (lead) {
    metrics.open(metrics_path, std::ios::app);
    if (!metrics) throw Error("cannot open the metrics file for writing", metrics_path.string());
  }

  nlohmann::json training = {{"lr", o.train.lr}, {"warmup", o.train.warmup_steps}, {"steps", o.train.total_steps},
                             {"weight_decay", o.train.weight_decay}, {"clip", o.train.clip},
                             {"accumulate", o.train.accumulation}, {"batch", o.batch}, {"window", ws.length},
                             {"stride", ws.stride}, {"rc_prob", ws.rc_prob}, {"max_n", ws.max_n_fraction},
                             {"seed", ws.seed}, {"device", o.cuda ? "cuda" : "cpu"}, {"ranks", ranks}};
  if (ranks > 1) training["transport"] = coll->transport();
  nlohmann::json data_json = {{"inputs", o.data.inputs}, {"regions", o.data.regions_bed},
                              {"exclude", o.data.exclude_bed}, {"valid_regions_bed", o.data.valid_bed},
                              {"valid_regions", o.data.valid_regions}, {"valid_contigs", o.data.valid_contigs},
                              {"train_bases", data.train_bases}, {"valid_bases", data.valid_bases},
                              {"summary", data.summary}};
  const std::string first_command = resumed && resumed->metadata.count("memmamba.command")
                                        ? resumed->metadata.at("memmamba.command") : o.command;

  int64_t last_saved = trainer.steps_done();
  double last_valid = -1;
  if (ranks > 1) {
    // Every rank must run the same job from the same state (same data, options and checkpoint).
    const std::string setup = training.dump() + model.config().to_json() + data.summary;
    check_same_on_all_ranks(*coll, fingerprint(setup.data(), setup.size()),
                            "the run's settings (data, model config, window, batch, schedule)");
    check_same_on_all_ranks(*coll, state_fingerprint(model.params(), trainer.steps_done()),
                            "the starting parameters and step (is the same checkpoint readable on every host?)");
  }

  auto save = [&](int64_t step) {
    const fs::path ck = checkpoint_name(out, step);
    if (ranks > 1)
      check_same_on_all_ranks(*coll, state_fingerprint(model.params(), step), "the parameters at step " + std::to_string(step));
    if (!lead) {  // rank 0 writes
      last_saved = step;
      res.last_checkpoint = ck;
      return;
    }
    Checkpoint c;
    c.config = model.config();
    c.params = model.params();
    c.metadata["memmamba.command"] = first_command;
    if (first_command != o.command) c.metadata["memmamba.resumed_with"] = o.command;
    c.metadata["memmamba.steps"] = std::to_string(step);
    c.metadata["memmamba.tokens_seen"] = std::to_string(tokens_seen);
    c.metadata["memmamba.date"] = utc_now();
    c.metadata["memmamba.data"] = data_json.dump();
    c.metadata["memmamba.training"] = training.dump();
    if (res.markov) c.metadata["memmamba.markov"] = res.markov->to_json();
    if (last_valid >= 0) c.metadata["memmamba.valid_bits_per_base"] = fmt_double(last_valid);
    save_checkpoint(ck, c);
    try {
      trainer.save_state(state_path(ck), {{"cursor.step", std::to_string(step)},
                                          {"cursor.seed", std::to_string(ws.seed)},
                                          {"cursor.window", std::to_string(ws.length)},
                                          {"cursor.batch", std::to_string(o.batch)},
                                          {"cursor.accumulate", std::to_string(o.train.accumulation)},
                                          {"tokens_seen", std::to_string(tokens_seen)},
                                          {"data", data.summary}});
      std::string card = "# MemMamba checkpoint, step " + std::to_string(step) + "\n\n";
      card += "- command: `" + first_command + "`\n";
      card += "- date: " + c.metadata["memmamba.date"] + "\n";
      card += "- steps: " + std::to_string(step) + " of " + std::to_string(o.train.total_steps) +
              ", bases seen: " + std::to_string(tokens_seen) + "\n";
      card += "- data: " + data.summary + "\n";
      card += "- config: `" + c.config.to_json() + "`\n";
      if (last_valid >= 0) card += "- validation: " + fixed(last_valid, 4) + " bits/base\n";
      if (res.markov)
        card += "- Markov reference: order " + std::to_string(res.markov->order) + ", " +
                fixed(res.markov->bits_per_base, 4) + " bits/base on the same validation data (" +
                res.markov->smoothing + ")\n";
      io::AtomicFile f(card_path(ck));
      f.write(card);
      f.commit();
    } catch (...) {
      std::error_code ec;
      fs::remove(ck, ec);
      fs::remove(state_path(ck), ec);
      throw;
    }
    last_saved = step;
    res.last_checkpoint = ck;
    auto list = checkpoints_in(out);
    for (size_t i = 0; i + size_t(o.keep) < list.size(); ++i) {
      std::error_code ec;
      fs::remove(list[i].second, ec);
      fs::remove(state_path(list[i].second), ec);
      fs::remove(card_path(list[i].second), ec);
    }
  };
  if (resumed) res.last_checkpoint = resume_ck;

  const int64_t total = o.train.total_steps;
  const int64_t end = o.stop_at > 0 ? std::min(o.stop_at, total) : total;
  if (trainer.steps_done() >= end) rep.say("already at step " + std::to_string(trainer.steps_done()) + ": nothing to do");
  while (trainer.steps_done() < end) {
    bool stop = o.should_stop && o.should_stop();
    if (ranks > 1) {  // a stop asked of any rank stops them all after the same step
      double s = stop ? 1.0 : 0.0;
      coll->all_reduce_sum(&s, 1);
      stop = s > 0;
    }
    if (stop) {
      res.interrupted = true;
      break;
    }
    step = trainer.steps_done() + 1;
    if (o.fail_rank == rank && o.fail_step == step)
      throw Error("failing before step " + std::to_string(step) + " as MEMMAMBA_TEST_FAIL_RANK asks");
    if (o.poison_step == step) model.params()[0] = std::numeric_limits<float>::quiet_NaN();
    const auto t0 = std::chrono::steady_clock::now();
    StepResult r;
    try {
      // The batch is step_pass's to make (this rank's share of the step's windows).
      r = trainer.step([](int64_t) { return Batch{}; });
    } catch (const CollectiveError& e) {
      throw CollectiveError(std::string(e.what()) + (res.last_checkpoint.empty() ? std::string(" (no checkpoint was written)")
                                                     : " (the last good checkpoint is " + res.last_checkpoint.string() + ")"));
    } catch (const Error& e) {
      throw Error(std::string(e.what()) + "; stopped. " +
                  (res.last_checkpoint.empty() ? std::string("No checkpoint was written")
                                               : "The last good checkpoint is " + res.last_checkpoint.string()) +
                  " (try a lower --lr or a stronger --clip)");
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    tokens_seen += B * L * acc;
    std::string line = "{\"step\":" + std::to_string(step) + ",\"tokens\":" + std::to_string(tokens_seen) +
                       ",\"loss\":" + fmt_double(r.loss) + ",\"bits_per_base\":" + fmt_double(r.loss / std::log(2.0)) +
                       ",\"lr\":" + fmt_double(r.lr) + ",\"grad_norm\":" + fmt_double(r.grad_norm) +
                       ",\"tokens_per_s\":" + fmt_double(double(B * L * acc) / std::max(secs, 1e-9));
    if (!valid.empty() && (step % o.eval_every == 0 || step == end)) {
      last_valid = evaluate(model, valid, gpu_forward);
      res.valid_bits_per_base = last_valid;
      line += ",\"valid_bits_per_base\":" + fmt_double(last_valid);
    }
    if (lead) {
      metrics << line << "}\n" << std::flush;
      if (!metrics) throw Error("cannot write the metrics file (disk full?)", metrics_path.string());
    }
    rep.advance(double(step), double(total), "steps");
    if (step % o.save_every == 0 || step == end) save(step);
  }
  if (trainer.steps_done() > last_saved) save(trainer.steps_done());
  res.steps = trainer.steps_done();
  if (res.interrupted) rep.say("stopped at step " + std::to_string(res.steps) + " on request; continue with --resume " + out.string());
  else if (res.valid_bits_per_base >= 0)
    rep.say("step " + std::to_string(res.steps) + ": " + fixed(res.valid_bits_per_base, 4) + " bits/base on the validation data" +
            (res.markov ? " (Markov reference " + fixed(res.markov->bits_per_base, 4) + ")" : ""));
  return res;
}

}  // namespace mm::pipelines
