// Package metrics is sim serve's GET /metrics: the server's figures in the
// Prometheus text format, from a private registry (README "Metrics" lists
// every name).
//
// Most figures are read from the live state when Prometheus scrapes
// (nodes from client/fleet, rollouts from client/rollout, torrents from
// the BitTorrent seeder, sessions from the multicast manager, the store's
// index), so nothing is counted twice and nothing drifts from what GET
// /v1/monitor shows. Only what happens and then is gone is counted as it
// happens: HTTP requests (through sync.Server.Observe, by route pattern),
// and the durations of installs and updates (from the fleet's event hub).
//
// The main types: Metrics (Mount puts it on a sync.Server), its
// collector, and Scrape (a scrape read back: tests, bench/monitorload).
// It decides nothing, serves nothing else and pushes nowhere; it keeps
// no history (Prometheus does). ARCHITECTURE.md: "client/metrics".
package metrics
