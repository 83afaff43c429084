// Data-parallel ranks: where a process stands among the ranks of a run (from its environment),
// and the launcher behind `memmamba pretrain --ranks N` / `--gpus N`, which starts the N rank
// processes on this host, watches them, and stops the others when one fails.
//
// A rank is told its place by the environment, so the same program runs under the launcher,
// mpirun or srun (once per rank):
//   MEMMAMBA_MASTER_ADDR   where the ranks meet: unix:PATH (one host) or HOST[:PORT] (TCP; rank 0
//                          listens). Setting it makes the process one rank of several.
//   MEMMAMBA_MASTER_PORT   TCP port when the address has none [29500]
//   MEMMAMBA_RANK          0..size-1    (else OMPI_COMM_WORLD_RANK, else SLURM_PROCID)
//   MEMMAMBA_WORLD_SIZE    size         (else OMPI_COMM_WORLD_SIZE, else SLURM_NTASKS)
//   MEMMAMBA_LOCAL_RANK    the GPU index on its host (else OMPI_COMM_WORLD_LOCAL_RANK, else
//                          SLURM_LOCALID, else the rank)
//   MEMMAMBA_DIST_TIMEOUT  seconds the ranks wait for each other to connect [300]
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "io/error.hpp"
#include "model/collective.hpp"

namespace mm::pipelines {

struct RankEnvironment {
  bool present = false;  // MEMMAMBA_MASTER_ADDR is set: this process is one rank of a group
  int rank = 0, size = 1, local_rank = 0;
  Rendezvous rendezvous;
};

// Reads the variables above; throws UsageError when they are malformed or incomplete.
RankEnvironment rank_environment();

struct LaunchOptions {
  int ranks = 1;
  std::string program = "/proc/self/exe";
  // argv of rank r (argv[0] included); the launcher adds the environment above.
  std::function<std::vector<std::string>(int rank)> argv;
  // Polled while the ranks run: how many stop signals the launcher has received so far and the
  // last one's number; each new one is passed on to every rank still running.
  std::function<std::pair<int, int>()> signals;
  double grace_s = 10;  // after a rank fails, how long the others get to stop before SIGKILL
};

// Starts the ranks (each in its own process group, told to stop with SIGTERM should the launcher
// die; they meet at a Unix socket in a private temporary folder, removed at the end) and waits for
// them. Returns rank 0's exit code when every rank ended cleanly (0, or 128+signal after a stop
// request), otherwise the first failing rank's code (exit 1..127, or 128+signal when a signal
// killed it). Notes through `reporter` which rank failed. Throws mm::Error when a rank cannot
// be started.
int launch_ranks(const LaunchOptions& options, const Reporter& reporter);

}  // namespace mm::pipelines
