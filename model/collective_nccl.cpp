// The NCCL transport (built only with CUDA and NCCL, MEMMAMBA_NCCL): ncclAllReduce over one GPU
// per rank. The socket collective carries NCCL's unique id from rank 0 to the others, serves
// barrier(), and tells a lost rank while a reduction waits on the GPU.
#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <thread>

#include "io/error.hpp"
#include "model/collective.hpp"

namespace mm {

namespace {

void cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw Error(std::string("NCCL transport: ") + what + ": " + cudaGetErrorString(e));
}

class Nccl final : public Collective {
public:
  explicit Nccl(const Rendezvous& r) : boot_(make_socket_collective(r)) {
    ncclUniqueId id{};
    if (r.rank == 0) check(ncclGetUniqueId(&id), "ncclGetUniqueId");
    // Rank 0's id reaches the others through a sum to which only rank 0 contributes.
    double bytes[sizeof id.internal];
    for (size_t i = 0; i < sizeof id.internal; ++i)
      bytes[i] = r.rank == 0 ? double(static_cast<unsigned char>(id.internal[i])) : 0.0;
    boot_->all_reduce_sum(bytes, sizeof id.internal);
    for (size_t i = 0; i < sizeof id.internal; ++i) id.internal[i] = char(static_cast<unsigned char>(bytes[i]));
    cuda_check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    const ncclResult_t res = ncclCommInitRank(&comm_, r.size, id, r.rank);
    if (res != ncclSuccess) {
      comm_ = nullptr;
      throw Error(std::string("NCCL could not set up rank ") + std::to_string(r.rank) + " of " +
                  std::to_string(r.size) + ": " + ncclGetErrorString(res) + " (" + ncclGetLastError(nullptr) +
                  "); NCCL wants one GPU per rank (try --transport socket to share one)");
    }
  }
  ~Nccl() override {
    if (comm_) ncclCommDestroy(comm_);
    if (buf_) cudaFree(buf_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  int rank() const override { return boot_->rank(); }
  int size() const override { return boot_->size(); }
  std::string transport() const override { return "nccl"; }
  void all_reduce_sum(float* data, size_t n) override { reduce(data, n * sizeof(float), n, ncclFloat32); }
  void all_reduce_sum(double* data, size_t n) override { reduce(data, n * sizeof(double), n, ncclFloat64); }
  void barrier() override { boot_->barrier(); }
  int lost_peer() override { return boot_->lost_peer(); }

private:
  void check(ncclResult_t r, const char* what) {
    if (r != ncclSuccess)
      throw Error(std::string("NCCL ") + what + ": " + ncclGetErrorString(r) + " (" + ncclGetLastError(comm_) + ")");
  }

  void reduce(void* host, size_t bytes, size_t n, ncclDataType_t type) {
    if (n == 0) return;
    if (bytes > cap_) {
      if (buf_) cuda_check(cudaFree(buf_), "cudaFree");
      buf_ = nullptr;
      cuda_check(cudaMalloc(&buf_, bytes), "cudaMalloc");
      cap_ = bytes;
    }
    cuda_check(cudaMemcpyAsync(buf_, host, bytes, cudaMemcpyHostToDevice, stream_), "copy to the GPU");
    check(ncclAllReduce(buf_, buf_, n, type, ncclSum, comm_, stream_), "ncclAllReduce");
    cuda_check(cudaMemcpyAsync(host, buf_, bytes, cudaMemcpyDeviceToHost, stream_), "copy from the GPU");
    // Wait without hanging on a lost rank: NCCL's own errors, then the bootstrap connections.
    for (int spins = 0;; ++spins) {
      const cudaError_t q = cudaStreamQuery(stream_);
      if (q == cudaSuccess) return;
      if (q != cudaErrorNotReady) cuda_check(q, "all-reduce");
      ncclResult_t async = ncclSuccess;
      check(ncclCommGetAsyncError(comm_, &async), "ncclCommGetAsyncError");
      if (async != ncclSuccess) {
        const std::string why = std::string(ncclGetErrorString(async)) + " (" + ncclGetLastError(comm_) + ")";
        ncclCommAbort(comm_);
        comm_ = nullptr;
        throw CollectiveError("NCCL all-reduce failed: " + why);
      }
      if (spins >= 1000) {
        const int who = boot_->lost_peer();
        if (who >= 0) {
          ncclCommAbort(comm_);
          comm_ = nullptr;
          throw CollectiveError("lost the connection to rank " + std::to_string(who) +
                      " (it exited or failed: see its messages) during an NCCL all-reduce; stopping");
        }
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
    }
  }

  std::unique_ptr<Collective> boot_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  void* buf_ = nullptr;
  size_t cap_ = 0;
};

}  // namespace

bool nccl_available() { return true; }

std::unique_ptr<Collective> make_nccl_collective(const Rendezvous& r) { return std::make_unique<Nccl>(r); }

}  // namespace mm
