package metrics

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"sort"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Scrape is one GET /metrics read back: its text and its families by
// name. Tests and the load benchmark use it; sim itself never scrapes.
type Scrape struct {
	Text     string
	Families map[string]*dto.MetricFamily
}

// Get scrapes url (the server's base URL) with token ("" for none).
func Get(ctx context.Context, url, token string) (*Scrape, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", url+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: %s: %s", url, resp.Status, strings.TrimSpace(string(b)))
	}
	return Parse(string(b))
}

// Parse reads the Prometheus text format.
func Parse(text string) (*Scrape, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		return nil, fmt.Errorf("metrics text: %w", err)
	}
	return &Scrape{Text: text, Families: fams}, nil
}

// Value is the sum of the samples of metric name whose labels include
// every pair of labels ("k", "v", ...): a counter's or gauge's value, a
// histogram's count. ok is false when no sample matches.
func (s *Scrape) Value(name string, labels ...string) (v float64, ok bool) {
	f := s.Families[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, l := range m.GetLabel() {
				if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		ok = true
		switch {
		case m.Counter != nil:
			v += m.Counter.GetValue()
		case m.Gauge != nil:
			v += m.Gauge.GetValue()
		case m.Histogram != nil:
			v += float64(m.Histogram.GetSampleCount())
		case m.Untyped != nil:
			v += m.Untyped.GetValue()
		}
	}
	return v, ok
}

// Names are the metric families scraped, sorted.
func (s *Scrape) Names() []string {
	var out []string
	for n := range s.Families {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// ErrNoPromtool: promtool (Debian package prometheus) is not installed.
var ErrNoPromtool = fmt.Errorf("promtool not found (Debian package prometheus; make deps installs it)")

// Promtool runs `promtool check metrics` on the text: nil when it
// passes, its complaints otherwise.
func Promtool(ctx context.Context, text string) error {
	path, err := exec.LookPath("promtool")
	if err != nil {
		return ErrNoPromtool
	}
	c := exec.CommandContext(ctx, path, "check", "metrics")
	c.Stdin = strings.NewReader(text)
	out, err := c.CombinedOutput()
	if err != nil {
		return fmt.Errorf("promtool check metrics: %v: %s", err, out)
	}
	return nil
}
