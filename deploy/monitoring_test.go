package deploy_test

import (
	"encoding/json"
	"log/slog"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8slabels "k8s.io/apimachinery/pkg/labels"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/unstuck-proxy/unstuck/metrics"
)

// The monitoring kit: deploy/monitoring/.
const (
	alertsFile         = "monitoring/alerts.yaml"
	prometheusRuleFile = "monitoring/prometheusrule.yaml"
	podMonitorFile     = "monitoring/podmonitor.yaml"
	dashboardFile      = "monitoring/grafana-dashboard.json"
)

var promql = parser.NewParser(parser.Options{})

// exported reports whether a query may name metric: a family unstuck
// registers (metrics.Metrics.Names, the Go and process collectors
// included), or a histogram's _bucket, _sum or _count series of one.
func exported(t *testing.T) func(metric string) bool {
	t.Helper()
	names := metrics.New().Names()
	if !slices.Contains(names, "unstuck_requests_total") {
		t.Fatalf("metrics.Names() = %v: no unstuck_requests_total", names)
	}
	return func(metric string) bool {
		if slices.Contains(names, metric) {
			return true
		}
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(metric, suffix); ok && strings.HasSuffix(base, "_seconds") && slices.Contains(names, base) {
				return true
			}
		}
		return false
	}
}

// metricNames parses a PromQL expression and returns the metric names its
// selectors name.
func metricNames(expr string) ([]string, error) {
	e, err := promql.ParseExpr(expr)
	if err != nil {
		return nil, err
	}
	var out []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		for _, m := range vs.LabelMatchers {
			if m.Name == labels.MetricName && m.Type == labels.MatchEqual {
				name = m.Value
			}
		}
		out = append(out, name)
		return nil
	})
	return out, nil
}

// checkExpr parses expr and checks that it names only exported metrics,
// at least one.
func checkExpr(t *testing.T, where, expr string, ok func(string) bool) []string {
	t.Helper()
	names, err := metricNames(expr)
	if err != nil {
		t.Errorf("%s: %q does not parse: %v", where, expr, err)
		return nil
	}
	if len(names) == 0 {
		t.Errorf("%s: %q names no metric", where, expr)
	}
	for _, n := range names {
		if !ok(n) {
			t.Errorf("%s: %q names %s, which unstuck does not export", where, expr, n)
		}
	}
	return names
}

// TestAlertRules: alerts.yaml is a rules file Prometheus loads (the same
// parsing and checks as promtool check rules), and its expressions name
// only metrics unstuck exports.
func TestAlertRules(t *testing.T) {
	groups, errs := rulefmt.ParseFile(alertsFile, false, model.UTF8Validation, promql, slog.New(slog.DiscardHandler))
	for _, err := range errs {
		t.Error(err)
	}
	if groups == nil {
		t.FailNow()
	}
	ok := exported(t)
	var alerts []string
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				t.Errorf("group %s: a recording rule %s; the kit has alerts only", g.Name, r.Record)
				continue
			}
			alerts = append(alerts, r.Alert)
			checkExpr(t, "alert "+r.Alert, r.Expr, ok)
			if r.Labels["severity"] == "" || r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("alert %s: want a severity label and summary and description annotations", r.Alert)
			}
			if r.For == 0 {
				t.Errorf("alert %s: no for: a single scrape would page", r.Alert)
			}
		}
	}
	for _, want := range []string{"UnstuckCloseWaitLeak", "HostSocketsStuckInCloseWait", "UnstuckUpstreamHalfClosesSpiking",
		"UnstuckPoolExhausted", "UnstuckOwnErrors", "UnstuckUpstreamUnreachable", "UnstuckConfigReloadFailed"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("alerts.yaml: no alert %s", want)
		}
	}
}

