package controller

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/plinth-os/plinth/host/bundle"
	"github.com/plinth-os/plinth/internal/testwait"
)

func TestColdRestartKeepsStateAndElects(t *testing.T) {
	c := newTestCluster(t, 3)
	c.leader(20 * time.Second)
	cl := c.client()
	var last Setting
	for i := range 20 {
		s, err := cl.PutSetting(testwait.Ctx(t, 5*time.Second), fmt.Sprintf("k%02d", i), fmt.Sprint(i), nil)
		if err != nil {
			t.Fatal(err)
		}
		last = s
	}
	for _, n := range c.nodes {
		c.stopController(n)
	}
	for _, n := range c.nodes {
		c.startController(n)
	}
	c.leader(20 * time.Second)
	settings, _, err := c.client().Settings(testwait.Ctx(t, 10*time.Second), QueryOptions{Index: last.ModifyIndex - 1, Wait: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if len(settings) != 20 {
		t.Fatalf("after restart: %d settings, want 20", len(settings))
	}
	for i, s := range settings {
		if s.Key != fmt.Sprintf("k%02d", i) || s.Value != fmt.Sprint(i) {
			t.Errorf("setting %d: %+v", i, s)
		}
	}
}

func TestFollowerLossKeepsWriting(t *testing.T) {
	c := newTestCluster(t, 3)
	lead := c.leader(20 * time.Second)
	for _, n := range c.nodes {
		if n != lead {
			c.stopController(n)
			c.stopHost(n)
			break
		}
	}
	if _, err := c.client(lead).PutSetting(testwait.Ctx(t, 10*time.Second), "still", "writing", nil); err != nil {
		t.Fatalf("write with one follower gone: %v", err)
	}
}

func TestServiceLeaderIsOldestHealthyAndSticks(t *testing.T) {
	c := newTestCluster(t, 1)
	c.leader(20 * time.Second)
	cl := c.client()
	h := c.nodes[0].hostd.ID()
	inst := func(job string, healthy bool) Instance {
		return Instance{ID: InstanceID(h, job, "db"), Service: "db", Host: h, Job: job, Addr: "10.0.0.1:5432", Healthy: healthy}
	}
	leaderOf := func() string {
		t.Helper()
		ss, _, err := cl.Services(testwait.Ctx(t, 5*time.Second), QueryOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range ss {
			if s.Name == "db" {
				return s.Leader
			}
		}
		return "(no service)"
	}
	report := func(in ...Instance) {
		t.Helper()
		if err := cl.ReportInstances(testwait.Ctx(t, 5*time.Second), h, in); err != nil {
			t.Fatal(err)
		}
	}
	report(inst("a", true))
	report(inst("a", true), inst("b", true))
	if got := leaderOf(); got != InstanceID(h, "a", "db") {
		t.Fatalf("leader %s, want the oldest instance a", got)
	}
	report(inst("a", false), inst("b", true))
	if got := leaderOf(); got != InstanceID(h, "b", "db") {
		t.Fatalf("leader %s after a failed, want b", got)
	}
	// a is healthy again, and older, but the leader changes only when it
	// fails.
	report(inst("a", true), inst("b", true))
	if got := leaderOf(); got != InstanceID(h, "b", "db") {
		t.Fatalf("leader %s after a recovered, want b still", got)
	}
	// An unchanged report writes nothing.
	_, before, _ := cl.Instances(testwait.Ctx(t, 5*time.Second), QueryOptions{})
	report(inst("a", true), inst("b", true))
	_, after, _ := cl.Instances(testwait.Ctx(t, 5*time.Second), QueryOptions{})
	if after.Index != before.Index {
		t.Errorf("an unchanged report moved the instances' index from %d to %d", before.Index, after.Index)
	}
	report()
	if got := leaderOf(); got != "(no service)" {
		t.Fatalf("service without instances: leader %q, want the service gone", got)
	}
	events, _, err := cl.Events(testwait.Ctx(t, 5*time.Second), QueryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	leaderEvents := 0
	for _, e := range events {
		if e.Type == "service-leader" {
			leaderEvents++
		}
	}
	if leaderEvents < 2 {
		t.Errorf("events: %+v, want leader changes recorded", events)
	}
}

func TestFailedHostsInstancesTurnUnhealthy(t *testing.T) {
	c := newTestCluster(t, 3)
	lead := c.leader(20 * time.Second)
	var victim *testNode
	for _, n := range c.nodes {
		if n != lead {
			victim = n
		}
	}
	h := victim.hostd.ID()
	cl := c.client(lead)
	in := Instance{ID: InstanceID(h, "web", "web"), Service: "web", Host: h, Job: "web", Addr: "10.0.0.2:80", Healthy: true}
	if err := cl.ReportInstances(testwait.Ctx(t, 5*time.Second), h, []Instance{in}); err != nil {
		t.Fatal(err)
	}
	c.stopController(victim)
	c.stopHost(victim)
	testwait.For(t, "instance of the stopped host unhealthy", 15*time.Second, func() error {
		is, _, err := cl.Instances(testwait.Ctx(t, 5*time.Second), QueryOptions{})
		if err != nil {
			return err
		}
		if len(is) != 1 || is[0].Healthy {
			return fmt.Errorf("instances %+v", is)
		}
		return nil
	})
	// A late report from the dead host cannot make them healthy again.
	if err := cl.ReportInstances(testwait.Ctx(t, 5*time.Second), h, []Instance{in}); err != nil {
		t.Fatal(err)
	}
	is, _, err := cl.Instances(testwait.Ctx(t, 5*time.Second), QueryOptions{})
	if err != nil || len(is) != 1 || is[0].Healthy {
		t.Fatalf("after a late report of the failed host: %+v %v", is, err)
	}
}

func TestBackupRestoresOntoAFreshHost(t *testing.T) {
	src := newTestCluster(t, 3)
	src.leader(20 * time.Second)
	cl := src.client()
	for i := range 10 {
		if _, err := cl.PutSetting(testwait.Ctx(t, 5*time.Second), fmt.Sprintf("k%d", i), fmt.Sprint(i), nil); err != nil {
			t.Fatal(err)
		}
	}
	h := src.nodes[0].hostd.ID()
	if err := cl.ReportInstances(testwait.Ctx(t, 5*time.Second), h, []Instance{{ID: InstanceID(h, "j", "s"), Service: "s", Host: h, Job: "j", Addr: "10.0.0.3:1", Healthy: true}}); err != nil {
		t.Fatal(err)
	}
	var backup bytes.Buffer
	hdr, err := cl.Backup(testwait.Ctx(t, 10*time.Second), &backup)
	if err != nil {
		t.Fatal(err)
	}
	if hdr.Index == 0 || hdr.ClusterID != ClusterID(src.b.CACert) {
		t.Fatalf("header %+v", hdr)
	}

	// A fresh single host of the same cluster (same CA).
	dst := newTestClusterWith(t, src.b, 1)
	dst.leader(20 * time.Second)
	dcl := dst.client()
	if _, err := dcl.PutSetting(testwait.Ctx(t, 5*time.Second), "only-here", "x", nil); err != nil {
		t.Fatal(err)
	}
	// Damaged backups are refused, and nothing changes.
	data := backup.Bytes()
	flipped := bytes.Clone(data)
	flipped[len(flipped)-10] ^= 0x20
	for name, bad := range map[string][]byte{
		"truncated":    data[:len(data)-7],
		"byte-flipped": flipped,
		"no header":    data[len(backupMagic):],
		"empty":        {},
	} {
		if _, err := dcl.Restore(testwait.Ctx(t, 10*time.Second), bytes.NewReader(bad), false); err == nil {
			t.Errorf("%s backup accepted", name)
		}
		// The server refuses it too, not only the client's check.
		resp, err := dcl.send(testwait.Ctx(t, 10*time.Second), "POST", "/v1/restore", bad, "application/octet-stream")
		if err == nil {
			resp.Body.Close()
			t.Errorf("%s backup accepted by the server", name)
		}
	}
	if _, _, err := dcl.Setting(testwait.Ctx(t, 5*time.Second), "only-here", QueryOptions{}); err != nil {
		t.Fatalf("state changed by refused restores: %v", err)
	}

	// A watch on the new host's settings returns when the restore
	// replaces them, although the backup's index is lower.
	for i := range 40 {
		if _, err := dcl.PutSetting(testwait.Ctx(t, 5*time.Second), fmt.Sprintf("busy-%d", i), "x", nil); err != nil {
			t.Fatal(err)
		}
	}
	_, before, err := dcl.Settings(testwait.Ctx(t, 5*time.Second), QueryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if before.Index <= hdr.Index {
		t.Fatalf("the new host's settings index %d is not above the backup's %d", before.Index, hdr.Index)
	}
	watched := make(chan error, 1)
	go func() {
		s, _, err := dcl.Settings(context.Background(), QueryOptions{Index: before.Index, Wait: time.Minute})
		if err == nil && len(s) != 10 {
			err = fmt.Errorf("watch returned %d settings, want the backup's 10", len(s))
		}
		watched <- err
	}()
	if _, err := dcl.Restore(testwait.Ctx(t, 30*time.Second), bytes.NewReader(data), false); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-watched:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a watch did not return after the restore replaced the state")
	}
	// So does a watch that starts after it with the index of before.
	late, _, err := dcl.Settings(testwait.Ctx(t, 10*time.Second), QueryOptions{Index: before.Index, Wait: time.Minute})
	if err != nil || len(late) != 10 {
		t.Fatalf("a watch from before the restore, started after it: %d settings, %v; want the backup's 10 at once", len(late), err)
	}
	settings, _, err := dcl.Settings(testwait.Ctx(t, 5*time.Second), QueryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want, _, _ := cl.Settings(testwait.Ctx(t, 5*time.Second), QueryOptions{})
	if fmt.Sprint(settings) != fmt.Sprint(want) {
		t.Fatalf("restored settings\n%v\nwant\n%v", settings, want)
	}
	is, _, err := dcl.Instances(testwait.Ctx(t, 5*time.Second), QueryOptions{})
	if err != nil || len(is) != 1 || is[0].ID != InstanceID(h, "j", "s") {
		t.Fatalf("restored instances %+v %v", is, err)
	}
	// The restored state survives a restart of the new host.
	dst.stopController(dst.nodes[0])
	dst.startController(dst.nodes[0])
	dst.leader(20 * time.Second)
	after, _, err := dst.client().Settings(testwait.Ctx(t, 5*time.Second), QueryOptions{})
	if err != nil || fmt.Sprint(after) != fmt.Sprint(want) {
		t.Fatalf("after restart: %v %v", after, err)
	}

	// Another cluster refuses it without force.
	other, err := bundle.Create("other")
	if err != nil {
		t.Fatal(err)
	}
	oc := newTestClusterWith(t, other, 1)
	oc.leader(20 * time.Second)
	if _, err := oc.client().Restore(testwait.Ctx(t, 10*time.Second), bytes.NewReader(data), false); !IsConflict(err) {
		t.Fatalf("restore onto another cluster: %v, want 409", err)
	}
	if _, err := oc.client().Restore(testwait.Ctx(t, 30*time.Second), bytes.NewReader(data), true); err != nil {
		t.Fatalf("forced restore: %v", err)
	}
}
