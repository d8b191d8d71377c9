package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/systemimager/sim/client/catalog"
	"github.com/systemimager/sim/store"
)

// Shell completion: cobra's own scripts (sim completion bash|zsh|fish)
// ask the binary (sim __complete ...), which answers ref arguments with
// the store's image and tag names. It opens the store for a moment, or
// asks the server holding it; a missing, damaged or unreachable store
// completes nothing, silently.

// completionTimeout bounds how long a completion may take.
const completionTimeout = 2 * time.Second

// addCompletions gives every command taking refs its completion.
func (e *env) addCompletions(root *cobra.Command) {
	refs := func(n int) cobra.CompletionFunc { return e.completeArgs(n, "ref") }
	for path, f := range map[string]cobra.CompletionFunc{
		"log":          refs(1),
		"show":         refs(1),
		"ls":           refs(1),
		"cat":          refs(1),
		"export":       refs(1),
		"checkout":     e.completeArgs(2, "ref", "dir"),
		"diff":         e.completeArgs(2, "ref", "ref|dir"),
		"tag":          e.completeArgs(2, "", "ref"),
		"image cp":     e.completeArgs(1, "image"),
		"image mv":     e.completeArgs(1, "image"),
		"image rm":     e.completeArgs(-1, "image"),
		"image reflog": e.completeArgs(1, "image"),
		"layout show":  refs(1),
	} {
		c, _, err := root.Find(strings.Fields(path))
		if err == nil && c != root && c.ValidArgsFunction == nil {
			c.ValidArgsFunction = f
		}
	}
}

// completeArgs completes positional argument i with what kinds[i] says
// ("ref": images and tags, "image": images, "dir": directories,
// "ref|dir": a ref, or a path once the word has a slash or starts with a
// dot; "": nothing). With n < 0 every argument is kinds[0].
func (e *env) completeArgs(n int, kinds ...string) cobra.CompletionFunc {
	return func(c *cobra.Command, args []string, word string) ([]string, cobra.ShellCompDirective) {
		i := len(args)
		if n >= 0 && i >= n {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		kind := kinds[0]
		if n >= 0 {
			kind = kinds[i]
		}
		switch kind {
		case "dir":
			return nil, cobra.ShellCompDirectiveFilterDirs
		case "ref|dir":
			if strings.Contains(word, "/") || strings.HasPrefix(word, ".") {
				return nil, cobra.ShellCompDirectiveDefault
			}
			kind = "ref"
		case "":
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		return refNames(c.Context(), e.storeDir, kind == "ref", word), cobra.ShellCompDirectiveNoFileComp
	}
}

// refNames lists the store's images (and tags) starting with prefix.
// Catalog images (debian@layout, sim@nodes) are offered once the word
// has an "@".
func refNames(ctx context.Context, dir string, tags bool, prefix string) []string {
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, completionTimeout)
	defer cancel()
	var images, tagNames []string
	st, err := store.Open(dir)
	switch {
	case errors.Is(err, store.ErrLocked):
		images, tagNames = refNamesFromServer(ctx, dir, tags)
	case err != nil:
		return nil
	default:
		if ims, err := st.Images(); err == nil {
			for _, im := range ims {
				images = append(images, im.Name)
			}
		}
		if tags {
			if ts, err := st.Tags(); err == nil {
				for _, t := range ts {
					tagNames = append(tagNames, t.Name)
				}
			}
		}
		st.Close()
	}
	var out []string
	seen := map[string]bool{}
	for _, n := range append(images, tagNames...) {
		if seen[n] || !strings.HasPrefix(n, prefix) || (catalog.IsSpecial(n) && !strings.Contains(prefix, "@")) {
			continue
		}
		seen[n] = true
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// refNamesFromServer asks the sim serve holding the store for its
// images and tags, through its socket.
func refNamesFromServer(ctx context.Context, dir string, tags bool) (images, tagNames []string) {
	// Completion does not wait for a server that may be starting.
	if _, err := os.Stat(filepath.Join(dir, socketName)); err != nil {
		return nil, nil
	}
	ask := func(v any, args ...string) {
		var out bytes.Buffer
		e := &env{stdout: &out, stderr: io.Discard, storeDir: dir, args: args, ctx: ctx}
		var f forwarded
		if err := forwardToServer(e); errors.As(err, &f) && f.code == 0 {
			json.Unmarshal(out.Bytes(), v)
		}
	}
	var ims []imageJSON
	ask(&ims, "images", "--all", "--json")
	for _, im := range ims {
		images = append(images, im.Name)
	}
	if tags {
		var ts []store.Tag
		ask(&ts, "tag", "--json")
		for _, t := range ts {
			tagNames = append(tagNames, t.Name)
		}
	}
	return images, tagNames
}
