// Token embedding and the next-token cross-entropy. M rows, D d_model, V vocab.
#pragma once
#include <cstdint>

namespace mm::cpu {

// out (M×D) = table[tokens]   (table V×D).
template <typename T>
void embedding_forward(T* out, const int32_t* tokens, const T* table, int64_t M, int64_t D);
// dtable (V×D) += scatter of dout by token.
template <typename T>
void embedding_backward(T* dtable, const int32_t* tokens, const T* dout, int64_t M, int64_t D);

// Mean cross-entropy of logits (M×V) against targets (M); a target < 0 is ignored.
// Returns the summed loss; *counted gets how many targets counted. dlogits (M×V, may be null)
// is set to ∂(sum / scale)/∂logits, i.e. (softmax − onehot) / scale on counted rows, 0 elsewhere.
template <typename T>
double cross_entropy_forward_backward(T* dlogits, int64_t* counted, const T* logits,
                                      const int32_t* targets, int64_t M, int64_t V, double scale);

}  // namespace mm::cpu
