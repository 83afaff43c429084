// Collectives for data-parallel training: a group of `size()` processes (ranks) that sum buffers
// across ranks. Three transports behind one interface:
//   single  one process, nothing to do (the plain run);
//   socket  a star over a Unix-domain or TCP socket: rank 0 receives every rank's buffer, sums
//           them in rank order and sends the sum back, so every rank gets the same bytes. Runs
//           anywhere (CI, CPU training, a GPU run without NCCL); it also serves as NCCL's bootstrap;
//   nccl    ncclAllReduce on one GPU per rank (built only with CUDA and NCCL: model/collective_nccl.cpp).
// A rank that fails closes its sockets; the others then throw mm::Error naming the lost rank
// instead of waiting for ever.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "io/error.hpp"

namespace mm {

// The ranks could not communicate: a rank was lost, or they called different collectives.
class CollectiveError : public Error {
public:
  using Error::Error;
};

class Collective {
public:
  virtual ~Collective() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string transport() const = 0;  // "single", "socket" or "nccl"
  // In place: every rank's data[0..n) becomes the sum over the ranks, identical on every rank.
  // Every rank must make the same calls with the same n (a mismatch throws mm::Error).
  virtual void all_reduce_sum(float* data, size_t n) = 0;
  virtual void all_reduce_sum(double* data, size_t n) = 0;
  virtual void barrier() = 0;
  // A liveness probe that does not block: a rank whose connection has closed, or -1. (The NCCL
  // transport asks its bootstrap connections while it waits for the GPUs.)
  virtual int lost_peer() { return -1; }
};

// Where the ranks meet: "unix:PATH" (one host) or "HOST:PORT" / "HOST" with `port` (TCP; rank 0
// listens there). timeout_s bounds how long ranks wait for each other to connect.
struct Rendezvous {
  int rank = 0, size = 1;
  std::string address;
  int port = 29500;
  double timeout_s = 300;
};

std::unique_ptr<Collective> make_single_collective();
// Connects the ranks (rank 0 listens, the others connect, retrying until timeout_s). Throws
// mm::Error when the rendezvous fails or the ranks disagree on the size.
std::unique_ptr<Collective> make_socket_collective(const Rendezvous& r);

// Whether this build has the NCCL transport.
bool nccl_available();
// NCCL on the calling thread's current CUDA device (select it first: cuda_use_device), with the
// socket collective of `r` as bootstrap (NCCL's unique id) and for barrier(). Buffers are on the
// host: they go through a device buffer. Throws mm::Error without NCCL in the build or when NCCL
// refuses (two ranks on one GPU, say).
std::unique_ptr<Collective> make_nccl_collective(const Rendezvous& r);

// Throws mm::Error on every rank unless `value` is the same on every rank (what: the message's
// subject, e.g. "the model parameters").
void check_same_on_all_ranks(Collective& c, uint64_t value, const std::string& what);
// FNV-1a of bytes, for check_same_on_all_ranks.
uint64_t fingerprint(const void* data, size_t bytes, uint64_t seed = 1469598103934665603ull);

}  // namespace mm
