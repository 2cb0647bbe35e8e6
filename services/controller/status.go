package controller

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/plinth-os/plinth/host"
)

// Status is GET /v1/status: the raft view of the controller answering.
type Status struct {
	// ID is the node ID of the controller answering.
	ID        string `json:"id"`
	ClusterID string `json:"cluster_id"`
	// State is leader, follower, candidate or shutdown.
	State  string `json:"state"`
	Leader string `json:"leader"` // node ID; empty without a leader
	// LeaderAPI is the leader's controller API address.
	LeaderAPI    string  `json:"leader_api,omitempty"`
	Term         uint64  `json:"term"`
	CommitIndex  uint64  `json:"commit_index"`
	AppliedIndex uint64  `json:"applied_index"`
	LastIndex    uint64  `json:"last_index"`
	Voters       []Voter `json:"voters"`
}

// Voter is one server of the raft configuration and its health.
type Voter struct {
	ID       string `json:"id"`
	Hostname string `json:"hostname,omitempty"`
	// Suffrage is voter or nonvoter.
	Suffrage string `json:"suffrage"`
	// Serf is the host's membership status (alive, failed, left…).
	Serf string `json:"serf"`
	API  string `json:"api,omitempty"`
	// State and AppliedIndex are what the voter answered, when asked.
	State        string `json:"state,omitempty"`
	AppliedIndex uint64 `json:"applied_index,omitempty"`
	Healthy      bool   `json:"healthy"`
	Error        string `json:"error,omitempty"`
}

// Healthy reports whether s has a leader and every voter answers.
func (s Status) Healthy() bool {
	if s.Leader == "" {
		return false
	}
	for _, v := range s.Voters {
		if !v.Healthy {
			return false
		}
	}
	return true
}

func (c *Controller) localStatus() Status {
	_, leader := c.raft.LeaderWithID()
	st := Status{
		ID: c.id, ClusterID: c.clusterID, State: stateName(c.raft.State()), Leader: string(leader),
		CommitIndex: c.raft.CommitIndex(), AppliedIndex: c.raft.AppliedIndex(), LastIndex: c.raft.LastIndex(),
		Voters: []Voter{},
	}
	st.Term, _ = strconv.ParseUint(c.raft.Stats()["term"], 10, 64)
	if leader != "" {
		st.LeaderAPI, _ = c.members.apiAddr(string(leader))
	}
	if f := c.raft.GetConfiguration(); f.Error() == nil {
		for _, s := range f.Configuration().Servers {
			v := Voter{ID: string(s.ID), Suffrage: "voter", Serf: "unknown"}
			if s.Suffrage != raft.Voter {
				v.Suffrage = "nonvoter"
			}
			if mb, ok := c.members.get(v.ID); ok {
				v.Hostname, v.Serf = mb.Hostname, mb.Status
				v.API, _ = c.members.apiAddr(v.ID)
			}
			st.Voters = append(st.Voters, v)
		}
	}
	slices.SortFunc(st.Voters, func(a, b Voter) int { return strings.Compare(a.ID, b.ID) })
	return st
}

// stateName is raft's name of s in lower case: leader, follower,
// candidate or shutdown.
func stateName(s raft.RaftState) string { return strings.ToLower(s.String()) }

// serveStatus answers the local view; unless ?local=true it also asks
// every voter for its own (1 s each, in parallel) to report its health.
func (c *Controller) serveStatus(w http.ResponseWriter, r *http.Request) {
	st := c.localStatus()
	if r.URL.Query().Get("local") == "true" {
		writeJSON(w, http.StatusOK, st)
		return
	}
	var wg sync.WaitGroup
	for i := range st.Voters {
		v := &st.Voters[i]
		if v.ID == c.id {
			v.State, v.AppliedIndex, v.Healthy = st.State, st.AppliedIndex, st.Leader != ""
			continue
		}
		if v.API == "" {
			v.Error = "host not known to Serf here"
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(r.Context(), time.Second)
			defer cancel()
			peer, err := c.peer(v.API).localStatus(ctx)
			if err != nil {
				v.Error = err.Error()
				return
			}
			v.State, v.AppliedIndex = peer.State, peer.AppliedIndex
			v.Healthy = peer.Leader != "" && peer.Leader == st.Leader
			if !v.Healthy {
				v.Error = fmt.Sprintf("sees leader %q", peer.Leader)
			}
		}()
	}
	wg.Wait()
	writeJSON(w, http.StatusOK, st)
}

// voterRequest is the body of POST /v1/voters.
type voterRequest struct {
	ID string `json:"id"`
}

func (c *Controller) serveAddVoter(w http.ResponseWriter, r *http.Request) {
	var req voterRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, 0, err)
		return
	}
	mb, ok := c.members.get(req.ID)
	switch {
	case !ok:
		writeError(w, 0, fmt.Errorf("%w: host %q is not a member (see plinth members)", ErrNotFound, req.ID))
		return
	case !hasRole(mb, RoleController):
		writeError(w, 0, fmt.Errorf("%w: host %s (%s) has no %q role: a voter that runs no controller would only weaken the quorum", ErrInvalid, mb.ID, mb.Hostname, RoleController))
		return
	case mb.Status != host.StatusAlive:
		writeError(w, 0, fmt.Errorf("%w: host %s (%s) is %s; add it once it is alive", ErrInvalid, mb.ID, mb.Hostname, mb.Status))
		return
	}
	if err := c.addVoter(req.ID); err != nil {
		writeError(w, 0, fmt.Errorf("add voter %s: %w", req.ID, err))
		return
	}
	c.log.Info("added voter", "node", req.ID)
	writeJSON(w, http.StatusOK, c.localStatus())
}

func (c *Controller) serveRemoveVoter(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	f := c.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		writeError(w, 0, err)
		return
	}
	found := false
	for _, s := range f.Configuration().Servers {
		found = found || string(s.ID) == id
	}
	if !found {
		writeError(w, 0, fmt.Errorf("%w: %s is not a voter", ErrNotFound, id))
		return
	}
	if len(f.Configuration().Servers) == 1 {
		writeError(w, http.StatusConflict, errors.New("it is the last voter: removing it would leave no controller"))
		return
	}
	if err := c.raft.RemoveServer(raft.ServerID(id), 0, c.cfg.ApplyTimeout).Error(); err != nil {
		writeError(w, 0, fmt.Errorf("remove voter %s: %w", id, err))
		return
	}
	c.log.Info("removed voter", "node", id)
	writeJSON(w, http.StatusOK, c.localStatus())
}
