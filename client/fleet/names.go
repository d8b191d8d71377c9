package fleet

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/systemimager/sim/client/catalog"
)

// maxExpand bounds what one node list may expand to.
const maxExpand = 100000

// ExpandNodes turns a node list as admins write it into names, in order,
// each once: names separated by commas, ranges "n1-n16" or "n01-n16"
// (same prefix, numbers; leading zeros keep the width), and brackets
// "n[1-4,9]", "rack2-n[01-08]" (SystemImager's and Slurm's host ranges).
// A bad item is an error naming it.
func ExpandNodes(spec string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	add := func(n string) error {
		if err := catalog.CheckNodeName(n); err != nil {
			return err
		}
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
		if len(out) > maxExpand {
			return fmt.Errorf("node list %q: more than %d nodes", spec, maxExpand)
		}
		return nil
	}
	for _, item := range splitTop(spec) {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		names, err := expandItem(item)
		if err != nil {
			return nil, fmt.Errorf("node list: %q: %w", item, err)
		}
		for _, n := range names {
			if err := add(n); err != nil {
				return nil, fmt.Errorf("node list: %q: %w", item, err)
			}
		}
	}
	return out, nil
}

// splitTop splits at commas outside brackets.
func splitTop(s string) []string {
	var out []string
	depth, start := 0, 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '[':
			depth++
		case ']':
			depth--
		case ',':
			if depth == 0 {
				out = append(out, s[start:i])
				start = i + 1
			}
		}
	}
	return append(out, s[start:])
}

func expandItem(item string) ([]string, error) {
	if i := strings.IndexByte(item, '['); i >= 0 {
		j := strings.IndexByte(item, ']')
		if j < i {
			return nil, fmt.Errorf("unbalanced brackets")
		}
		prefix, body, suffix := item[:i], item[i+1:j], item[j+1:]
		if strings.ContainsAny(suffix, "[]") {
			return nil, fmt.Errorf("one bracket per name")
		}
		var out []string
		for _, part := range strings.Split(body, ",") {
			lo, hi, ok := strings.Cut(part, "-")
			if !ok {
				hi = lo
			}
			nums, err := numbers(lo, hi)
			if err != nil {
				return nil, err
			}
			for _, n := range nums {
				out = append(out, prefix+n+suffix)
			}
		}
		return out, nil
	}
	// "n1-n16": a range when both sides are prefix+number with one prefix.
	if a, b, ok := strings.Cut(item, "-"); ok {
		pa, na := splitNum(a)
		pb, nb := splitNum(b)
		if na != "" && nb != "" && pa == pb && pa != "" {
			nums, err := numbers(na, nb)
			if err != nil {
				return nil, err
			}
			out := make([]string, len(nums))
			for i, n := range nums {
				out[i] = pa + n
			}
			return out, nil
		}
	}
	return []string{item}, nil
}

// splitNum splits s into its prefix and trailing digits.
func splitNum(s string) (string, string) {
	i := len(s)
	for i > 0 && s[i-1] >= '0' && s[i-1] <= '9' {
		i--
	}
	return s[:i], s[i:]
}

func numbers(lo, hi string) ([]string, error) {
	a, err1 := strconv.Atoi(lo)
	b, err2 := strconv.Atoi(hi)
	if err1 != nil || err2 != nil || lo == "" || hi == "" {
		return nil, fmt.Errorf("%s-%s is not a range of numbers", lo, hi)
	}
	if b < a {
		return nil, fmt.Errorf("range %s-%s goes down", lo, hi)
	}
	if b-a >= maxExpand {
		return nil, fmt.Errorf("range %s-%s is too long", lo, hi)
	}
	width := 0
	if len(lo) > 1 && lo[0] == '0' {
		width = len(lo)
	}
	out := make([]string, 0, b-a+1)
	for n := a; n <= b; n++ {
		out = append(out, fmt.Sprintf("%0*d", width, n))
	}
	return out, nil
}

// NodeLess orders names as people count: n2 before n10.
func NodeLess(a, b string) bool {
	pa, na := splitNum(a)
	pb, nb := splitNum(b)
	if pa == pb && na != "" && nb != "" {
		x, _ := strconv.Atoi(na)
		y, _ := strconv.Atoi(nb)
		if x != y {
			return x < y
		}
	}
	return a < b
}
