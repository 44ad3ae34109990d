#include "launcher/train_signals.h"

#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>

#include "core/run_dir.h"
#include "core/trainer.h"

namespace loom {
namespace {

RunSignals g_signals;
std::atomic<int> g_flight_signals{0};
// When the first stop request arrived (CLOCK_MONOTONIC milliseconds; 0: none yet).
std::atomic<int64_t> g_first_stop_ms{0};
static_assert(std::atomic<int64_t>::is_always_lock_free);

// A line built without allocating: handlers may call only async-signal-safe functions.
struct Line {
  char text[360];
  size_t size = 0;
  Line& operator<<(const char* s) {
    while (*s && size + 1 < sizeof(text)) text[size++] = *s++;
    return *this;
  }
  Line& operator<<(long n) {
    char digits[24];
    int count = 0;
    unsigned long u = n < 0 ? 0ul - static_cast<unsigned long>(n) : static_cast<unsigned long>(n);
    do digits[count++] = static_cast<char>('0' + u % 10);
    while ((u /= 10) != 0);
    if (n < 0 && size + 1 < sizeof(text)) text[size++] = '-';
    while (count > 0 && size + 1 < sizeof(text)) text[size++] = digits[--count];
    return *this;
  }
  void write_to(int fd) const {
    if (fd < 0) return;
    size_t done = 0;
    while (done < size) {
      const ssize_t n = ::write(fd, text + done, size - done);
      if (n <= 0) return;
      done += static_cast<size_t>(n);
    }
  }
};

// Leaves the last line (train.log on the rank that writes it, and the terminal) and ends the
// process as `sig` would have, without any cleanup that could be half-done: the newest complete
// checkpoint stays the newest (a folder appears only complete, core/checkpoint.h).
void end_now(int sig, const char* why) {
  const int saved_errno = errno;
  Line line;
  line << "loom: " << signal_name(sig) << why << ": the run ends now, after step "
       << g_signals.step.load() << "; its newest complete checkpoint is intact (continue with "
       << "--resume)\n";
  timespec now{};
  clock_gettime(CLOCK_REALTIME, &now);
  Line logged;  // train.log's lines start with the time
  char stamp[kTimestampSize];
  log_timestamp(now.tv_sec, stamp);
  logged.size = kTimestampSize;
  std::memcpy(logged.text, stamp, kTimestampSize);
  for (size_t i = 0; i < line.size && logged.size + 1 < sizeof(logged.text); ++i)
    logged.text[logged.size++] = line.text[i];
  logged.write_to(g_signals.log_fd.load());
  line.write_to(STDERR_FILENO);
  struct sigaction action {};
  action.sa_handler = SIG_DFL;
  sigemptyset(&action.sa_mask);
  sigaction(sig, &action, nullptr);
  raise(sig);  // delivered when this handler returns (the signal is blocked inside it)
  errno = saved_errno;
}

void on_stop(int sig) {
  const int64_t now = monotonic_ms();
  int64_t first = 0;
  if (g_first_stop_ms.compare_exchange_strong(first, now)) {
    g_signals.stop.store(sig);
    if (g_signals.log_fd.load() >= 0) {  // the rank that writes the log says it once
      const int saved_errno = errno;
      Line line;
      line << "loom: " << signal_name(sig) << ": stopping after this step with a checkpoint"
           << (sig == SIGUSR1 ? "" : " (send it again to stop at once)") << "\n";
      line.write_to(STDERR_FILENO);
      errno = saved_errno;
    }
    return;
  }
  // SIGUSR1 (a scheduler's warning before a time limit) never escalates; nor does the same
  // request delivered twice.
  if (sig == SIGUSR1 || now - first < static_cast<int64_t>(kRepeatWindowS * 1000)) return;
  end_now(sig, " again");
}

void on_end(int sig) { end_now(sig, ""); }

void on_flight(int) { g_flight_signals.fetch_add(1); }

void install(int sig, void (*handler)(int)) {
  struct sigaction current {};
  if (sigaction(sig, nullptr, &current) == 0 && current.sa_handler == SIG_IGN) return;
  struct sigaction action {};
  action.sa_handler = handler;
  action.sa_flags = SA_RESTART;
  sigemptyset(&action.sa_mask);
  sigaction(sig, &action, nullptr);
}

}  // namespace

int64_t monotonic_ms() {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);                                        // async-signal-safe
  return static_cast<int64_t>(now.tv_sec) * 1000 + now.tv_nsec / 1000000 + 1;  // never 0
}

RunSignals& train_signals() { return g_signals; }

std::atomic<int>& flight_signal_count() { return g_flight_signals; }

void train_signals_install() {
  for (int sig : {SIGUSR1, SIGTERM, SIGINT}) install(sig, on_stop);
  for (int sig : {SIGHUP, SIGQUIT}) install(sig, on_end);
  install(SIGUSR2, on_flight);
}

}  // namespace loom
