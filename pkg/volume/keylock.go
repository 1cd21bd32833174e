package volume

import (
	"context"
	"sync"
)

// KeyLock is a set of mutexes indexed by string key, so operations on different
// volumes never wait for each other. Entries are removed when unlocked, so the map
// only holds keys in use.
type KeyLock struct {
	mu   sync.Mutex
	held map[string]chan struct{}
}

// NewKeyLock returns an empty KeyLock.
func NewKeyLock() *KeyLock { return &KeyLock{held: map[string]chan struct{}{}} }

// TryLock takes key if free and reports whether it did; the driver answers Aborted
// when it did not, as CSI asks for concurrent operations on one volume.
func (k *KeyLock) TryLock(key string) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, busy := k.held[key]; busy {
		return false
	}
	k.held[key] = make(chan struct{})
	return true
}

// Lock waits until key is free or ctx is done.
func (k *KeyLock) Lock(ctx context.Context, key string) error {
	for {
		k.mu.Lock()
		ch, busy := k.held[key]
		if !busy {
			k.held[key] = make(chan struct{})
			k.mu.Unlock()
			return nil
		}
		k.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Unlock releases key and wakes every waiter; one of them wins the retry.
func (k *KeyLock) Unlock(key string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if ch, ok := k.held[key]; ok {
		delete(k.held, key)
		close(ch)
	}
}
