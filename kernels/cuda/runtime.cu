// Device, memory (with current/peak accounting), copies, bf16 conversion, event timer.
#include <atomic>
#include <mutex>
#include <unordered_map>

#include "kernels/cuda/common.cuh"

namespace mm::cuda {

namespace {
std::atomic<size_t> g_current{0}, g_peak{0};
std::mutex g_sizes_mu;
std::unordered_map<void*, size_t>& sizes() {
  static std::unordered_map<void*, size_t> m;
  return m;
}
}  // namespace

namespace detail {
int sm_count() {
  static const int n = [] {
    int dev = 0, v = 0;
    MM_CUDA_CHECK(cudaGetDevice(&dev));
    MM_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev));
    return v;
  }();
  return n;
}
}  // namespace detail

bool available() {
  static const bool ok = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n <= 0) {
      cudaGetLastError();  // clear the sticky-free error so later calls start clean
      return false;
    }
    // A context must actually come up (driver/runtime mismatch shows here).
    if (cudaFree(nullptr) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return true;
  }();
  return ok;
}

std::string device_name() {
  int dev = 0;
  MM_CUDA_CHECK(cudaGetDevice(&dev));
  cudaDeviceProp p{};
  MM_CUDA_CHECK(cudaGetDeviceProperties(&p, dev));
  return std::string(p.name) + ", " + std::to_string(p.multiProcessorCount) + " SMs, " +
         std::to_string(p.totalGlobalMem >> 30) + " GiB";
}

void synchronize() { MM_CUDA_CHECK(cudaDeviceSynchronize()); }

SideStream::SideStream() {
  cudaStream_t s = nullptr;
  cudaEvent_t a = nullptr;
  // The highest priority: when blocks retire, the side stream's waiting blocks go first (the
  // pool walk, the critical path it overlaps, waits for a free multiprocessor).
  int least = 0, greatest = 0;
  MM_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  MM_CUDA_CHECK(cudaStreamCreateWithPriority(&s, cudaStreamNonBlocking, greatest));
  MM_CUDA_CHECK(cudaEventCreateWithFlags(&a, cudaEventDisableTiming));
  cudaEvent_t t0 = nullptr, t1 = nullptr;
  MM_CUDA_CHECK(cudaEventCreate(&t0));
  MM_CUDA_CHECK(cudaEventCreate(&t1));
  stream_ = s;
  forked_ = a;
  began_ = t0;
  ended_ = t1;
}

SideStream::~SideStream() {
  if (forked_) cudaEventDestroy(static_cast<cudaEvent_t>(forked_));
  if (began_) cudaEventDestroy(static_cast<cudaEvent_t>(began_));
  if (ended_) cudaEventDestroy(static_cast<cudaEvent_t>(ended_));
  if (stream_) cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
}

void SideStream::fork() {
  MM_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(forked_), cudaStreamLegacy));
  MM_CUDA_CHECK(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream_), static_cast<cudaEvent_t>(forked_), 0));
  MM_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(began_), static_cast<cudaStream_t>(stream_)));
}

void SideStream::join() {
  MM_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(ended_), static_cast<cudaStream_t>(stream_)));
  MM_CUDA_CHECK(cudaStreamWaitEvent(cudaStreamLegacy, static_cast<cudaEvent_t>(ended_), 0));
}

double SideStream::last_span_ms() const {
  MM_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(ended_)));
  float ms = 0.f;
  MM_CUDA_CHECK(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(began_), static_cast<cudaEvent_t>(ended_)));
  return ms;
}

size_t peak_bytes() { return g_peak.load(); }
void reset_peak() { g_peak.store(g_current.load()); }

void* device_alloc(size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  cudaError_t err = cudaMalloc(&p, bytes);
  if (err != cudaSuccess) {
    cudaGetLastError();
    throw mm::Error("CUDA: cudaMalloc of " + std::to_string(bytes) + " bytes failed: " +
                    cudaGetErrorString(err) + " (" + std::to_string(g_current.load()) +
                    " bytes already allocated through device_alloc)");
  }
  {
    std::lock_guard<std::mutex> lk(g_sizes_mu);
    sizes()[p] = bytes;
  }
  const size_t now = g_current.fetch_add(bytes) + bytes;
  size_t prev = g_peak.load();
  while (now > prev && !g_peak.compare_exchange_weak(prev, now)) {
  }
  return p;
}

void device_free(void* p) noexcept {
  if (!p) return;
  size_t bytes = 0;
  {
    std::lock_guard<std::mutex> lk(g_sizes_mu);
    auto it = sizes().find(p);
    if (it != sizes().end()) {
      bytes = it->second;
      sizes().erase(it);
    }
  }
  g_current.fetch_sub(bytes);
  cudaFree(p);  // noexcept: an error here is reported by the next checked call
}

void copy_to_device(void* dst, const void* src, size_t bytes) {
  if (bytes) MM_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}
void copy_to_host(void* dst, const void* src, size_t bytes) {
  if (bytes) MM_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}
void copy_device(void* dst, const void* src, size_t bytes) {
  if (bytes) MM_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice));
}
void fill_zero(void* dst, size_t bytes) {
  if (bytes) MM_CUDA_CHECK(cudaMemset(dst, 0, bytes));
}

namespace {
__global__ void to_bf16_kernel(__nv_bfloat16* __restrict__ dst, const float* __restrict__ src,
                               size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x)
    dst[i] = __float2bfloat16_rn(src[i]);
}
}  // namespace

void to_bf16(void* dst, const float* src, size_t n) {
  if (n == 0) return;
  detail::require(dst && src, "to_bf16", "null pointer");
  const unsigned grid = static_cast<unsigned>(std::min<size_t>((n + 255) / 256, size_t(1) << 20));
  to_bf16_kernel<<<grid, 256>>>(static_cast<__nv_bfloat16*>(dst), src, n);
  MM_CUDA_LAUNCH_CHECK("to_bf16_kernel");
}

Timer::Timer() {
  cudaEvent_t a, b;
  MM_CUDA_CHECK(cudaEventCreate(&a));
  MM_CUDA_CHECK(cudaEventCreate(&b));
  a_ = a;
  b_ = b;
}
Timer::~Timer() {
  cudaEventDestroy(static_cast<cudaEvent_t>(a_));
  cudaEventDestroy(static_cast<cudaEvent_t>(b_));
}
void Timer::start() { MM_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(a_), 0)); }
double Timer::stop_ms() {
  MM_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(b_), 0));
  MM_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(b_)));
  float ms = 0;
  MM_CUDA_CHECK(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(a_), static_cast<cudaEvent_t>(b_)));
  return ms;
}

}  // namespace mm::cuda
