package volume

import (
	"context"
	"testing"
	"time"
)

func TestKeyLock(t *testing.T) {
	k := NewKeyLock()
	if !k.TryLock("a") || k.TryLock("a") || !k.TryLock("b") {
		t.Fatal("TryLock must take free keys and refuse held ones")
	}
	got := make(chan error)
	go func() { got <- k.Lock(context.Background(), "a") }()
	select {
	case <-got:
		t.Fatal("Lock did not wait for a held key")
	case <-time.After(20 * time.Millisecond):
	}
	k.Unlock("a")
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	c, cancel := context.WithCancel(context.Background())
	cancel()
	if err := k.Lock(c, "a"); err == nil {
		t.Fatal("Lock on a held key with a cancelled context succeeded")
	}
	k.Unlock("a")
	k.Unlock("b")
	k.Unlock("never-held") // harmless
	if len(k.held) != 0 {
		t.Fatalf("entries leak: %v", k.held)
	}
}
