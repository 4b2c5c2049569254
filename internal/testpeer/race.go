package testpeer

import (
	"math/rand/v2"
	"sync"
	"testing"
)

// RaceCloserOptions configure a RaceCloser.
type RaceCloserOptions struct {
	Options
	// Fraction is the probability, per response, that the server closes
	// the connection right after it. Zero never closes; 1 always does.
	Fraction float64
	// Seed seeds the choice, so a sequential test sees the same closes on
	// every run.
	Seed uint64
}

// RaceCloser is a keep-alive server that, after a response and with
// probability Fraction, closes the connection at once: its FIN follows the
// last response byte, and the response has no "Connection: close". A client
// that sends its next request on that connection loses the keep-alive race.
type RaceCloser struct {
	*Server
}

type raceState struct {
	fraction float64
	mu       sync.Mutex // guards rng, closes
	rng      *rand.Rand
	closes   int
}

// closeNow decides, after a response, whether to close the connection.
func (r *raceState) closeNow() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.rng.Float64() >= r.fraction {
		return false
	}
	r.closes++
	return true
}

// NewRaceCloser starts a RaceCloser on 127.0.0.1:0. The caller owns it and
// must Close it.
func NewRaceCloser(opts RaceCloserOptions) (*RaceCloser, error) {
	s, err := newServer(opts.Options, func(s *Server) {
		s.race = &raceState{
			fraction: opts.Fraction,
			rng:      rand.New(rand.NewPCG(opts.Seed, opts.Seed^0x9e3779b97f4a7c15)),
		}
	})
	if err != nil {
		return nil, err
	}
	return &RaceCloser{s}, nil
}

// StartRaceCloser is NewRaceCloser for a test: it fails tb on error and
// closes the server when the test ends.
func StartRaceCloser(tb testing.TB, opts RaceCloserOptions) *RaceCloser {
	tb.Helper()
	s, err := NewRaceCloser(opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

// Closes returns how many connections the server closed right after a
// response (not counting closes asked for with Connection: close).
func (s *RaceCloser) Closes() int {
	s.race.mu.Lock()
	defer s.race.mu.Unlock()
	return s.race.closes
}
