// The storage policy of a proxy repository (docs/API.md, "Proxy role", --store): what the
// release metadata relayed by the upstream says about an artifact's versions and deltas, and how
// a full artifact is rebuilt from a keyframe through a chain of deltas when the proxy keeps deltas
// instead of full artifacts (--store delta).
//
// Everything here is pure (no I/O): the proxy fetches and verifies the objects.
#ifndef DELTASTREAM_REPO_PROXY_STORE_H_
#define DELTASTREAM_REPO_PROXY_STORE_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace ds::repo {

enum class StorePolicy {
  kBoth,   // Keep what passes through: full artifacts and deltas (the pull-through cache).
  kFull,   // Keep full artifacts; relay deltas without keeping them.
  kDelta,  // Keep deltas and every Nth version in full (keyframes); rebuild the others.
};
// "both", "full", "delta"; kInvalidArgument otherwise.
Result<StorePolicy> ParseStorePolicy(std::string_view s);
const char* StorePolicyName(StorePolicy p);

// The parts of an artifact's signed release metadata ("signed" of the envelope) the proxy uses.
// Not signature-checked here (the proxy pins no key): devices check what they install.
struct SignedRelease {
  struct Version {
    std::string version, sha256;
    uint64_t length = 0;
  };
  struct Delta {
    int64_t id = 0;
    std::string base_sha256, result_sha256, sha256;
    uint64_t length = 0;
  };
  std::string artifact;
  std::vector<Version> versions;  // Ascending, as signed.
  std::vector<Delta> deltas;      // Ready deltas.

  // Index of the version with these bytes, or -1.
  int FindVersion(std::string_view sha256) const;
  // The signed delta whose patch has these bytes, or nullptr.
  const Delta* FindDelta(std::string_view sha256) const;
};
// kProtocol when |envelope| is not metadata with a well-formed "signed" part.
Result<SignedRelease> ParseSignedRelease(std::string_view envelope);

// The cheapest way by signed deltas from the version with bytes |from| to the one with bytes
// |to|: the deltas to apply in order, with the fewest patch bytes in all among paths of at most
// |max_steps| deltas. nullopt when none reaches it.
std::optional<std::vector<SignedRelease::Delta>> CheapestDeltaPath(const SignedRelease& release,
                                                                   std::string_view from,
                                                                   std::string_view to,
                                                                   size_t max_steps);

// Version |index| is a keyframe (kept in full under --store delta): every |every|-th version
// in signed order, starting with the first.
bool IsKeyframe(size_t index, int every);

// How to rebuild version |target| (an index into release.versions): start from the full
// artifact of version |source| and apply |deltas| in order. |source| is the version nearest
// the target, by fewest deltas, that is a keyframe or for which |stored_full| says the proxy has
// the full artifact; only signed deltas between versions at or below the target (in signed
// order) are used. nullopt when no chain reaches the target.
struct RebuildPlan {
  size_t source = 0;
  std::vector<SignedRelease::Delta> deltas;
};
std::optional<RebuildPlan> PlanRebuild(const SignedRelease& release, size_t target,
                                       int keyframe_every,
                                       const std::function<bool(const std::string&)>& stored_full);

}  // namespace ds::repo

#endif  // DELTASTREAM_REPO_PROXY_STORE_H_
