//! End to end: stock Envoy in network-namespace pods driven by meshd (traffic, security,
//! telemetry, the CA, the demo, the dashboard in Chromium). One test binary instead of one per
//! file: one link and one file on disk (CI's disk is shared and small); tests from different
//! modules run side by side as tests of one module always did (every mesh is named
//! `<name><pid>n<seq>`).
mod authz_support;
mod browser_support;
mod skeleton_support;
mod telemetry_support;
mod traffic_support;

mod admin_access;
mod authz_custom;
mod authz_semantics;
mod authz_table;
mod authz_voicecore;
mod ca;
mod capture_rules;
mod control_plane_down;
mod dashboard_browser;
mod demo;
mod envoy_stats;
mod locality_failover;
mod mtls_modes;
mod netns;
mod telemetry;
mod telemetry_api;
mod telemetry_prometheus;
mod traffic_dr_merge;
mod traffic_dr_selector;
mod traffic_envoyfilter;
mod traffic_envoyfilter_lua;
mod traffic_gateway;
mod traffic_jwt;
mod traffic_l4;
mod traffic_observability;
mod traffic_policy;
mod traffic_resilience;
mod traffic_routing;
mod traffic_sidecar;
mod traffic_slow_start;
mod traffic_voicecore;
mod walking_skeleton;
