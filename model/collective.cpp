#include "model/collective.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "io/error.hpp"

namespace mm {

namespace {

using Clock = std::chrono::steady_clock;

class Single final : public Collective {
public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string transport() const override { return "single"; }
  void all_reduce_sum(float*, size_t) override {}
  void all_reduce_sum(double*, size_t) override {}
  void barrier() override {}
};

struct Fd {
  int fd = -1;
  Fd() = default;
  explicit Fd(int f) : fd(f) {}
  Fd(Fd&& o) noexcept : fd(o.fd) { o.fd = -1; }
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd = o.fd;
      o.fd = -1;
    }
    return *this;
  }
  ~Fd() { reset(); }
  void reset() {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
};

std::string sys_error(const std::string& what) { return what + ": " + std::strerror(errno); }

constexpr uint32_t kMagic = 0x4d4d4450;  // "MMDP"
constexpr uint32_t kVersion = 1;
enum Op : uint32_t { op_sum_f32 = 1, op_sum_f64 = 2, op_barrier = 3 };

const char* op_name(uint32_t op) {
  switch (op) {
    case op_sum_f32: return "all_reduce_sum(float)";
    case op_sum_f64: return "all_reduce_sum(double)";
    case op_barrier: return "barrier";
  }
  return "an unknown operation";
}

struct Hello {
  uint32_t magic, version;
  int32_t rank, size;
};
struct Ack {
  uint32_t magic, status;  // 0 ok; otherwise why rank 0 refused
};
struct Header {
  uint32_t op, reserved;
  uint64_t n;
};

std::string lost(int who) {
  return "lost the connection to rank " + std::to_string(who) +
         " (it exited or failed: see its messages); stopping";
}

// Waits until fd is readable (or `deadline` passes: false).
bool wait_readable(int fd, Clock::time_point deadline) {
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    pollfd p{fd, POLLIN, 0};
    const int r = ::poll(&p, 1, int(std::min<long long>(left, 1000)));
    if (r > 0) return true;
    if (r < 0 && errno != EINTR) throw CollectiveError(sys_error("poll"));
  }
}

void recv_all(int fd, void* buf, size_t bytes, int peer) {
  char* p = static_cast<char*>(buf);
  while (bytes > 0) {
    const ssize_t r = ::recv(fd, p, bytes, 0);
    if (r == 0) throw CollectiveError(lost(peer));
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == ECONNRESET) throw CollectiveError(lost(peer));
      throw CollectiveError(sys_error("receiving from rank " + std::to_string(peer)));
    }
    p += r;
    bytes -= size_t(r);
  }
}

void send_all(int fd, const void* buf, size_t bytes, int peer) {
  const char* p = static_cast<const char*>(buf);
  while (bytes > 0) {
    const ssize_t r = ::send(fd, p, bytes, MSG_NOSIGNAL);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EPIPE || errno == ECONNRESET) throw CollectiveError(lost(peer));
      throw CollectiveError(sys_error("sending to rank " + std::to_string(peer)));
    }
    p += r;
    bytes -= size_t(r);
  }
}

struct Address {
  bool unix_socket = false;
  std::string path, host;
  int port = 0;
};

Address parse_address(const Rendezvous& r) {
  Address a;
  if (r.address.empty()) throw UsageError("no rendezvous address (MEMMAMBA_MASTER_ADDR): unix:PATH or HOST[:PORT]");
  if (r.address.rfind("unix:", 0) == 0) {
    a.unix_socket = true;
    a.path = r.address.substr(5);
    if (a.path.empty() || a.path.size() >= sizeof(sockaddr_un{}.sun_path))
      throw UsageError("rendezvous socket path '" + a.path + "' is empty or longer than " +
                       std::to_string(sizeof(sockaddr_un{}.sun_path) - 1) + " characters");
    return a;
  }
  a.host = r.address;
  a.port = r.port;
  const auto colon = r.address.rfind(':');
  if (colon != std::string::npos && r.address.find(':') == colon) {  // host:port (not a bare IPv6)
    a.host = r.address.substr(0, colon);
    char* end = nullptr;
    const long p = std::strtol(r.address.c_str() + colon + 1, &end, 10);
    if (*end || colon + 1 == r.address.size()) throw UsageError("bad rendezvous port in '" + r.address + "'");
    a.port = int(p);
  }
  if (a.port < 1 || a.port > 65535) throw UsageError("rendezvous port " + std::to_string(a.port) + " is not in 1..65535");
  return a;
}

void set_nodelay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

