package deploy_test

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/unstuck-proxy/unstuck/config"
)

// TestKubernetesCapture checks the transparent-capture example
// (deploy/kubernetes/capture/) against its ConfigMap's configuration, as
// unstuck's own loader reads it: an init container that installs the rules
// with NET_ADMIN and exits, before the sidecar; the sidecar, unprivileged,
// as a UID the rules exclude; the app as one they do not.
func TestKubernetesCapture(t *testing.T) {
	m := loadManifestsIn(t, filepath.Join("kubernetes", "capture"))
	if len(m.deployments) != 1 {
		t.Fatalf("%d Deployments under deploy/kubernetes/capture; want 1", len(m.deployments))
	}
	spec := &m.deployments[0].Spec.Template.Spec
	index := func(name string) int {
		return slices.IndexFunc(spec.InitContainers, func(c corev1.Container) bool { return c.Name == name })
	}
	ic, sc := index("unstuck-capture"), index("unstuck")
	if ic < 0 || sc < 0 || ic > sc {
		t.Fatalf("init containers %v; want unstuck-capture, then the sidecar unstuck", spec.InitContainers)
	}
	initC, side := &spec.InitContainers[ic], &spec.InitContainers[sc]

	// The init container: `unstuck capture` on the sidecar's configuration,
	// run to completion, with NET_ADMIN and nothing more.
	if initC.RestartPolicy != nil {
		t.Errorf("unstuck-capture: restartPolicy %q; want none: it installs the rules and exits before the sidecar starts", ptrString(initC.RestartPolicy))
	}
	if len(initC.Args) == 0 || initC.Args[0] != "capture" || slices.Contains(initC.Args, "--remove") {
		t.Errorf("unstuck-capture: args %q; want capture --config FILE", initC.Args)
	}
	cfgPath := flagValue(initC.Args, "--config")
	if sideCfg := flagValue(side.Args, "--config"); cfgPath == "" || cfgPath != sideCfg {
		t.Fatalf("unstuck-capture reads --config %q, the sidecar %q; want the same file", cfgPath, sideCfg)
	}
	if s := initC.SecurityContext; s == nil || s.Capabilities == nil ||
		!slices.Contains(s.Capabilities.Drop, "ALL") || !slices.Equal(slices.Sorted(slices.Values(s.Capabilities.Add)), []corev1.Capability{"NET_ADMIN", "NET_RAW"}) ||
		s.RunAsUser == nil || *s.RunAsUser != 0 || s.AllowPrivilegeEscalation == nil || *s.AllowPrivilegeEscalation ||
		s.ReadOnlyRootFilesystem == nil || !*s.ReadOnlyRootFilesystem || (s.Privileged != nil && *s.Privileged) {
		t.Errorf("unstuck-capture: securityContext %+v; want root with capabilities {drop: [ALL], add: [NET_ADMIN, NET_RAW]}, no privilege escalation, a read-only root", s)
	}

	// Everything else locked down as in the plain example; the sidecar a
	// native one.
	for _, c := range append([]corev1.Container{*side}, spec.Containers...) {
		checkSecurity(t, spec.SecurityContext, &c)
	}
	if side.RestartPolicy == nil || *side.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("unstuck: restartPolicy %q; want Always, a native sidecar", ptrString(side.RestartPolicy))
	}

	// The configuration, as both containers read it.
	data := configMapFile(t, spec, side, m, cfgPath)
	if initData := configMapFile(t, spec, initC, m, cfgPath); initData != data {
		t.Fatal("unstuck-capture and unstuck mount different configurations")
	}
	file := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(file, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(config.LoadOptions{File: file, Environ: []string{}})
	if err != nil {
		t.Fatalf("the ConfigMap's configuration does not load:\n%v", err)
	}
	k := cfg.Capture
	l, ok := cfg.Listeners[k.Listener]
	if !ok || !l.Capture {
		t.Fatalf("capture.listener %q: want a listener with capture: true", k.Listener)
	}
	_, port := splitTCP(t, "listeners."+k.Listener+".listen", l.Listen)
	if !slices.ContainsFunc(side.Ports, func(p corev1.ContainerPort) bool { return p.ContainerPort == port }) {
		t.Errorf("unstuck: no containerPort %d for the capture listener", port)
	}

	// Who is captured: the sidecar's UID is excluded, the app's is not.
	uid := func(c *corev1.Container) uint32 {
		if c.SecurityContext == nil || c.SecurityContext.RunAsUser == nil {
			t.Fatalf("%s: no runAsUser; the rules exclude by UID, so it must be fixed", c.Name)
		}
		return uint32(*c.SecurityContext.RunAsUser)
	}
	if u := uid(side); !slices.Contains(k.ExcludeUIDs, u) {
		t.Errorf("unstuck runs as %d, which capture.exclude_uids %v lacks: its own connections would be captured", u, k.ExcludeUIDs)
	}
	for i := range spec.Containers {
		if u := uid(&spec.Containers[i]); slices.Contains(k.ExcludeUIDs, u) {
			t.Errorf("%s runs as %d, which capture.exclude_uids excludes: it would not be captured", spec.Containers[i].Name, u)
		}
	}
	// The app's destination: a port the rules capture.
	for _, c := range spec.Containers {
		script := strings.Join(c.Command, " ")
		if i := strings.Index(script, "http://"); i >= 0 {
			host := strings.SplitN(script[i+len("http://"):], "/", 2)[0]
			p := uint16(80)
			if _, ps, ok := strings.Cut(host, ":"); ok {
				n, _ := strconv.ParseUint(ps, 10, 16)
				p = uint16(n)
			}
			if len(k.Ports) > 0 && !slices.Contains(k.Ports, p) {
				t.Errorf("%s connects to %s, port %d, which capture.ports %v does not capture", c.Name, host, p, k.Ports)
			}
		}
	}
}
