// The agent's adaptive chunk controller (src/agent/controller.h) against a simulated link.
//
// LinkSim is a deterministic discrete-event simulator: the link's bandwidth (piecewise constant)
// is shared equally among the responses that are receiving (processor sharing); every response
// starts one fixed RTT after its request; with a loss rate a request fails part-way with a
// probability that grows with its size (fixed-seed generator) and the client retries its range.
// Verified chunks are applied in object order by an applier with a fixed rate. The simulated
// client does what the agent does: issue the lowest missing range while fewer than
// InFlightLimit() requests are outstanding, each of NextChunkSize(range). Everything runs on
// simulated time; nothing depends on the wall clock.
#include "agent/controller.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <string>
#include <vector>

namespace ds::agent {
namespace {

constexpr uint64_t kKiB = 1 << 10;
constexpr uint64_t kMiB = 1 << 20;
constexpr double kInf = std::numeric_limits<double>::infinity();

double Mbit(double mbit_per_s) { return mbit_per_s * 1e6 / 8; }  // bytes/s

struct LinkPhase {
  double at;    // From this simulated time...
  double rate;  // ... the link carries this many bytes/s.
};

struct SimParams {
  std::vector<LinkPhase> link = {{0, Mbit(50)}};
  double rtt = 0.02;
  double apply_rate = 1e12;  // The applier's capacity, bytes/s.
  uint64_t object_size = 64 * kMiB;
  double loss_per_mib = 0;  // Probability that a request fails, per MiB it carries.
  uint64_t seed = 1;
  double end_time = 1e6;  // Stop here even if the download is not finished.
  double tick = 0.05;     // Applier progress / CPU reports and trace points.
  ControllerConfig config;
};

// One trace point per tick: cumulative counters and the controller's state.
struct TracePoint {
  double t;
  double delivered;  // Bytes the link carried (including those of failed requests).
  double goodput;    // Bytes of chunks completed and verified.
  double capacity;   // Integral of the link rate.
  double applier_idle;
  double estimate;
  uint64_t chunk;
  int limit;
  uint64_t backlog;
};

struct Issued {
  double t;
  uint64_t size;
};

class LinkSim {
 public:
  explicit LinkSim(SimParams p) : p_(std::move(p)), ctl_(p_.config), rng_(p_.seed) {
    pending_[0] = p_.object_size;
  }

  // Runs until the whole object is received (not necessarily applied) or end_time.
  void Run() {
    IssueRequests();
    while (t_ < p_.end_time && !(pending_.empty() && active_.empty())) Step();
  }

  const std::vector<TracePoint>& trace() const { return trace_; }
  const std::vector<Issued>& issued() const { return issued_; }
  const std::vector<std::string>& violations() const { return violations_; }
  const std::vector<std::string>& state_lines() const { return state_lines_; }
  const StreamController& controller() const { return ctl_; }
  bool finished() const { return pending_.empty() && active_.empty(); }
  double now() const { return t_; }
  double first_arrival() const { return first_arrival_; }
  double applier_idle_after_first_arrival() const { return idle_after_first_; }
  uint64_t max_backlog_seen() const { return max_backlog_; }
  int failures() const { return failures_; }
  int min_limit_seen() const { return min_limit_; }

  // Link utilisation (delivered / capacity) between two simulated times, from the trace.
  double Utilisation(double from, double to, bool goodput_only = false) const {
    const TracePoint& a = At(from);
    const TracePoint& b = At(to);
    const double bytes = goodput_only ? b.goodput - a.goodput : b.delivered - a.delivered;
    return bytes / (b.capacity - a.capacity);
  }
  const TracePoint& At(double t) const {
    auto it = std::lower_bound(trace_.begin(), trace_.end(), t,
                               [](const TracePoint& x, double v) { return x.t < v; });
    return it == trace_.end() ? trace_.back() : *it;
  }
  double MedianChunk(double from, double to) const {
    std::vector<uint64_t> sizes;
    for (const Issued& i : issued_) {
      if (i.t >= from && i.t < to) sizes.push_back(i.size);
    }
    if (sizes.empty()) return 0;
    std::nth_element(sizes.begin(), sizes.begin() + sizes.size() / 2, sizes.end());
    return static_cast<double>(sizes[sizes.size() / 2]);
  }