Fd listen_on(const Address& a) {
  if (a.unix_socket) {
    Fd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (s.fd < 0) throw Error(sys_error("socket"));
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::memcpy(sa.sun_path, a.path.c_str(), a.path.size() + 1);
    ::unlink(a.path.c_str());  // a stale socket of an earlier run
    if (::bind(s.fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0)
      throw Error(sys_error("cannot listen on the rendezvous socket"), a.path);
    if (::listen(s.fd, 128) != 0) throw Error(sys_error("listen"), a.path);
    return s;
  }
  Fd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (s.fd < 0) throw Error(sys_error("socket"));
  int one = 1;
  ::setsockopt(s.fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_ANY);
  sa.sin_port = htons(uint16_t(a.port));
  if (::bind(s.fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0)
    throw Error(sys_error("rank 0 cannot listen on TCP port " + std::to_string(a.port)));
  if (::listen(s.fd, 128) != 0) throw Error(sys_error("listen"));
  return s;
}

// One connection attempt; an empty Fd when rank 0 is not listening yet.
Fd try_connect(const Address& a) {
  if (a.unix_socket) {
    Fd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (s.fd < 0) throw Error(sys_error("socket"));
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::memcpy(sa.sun_path, a.path.c_str(), a.path.size() + 1);
    if (::connect(s.fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0) return s;
    if (errno == ENOENT || errno == ECONNREFUSED || errno == EAGAIN || errno == EINTR) return {};
    throw Error(sys_error("cannot connect to the rendezvous socket"), a.path);
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const std::string port = std::to_string(a.port);
  const int gai = ::getaddrinfo(a.host.c_str(), port.c_str(), &hints, &res);
  if (gai != 0) throw Error("cannot resolve the rendezvous host '" + a.host + "': " + gai_strerror(gai));
  Fd out;
  for (addrinfo* p = res; p && out.fd < 0; p = p->ai_next) {
    Fd s(::socket(p->ai_family, p->ai_socktype | SOCK_CLOEXEC, p->ai_protocol));
    if (s.fd < 0) continue;
    if (::connect(s.fd, p->ai_addr, p->ai_addrlen) == 0) out = std::move(s);
  }
  ::freeaddrinfo(res);
  if (out.fd >= 0) set_nodelay(out.fd);
  return out;
}

class Socket final : public Collective {
public:
  explicit Socket(const Rendezvous& r) : rank_(r.rank), size_(r.size) {
    if (r.size < 1) throw UsageError("the number of ranks must be at least 1, got " + std::to_string(r.size));
    if (r.rank < 0 || r.rank >= r.size)
      throw UsageError("rank " + std::to_string(r.rank) + " is not in 0.." + std::to_string(r.size - 1));
    if (r.size == 1) return;
    const Address a = parse_address(r);
    const auto deadline = Clock::now() + std::chrono::milliseconds(int64_t(r.timeout_s * 1000));
    const std::string waited = " within " + std::to_string(int(r.timeout_s)) + " s (MEMMAMBA_DIST_TIMEOUT)";
    if (rank_ == 0) {
      Fd listener = listen_on(a);
      peers_.resize(size_t(size_));
      int joined = 0;
      while (joined < size_ - 1) {
        if (!wait_readable(listener.fd, deadline))
          throw Error("only " + std::to_string(joined + 1) + " of " + std::to_string(size_) +
                      " ranks joined" + waited + " at " + r.address);
        Fd c(::accept4(listener.fd, nullptr, nullptr, SOCK_CLOEXEC));
        if (c.fd < 0) {
          if (errno == EINTR || errno == ECONNABORTED) continue;
          throw Error(sys_error("accept"));
        }
        if (!a.unix_socket) set_nodelay(c.fd);
        Hello h{};
        if (!wait_readable(c.fd, deadline)) throw Error("a rank connected but did not introduce itself" + waited);
        try {
          recv_all(c.fd, &h, sizeof h, -1);
        } catch (const Error&) {
          continue;  // not one of ours (a port scan, a rank that died at once): ignore it
        }
        uint32_t status = 0;
        std::string why;
        if (h.magic != kMagic || h.version != kVersion) {
          continue;  // not one of ours
        } else if (h.size != size_) {
          status = 1;
          why = "rank " + std::to_string(h.rank) + " was started for " + std::to_string(h.size) +
                " ranks, rank 0 for " + std::to_string(size_);
        } else if (h.rank <= 0 || h.rank >= size_ || peers_[size_t(h.rank)].fd >= 0) {
          status = 2;
          why = "two processes claim rank " + std::to_string(h.rank);
        }
        const Ack ack{kMagic, status};
        send_all(c.fd, &ack, sizeof ack, h.rank);
        if (status != 0) throw Error("rendezvous at " + r.address + ": " + why);
        peers_[size_t(h.rank)] = std::move(c);
        ++joined;
      }
      if (a.unix_socket) ::unlink(a.path.c_str());  // everyone is in: the socket file is done with
    } else {
      Fd s;
      for (;;) {
        s = try_connect(a);
        if (s.fd >= 0) break;
        if (Clock::now() > deadline) throw Error("rank 0 did not answer" + waited + " at " + r.address);
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      const Hello h{kMagic, kVersion, rank_, size_};
      send_all(s.fd, &h, sizeof h, 0);
      Ack ack{};
      if (!wait_readable(s.fd, deadline)) throw Error("rank 0 accepted the connection but did not answer" + waited);
      recv_all(s.fd, &ack, sizeof ack, 0);
      if (ack.magic != kMagic) throw Error("the rendezvous address " + r.address + " is not a memmamba rank 0");
      if (ack.status == 1)
        throw Error("rank 0 was started for another number of ranks than this rank (" + std::to_string(size_) + ")");
      if (ack.status == 2) throw Error("another process already joined as rank " + std::to_string(rank_));
      root_ = std::move(s);
    }
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string transport() const override { return "socket"; }
  void all_reduce_sum(float* data, size_t n) override { reduce(op_sum_f32, data, n); }
  void all_reduce_sum(double* data, size_t n) override { reduce(op_sum_f64, data, n); }
  void barrier() override { reduce<float>(op_barrier, nullptr, 0); }
  int lost_peer() override {
    // Between operations nothing is in flight: a readable socket here is a closed one.
    auto closed = [](int fd) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 0) <= 0) return false;
      char c;
      const ssize_t r = ::recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
      return r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR);
    };
    if (rank_ != 0) return root_.fd >= 0 && closed(root_.fd) ? 0 : -1;
    for (int r = 1; r < size_; ++r)
      if (closed(peers_[size_t(r)].fd)) return r;
    return -1;
  }

private:
  template <typename T>
  void reduce(uint32_t op, T* data, size_t n) {
    if (size_ == 1) return;
    const Header mine{op, 0, uint64_t(n)};
    if (rank_ != 0) {
      send_all(root_.fd, &mine, sizeof mine, 0);
      if (n) send_all(root_.fd, data, n * sizeof(T), 0);
      Header back{};
      recv_all(root_.fd, &back, sizeof back, 0);
      if (back.op != op || back.n != n) throw CollectiveError("rank 0 answered another collective: the ranks are out of step");
      if (n) recv_all(root_.fd, data, n * sizeof(T), 0);
      return;
    }
    // Rank 0: sum in rank order (the same bytes go back to every rank).
    tmp_.resize(n * sizeof(T));
    T* other = reinterpret_cast<T*>(tmp_.data());
    for (int r = 1; r < size_; ++r) {
      Header h{};
      recv_all(peers_[size_t(r)].fd, &h, sizeof h, r);
      if (h.op != op || h.n != n)
        throw CollectiveError("rank " + std::to_string(r) + " called " + op_name(h.op) + " of " + std::to_string(h.n) +
                    " values where rank 0 called " + op_name(op) + " of " + std::to_string(n) +
                    ": the ranks are out of step");
      if (n) {
        recv_all(peers_[size_t(r)].fd, other, n * sizeof(T), r);
        for (size_t i = 0; i < n; ++i) data[i] += other[i];
      }
    }
    for (int r = 1; r < size_; ++r) {
      send_all(peers_[size_t(r)].fd, &mine, sizeof mine, r);
      if (n) send_all(peers_[size_t(r)].fd, data, n * sizeof(T), r);
    }
  }

  int rank_, size_;
  std::vector<Fd> peers_;  // rank 0: one connection per other rank (index = rank)
  Fd root_;                // other ranks: the connection to rank 0
  std::vector<char> tmp_;
};

}  // namespace

std::unique_ptr<Collective> make_single_collective() { return std::make_unique<Single>(); }

std::unique_ptr<Collective> make_socket_collective(const Rendezvous& r) { return std::make_unique<Socket>(r); }

#ifndef MEMMAMBA_HAVE_NCCL
bool nccl_available() { return false; }
std::unique_ptr<Collective> make_nccl_collective(const Rendezvous&) {
  throw Error("this build has no NCCL transport (configure with CUDA and NCCL: MEMMAMBA_NCCL)");
}
#endif

uint64_t fingerprint(const void* data, size_t bytes, uint64_t h) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < bytes; ++i) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
  return h;
}

void check_same_on_all_ranks(Collective& c, uint64_t value, const std::string& what) {
  if (c.size() == 1) return;
  // Rank 0's value reaches every rank through a sum to which only rank 0 contributes (21-bit
  // pieces: exact in doubles); then every rank says whether its own differs.
  constexpr uint64_t piece = (uint64_t(1) << 21) - 1;
  double v[3] = {0, 0, 0};
  if (c.rank() == 0)
    for (int k = 0; k < 3; ++k) v[k] = double((value >> (21 * k)) & piece);
  c.all_reduce_sum(v, 3);
  uint64_t root = 0;
  for (int k = 0; k < 3; ++k) root |= uint64_t(v[k]) << (21 * k);
  const uint64_t mask = (uint64_t(1) << 63) - 1;
  double differs = (root & mask) == (value & mask) ? 0.0 : 1.0;
  const bool me = differs != 0;
  c.all_reduce_sum(&differs, 1);
  if (differs > 0)
    throw Error("the ranks disagree on " + what + ": " + std::to_string(int(differs)) + " of " +
                std::to_string(c.size()) + " ranks differ from rank 0" + (me ? ", this one among them" : ""));
}

}  // namespace mm
