// Errors and reporting shared by every library (io, kernels, model, pipelines).
// Libraries never print or exit: they throw mm::Error (bad input, exit 1) or mm::UsageError
// (bad usage, exit 2), and report progress and notes through an mm::Reporter the app supplies.
#pragma once
#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace mm {

enum class ExitCode : int { ok = 0, bad_input = 1, usage = 2 };

// An error a user can act on. `file` and `line` name where the bad input is (line 0: none).
class Error : public std::runtime_error {
public:
  explicit Error(std::string what, std::string file = {}, long line = 0,
                 ExitCode code = ExitCode::bad_input)
      : std::runtime_error(std::move(what)), file_(std::move(file)), line_(line), code_(code) {}
  const std::string& file() const { return file_; }
  long line() const { return line_; }
  ExitCode code() const { return code_; }
  // "<file>:<line>: <what>", leaving out what is not known.
  std::string message() const {
    std::string m;
    if (!file_.empty()) m += file_ + ":";
    if (line_ > 0) m += std::to_string(line_) + ":";
    if (!m.empty()) m += " ";
    return m + what();
  }

private:
  std::string file_;
  long line_;
  ExitCode code_;
};

class UsageError : public Error {
public:
  explicit UsageError(std::string what) : Error(std::move(what), {}, 0, ExitCode::usage) {}
};

// How a library tells the app what happens, without printing itself.
struct Reporter {
  std::function<void(std::string_view)> note;                               // one-line remark
  std::function<void(double done, double total, std::string_view unit)> progress;
  void say(std::string_view s) const { if (note) note(s); }
  void advance(double done, double total, std::string_view unit) const {
    if (progress) progress(done, total, unit);
  }
};

}  // namespace mm
