// The update agent's adaptive chunk controller: how big each chunk request is and how many may be
// outstanding, from measured throughput, round-trip time and the applier's progress.
//
// Pure logic: no I/O, no clocks, no randomness. Every time is a double in seconds on the caller's
// monotonic clock, passed in with each event; the same event sequence always gives the same
// decisions. The algorithm and the reasons for its constants are in docs/PROTOCOL.md, section
// "Agent: adaptive chunk controller".
//
// Typical use by the stream client:
//   StreamController ctl(config);
//   while (bytes remain) {
//     while (outstanding < ctl.InFlightLimit()) send a request of ctl.NextChunkSize(remaining);
//     wait for an event; report it with OnChunkDone / OnChunkFailed / OnApplyProgress.
//   }
//
// Thread-safety: none; one controller per stream, driven from one thread (or under a lock).
#ifndef DELTASTREAM_AGENT_CONTROLLER_H_
#define DELTASTREAM_AGENT_CONTROLLER_H_

#include <cstdint>
#include <deque>
#include <string>

#include "common/status.h"

namespace ds::agent {

struct ControllerConfig {
  // The object's leaf size (from its chunk map). Every chunk but an object's tail is whole leaves.
  uint64_t leaf_size = 64 << 10;
  // Chunk size bounds (rounded to whole leaves by the controller: min up, max down).
  uint64_t min_chunk = 64 << 10;
  uint64_t max_chunk = 16 << 20;
  // Bounds of the network in-flight limit (the backlog rules may still pause at 0).
  int min_in_flight = 1;
  int max_in_flight = 8;
  // Received-but-unapplied bytes the agent may hold. Chunks are also capped at a quarter of it and
  // the bytes in flight at half of it, so that backlog + arrivals stay below it.
  uint64_t max_backlog = 64 << 20;

  // Before the first completed chunk: the chunk size and the in-flight limit to start with.
  uint64_t initial_chunk = 256 << 10;
  int initial_in_flight = 2;
  // Target duration of one chunk on the link: max(rtt_multiple * srtt, min_chunk_seconds),
  // at most max_chunk_seconds. Long enough that a request's RTT is a small overhead, short enough
  // to react to changes and to bound what a failed chunk wastes.
  double rtt_multiple = 8.0;
  double min_chunk_seconds = 0.5;
  double max_chunk_seconds = 4.0;
  // Throughput window: completions of the last max(rate_window_seconds, 2 * target duration),
  // and never fewer than rate_window_min_chunks (nor more than rate_window_max_chunks) of them.
  double rate_window_seconds = 2.0;
  int rate_window_min_chunks = 4;
  int rate_window_max_chunks = 64;
  // RTT: smoothed TTFB (EWMA gain) and a windowed minimum over this many seconds.
  double rtt_gain = 0.125;
  double min_rtt_window_seconds = 10.0;
  // After a failure the chunk size is capped at half; the cap doubles after this many successes.
  int recovery_successes = 4;
  // Applier: time constant of the apply-rate estimate, and the backlog (in seconds of apply work)
  // above which no more requests are sent once the applier is known to be the bottleneck.
  double apply_rate_tau_seconds = 2.0;
  double backlog_high_seconds = 4.0;
  // Low watermark: this many refill latencies (srtt + chunk transfer) of apply work.
  double backlog_low_refills = 2.0;
  // Process CPU use (cores) from OnCpuSample at or above which the device counts as CPU-bound.
  double cpu_busy_cores = 0.9;
  // Backlog waiting with no apply progress for this long means the applier waits for a hole (a
  // failed range being retried): at least one request is then allowed whatever the watermarks.
  double stall_seconds = 1.0;
};

// Checks that |config| is usable: leaf_size a power of two, min <= max chunk, in-flight bounds
// 1 <= min <= max, max_backlog at least 4 minimum chunks, positive time constants.
Status ValidateControllerConfig(const ControllerConfig& config);

struct ChunkSample {  // One completed request.
  uint64_t bytes = 0;
  double start = 0;       // Request sent.
  double first_byte = 0;  // First response byte.
  double end = 0;         // Last byte.
};

class StreamController {
 public:
  // An invalid |config| (see ValidateControllerConfig) is clamped into a usable one.
  explicit StreamController(ControllerConfig config = {});