// TestRuleCheckerCatches: the checks above fail on what they must.
func TestRuleCheckerCatches(t *testing.T) {
	if _, err := metricNames(`rate(unstuck_requests_total[5m]`); err == nil {
		t.Error("an unclosed parenthesis parses")
	}
	names, err := metricNames(`sum by (le) (rate(unstuck_pool_wait_seconds_bucket[5m])) / on() group_left {__name__="unstuck_build_info"}`)
	if err != nil || !slices.Equal(names, []string{"unstuck_pool_wait_seconds_bucket", "unstuck_build_info"}) {
		t.Errorf("metricNames = %v, %v", names, err)
	}
	ok := exported(t)
	for name, want := range map[string]bool{
		"unstuck_pool_wait_seconds_bucket":   true,
		"unstuck_requests_total":             true,
		"process_resident_memory_bytes":      true,
		"unstuck_requests_total_bucket":      false,
		"unstuck_tcp_sockets_closewait":      false,
		"unstuck_upstream_connections_count": false,
	} {
		if ok(name) != want {
			t.Errorf("exported(%s) = %v; want %v", name, !want, want)
		}
	}
	_, errs := rulefmt.Parse([]byte("groups:\n- name: x\n  rules:\n  - alert: A\n    expr: up ==\n"), false, model.UTF8Validation, promql, slog.New(slog.DiscardHandler))
	if len(errs) == 0 {
		t.Error("rulefmt accepts a broken expression")
	}
}

// yamlAsJSON decodes a YAML file as JSON would: numbers, strings, maps.
func yamlAsJSON(t *testing.T, file string) map[string]any {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	j, err := sigsyaml.YAMLToJSON(data)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	var out map[string]any
	if err := json.Unmarshal(j, &out); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return out
}

