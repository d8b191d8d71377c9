package main

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// newGenManCommand writes a man page per command (cobra's doc
// generator), for the Debian package; hidden. The pages' date is
// $SOURCE_DATE_EPOCH (reproducible builds) or the commit's.
func newGenManCommand(e *env) *cobra.Command {
	return &cobra.Command{
		Use:    "gen-man DIR",
		Short:  "Write the man pages (sim.1, sim-commit.1, ...) into DIR",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			dir := e.path(args[0])
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			v := buildVersion()
			date := time.Now().UTC()
			if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
				n, err := strconv.ParseInt(s, 10, 64)
				if err != nil {
					return fmt.Errorf("SOURCE_DATE_EPOCH %q: %v", s, err)
				}
				date = time.Unix(n, 0).UTC()
			} else if t, err := time.Parse(time.RFC3339, v.Time); err == nil {
				date = t.UTC()
			}
			root := c.Root()
			root.DisableAutoGenTag = true
			return doc.GenManTree(root, &doc.GenManHeader{Section: "1", Date: &date,
				Source: "sim " + v.Version, Manual: "sim manual"}, dir)
		},
	}
}