  // A request completed and its chunk verified.
  void OnChunkDone(const ChunkSample& s);
  // A request failed: timeout, connection reset, or a chunk that failed verification.
  void OnChunkFailed(double now);
  // Applier progress: total bytes consumed so far, and the backlog waiting for it (received and
  // verified but not yet applied, including chunks held because they arrived ahead of order).
  void OnApplyProgress(double now, uint64_t applied_total, uint64_t backlog_bytes);
  // Optional: process CPU seconds used so far (getrusage user + system), a CPU-load signal.
  void OnCpuSample(double now, double cpu_seconds);

  // Size of the next request for a range of |remaining_bytes|: whole leaves in [min, max], or
  // |remaining_bytes| itself when that is smaller (the range's tail). Never more than remaining.
  uint64_t NextChunkSize(uint64_t remaining_bytes) const;
  // How many requests may be outstanding now; 0 = pause (the backlog is too high). When the
  // applier is stalled on a missing range it is at least 1, and the client must spend it on the
  // lowest missing range.
  int InFlightLimit() const;

  double throughput() const { return throughput_; }  // Link delivery rate estimate, bytes/s.
  double rtt() const { return srtt_; }               // Smoothed TTFB, seconds.
  double min_rtt() const { return min_rtt_; }        // Windowed minimum TTFB, seconds.
  double apply_rate() const { return apply_rate_; }  // Applier capacity, bytes/s (0 = unknown).
  double cpu_load() const { return cpu_load_; }      // Process CPU use in cores (-1 = unknown).
  uint64_t chunk_size() const { return chunk_; }     // Current chunk size before the tail rule.
  uint64_t backlog() const { return backlog_; }
  bool applier_stalled() const { return stalled_; }
  int failures() const { return failures_; }
  // Backlog watermarks now (bytes): below low the network limit applies in full; from low to high
  // only enough requests to match the apply rate; at or above high, pause.
  uint64_t backlog_low() const;
  uint64_t backlog_high() const;
  // True when the applier, not the link, limits progress (backlog at or above the low watermark).
  bool applier_bound() const;
  // Short human-readable summary for logs and traces.
  std::string StateLine() const;

 private:
  struct Done {
    double first_byte;
    double end;
    uint64_t bytes;
  };
  struct RttSample {
    double time;
    double rtt;
  };

  double TargetSeconds() const;
  uint64_t RoundChunk(double bytes) const;  // Power-of-two leaves, clamped to the bounds.
  uint64_t ChunkCap() const;                // min(max_chunk, failure cap, max_backlog / 4).
  double RefillSeconds() const;             // srtt + one chunk's transfer time.
  int NetworkLimit() const;
  void UpdateThroughput();
  void Decide(uint64_t completed_bytes);

  ControllerConfig config_;

  // Throughput: recent completions ordered by end time.
  std::deque<Done> done_;
  double throughput_ = 0;
  // RTT.
  std::deque<RttSample> rtt_samples_;
  double srtt_ = 0;
  double min_rtt_ = 0;
  bool have_rtt_ = false;
  // Chunk size and the failure cap.
  uint64_t chunk_;
  uint64_t failure_cap_;
  int successes_since_cap_change_ = 0;
  int failures_ = 0;
  // Applier.
  bool have_apply_ = false;
  double last_apply_time_ = 0;
  uint64_t last_applied_ = 0;
  uint64_t last_backlog_ = 0;
  double apply_bytes_ = 0;  // Time-decayed bytes applied while the applier was busy...
  double apply_time_ = 0;   // ... and the decayed busy time they took.
  double apply_rate_ = 0;
  uint64_t backlog_ = 0;
  double last_progress_time_ = 0;  // When applied_total last moved.
  bool stalled_ = false;
  // CPU.
  bool have_cpu_ = false;
  double last_cpu_time_ = 0;
  double last_cpu_seconds_ = 0;
  double cpu_load_ = -1;
};

}  // namespace ds::agent

#endif  // DELTASTREAM_AGENT_CONTROLLER_H_
