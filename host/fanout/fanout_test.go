package fanout

import "testing"

func TestSlowSubscriberDroppedOthersServed(t *testing.T) {
	f := New[int](2)
	slow, _ := f.Subscribe()
	fast, cancelFast := f.Subscribe()
	for i := range 3 {
		f.Publish(i)
		if got := <-fast; got != i {
			t.Fatalf("fast subscriber got %d, want %d", got, i)
		}
	}
	// The slow one took two, then was dropped at the third.
	if a, b := <-slow, <-slow; a != 0 || b != 1 {
		t.Fatalf("slow subscriber got %d, %d", a, b)
	}
	if _, open := <-slow; open {
		t.Fatal("a subscriber that fell behind was not dropped")
	}
	cancelFast()
	cancelFast() // twice is harmless
	if _, open := <-fast; open {
		t.Fatal("cancel did not close the channel")
	}
	f.Close()
	late, _ := f.Subscribe()
	if _, open := <-late; open {
		t.Fatal("a subscription after Close is open")
	}
}
