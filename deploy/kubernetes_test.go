package deploy_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/unstuck-proxy/unstuck/config"
)

// The memory model the sidecar's requests are sized from (the comment in
// deployment.yaml shows the arithmetic).
const (
	memBase         = 20 << 20 // bytes: the process with no connections
	memPerPooled    = 31 << 10 // bytes: one idle upstream connection (bench/RESULTS.md: 30.7 KiB)
	memPerApp       = 18 << 10 // bytes: one idle app connection (bench/RESULTS.md: 17.3 KiB)
	memSizedForApps = 1000     // app connections the manifests are sized for
)

// manifests is every object under deploy/kubernetes/.
type manifests struct {
	deployments []*appsv1.Deployment
	configMaps  map[string]*corev1.ConfigMap
}

// decodeManifest decodes one YAML document into its API type, strictly:
// an unknown or duplicate field is an error. It returns nil for an empty
// document.
func decodeManifest(doc []byte) (any, error) {
	var probe any
	if err := sigsyaml.Unmarshal(doc, &probe); err != nil {
		return nil, err
	}
	if probe == nil {
		return nil, nil // only comments
	}
	var tm metav1.TypeMeta
	if err := sigsyaml.Unmarshal(doc, &tm); err != nil {
		return nil, err
	}
	var obj any
	switch tm.APIVersion + " " + tm.Kind {
	case "apps/v1 Deployment":
		obj = &appsv1.Deployment{}
	case "v1 ConfigMap":
		obj = &corev1.ConfigMap{}
	default:
		return nil, fmt.Errorf("apiVersion %q kind %q: the tests know Deployment (apps/v1) and ConfigMap (v1) only", tm.APIVersion, tm.Kind)
	}
	if err := sigsyaml.UnmarshalStrict(doc, obj); err != nil {
		return nil, fmt.Errorf("%s %s: %w", tm.APIVersion, tm.Kind, err)
	}
	return obj, nil
}

// loadManifests decodes every document of every YAML file under
// deploy/kubernetes/.
func loadManifests(t *testing.T) *manifests {
	t.Helper()
	return loadManifestsIn(t, "kubernetes")
}

// loadManifestsIn decodes every document of every YAML file in dir (not
// its subdirectories, which hold examples of their own).
func loadManifestsIn(t *testing.T, dir string) *manifests {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.y*ml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests under deploy/%s (%v)", dir, err)
	}
	m := &manifests{configMaps: map[string]*corev1.ConfigMap{}}
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
		for n := 1; ; n++ {
			doc, err := r.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: document %d: %v", file, n, err)
			}
			obj, err := decodeManifest(doc)
			if err != nil {
				t.Fatalf("%s: document %d: %v", file, n, err)
			}
			switch o := obj.(type) {
			case *appsv1.Deployment:
				m.deployments = append(m.deployments, o)
			case *corev1.ConfigMap:
				if m.configMaps[o.Name] != nil {
					t.Fatalf("%s: ConfigMap %s defined twice", file, o.Name)
				}
				m.configMaps[o.Name] = o
			}
		}
	}
	return m
}

