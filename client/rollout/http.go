package rollout

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	simsync "github.com/systemimager/sim/sync"
)

// Mount serves the admin actions on rollouts over HTTP, for the fleet
// page (and anyone with an admin token), the same Engine methods `sim
// rollout pause|resume|abort` call through the server's socket:
//
//	POST /v1/rollouts/{id}/pause
//	POST /v1/rollouts/{id}/resume
//	POST /v1/rollouts/{id}/abort[?revert=true]
//
// Each answers the rollout as it is after the change (JSON, as
// <store>/rollouts/ID.json), or {"error": "..."} naming the rollout: 400
// for a malformed id or revert, 404 for an unknown rollout, 409 when its
// state does not allow the action (a done rollout cannot be paused).
func (e *Engine) Mount(srv *simsync.Server) {
	for _, verb := range []string{"pause", "resume", "abort"} {
		srv.HandleRole("POST /v1/rollouts/{id}/"+verb, simsync.RoleAdmin, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			e.serveAction(w, r, verb)
		}))
	}
}

func (e *Engine) serveAction(w http.ResponseWriter, r *http.Request, verb string) {
	id := r.PathValue("id")
	if err := CheckID(id); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		return
	}
	var (
		ro  *Rollout
		err error
	)
	switch verb {
	case "pause":
		ro, err = e.Pause(id)
	case "resume":
		ro, err = e.Resume(id)
	case "abort":
		revert := false
		if s := r.URL.Query().Get("revert"); s != "" {
			if revert, err = strconv.ParseBool(s); err != nil {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": "abort " + id + ": revert=" + strconv.Quote(s) + ": want true or false"})
				return
			}
		}
		ro, err = e.Abort(id, revert)
	}
	switch {
	case errors.Is(err, ErrNoRollout):
		writeJSON(w, http.StatusNotFound, map[string]string{"error": err.Error()})
	case err != nil:
		// The engine's refusals say the rollout and its state ("rollout
		// r3 is done: nothing to abort ...").
		writeJSON(w, http.StatusConflict, map[string]string{"error": err.Error()})
	default:
		writeJSON(w, http.StatusOK, ro)
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}
