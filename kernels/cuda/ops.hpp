// The CUDA backend's forward ops and its runtime (device memory, timing, streams); the backward
// ops of the training path are in backward.hpp.
// Plain C++ declarations so that model/ calls them without including CUDA headers.
// B batch, T length, M = B·T rows, D d_model, E d_inner, N d_state, S summary width.
// Activations are fp32 in device memory; an op whose output feeds a matrix product can write it
// as bf16 (DType::bf16, the fast path) or fp32 (DType::f32, the parity path). Every launcher
// checks its arguments and throws mm::Error rather than compute a wrong answer; every CUDA call
// and launch is checked.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace mm::cuda {

// tf32: fp32 operands multiplied on the tensor cores in TF32 (the fast path's fp32 products);
// f32 keeps full fp32 arithmetic (the parity path). Only linear_forward takes tf32.
enum class DType { f32, bf16, tf32 };
inline size_t dtype_bytes(DType t) { return t == DType::bf16 ? 2 : 4; }

// ---- device, memory, timing ---------------------------------------------------------------
bool available();                 // a CUDA device is present and usable
std::string device_name();        // "NVIDIA H100 80GB HBM3, 132 SMs, 79 GiB"
void synchronize();               // waits for the default stream; throws on an asynchronous error
size_t peak_bytes();              // high-water mark of memory allocated through device_alloc
void reset_peak();

void* device_alloc(size_t bytes);             // throws mm::Error on failure (no silent null)
void device_free(void* p) noexcept;
void copy_to_device(void* dst, const void* src, size_t bytes);
void copy_to_host(void* dst, const void* src, size_t bytes);
void copy_device(void* dst, const void* src, size_t bytes);
void fill_zero(void* dst, size_t bytes);
// fp32 → bf16 (round to nearest even), n elements.
void to_bf16(void* dst, const float* src, size_t n);

// RAII device array.
template <typename T>
class Buffer {
public:
  Buffer() = default;
  explicit Buffer(size_t n) : n_(n), p_(n ? static_cast<T*>(device_alloc(n * sizeof(T))) : nullptr) {}
  ~Buffer() { device_free(p_); }
  Buffer(Buffer&& o) noexcept : n_(o.n_), p_(o.p_) { o.p_ = nullptr; o.n_ = 0; }
  Buffer& operator=(Buffer&& o) noexcept { std::swap(n_, o.n_); std::swap(p_, o.p_); return *this; }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  // Grows (never shrinks) to hold n elements; contents are not kept.
  void reserve(size_t n) { if (n > n_) *this = Buffer(n); }
  T* data() { return p_; }
  const T* data() const { return p_; }
  size_t size() const { return n_; }

private:
  size_t n_ = 0;
  T* p_ = nullptr;
};

// Device-event timer: milliseconds of the work enqueued between start() and stop().
class Timer {
public:
  Timer();
  ~Timer();
  void start();
  double stop_ms();  // synchronizes
private:
  void* a_ = nullptr;
  void* b_ = nullptr;
};

// A second stream for work that may overlap the default stream's (e.g. the note pool's
// sequential walk, while the default stream runs products that do not depend on it).
// fork(): the side stream waits for everything enqueued on the default stream so far;
// join(): the default stream waits for everything enqueued on the side stream so far.
class SideStream {
public:
  SideStream();
  ~SideStream();
  SideStream(const SideStream&) = delete;
  SideStream& operator=(const SideStream&) = delete;
  void fork();
  void join();
  void* handle() const { return stream_; }  // a cudaStream_t
  // Milliseconds the side stream's work took between the last fork and join (profiles: waits
  // for the join's work to finish).
  double last_span_ms() const;

private:
  void* stream_ = nullptr;
  void* forked_ = nullptr;  // recorded on the default stream at fork
  void* began_ = nullptr;   // timing events on the side stream: after the fork's wait,
  void* ended_ = nullptr;   // and at join (the default stream's join waits on it)
};

// ---- ops ----------------------------------------------------------------------------------
// out (M×O, out_dt, row stride ld_out) = in (M×I, dtype, row stride ld_in) · Wᵀ (W O×I, same
// dtype, contiguous) + bias (O, fp32, or null); accumulate: out += instead of =. cuBLASLt, fp32
// accumulation; fp32 inputs run in full fp32 (the parity path). out_dt is f32, or bf16 with bf16
// inputs (products only read back by an elementwise op: half the bytes).
void linear_forward(void* out, int64_t ld_out, const void* in, int64_t ld_in, const void* W,
                    const float* bias, int64_t M, int64_t I, int64_t O, DType dtype, bool accumulate,
                    DType out_dt = DType::f32);

// y (M×D, ydt) = RMSNorm(x) · w. When score_w is given, also s (M) = σ(y_f32 · score_w + score_b)
// (the note score, fused: it reads the same normalised row).
void rmsnorm_forward(void* y, DType ydt, const float* x, const float* w, int64_t M, int64_t D,
                     float eps, float* s = nullptr, const float* score_w = nullptr,
                     const float* score_b = nullptr);

// x (M×D) += σ(g_i + b_i) ⊙ c_i for i < nres (1 or 2, in order; g, c M×D in gdt; b_i = g_bias[i],
// D fp32, or g_bias null when g holds its bias), then y (M×D, ydt) = RMSNorm(x) · w: the note
// reads' gated residuals fused into the mixer's norm, so x is read and written once.
void gated_residual_rmsnorm_forward(void* y, DType ydt, float* x, const void* const* g, const float* const* g_bias,
                                    const void* const* c, int nres, DType gdt, const float* w, int64_t M, int64_t D,
                                    float eps);

// out (M×E, odt) = SiLU(causal depthwise conv(a) + bias); a (odt too) has row stride lda; tail
// (B×(k−1)×E, fp32) holds the inputs before t = 0 and is updated to the piece's last k−1 inputs.
// Also writes the fp32 result to out_f32 (M×E) when not null (the scan's input).
void conv1d_silu_forward(void* out, DType odt, float* out_f32, float* tail, const void* a,
                         int64_t lda, const float* w, const float* bias, int64_t B, int64_t T,
                         int64_t E, int64_t k);

// The fused selective scan: Δ = softplus(dt), h_t = exp(Δ A) h_{t−1} + Δ B_t u_t,
// y_t = C_t·h_t + D u_t, out_t = y_t ⊙ SiLU(z_t) (z row stride ldz; out M×E in odt).
// h (B×E×N) is the state before the piece, updated to the state after it.
void scan_forward(void* out, DType odt, float* h, const float* u, const float* dt,
                  const float* A_log, const float* Bm, const float* Cm, int64_t ld_bc,
                  const float* D, const float* z, int64_t ldz, int64_t B, int64_t T, int64_t E,
                  int64_t N);

// out (M×D) = table[tokens].
void embedding_forward(float* out, const int32_t* tokens, const float* table, int64_t M, int64_t D);

// x (M×D) += σ(g) ⊙ c.
void gated_residual_forward(float* x, const float* g, const float* c, int64_t M, int64_t D);

}  // namespace mm::cuda
