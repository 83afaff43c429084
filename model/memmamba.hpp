// MemMamba (DESIGN §3) on the CPU: forward over a batch, training forward+backward with each
// layer recomputed in the backward pass, and streaming through a carried state.
// B batch, T length (of this piece), D d_model, E d_inner, N d_state, R dt_rank,
// K pool slots, S summary width (H heads × d_h), C memory chunk, V vocab. Rows are b·T + t.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "kernels/notes.hpp"
#include "model/config.hpp"
#include "model/params.hpp"

namespace mm {

// What one layer carries from one piece of a sequence to the next.
template <typename T>
struct LayerState {
  std::vector<T> conv_tail;               // B×(k−1)×E, the last k−1 conv inputs
  std::vector<T> ssm;                     // B×E×N
  std::vector<cpu::Pool<T>> pool;         // per sequence of the batch
  std::vector<cpu::Candidates<T>> cand;   // best candidates of the unfinished chunk
};

template <typename T>
struct StreamState {
  int64_t batch = 0;
  int64_t position = 0;  // absolute position of the next token
  std::vector<LayerState<T>> layers;
};

// Optional views into a forward pass, for tests and tools (batch element 0 only).
template <typename T>
struct Taps {
  struct Layer {
    std::vector<T> score;                           // T
    std::vector<std::vector<int64_t>> pool_read;    // per segment: source positions it read
    std::vector<int64_t> segment_start;             // absolute position of each segment's start
    std::vector<T> after_notes, output;             // T×D
  };
  std::vector<Layer> layers;
};

template <typename T>
class MemMamba {
public:
  MemMamba(const Config& cfg, uint64_t seed);                    // freshly initialised
  MemMamba(const Config& cfg, std::vector<T> params);            // given parameters
  ~MemMamba();
  MemMamba(MemMamba&&) noexcept;

  const Config& config() const { return cfg_; }
  const ParamTable& table() const { return table_; }
  std::vector<T>& params() { return params_; }
  const std::vector<T>& params() const { return params_; }
  std::vector<T>& grads() { return grads_; }
  void zero_grads();

  StreamState<T> new_state(int64_t batch) const;

  // logits (B×T×V) of tokens (B×T). With a state, continues that stream and advances it;
  // without, the piece is a whole sequence starting at position 0.
  void forward(const int32_t* tokens, int64_t B, int64_t T_, T* logits,
               StreamState<T>* state = nullptr, Taps<T>* taps = nullptr);

  // One training pass over whole sequences: grads += ∂(Σ loss / scale)/∂params.
  // targets (B×T): the next token, or −1 where ignored. Returns Σ loss; *counted targets counted.
  double forward_backward(const int32_t* tokens, const int32_t* targets, int64_t B, int64_t T_,
                          double scale, int64_t* counted, T* logits = nullptr,
                          Taps<T>* taps = nullptr);

  // The final hidden states (after norm_f, B×T×D, rows b·T + t) of tokens (B×T), without the LM
  // head; with a state, continues that stream and advances it (as forward does).
  void forward_hidden(const int32_t* tokens, int64_t B, int64_t T_, T* hidden,
                      StreamState<T>* state = nullptr);

  // Training from a gradient on the final hidden states (a head of one's own, e.g. a classifier):
  // runs whole sequences, calls loss_grad(hidden, d_hidden) with the final hidden states (as
  // forward_hidden gives them) and a zeroed buffer of the same shape to fill with ∂L/∂hidden, then
  // back-propagates it: grads += ∂L/∂params (the tied LM head gets no gradient; the embedding only
  // through its lookup). Returns what loss_grad returns.
  double forward_backward_hidden(const int32_t* tokens, int64_t B, int64_t T_,
                                 const std::function<double(const T* hidden, T* d_hidden)>& loss_grad);

  // Next-token targets of DESIGN §3: tokens[t+1] when it is A/C/G/T, else −1 (N, PAD, BOS).
  static std::vector<int32_t> next_token_targets(const int32_t* tokens, int64_t B, int64_t T_);

  struct Impl;

private:
  Config cfg_;
  ParamTable table_;
  std::vector<T> params_, grads_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mm