 private:
  struct Request {
    uint64_t offset, size;
    double start, first_byte;
    double delivered = 0;
    double stop_at;  // Bytes after which it ends: size, or the failure point.
    bool fails;
  };

  double Rate(double t) const {
    double r = p_.link.front().rate;
    for (const LinkPhase& ph : p_.link) {
      if (ph.at <= t) r = ph.rate;
    }
    return r;
  }
  double NextPhaseChange() const {
    for (const LinkPhase& ph : p_.link) {
      if (ph.at > t_) return ph.at;
    }
    return kInf;
  }
  double Uniform() {  // splitmix64, in [0, 1).
    uint64_t z = (rng_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return static_cast<double>(z >> 11) * 0x1p-53;
  }
  uint64_t Applicable() const { return contiguous_ - static_cast<uint64_t>(applied_); }
  uint64_t Backlog() const { return received_ - static_cast<uint64_t>(applied_); }

  void Step() {
    const double rate = Rate(t_);
    int receiving = 0;
    for (const Request& r : active_) receiving += r.first_byte <= t_ ? 1 : 0;
    const double share = receiving > 0 ? rate / receiving : 0;
    double next = std::min({p_.end_time, NextPhaseChange(), next_tick_});
    for (const Request& r : active_) {
      if (r.first_byte > t_) {
        next = std::min(next, r.first_byte);
      } else {
        next = std::min(next, t_ + (r.stop_at - r.delivered) / share);
      }
    }
    const double dt = std::max(0.0, next - t_);
    // Advance the link and the applier.
    for (Request& r : active_) {
      if (r.first_byte <= t_) r.delivered = std::min(r.stop_at, r.delivered + share * dt);
    }
    if (receiving > 0) delivered_ += rate * dt;
    capacity_ += rate * dt;
    const double can = p_.apply_rate * dt;
    const double have = static_cast<double>(Applicable());
    if (have < can && first_arrival_ >= 0) idle_after_first_ += dt - have / p_.apply_rate;
    applied_ += std::min(have, can);
    t_ = next;

    // Completions and failures (a tolerance absorbs rounding of the shares).
    bool changed = false;
    for (size_t i = 0; i < active_.size();) {
      Request& r = active_[i];
      if (r.first_byte <= t_ && r.delivered >= r.stop_at - 1e-6 * std::max(1.0, r.stop_at)) {
        if (r.fails) {
          ++failures_;
          ctl_.OnChunkFailed(t_);
          pending_[r.offset] = r.offset + r.size;
        } else {
          goodput_ += static_cast<double>(r.size);
          ctl_.OnChunkDone({r.size, r.start, r.first_byte, t_});
          Receive(r.offset, r.size);
        }
        active_.erase(active_.begin() + static_cast<std::ptrdiff_t>(i));
        changed = true;
      } else {
        ++i;
      }
    }
    const bool tick = t_ >= next_tick_;
    if (changed || tick) {
      ctl_.OnApplyProgress(t_, static_cast<uint64_t>(applied_), Backlog());
      max_backlog_ = std::max(max_backlog_, Backlog());
    }
    if (tick) {
      if (p_.apply_rate < 1e11) ctl_.OnCpuSample(t_, applied_ / p_.apply_rate);
      trace_.push_back({t_, delivered_, goodput_, capacity_, idle_after_first_, ctl_.throughput(),
                        ctl_.chunk_size(), ctl_.InFlightLimit(), Backlog()});
      if (trace_.size() % 20 == 0) state_lines_.push_back(ctl_.StateLine());
      next_tick_ += p_.tick;
    }
    IssueRequests();
  }

  void Receive(uint64_t offset, uint64_t size) {
    if (first_arrival_ < 0) first_arrival_ = t_;
    received_ += size;
    held_[offset] = size;
    for (auto it = held_.find(contiguous_); it != held_.end(); it = held_.find(contiguous_)) {
      contiguous_ += it->second;
      held_.erase(it);
    }
  }

  void IssueRequests() {
    for (;;) {
      const int limit = ctl_.InFlightLimit();
      min_limit_ = std::min(min_limit_, limit);
      if (pending_.empty() || static_cast<int>(active_.size()) >= limit) return;
      auto it = pending_.begin();
      const uint64_t offset = it->first, end = it->second, range = end - offset;
      const uint64_t size = ctl_.NextChunkSize(range);
      Check(offset, size, range);
      if (size == 0 || size > range) return;
      pending_.erase(it);
      if (size < range) pending_[offset + size] = end;
      Request r{offset, size, t_, t_ + p_.rtt, 0, static_cast<double>(size), false};
      const double p_fail = 1 - std::pow(1 - p_.loss_per_mib, static_cast<double>(size) / kMiB);
      if (Uniform() < p_fail) {
        r.fails = true;
        r.stop_at = static_cast<double>(size) * Uniform();
      }
      active_.push_back(r);
      issued_.push_back({t_, size});
    }
  }

  // The chunk rules: whole leaves within [min, max] (except an object's tail or a range's
  // remainder below min), never more than the range.
  void Check(uint64_t offset, uint64_t size, uint64_t range) {
    const ControllerConfig& c = p_.config;
    std::string bad;
    if (size == 0) bad = "zero";
    if (size > range) bad = "exceeds remaining";
    if (size > c.max_chunk) bad = "above max";
    if (size < c.min_chunk && size != range) bad = "below min";
    if (size % c.leaf_size != 0 && offset + size != p_.object_size) bad = "not whole leaves";
    if (!bad.empty()) {
      violations_.push_back(bad + ": size " + std::to_string(size) + " at " +
                            std::to_string(offset) + " range " + std::to_string(range));
    }
  }

  SimParams p_;
  StreamController ctl_;
  uint64_t rng_;
  double t_ = 0;
  double next_tick_ = 0;
  std::map<uint64_t, uint64_t> pending_;  // Missing ranges: offset -> end.
  std::vector<Request> active_;
  std::map<uint64_t, uint64_t> held_;  // Received ahead of order: offset -> size.
  uint64_t contiguous_ = 0;            // Received prefix.
  uint64_t received_ = 0;
  double applied_ = 0;
  double delivered_ = 0, goodput_ = 0, capacity_ = 0;
  double first_arrival_ = -1;
  double idle_after_first_ = 0;
  uint64_t max_backlog_ = 0;
  int failures_ = 0;
  int min_limit_ = std::numeric_limits<int>::max();
  std::vector<TracePoint> trace_;
  std::vector<Issued> issued_;
  std::vector<std::string> violations_;
  std::vector<std::string> state_lines_;
};

std::string Violations(const LinkSim& sim) {
  std::string out;
  for (size_t i = 0; i < sim.violations().size() && i < 5; ++i) out += sim.violations()[i] + "\n";
  return out;
}

// With DS_CTL_TRACE set in the environment, prints the run's state lines and a summary.
void MaybeDump(const LinkSim& sim) {
  if (std::getenv("DS_CTL_TRACE") == nullptr) return;
  for (const std::string& line : sim.state_lines()) std::printf("  %s\n", line.c_str());
  std::printf(
      "  end t=%.2f finished=%d util=%.3f goodput=%.3f max_backlog=%.2fMiB idle=%.4f "
      "failures=%d requests=%zu\n",
      sim.now(), sim.finished(), sim.Utilisation(0, sim.now()), sim.Utilisation(0, sim.now(), true),
      sim.max_backlog_seen() / static_cast<double>(kMiB), sim.applier_idle_after_first_arrival(),
      sim.failures(), sim.issued().size());
}

// Asserts the estimate stays within +-|tol| of |truth| at every trace point in [from, to].
void ExpectEstimateWithin(const LinkSim& sim, double from, double to, double truth, double tol) {
  for (const TracePoint& tp : sim.trace()) {
    if (tp.t < from || tp.t > to) continue;
    ASSERT_NEAR(tp.estimate / truth, 1.0, tol)
        << "at t=" << tp.t << " estimate " << tp.estimate << " true " << truth;
  }
}

// ---- Configuration and chunk-size rules (no simulation) ----

TEST(ControllerConfigTest, ValidatesConfig) {
  EXPECT_TRUE(ValidateControllerConfig({}).ok());
  ControllerConfig c;
  c.leaf_size = 3000;
  EXPECT_FALSE(ValidateControllerConfig(c).ok());
  c = {};
  c.min_chunk = 32 * kMiB;
  EXPECT_FALSE(ValidateControllerConfig(c).ok());
  c = {};
  c.min_in_flight = 0;
  EXPECT_FALSE(ValidateControllerConfig(c).ok());
  c = {};
  c.max_backlog = 128 * kKiB;
  EXPECT_FALSE(ValidateControllerConfig(c).ok());
  c = {};
  c.rtt_gain = 0;
  EXPECT_FALSE(ValidateControllerConfig(c).ok());
}

TEST(ControllerTest, StartsWithInitialChunkAndNeverExceedsRemaining) {
  StreamController ctl;
  EXPECT_EQ(ctl.NextChunkSize(uint64_t{10} << 30), 256 * kKiB);
  EXPECT_EQ(ctl.NextChunkSize(1000), 1000u);
  EXPECT_EQ(ctl.NextChunkSize(0), 0u);
  EXPECT_EQ(ctl.InFlightLimit(), 2);
}

TEST(ControllerTest, OddBoundsAreRoundedToWholeLeaves) {
  ControllerConfig c;
  c.leaf_size = 4 * kKiB;
  c.min_chunk = 100000;        // Not a leaf multiple: rounded up to 25 leaves.
  c.max_chunk = 3 * kMiB + 5;  // Rounded down to 768 leaves.
  StreamController ctl(c);
  double t = 0;
  for (int i = 0; i < 40; ++i) {  // A fast link: the chunk grows to the maximum.
    const uint64_t size = ctl.NextChunkSize(uint64_t{1} << 40);
    ASSERT_EQ(size % c.leaf_size, 0u) << size;
    ASSERT_GE(size, 25 * c.leaf_size);
    ASSERT_LE(size, 768 * c.leaf_size);
    ctl.OnChunkDone({size, t, t + 0.01, t + 0.01 + static_cast<double>(size) / 1e9});
    t += 0.5;
  }
  EXPECT_EQ(ctl.NextChunkSize(uint64_t{1} << 40), 768 * c.leaf_size);
  for (int i = 0; i < 12; ++i) ctl.OnChunkFailed(t);  // Shrinks to the minimum, not below.
  EXPECT_EQ(ctl.NextChunkSize(uint64_t{1} << 40), 25 * c.leaf_size);
}

// Completes chunks back to back on a link of |rate| bytes/s with |rtt| until the chunk size is
// stable; returns it.
uint64_t Settle(StreamController* ctl, double* t, double rate, double rtt, int chunks) {
  for (int i = 0; i < chunks; ++i) {
    const uint64_t size = ctl->NextChunkSize(uint64_t{1} << 40);
    const double fb = *t + rtt;
    const double end = fb + static_cast<double>(size) / rate;
    ctl->OnChunkDone({size, *t, fb, end});
    *t = end;
  }
  return ctl->NextChunkSize(uint64_t{1} << 40);
}

TEST(ControllerTest, FailuresHalveTheChunkAndSuccessesGrowItBack) {
  StreamController ctl;
  double t = 0;
  const double rate = Mbit(50);
  const uint64_t steady = Settle(&ctl, &t, rate, 0.02, 30);
  // 0.5 s of 6.25 MB/s rounded down to a power of two of leaves.
  EXPECT_EQ(steady, 2 * kMiB);
  EXPECT_NEAR(ctl.throughput() / rate, 1.0, 0.02);
  EXPECT_NEAR(ctl.rtt(), 0.02, 1e-9);

  ctl.OnChunkFailed(t);
  EXPECT_EQ(ctl.NextChunkSize(uint64_t{1} << 40), steady / 2);
  ctl.OnChunkFailed(t);
  EXPECT_EQ(ctl.NextChunkSize(uint64_t{1} << 40), steady / 4);
  ctl.OnChunkFailed(t);
  EXPECT_EQ(ctl.NextChunkSize(uint64_t{1} << 40), steady / 8);
  EXPECT_EQ(ctl.failures(), 3);

  // Recovery: never shrinks while succeeding, back to the steady size after 4 successes per
  // doubling (3 doublings).
  uint64_t prev = steady / 8;
  int n = 0;
  while (ctl.NextChunkSize(uint64_t{1} << 40) < steady) {
    ASSERT_LT(++n, 100) << ctl.StateLine();
    Settle(&ctl, &t, rate, 0.02, 1);
    const uint64_t now = ctl.NextChunkSize(uint64_t{1} << 40);
    ASSERT_GE(now, prev);
    prev = now;
  }
  EXPECT_EQ(n, 12);
  EXPECT_EQ(Settle(&ctl, &t, rate, 0.02, 10), steady);
}

TEST(ControllerTest, BacklogPausesButAHoleIsAlwaysFilled) {
  StreamController ctl;
  double t = 0;
  Settle(&ctl, &t, Mbit(50), 0.02, 30);
  ASSERT_EQ(ctl.InFlightLimit(), 2);
  // Apply rate unknown: only the hard allowance pauses.
  ctl.OnApplyProgress(t, 0, 63 * kMiB);
  EXPECT_EQ(ctl.InFlightLimit(), 0);
  ctl.OnApplyProgress(t, 0, 0);
  EXPECT_EQ(ctl.InFlightLimit(), 2);
  // An applier at 1 MB/s with a growing backlog: full speed below the low watermark, one request
  // between the watermarks, pause above the high one.
  uint64_t applied = 0;
  for (int i = 1; i <= 20; ++i) {
    applied += 100000;
    ctl.OnApplyProgress(t + 0.1 * i, applied, static_cast<uint64_t>(i) * 500 * kKiB);
  }
  t += 2;
  EXPECT_NEAR(ctl.apply_rate(), 1e6, 1);
  const uint64_t low = ctl.backlog_low(), high = ctl.backlog_high();
  // Low: two chunks (more than 2 refills of apply work); high: two chunks more (more than 4 s).
  EXPECT_EQ(low, 4 * kMiB);
  EXPECT_EQ(high, 8 * kMiB);
  ctl.OnApplyProgress(t += 0.1, applied += 100000, low - 1);
  EXPECT_EQ(ctl.InFlightLimit(), 2);
  EXPECT_FALSE(ctl.applier_bound());
  ctl.OnApplyProgress(t += 0.1, applied += 100000, low);
  EXPECT_EQ(ctl.InFlightLimit(), 1);
  EXPECT_TRUE(ctl.applier_bound());
  ctl.OnApplyProgress(t += 0.1, applied += 100000, high);
  EXPECT_EQ(ctl.InFlightLimit(), 0);
  // The applier stops moving with a backlog: it waits for a missing range (all it holds is ahead
  // of it), so one request is allowed whatever the watermarks.
  ctl.OnApplyProgress(t += 0.5, applied, high);
  EXPECT_EQ(ctl.InFlightLimit(), 0);
  ctl.OnApplyProgress(t += 0.6, applied, high);
  EXPECT_TRUE(ctl.applier_stalled());
  EXPECT_GE(ctl.InFlightLimit(), 1);
  ctl.OnApplyProgress(t += 0.1, applied += 100000, high);
  EXPECT_FALSE(ctl.applier_stalled());
  EXPECT_EQ(ctl.InFlightLimit(), 0);
}

TEST(ControllerTest, ChunkTracksThroughputTimesTargetDuration) {
  StreamController ctl;
  double t = 0;
  // 2 Mbit/s: 0.5 s is 125 KB, rounded down to one leaf.
  EXPECT_EQ(Settle(&ctl, &t, Mbit(2), 0.02, 30), 64 * kKiB);
  // 400 Mbit/s with 200 ms RTT: 8 x RTT = 1.6 s is 80 MB, capped at max_backlog / 4 = 16 MiB.
  EXPECT_EQ(Settle(&ctl, &t, Mbit(400), 0.2, 60), 16 * kMiB);
  // Growth is at most x2 per completed chunk: from 64 KiB, 16 MiB takes >= 8 chunks.
  StreamController fresh;
  double t2 = 0;
  Settle(&fresh, &t2, Mbit(2), 0.02, 30);
  int steps = 0;
  while (fresh.NextChunkSize(uint64_t{1} << 40) < 16 * kMiB) {
    const uint64_t before = fresh.NextChunkSize(uint64_t{1} << 40);
    Settle(&fresh, &t2, Mbit(400), 0.2, 1);
    ASSERT_LE(fresh.NextChunkSize(uint64_t{1} << 40), 2 * before);
    ASSERT_LT(++steps, 100);
  }
  EXPECT_GE(steps, 8);
}

// ---- Simulated link ----

TEST(ControllerSimTest, ConvergesAfterBandwidthStepDown) {
  SimParams p;
  p.link = {{0, Mbit(50)}, {20, Mbit(5)}};
  p.object_size = uint64_t{4} << 30;  // Does not finish: we watch the controller.
  p.end_time = 60;
  LinkSim sim(p);
  sim.Run();
  MaybeDump(sim);
  EXPECT_TRUE(sim.violations().empty()) << Violations(sim);
  // Before the step.
  ExpectEstimateWithin(sim, 5, 20, Mbit(50), 0.25);
  EXPECT_GE(sim.Utilisation(5, 20), 0.85);
  // Within 15 s of the step (the chunks in flight at the step alone take ~7 s at the new rate).
  ExpectEstimateWithin(sim, 35, 60, Mbit(5), 0.25);
  EXPECT_GE(sim.Utilisation(35, 60), 0.85);
  EXPECT_LT(sim.MedianChunk(35, 60), sim.MedianChunk(10, 20) / 4);
}

TEST(ControllerSimTest, ConvergesAfterBandwidthStepUp) {
  SimParams p;
  p.link = {{0, Mbit(2)}, {20, Mbit(50)}};
  p.object_size = uint64_t{4} << 30;
  p.end_time = 45;
  LinkSim sim(p);
  sim.Run();
  MaybeDump(sim);
  EXPECT_TRUE(sim.violations().empty()) << Violations(sim);
  ExpectEstimateWithin(sim, 5, 20, Mbit(2), 0.25);
  EXPECT_GE(sim.Utilisation(5, 20), 0.85);
  ExpectEstimateWithin(sim, 25, 45, Mbit(50), 0.25);
  EXPECT_GE(sim.Utilisation(25, 45), 0.85);
  EXPECT_GT(sim.MedianChunk(25, 45), 8 * sim.MedianChunk(10, 20));
}

TEST(ControllerSimTest, HighRttInFlightCoversBandwidthDelayProduct) {
  SimParams p;
  p.rtt = 0.2;
  p.object_size = uint64_t{4} << 30;
  p.end_time = 40;
  LinkSim sim(p);
  sim.Run();
  MaybeDump(sim);
  EXPECT_TRUE(sim.violations().empty()) << Violations(sim);
  EXPECT_GE(sim.Utilisation(10, 40), 0.85);
  const StreamController& ctl = sim.controller();
  EXPECT_NEAR(ctl.rtt(), 0.2, 1e-9);
  const double bdp = Mbit(50) * 0.2;
  EXPECT_GE(static_cast<double>(ctl.InFlightLimit() - 1) * ctl.chunk_size(), bdp)
      << ctl.StateLine();
}

// The simulator's metric can fail: one small request at a time on the same link leaves it idle
// most of the time.
TEST(ControllerSimTest, NaivePolicyFailsUtilisation) {
  SimParams p;
  p.rtt = 0.2;
  p.object_size = uint64_t{4} << 30;
  p.end_time = 20;
  p.config.max_chunk = 64 * kKiB;
  p.config.initial_chunk = 64 * kKiB;
  p.config.max_in_flight = 1;
  p.config.initial_in_flight = 1;
  LinkSim sim(p);
  sim.Run();
  MaybeDump(sim);
  EXPECT_LT(sim.Utilisation(5, 20), 0.1);
}

TEST(ControllerSimTest, CpuBoundApplierNeverStarvesAndBacklogStaysBounded) {
  for (uint64_t max_backlog : {64 * kMiB, 8 * kMiB}) {
    SCOPED_TRACE("max_backlog " + std::to_string(max_backlog));
    SimParams p;
    p.apply_rate = 2e6;
    p.object_size = 160 * kMiB;
    p.config.max_backlog = max_backlog;
    LinkSim sim(p);
    sim.Run();
    MaybeDump(sim);
    ASSERT_TRUE(sim.finished());
    EXPECT_TRUE(sim.violations().empty()) << Violations(sim);
    EXPECT_LE(sim.applier_idle_after_first_arrival(), 1e-6)
        << "first arrival at " << sim.first_arrival();
    EXPECT_LE(sim.max_backlog_seen(), max_backlog);
    // And near the high watermark (4 s of apply work here), not at the hard allowance.
    uint64_t largest = 0;
    for (const Issued& i : sim.issued()) largest = std::max(largest, i.size);
    EXPECT_LE(sim.max_backlog_seen(), sim.controller().backlog_high() + 2 * largest);
    EXPECT_EQ(sim.min_limit_seen(), 0);  // It did pause.
    // The download took about as long as applying (the applier is the bottleneck) minus what
    // is left in the backlog at the end.
    EXPECT_GT(sim.now(), (160 * kMiB - max_backlog) / 2e6);
    const StreamController& ctl = sim.controller();
    EXPECT_NEAR(ctl.apply_rate() / 2e6, 1.0, 0.05) << ctl.StateLine();
    EXPECT_NEAR(ctl.cpu_load(), 1.0, 0.05) << ctl.StateLine();
    EXPECT_TRUE(ctl.applier_bound()) << ctl.StateLine();
  }
}

TEST(ControllerSimTest, LinkBoundBacklogStaysSmall) {
  SimParams p;
  p.apply_rate = 50e6;
  p.object_size = 200 * kMiB;
  LinkSim sim(p);
  sim.Run();
  MaybeDump(sim);
  ASSERT_TRUE(sim.finished());
  EXPECT_TRUE(sim.violations().empty()) << Violations(sim);
  uint64_t largest = 0;
  for (const Issued& i : sim.issued()) largest = std::max(largest, i.size);
  EXPECT_LE(sim.max_backlog_seen(), 2 * largest);
  EXPECT_GE(sim.min_limit_seen(), 1);  // Never paused.
  EXPECT_FALSE(sim.controller().applier_bound()) << sim.controller().StateLine();
  // 200 MiB at 6.25 MB/s is 33.6 s.
  EXPECT_LT(sim.now(), 33.6 / 0.85);
}

TEST(ControllerSimTest, LossWithRetriesCompletes) {
  SimParams p;
  p.rtt = 0.05;
  p.loss_per_mib = 0.05;
  p.object_size = 200 * kMiB + 12345;  // A short last leaf.
  p.seed = 7;
  LinkSim sim(p);
  sim.Run();
  MaybeDump(sim);
  ASSERT_TRUE(sim.finished());
  EXPECT_TRUE(sim.violations().empty()) << Violations(sim);
  EXPECT_GE(sim.failures(), 5);
  EXPECT_EQ(sim.controller().failures(), sim.failures());
  EXPECT_GE(sim.Utilisation(0, sim.now(), /*goodput_only=*/true), 0.75);
}

TEST(ControllerSimTest, LossWhileCpuBoundDoesNotDeadlockOnHoles) {
  SimParams p;
  p.loss_per_mib = 0.1;
  p.apply_rate = 2e6;
  p.object_size = 96 * kMiB;
  p.config.max_backlog = 16 * kMiB;
  p.seed = 3;
  LinkSim sim(p);
  sim.Run();
  MaybeDump(sim);
  ASSERT_TRUE(sim.finished()) << sim.controller().StateLine();
  EXPECT_TRUE(sim.violations().empty()) << Violations(sim);
  EXPECT_GE(sim.failures(), 3);
  EXPECT_LE(sim.max_backlog_seen(), p.config.max_backlog + p.config.max_backlog / 4);
  // The applier waits at most for retries of lost ranges.
  EXPECT_LE(sim.applier_idle_after_first_arrival(), 0.05 * sim.now());
}

TEST(ControllerSimTest, Deterministic) {
  SimParams p;
  p.loss_per_mib = 0.05;
  p.apply_rate = 4e6;
  p.object_size = 48 * kMiB;
  LinkSim a(p), b(p);
  a.Run();
  b.Run();
  EXPECT_EQ(a.state_lines(), b.state_lines());
  ASSERT_FALSE(a.state_lines().empty());
  EXPECT_NE(a.state_lines().back().find("thr="), std::string::npos);
}

}  // namespace
}  // namespace ds::agent
