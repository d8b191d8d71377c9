// Package fleet is the image server's live view of its nodes (ARCHITECTURE.md
// "Fleet"): one NodeState per node, fed by the install protocol's status
// reports (install.Service.OnStatus) and by the nodes' agents (the agent
// protocol: GET /v1/agent/orders, POST /v1/agent/report and
// /v1/agent/result), persisted in the store directory (fleet.json) so `sim
// nodes` works without a server; the orders the server gives nodes (one
// outstanding per node, held until the node answers); and a Hub of events,
// one per change of a node or a rollout, for whoever watches (sim rollout
// status --watch, sim nodes --watch, a web monitor, metrics).
//
// It does not decide what nodes do (client/rollout does), nor what a node
// does with an order (client/agent, client/node).
package fleet
