package config

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoad loads arbitrary bytes as the configuration file: Load never
// panics, and it returns either Problems or a configuration that
// validates on its own.
//
//	go test -run '^$' -fuzz '^FuzzLoad$' -fuzztime 15s ./config
func FuzzLoad(f *testing.F) {
	for _, name := range []string{"minimal.yaml", "full.yaml", "bad.yaml"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	// One file per fuzz process, rewritten for each input: Load reads a
	// path, and inputs run one at a time in a process.
	path := filepath.Join(f.TempDir(), "config.yaml")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := Load(LoadOptions{File: path, Environ: noEnv})
		if err != nil {
			if cfg != nil {
				t.Fatalf("Load returned a configuration and an error: %v", err)
			}
			if ps := (Problems)(nil); !errors.As(err, &ps) || len(ps) == 0 {
				t.Fatalf("Load error %T is no Problems: %v", err, err)
			}
			return
		}
		if cfg == nil {
			t.Fatal("Load returned neither a configuration nor an error")
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("Load accepted a configuration that does not validate:\n%v\ninput:\n%s", err, data)
		}
	})
}
