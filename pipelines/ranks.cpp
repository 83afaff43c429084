#include "pipelines/ranks.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>

extern char** environ;

namespace mm::pipelines {

namespace fs = std::filesystem;

namespace {

std::optional<std::string> env(const char* name) {
  const char* v = std::getenv(name);
  if (!v) return std::nullopt;
  return std::string(v);
}

// The first of `names` that is set, as an integer; throws UsageError when it is not one.
std::optional<long> env_int(std::initializer_list<const char*> names) {
  for (const char* n : names) {
    auto v = env(n);
    if (!v) continue;
    char* end = nullptr;
    const long x = std::strtol(v->c_str(), &end, 10);
    if (v->empty() || *end) throw UsageError(std::string(n) + " wants an integer, got '" + *v + "'");
    return x;
  }
  return std::nullopt;
}

}  // namespace

RankEnvironment rank_environment() {
  RankEnvironment e;
  auto addr = env("MEMMAMBA_MASTER_ADDR");
  if (!addr) return e;
  if (addr->empty()) throw UsageError("MEMMAMBA_MASTER_ADDR is empty: give unix:PATH or HOST[:PORT]");
  e.present = true;
  auto rank = env_int({"MEMMAMBA_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID"});
  auto size = env_int({"MEMMAMBA_WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS"});
  if (!rank || !size)
    throw UsageError("MEMMAMBA_MASTER_ADDR is set but not " + std::string(!rank ? "MEMMAMBA_RANK" : "MEMMAMBA_WORLD_SIZE") +
                     " (nor the mpirun/srun equivalents): each rank needs its rank and the number of ranks");
  if (*size < 1 || *size > 65536) throw UsageError("MEMMAMBA_WORLD_SIZE must lie in 1..65536, got " + std::to_string(*size));
  if (*rank < 0 || *rank >= *size)
    throw UsageError("MEMMAMBA_RANK " + std::to_string(*rank) + " is not in 0.." + std::to_string(*size - 1));
  e.rank = int(*rank);
  e.size = int(*size);
  auto local = env_int({"MEMMAMBA_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID"});
  e.local_rank = local ? int(*local) : e.rank;
  if (e.local_rank < 0) throw UsageError("MEMMAMBA_LOCAL_RANK must not be negative");
  e.rendezvous.rank = e.rank;
  e.rendezvous.size = e.size;
  e.rendezvous.address = *addr;
  if (auto port = env_int({"MEMMAMBA_MASTER_PORT"})) e.rendezvous.port = int(*port);
  if (auto t = env("MEMMAMBA_DIST_TIMEOUT")) {
    char* end = nullptr;
    const double s = std::strtod(t->c_str(), &end);
    if (t->empty() || *end || !(s > 0)) throw UsageError("MEMMAMBA_DIST_TIMEOUT wants seconds > 0, got '" + *t + "'");
    e.rendezvous.timeout_s = s;
  }
  return e;
}

namespace {

struct Child {
  pid_t pid = -1;
  int alive = -1;    // read end of a pipe whose write end only the child holds: it closes as the child dies
  bool done = false;
  int code = 0;      // exit code, or 128 + signal
  bool failed = false;
};

// Removes the launcher's temporary folder however launch_ranks ends.
struct TempDir {
  fs::path path;
  ~TempDir() {
    std::error_code ec;
    if (!path.empty()) fs::remove_all(path, ec);
  }
};

}  // namespace

int launch_ranks(const LaunchOptions& o, const Reporter& rep) {
  if (o.ranks < 1) throw UsageError("the number of ranks must be at least 1");
  if (!o.argv) throw Error("launch_ranks: no argv");
  // The rendezvous socket lives in a private folder (a Unix socket path has at most 107 bytes).
  std::string base = "/tmp";
  if (auto t = env("TMPDIR"); t && !t->empty() && t->size() < 60) base = *t;
  std::string tmpl = base + "/memmamba-ranks-XXXXXX";
  TempDir dir;
  if (!::mkdtemp(tmpl.data())) throw Error(std::string("cannot create a temporary folder: ") + std::strerror(errno), tmpl);
  dir.path = tmpl;
  const std::string address = "unix:" + (dir.path / "rendezvous.sock").string();

  // Everything the children need is built before the first fork.
  std::vector<std::vector<std::string>> args(size_t(o.ranks)), envs(size_t(o.ranks));
  const char* ours[] = {"MEMMAMBA_RANK=", "MEMMAMBA_WORLD_SIZE=", "MEMMAMBA_LOCAL_RANK=", "MEMMAMBA_LOCAL_WORLD_SIZE=",
                        "MEMMAMBA_MASTER_ADDR=", "MEMMAMBA_MASTER_PORT="};
  for (int r = 0; r < o.ranks; ++r) {
    args[size_t(r)] = o.argv(r);
    for (char** e = environ; *e; ++e) {
      bool skip = false;
      for (const char* p : ours) skip = skip || std::strncmp(*e, p, std::strlen(p)) == 0;
      if (!skip) envs[size_t(r)].push_back(*e);
    }
    envs[size_t(r)].push_back("MEMMAMBA_RANK=" + std::to_string(r));
    envs[size_t(r)].push_back("MEMMAMBA_WORLD_SIZE=" + std::to_string(o.ranks));
    envs[size_t(r)].push_back("MEMMAMBA_LOCAL_RANK=" + std::to_string(r));
    envs[size_t(r)].push_back("MEMMAMBA_LOCAL_WORLD_SIZE=" + std::to_string(o.ranks));
    envs[size_t(r)].push_back("MEMMAMBA_MASTER_ADDR=" + address);
  }
  auto pointers = [](std::vector<std::string>& v) {
    std::vector<char*> p;
    for (auto& s : v) p.push_back(s.data());
    p.push_back(nullptr);
    return p;
  };

  std::vector<Child> kids(size_t(o.ranks));
  auto kill_all = [&](int sig) {
    for (auto& k : kids)
      if (k.pid > 0 && !k.done) ::kill(k.pid, sig);
  };
  struct CloseAll {
    std::vector<Child>& kids;
    ~CloseAll() {
      for (auto& k : kids)
        if (k.alive >= 0) ::close(k.alive);
    }
  } close_all{kids};
  const pid_t launcher = ::getpid();
  for (int r = 0; r < o.ranks; ++r) {
    auto argv = pointers(args[size_t(r)]);
    auto envp = pointers(envs[size_t(r)]);
    int pipefd[2];  // reports a failed exec (close-on-exec: EOF means the exec worked)
    int alive[2];   // the write end stays open in the rank for as long as it lives
    if (::pipe2(pipefd, O_CLOEXEC) != 0 || ::pipe2(alive, O_CLOEXEC) != 0) {
      kill_all(SIGKILL);
      throw Error(std::string("pipe: ") + std::strerror(errno));
    }
    const pid_t pid = ::fork();
    if (pid < 0) {
      const int err = errno;
      ::close(pipefd[0]);
      ::close(pipefd[1]);
      ::close(alive[0]);
      ::close(alive[1]);
      kill_all(SIGKILL);
      for (auto& k : kids)
        if (k.pid > 0) ::waitpid(k.pid, nullptr, 0);
      throw Error(std::string("cannot start rank ") + std::to_string(r) + ": " + std::strerror(err));
    }
    if (pid == 0) {
      // The child: async-signal-safe calls only until exec.
      ::close(pipefd[0]);
      ::fcntl(alive[1], F_SETFD, 0);        // kept across exec
      ::setpgid(0, 0);                      // terminal signals reach the launcher, which passes them on
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);   // a launcher that dies stops its ranks cleanly
      if (::getppid() != launcher) ::_exit(126);
      ::execve(o.program.c_str(), argv.data(), envp.data());
      const int err = errno;
      [[maybe_unused]] ssize_t w = ::write(pipefd[1], &err, sizeof err);
      ::_exit(127);
    }
    ::close(pipefd[1]);
    ::close(alive[1]);
    kids[size_t(r)].alive = alive[0];
    int err = 0;
    ssize_t n;
    do n = ::read(pipefd[0], &err, sizeof err);
    while (n < 0 && errno == EINTR);
    ::close(pipefd[0]);
    kids[size_t(r)].pid = pid;
    if (n == sizeof err) {
      ::waitpid(pid, nullptr, 0);
      kids[size_t(r)].done = true;
      kill_all(SIGKILL);
      for (auto& k : kids)
        if (k.pid > 0 && !k.done) ::waitpid(k.pid, nullptr, 0);
      throw Error(std::string("cannot start rank ") + std::to_string(r) + ": " + std::strerror(err), o.program);
    }
  }