func TestManifestDecodingIsStrict(t *testing.T) {
	tests := []struct {
		name, doc string
	}{
		{"unknown field", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: b}\ndatas: {a: b}\n"},
		{"misspelt probe", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  template:\n    spec:\n      containers:\n        - name: a\n          livenesProbe: {}\n"},
		{"duplicate field", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\nmetadata: {name: y}\n"},
		{"bad quantity", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  template:\n    spec:\n      containers:\n        - name: a\n          resources: {limits: {memory: 64MB}}\n"},
		{"unknown kind", "apiVersion: v1\nkind: Service\nmetadata: {name: x}\n"},
	}
	for _, tt := range tests {
		if _, err := decodeManifest([]byte(tt.doc)); err == nil {
			t.Errorf("%s: decoded without error; want one", tt.name)
		}
	}
}

// TestKubernetesManifests checks deployment.yaml against the configuration
// in configmap.yaml, as unstuck's own loader reads it.
func TestKubernetesManifests(t *testing.T) {
	m := loadManifests(t)
	if len(m.deployments) != 1 {
		t.Fatalf("%d Deployments under deploy/kubernetes; want 1", len(m.deployments))
	}
	d := m.deployments[0]
	spec := &d.Spec.Template.Spec
	if sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector); err != nil || sel.Empty() || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
		t.Errorf("Deployment %s: selector %v (%v) does not select its pod template's labels %v", d.Name, d.Spec.Selector, err, d.Spec.Template.Labels)
	}

	// The sidecar: a native one, so that it starts before the app and
	// stops after it.
	var sc *corev1.Container
	for i := range spec.InitContainers {
		if spec.InitContainers[i].Name == "unstuck" {
			sc = &spec.InitContainers[i]
		}
	}
	if sc == nil {
		t.Fatalf("Deployment %s: no init container named unstuck (it runs as a native sidecar: initContainers, restartPolicy: Always)", d.Name)
	}
	if sc.RestartPolicy == nil || *sc.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("unstuck: restartPolicy %q; want Always, a native sidecar that outlives the app", ptrString(sc.RestartPolicy))
	}

	// The image's entrypoint, and the configuration where the image has it.
	df, err := parseDockerfile(filepath.Join(repoRoot, "Dockerfile"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(sc.Command) != 0 {
		t.Errorf("unstuck: command %q; want none: the image's ENTRYPOINT %q", sc.Command, df.entrypoint)
	}
	cfgPath := flagValue(sc.Args, "--config")
	if cfgPath == "" || cfgPath != df.configPath() {
		t.Fatalf("unstuck: args %q; want --config %s, the image's configuration file", sc.Args, df.configPath())
	}
	data := configMapFile(t, spec, sc, m, cfgPath)

	// The configuration, through unstuck's loader, with the container's
	// environment.
	env := []string{}
	for _, e := range sc.Env {
		if e.ValueFrom != nil && strings.HasPrefix(e.Name, config.EnvPrefix) {
			t.Fatalf("unstuck: env %s has valueFrom; the test can only follow literal values of the configuration's variables", e.Name)
		}
		env = append(env, e.Name+"="+e.Value)
	}
	if len(sc.EnvFrom) > 0 {
		t.Fatalf("unstuck: envFrom; the test can only follow literal env values")
	}
	file := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(file, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(config.LoadOptions{File: file, Environ: env})
	if err != nil {
		t.Fatalf("the ConfigMap's %s does not load:\n%v", filepath.Base(cfgPath), err)
	}

	// Logs for the cluster's log shipper, and the debug listener kept in
	// the pod (config checks it is on loopback).
	if cfg.Log.Format != "json" {
		t.Errorf("log.format %q; want json, one object per line for the cluster's log shipper", cfg.Log.Format)
	}
	if cfg.Admin.Pprof {
		t.Error("admin.pprof: true; the example leaves the profiler off")
	}

	// Ports: exactly the configuration's listeners and admin listener.
	adminHost, adminPort := splitTCP(t, "admin.listen", cfg.Admin.Listen)
	if ip, err := netip.ParseAddr(adminHost); adminHost != "" && (err != nil || !ip.IsUnspecified()) {
		t.Errorf("admin.listen %s: want 0.0.0.0 (or [::]): the kubelet's probes and Prometheus reach the pod IP, not the pod's loopback", cfg.Admin.Listen)
	}
	want := map[int32]string{adminPort: "admin.listen"}
	for name, l := range cfg.Listeners {
		if strings.HasPrefix(l.Listen, "unix:") {
			continue
		}
		host, port := splitTCP(t, "listeners."+name+".listen", l.Listen)
		if ip, err := netip.ParseAddr(host); err != nil || !ip.IsLoopback() {
			t.Errorf("listeners.%s.listen %s: want a loopback address: the proxy is for the app in the pod only", name, l.Listen)
		}
		want[port] = "listeners." + name
	}
	named := map[string]int32{}
	got := map[int32]string{}
	for _, p := range sc.Ports {
		if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
			t.Errorf("unstuck: port %s is %s; want TCP", p.Name, p.Protocol)
		}
		if p.HostPort != 0 {
			t.Errorf("unstuck: port %s has hostPort %d; want none", p.Name, p.HostPort)
		}
		named[p.Name] = p.ContainerPort
		got[p.ContainerPort] = p.Name
	}
	for port, what := range want {
		if _, ok := got[port]; !ok {
			t.Errorf("unstuck: no containerPort %d for %s", port, what)
		}
	}
	for port, name := range got {
		if _, ok := want[port]; !ok {
			t.Errorf("unstuck: containerPort %d (%s) is none of the configuration's ports %v", port, name, want)
		}
	}

	// Probes: httpGet on the admin port, paths the admin listener serves.
	endpoints := 0
	for _, u := range cfg.Upstreams {
		endpoints += len(u.Endpoints)
	}
	checkProbe := func(what string, p *corev1.Probe, required bool, paths ...string) {
		t.Helper()
		switch {
		case p == nil && required:
			t.Errorf("unstuck: no %s", what)
			return
		case p == nil:
			return
		case p.HTTPGet == nil:
			t.Errorf("unstuck: %s is not httpGet; the admin listener is on the pod IP, so the kubelet can GET it", what)
			return
		}
		g := p.HTTPGet
		port := g.Port.IntVal
		if g.Port.Type == intstr.String {
			port = named[g.Port.StrVal]
		}
		if port != adminPort {
			t.Errorf("unstuck: %s port %s is %d; want the admin port %d", what, g.Port.String(), port, adminPort)
		}
		if !slices.Contains(paths, g.Path) {
			t.Errorf("unstuck: %s path %q; want one of %q", what, g.Path, paths)
		}
		if g.Host != "" || (g.Scheme != "" && g.Scheme != corev1.URISchemeHTTP) {
			t.Errorf("unstuck: %s host %q scheme %q; want the pod IP over HTTP", what, g.Host, g.Scheme)
		}
	}
	checkProbe("livenessProbe", sc.LivenessProbe, true, "/healthz")
	checkProbe("readinessProbe", sc.ReadinessProbe, true, "/readyz")
	checkProbe("startupProbe", sc.StartupProbe, false, "/healthz", "/readyz")
	// With admin.ready_requires_upstream, /readyz may dial every endpoint
	// in turn, with a 1 s timeout each.
	if p := sc.ReadinessProbe; cfg.Admin.ReadyRequiresUpstream && p != nil && p.TimeoutSeconds <= int32(endpoints) {
		t.Errorf("unstuck: readinessProbe timeoutSeconds %d; want more than %d: /readyz may spend 1 s dialing each of %d endpoints",
			p.TimeoutSeconds, endpoints, endpoints)
	}

	// Prometheus scrapes the admin port.
	ann := d.Spec.Template.Annotations
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != strconv.Itoa(int(adminPort)) || ann["prometheus.io/path"] != "/metrics" {
		t.Errorf("pod annotations %v; want prometheus.io/scrape \"true\", port %q, path /metrics", ann, strconv.Itoa(int(adminPort)))
	}

	// Termination: the app's preStop, then (native sidecar) unstuck's own
	// preStop and drain, all within the grace period.
	grace := int64(corev1.DefaultTerminationGracePeriodSeconds)
	if spec.TerminationGracePeriodSeconds != nil {
		grace = *spec.TerminationGracePeriodSeconds
	}
	var appSleep int64
	for i := range spec.Containers {
		appSleep = max(appSleep, preStopSleep(t, &spec.Containers[i]))
	}
	drain := int64(math.Ceil(cfg.ShutdownTimeout.Seconds()))
	if need := appSleep + preStopSleep(t, sc) + drain; grace < need {
		t.Errorf("terminationGracePeriodSeconds %d; want at least %d: the app's preStop sleep %ds + unstuck's preStop sleep %ds + shutdown_timeout %v",
			grace, need, appSleep, preStopSleep(t, sc), cfg.ShutdownTimeout)
	}

	// Security: every container locked down; unstuck as the image's user.
	all := append(slices.Clone(spec.InitContainers), spec.Containers...)
	for i := range all {
		checkSecurity(t, spec.SecurityContext, &all[i])
	}
	uid, gid, _ := strings.Cut(df.user, ":")
	if s := sc.SecurityContext; s == nil || s.RunAsUser == nil || strconv.FormatInt(*s.RunAsUser, 10) != uid ||
		s.RunAsGroup == nil || strconv.FormatInt(*s.RunAsGroup, 10) != gid {
		t.Errorf("unstuck: runAsUser and runAsGroup want %s, the image's USER", df.user)
	}

	// Resources: unstuck's memory request covers the model; every
	// container has limits at least its requests.
	var pooled int64
	for _, u := range cfg.Upstreams {
		pooled += int64(u.Pool.MaxConns) * int64(len(u.Endpoints))
	}
	estimate := memBase + memPerPooled*pooled + memPerApp*memSizedForApps
	req, lim := sc.Resources.Requests, sc.Resources.Limits
	if q := req.Memory(); q.Value() < estimate {
		t.Errorf("unstuck: memory request %s; want at least %d MiB: %d MiB base + 31 KiB x %d pooled + 18 KiB x %d app connections",
			q, (estimate+(1<<20)-1)>>20, memBase>>20, pooled, memSizedForApps)
	}
	if !req.Cpu().Equal(resource.MustParse("100m")) || !lim.Cpu().Equal(resource.MustParse("1")) {
		t.Errorf("unstuck: cpu request %s limit %s; want 100m and 1", req.Cpu(), lim.Cpu())
	}
	for i := range all {
		c := &all[i]
		r, l := c.Resources.Requests, c.Resources.Limits
		if r.Memory().IsZero() || l.Memory().IsZero() || l.Memory().Cmp(*r.Memory()) < 0 {
			t.Errorf("%s: memory request %s limit %s; want both, limit at least request", c.Name, r.Memory(), l.Memory())
		}
	}
	maxprocs := false
	for _, e := range sc.Env {
		switch e.Name {
		case "GOMEMLIMIT":
			n, err := parseGoMemLimit(e.Value)
			if err != nil || n <= 0 || n >= lim.Memory().Value() {
				t.Errorf("unstuck: GOMEMLIMIT %q (%v); want less than the memory limit %s", e.Value, err, lim.Memory())
			}
		case "GOMAXPROCS":
			// The CPU limit rounded up, so that a limit of 1 CPU runs one
			// thread of Go code, not Go's default of at least 2, which
			// the kernel's quota throttles.
			f := e.ValueFrom
			maxprocs = f != nil && f.ResourceFieldRef != nil && f.ResourceFieldRef.Resource == "limits.cpu" &&
				f.ResourceFieldRef.ContainerName == sc.Name && f.ResourceFieldRef.Divisor.Equal(resource.MustParse("1"))
		}
	}
	if !maxprocs {
		t.Errorf("unstuck: want GOMAXPROCS from its own limits.cpu (resourceFieldRef, divisor 1)")
	}
}

// configMapFile returns the file at path in container c, which must come
// from a ConfigMap mounted as a directory (a subPath mount would not see
// updates, and unstuck reloads when the file changes).
func configMapFile(t *testing.T, spec *corev1.PodSpec, c *corev1.Container, m *manifests, path string) string {
	t.Helper()
	var mount *corev1.VolumeMount
	for i := range c.VolumeMounts {
		if mp := c.VolumeMounts[i].MountPath; mp == filepath.Dir(path) || mp == path {
			mount = &c.VolumeMounts[i]
		}
	}
	if mount == nil {
		t.Fatalf("%s: no volume mounted at %s (for %s)", c.Name, filepath.Dir(path), path)
	}
	if mount.SubPath != "" || !mount.ReadOnly {
		t.Errorf("%s: mount %s: subPath %q, readOnly %v; want no subPath (the kubelet updates only directory mounts) and readOnly",
			c.Name, mount.MountPath, mount.SubPath, mount.ReadOnly)
	}
	for _, v := range spec.Volumes {
		if v.Name != mount.Name {
			continue
		}
		if v.ConfigMap == nil || len(v.ConfigMap.Items) > 0 {
			t.Fatalf("volume %s: want a ConfigMap volume with all its keys", v.Name)
		}
		cm := m.configMaps[v.ConfigMap.Name]
		if cm == nil {
			t.Fatalf("volume %s: ConfigMap %s is not under deploy/kubernetes", v.Name, v.ConfigMap.Name)
		}
		data, ok := cm.Data[filepath.Base(path)]
		if !ok {
			t.Fatalf("ConfigMap %s has no key %s", cm.Name, filepath.Base(path))
		}
		return data
	}
	t.Fatalf("%s: mount %s names no volume", c.Name, mount.Name)
	return ""
}

// splitTCP splits a host:port from the configuration.
func splitTCP(t *testing.T, key, addr string) (string, int32) {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	n, err2 := strconv.ParseUint(port, 10, 16)
	if err != nil || err2 != nil {
		t.Fatalf("%s %q: want host:port", key, addr)
	}
	return host, int32(n)
}

// preStopSleep returns the seconds c's preStop hook sleeps; a hook whose
// length the test cannot know fails it.
func preStopSleep(t *testing.T, c *corev1.Container) int64 {
	t.Helper()
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil {
		return 0
	}
	if s := c.Lifecycle.PreStop.Sleep; s != nil {
		return s.Seconds
	}
	t.Errorf("%s: preStop is not a sleep; the grace period cannot be checked against it", c.Name)
	return 0
}

// checkSecurity checks c's effective security context (the container's,
// over the pod's).
func checkSecurity(t *testing.T, pod *corev1.PodSecurityContext, c *corev1.Container) {
	t.Helper()
	s := c.SecurityContext
	if s == nil {
		t.Errorf("%s: no securityContext", c.Name)
		return
	}
	nonRoot, seccomp := s.RunAsNonRoot, s.SeccompProfile
	if pod != nil {
		if nonRoot == nil {
			nonRoot = pod.RunAsNonRoot
		}
		if seccomp == nil {
			seccomp = pod.SeccompProfile
		}
	}
	bad := []string{}
	if nonRoot == nil || !*nonRoot {
		bad = append(bad, "runAsNonRoot: true")
	}
	if s.ReadOnlyRootFilesystem == nil || !*s.ReadOnlyRootFilesystem {
		bad = append(bad, "readOnlyRootFilesystem: true")
	}
	if s.AllowPrivilegeEscalation == nil || *s.AllowPrivilegeEscalation {
		bad = append(bad, "allowPrivilegeEscalation: false")
	}
	if s.Privileged != nil && *s.Privileged {
		bad = append(bad, "not privileged")
	}
	if s.Capabilities == nil || !slices.Contains(s.Capabilities.Drop, "ALL") || len(s.Capabilities.Add) > 0 {
		bad = append(bad, "capabilities: {drop: [ALL]} and none added")
	}
	if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
		bad = append(bad, "seccompProfile RuntimeDefault")
	}
	if len(bad) > 0 {
		t.Errorf("%s: securityContext wants %s", c.Name, strings.Join(bad, ", "))
	}
}

var goMemLimitRE = regexp.MustCompile(`^([0-9]+)(B|KiB|MiB|GiB|TiB)?$`)

// parseGoMemLimit parses a GOMEMLIMIT value: bytes, with an optional B,
// KiB, MiB, GiB or TiB suffix.
func parseGoMemLimit(s string) (int64, error) {
	m := goMemLimitRE.FindStringSubmatch(s)
	if m == nil {
		return 0, fmt.Errorf("want a number with an optional B, KiB, MiB, GiB or TiB suffix")
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil {
		return 0, err
	}
	shift := map[string]uint{"": 0, "B": 0, "KiB": 10, "MiB": 20, "GiB": 30, "TiB": 40}[m[2]]
	return n << shift, nil
}

// ptrString returns *p as a string, or "" for nil.
func ptrString[T ~string](p *T) string {
	if p == nil {
		return ""
	}
	return string(*p)
}
