//go:build race

package pool

// raceEnabled: the race detector makes sync.Pool drop items on purpose, so
// allocation counts are only meaningful without it. CI runs the allocation
// tests a second time without -race (see README).
const raceEnabled = true