  using Clock = std::chrono::steady_clock;
  std::optional<Clock::time_point> failed_at;
  int first_failure = -1, forwarded = 0, running = o.ranks;
  bool killed = false;
  while (running > 0) {
    // Wake as a rank dies (its pipe closes), so that the first rank to fail is told apart from
    // the ranks that stop because they lost it.
    std::vector<pollfd> fds;
    std::vector<int> which;
    for (int r = 0; r < o.ranks; ++r)
      if (!kids[size_t(r)].done) {
        fds.push_back({kids[size_t(r)].alive, POLLIN, 0});
        which.push_back(r);
      }
    ::poll(fds.data(), fds.size(), 50);
    std::vector<int> dying;
    for (size_t i = 0; i < fds.size(); ++i)
      if (fds[i].revents) dying.push_back(which[i]);
    // Signal deaths first: a killed rank is the cause, the others' exits its consequence.
    std::vector<std::pair<int, int>> ended;  // (killed by a signal, rank)
    for (int r : dying) {
      Child& k = kids[size_t(r)];
      int st = 0;
      pid_t p;
      do p = ::waitpid(k.pid, &st, 0);
      while (p < 0 && errno == EINTR);
      k.done = true;
      ::close(k.alive);
      k.alive = -1;
      --running;
      if (p < 0) {
        k.code = 1;
        k.failed = true;
      } else if (WIFEXITED(st)) {
        k.code = WEXITSTATUS(st);
        k.failed = k.code >= 1 && k.code <= 127;
      } else {
        k.code = 128 + WTERMSIG(st);
        k.failed = true;
      }
      ended.push_back({p > 0 && WIFSIGNALED(st) ? 1 : 0, r});
    }
    std::sort(ended.begin(), ended.end(), [](auto a, auto b) { return a.first != b.first ? a.first > b.first : a.second < b.second; });
    for (const auto& [signalled, r] : ended) {
      const Child& k = kids[size_t(r)];
      if (k.failed && first_failure < 0) {
        first_failure = r;
        failed_at = Clock::now();
        if (running > 0)
          rep.say("rank " + std::to_string(r) + (signalled ? " was killed by signal " + std::to_string(k.code - 128)
                                                          : " failed (exit code " + std::to_string(k.code) + ")") +
                  "; the other ranks stop");
      }
    }
    if (running == 0) break;
    if (o.signals) {
      const auto [count, sig] = o.signals();
      for (; forwarded < count; ++forwarded) kill_all(sig);
    }
    if (failed_at && !killed &&
        Clock::now() - *failed_at > std::chrono::milliseconds(int64_t(o.grace_s * 1000))) {
      rep.say("ranks still running " + std::to_string(int(o.grace_s)) + " s after rank " + std::to_string(first_failure) +
              " failed: killing them");
      kill_all(SIGKILL);
      killed = true;
    }
  }
  if (first_failure >= 0) return kids[size_t(first_failure)].code;
  return kids[0].code;
}

}  // namespace mm::pipelines
