package rig

import (
	"fmt"
	"slices"
	"time"
)

// Summary is the distribution of a set of durations.
type Summary struct {
	N             int
	P50, P99, Max time.Duration
}

// Summarize sorts ds in place and returns its percentiles (nearest rank).
func Summarize(ds []time.Duration) Summary {
	if len(ds) == 0 {
		return Summary{}
	}
	slices.Sort(ds)
	rank := func(p float64) time.Duration {
		i := int(p*float64(len(ds))+0.5) - 1
		return ds[min(max(i, 0), len(ds)-1)]
	}
	return Summary{N: len(ds), P50: rank(0.50), P99: rank(0.99), Max: ds[len(ds)-1]}
}

// Ms formats d in milliseconds with three decimals.
func Ms(d time.Duration) string {
	return fmt.Sprintf("%.3f", float64(d)/float64(time.Millisecond))
}