// decodeStrict decodes a YAML file into v, refusing fields v lacks.
func decodeStrict(t *testing.T, file string, v any) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := sigsyaml.UnmarshalStrict(data, v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

// TestPrometheusRule: prometheusrule.yaml decodes strictly as the
// Operator's PrometheusRule, and holds exactly alerts.yaml's groups.
func TestPrometheusRule(t *testing.T) {
	var pr monitoringv1.PrometheusRule
	decodeStrict(t, prometheusRuleFile, &pr)
	if pr.APIVersion != "monitoring.coreos.com/v1" || pr.Kind != monitoringv1.PrometheusRuleKind || pr.Name == "" {
		t.Errorf("%s: apiVersion %q kind %q name %q", prometheusRuleFile, pr.APIVersion, pr.Kind, pr.Name)
	}
	spec, _ := yamlAsJSON(t, prometheusRuleFile)["spec"].(map[string]any)
	if file := yamlAsJSON(t, alertsFile); !reflect.DeepEqual(spec["groups"], file["groups"]) {
		t.Errorf("%s's spec.groups differ from %s's groups: copy them over", prometheusRuleFile, alertsFile)
	}
	if len(pr.Spec.Groups) == 0 || len(pr.Spec.Groups[0].Rules) == 0 {
		t.Errorf("%s: no rules", prometheusRuleFile)
	}
}

// TestPodMonitor: podmonitor.yaml decodes strictly as the Operator's
// PodMonitor, selects the pods of deployment.yaml, and scrapes /metrics on
// the sidecar's admin port.
func TestPodMonitor(t *testing.T) {
	var pm monitoringv1.PodMonitor
	decodeStrict(t, podMonitorFile, &pm)
	if pm.APIVersion != "monitoring.coreos.com/v1" || pm.Kind != monitoringv1.PodMonitorsKind || pm.Name == "" {
		t.Errorf("%s: apiVersion %q kind %q name %q", podMonitorFile, pm.APIVersion, pm.Kind, pm.Name)
	}
	sel, err := metav1.LabelSelectorAsSelector(&pm.Spec.Selector)
	if err != nil || sel.Empty() {
		t.Fatalf("%s: selector %v (%v); want one that picks the app's pods", podMonitorFile, pm.Spec.Selector, err)
	}
	m := loadManifests(t)
	if len(m.deployments) == 0 {
		t.Fatal("no Deployment under deploy/kubernetes")
	}
	for _, d := range m.deployments {
		if !sel.Matches(k8slabels.Set(d.Spec.Template.Labels)) {
			t.Errorf("%s: selector %s does not match Deployment %s's pods %v", podMonitorFile, sel, d.Name, d.Spec.Template.Labels)
		}
		sc := unstuckContainer(t, d)
		adminPort := int32(0)
		for _, p := range sc.Ports {
			if p.Name == "admin" {
				adminPort = p.ContainerPort
			}
		}
		if len(pm.Spec.PodMetricsEndpoints) == 0 {
			t.Fatalf("%s: no podMetricsEndpoints", podMonitorFile)
		}
		for _, ep := range pm.Spec.PodMetricsEndpoints {
			if ep.Port == nil || *ep.Port != "admin" || adminPort == 0 {
				t.Errorf("%s: port %v; want the sidecar's port named admin (deployment.yaml has %d)", podMonitorFile, ep.Port, adminPort)
			}
			if ep.Path != "/metrics" {
				t.Errorf("%s: path %q; want /metrics", podMonitorFile, ep.Path)
			}
		}
	}
}

// unstuckContainer returns d's sidecar: its init container named unstuck.
func unstuckContainer(t *testing.T, d *appsv1.Deployment) *corev1.Container {
	t.Helper()
	for i, c := range d.Spec.Template.Spec.InitContainers {
		if c.Name == "unstuck" {
			return &d.Spec.Template.Spec.InitContainers[i]
		}
	}
	t.Fatalf("Deployment %s: no init container named unstuck", d.Name)
	return nil
}

// grafanaVar is a Grafana variable or macro in a query.
var grafanaVar = regexp.MustCompile(`\$\{?(__[a-z_]+|[A-Za-z_][A-Za-z0-9_]*)\}?`)

// grafanaToPromQL replaces Grafana's variables and macros with values
// Prometheus would get: a range for the interval macros, a regexp for
// the others.
func grafanaToPromQL(q string) string {
	return grafanaVar.ReplaceAllStringFunc(q, func(v string) string {
		switch strings.Trim(v, "${}") {
		case "__rate_interval", "__interval", "__range":
			return "5m"
		}
		return ".*"
	})
}

// TestGrafanaDashboard: the dashboard is JSON Grafana imports (unique
// panel ids, a Prometheus data source variable), every query parses as
// PromQL and names only metrics unstuck exports, and it shows what the
// issue asks of it.
func TestGrafanaDashboard(t *testing.T) {
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title      string `json:"title"`
		UID        string `json:"uid"`
		Templating struct {
			List []struct {
				Name       string `json:"name"`
				Type       string `json:"type"`
				Query      any    `json:"query"`
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			ID         int    `json:"id"`
			Type       string `json:"type"`
			Title      string `json:"title"`
			Datasource *struct {
				Type string `json:"type"`
				UID  string `json:"uid"`
			} `json:"datasource"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	dec := json.NewDecoder(strings.NewReader(string(data)))
	if err := dec.Decode(&dash); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	if dash.Title == "" || dash.UID == "" {
		t.Errorf("%s: title %q uid %q", dashboardFile, dash.Title, dash.UID)
	}
	ok := exported(t)
	hasDatasource := false
	for _, v := range dash.Templating.List {
		switch v.Type {
		case "datasource":
			hasDatasource = v.Name == "datasource" && v.Query == "prometheus"
		case "query":
			// label_values(metric{...}, label)
			inner := strings.TrimSuffix(strings.TrimPrefix(v.Definition, "label_values("), ")")
			metric := inner[:strings.LastIndex(inner, ",")]
			checkExpr(t, "variable "+v.Name, grafanaToPromQL(metric), ok)
		}
	}
	if !hasDatasource {
		t.Errorf("%s: no Prometheus data source variable named datasource", dashboardFile)
	}
	ids := map[int]string{}
	var all []string
	for _, p := range dash.Panels {
		if prev, dup := ids[p.ID]; dup {
			t.Errorf("panels %q and %q share id %d", prev, p.Title, p.ID)
		}
		ids[p.ID] = p.Title
		if p.Type == "row" {
			continue
		}
		if p.Title == "" || len(p.Targets) == 0 {
			t.Errorf("panel %d %q: want a title and a query", p.ID, p.Title)
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource %+v; want the ${datasource} variable", p.Title, p.Datasource)
		}
		for _, q := range p.Targets {
			all = append(all, checkExpr(t, "panel "+p.Title, grafanaToPromQL(q.Expr), ok)...)
		}
	}
	for _, want := range []string{
		"unstuck_upstream_closes_total",              // half-closes by cause
		"unstuck_half_close_reaction_seconds_bucket", // FIN to close
		"unstuck_tcp_sockets",                        // unstuck's CLOSE_WAIT
		"unstuck_host_close_wait_sockets",            // the host's CLOSE_WAIT
		"unstuck_upstream_connections",               // pool use
		"unstuck_pool_waits_total",                   // pool waits
		"unstuck_requests_total",                     // errors by reason
		"unstuck_proxy_added_seconds_bucket",         // the latency unstuck adds
	} {
		if !slices.Contains(all, want) {
			t.Errorf("%s: no panel queries %s", dashboardFile, want)
		}
	}
}
