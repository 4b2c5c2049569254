package metrics

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestREADMEMetrics holds the README's metrics table to the code, both
// ways: a row for every unstuck_ metric registered, and no row for a name
// that is not one.
func TestREADMEMetrics(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	start := strings.Index(text, "\n### Metrics\n")
	if start < 0 {
		t.Fatal("README: no section ### Metrics")
	}
	section := text[start+1:]
	if end := strings.Index(section[1:], "\n### "); end >= 0 {
		section = section[:end+1]
	}
	name := regexp.MustCompile("`(unstuck_[a-z0-9_]+)")
	var documented []string
	for line := range strings.Lines(section) {
		cells := strings.Split(line, "|")
		if !strings.HasPrefix(line, "| `unstuck_") || len(cells) < 3 {
			continue
		}
		for _, m := range name.FindAllStringSubmatch(cells[1], -1) {
			documented = append(documented, m[1])
		}
	}
	var registered []string
	for _, n := range New().Names() {
		if strings.HasPrefix(n, "unstuck_") {
			registered = append(registered, n)
		}
	}
	for _, n := range registered {
		if !slices.Contains(documented, n) {
			t.Errorf("README ### Metrics: no row for %s", n)
		}
	}
	for _, n := range documented {
		if !slices.Contains(registered, n) {
			t.Errorf("README ### Metrics: a row for %s, which unstuck does not export", n)
		}
	}
	if len(documented) == 0 {
		t.Error("README ### Metrics: no metric rows")
	}
}
