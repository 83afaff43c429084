#include "model/trainer.hpp"

#include <cmath>
#include <numbers>
#include <utility>

#include "io/error.hpp"
#include "io/safetensors.hpp"

namespace mm {

double learning_rate(const TrainConfig& tc, int64_t step) {
  if (tc.warmup_steps > 0 && step <= tc.warmup_steps)
    return tc.lr * double(step) / double(tc.warmup_steps);
  const double span = double(std::max<int64_t>(1, tc.total_steps - tc.warmup_steps));
  const double progress = std::min(1.0, double(step - tc.warmup_steps) / span);
  const double floor = tc.lr * tc.min_lr_ratio;
  return floor + (tc.lr - floor) * 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
}

template <typename T>
Trainer<T>::Trainer(MemMamba<T>& model, TrainConfig tc, GradientPass<T> pass)
    : model_(model), tc_(tc), pass_(std::move(pass)), m_(model.params().size(), T(0)), v_(model.params().size(), T(0)) {
  if (tc_.accumulation < 1) throw UsageError("gradient accumulation must be at least 1");
}

template <typename T>
StepResult Trainer<T>::step(const std::function<Batch(int64_t)>& next_batch) {
  model_.zero_grads();
  double loss = 0;
  int64_t counted = 0;
  for (int64_t micro = 0; micro < tc_.accumulation; ++micro) {
    Batch b = next_batch(micro);
    int64_t n = 0;
    loss += pass_ ? pass_(model_, b, &n)
                  : model_.forward_backward(b.tokens.data(), b.targets.data(), b.B, b.T, 1.0, &n);
    counted += n;
  }
  StepResult r;
  r.targets = counted;
  if (counted == 0) throw Error("a training step had no targets to predict (all N or padding?)");
  r.loss = loss / double(counted);
  // Gradients are of the summed loss: scale to the mean, then clip the global norm.
  const auto& g = model_.grads();
  double sq = 0;
  for (T x : g) sq += double(x) * double(x);
  r.grad_norm = std::sqrt(sq) / double(counted);
  if (!std::isfinite(r.loss) || !std::isfinite(r.grad_norm))
    throw Error("training diverged: loss " + std::to_string(r.loss) + ", gradient norm " +
                std::to_string(r.grad_norm) + " at step " + std::to_string(step_ + 1));
  double scale = 1.0 / double(counted);
  if (tc_.clip > 0 && r.grad_norm > tc_.clip) scale *= tc_.clip / r.grad_norm;
  ++step_;
  r.lr = learning_rate(tc_, step_);
  cpu::AdamWHyper h{r.lr, tc_.beta1, tc_.beta2, tc_.eps, tc_.weight_decay};
  for (const auto& p : model_.table().entries())
    cpu::adamw_update(model_.params().data() + p.offset, g.data() + p.offset, m_.data() + p.offset,
                      v_.data() + p.offset, int64_t(p.size), h, p.decay ? tc_.weight_decay : 0.0,
                      step_, scale);
  return r;
}

template <typename T>
void Trainer<T>::save_state(const std::filesystem::path& path,
                            const std::map<std::string, std::string>& extra) const {
  io::SafetensorsWriter w;
  const int64_t n = int64_t(m_.size());
  if constexpr (sizeof(T) == 4) {
    w.add("adamw.m", {n}, std::span<const float>(m_));
    w.add("adamw.v", {n}, std::span<const float>(v_));
  } else {
    w.add("adamw.m", {n}, std::span<const double>(m_));
    w.add("adamw.v", {n}, std::span<const double>(v_));
  }
  for (const auto& [k, v] : extra) w.set_metadata(k, v);
  w.set_metadata("format", "memmamba-optimizer-1");
  w.set_metadata("adamw.step", std::to_string(step_));
  w.write(path);
}

template <typename T>
std::map<std::string, std::string> Trainer<T>::load_state(const std::filesystem::path& path) {
  io::SafetensorsFile f = io::SafetensorsFile::read(path);
  auto meta = f.metadata();
  if (meta["format"] != "memmamba-optimizer-1")
    throw Error("not a memmamba optimizer state", path.string());
  if (!f.has("adamw.m") || !f.has("adamw.v") ||
      f.info("adamw.m").numel() != m_.size() || f.info("adamw.v").numel() != v_.size())
    throw Error("optimizer state does not match this model's parameters (another config?)", path.string());
  auto m = f.as_f64("adamw.m"), v = f.as_f64("adamw.v");
  for (size_t i = 0; i < m_.size(); ++i) {
    m_[i] = T(m[i]);
    v_[i] = T(v[i]);
  }
  step_ = std::stoll(meta["adamw.step"]);
  return meta;
}

template class Trainer<float>;
template class Trainer<double>;

}  // namespace mm
