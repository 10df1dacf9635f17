// The dashboard's static files (web/dashboard/), compiled into the binary by
// src/deploy/embed_assets.cmake at build time, so that `deltastream serve` is self-contained.
#ifndef DELTASTREAM_DEPLOY_DASHBOARD_ASSETS_H_
#define DELTASTREAM_DEPLOY_DASHBOARD_ASSETS_H_

#include <cstddef>

namespace ds::deploy {

struct DashboardAsset {
  const char* name;          // File name, e.g. "index.html".
  const char* content_type;  // e.g. "text/html; charset=utf-8".
  const unsigned char* data;
  size_t size;
};

extern const DashboardAsset kDashboardAssets[];
extern const size_t kDashboardAssetCount;

}  // namespace ds::deploy

#endif  // DELTASTREAM_DEPLOY_DASHBOARD_ASSETS_H_
