package main

import (
	"math"
	"testing"
)

func TestHistQuantiles(t *testing.T) {
	h := newHist()
	for v := int64(1); v <= 1_000_000; v++ {
		h.record(v * 1000) // 1 µs to 1 s
	}
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		want := q * 1e9
		got := float64(h.quantile(q))
		if math.Abs(got-want)/want > 0.008 {
			t.Errorf("q%v = %v, want %v within 0.8%%", q, got, want)
		}
	}
	if h.quantile(1) != 1e9 || h.max != 1e9 {
		t.Errorf("max %v, q1 %v", h.max, h.quantile(1))
	}
	for v := int64(0); v < 1<<20; v += 7 {
		if b := bucket(v); value(b) < v-v/128-1 || value(b) > v+v/128+1 {
			t.Fatalf("bucket(%d) = %d, value %d", v, b, value(b))
		}
	}
}
