package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/systemimager/sim/chunk"
)

// FormatVersion is the on-disk format this code reads and writes. Readers
// check it before anything else.
const FormatVersion = 1

// Config is the store's config file, written once by Init.
type Config struct {
	Version     int          `json:"version"`
	Hash        string       `json:"hash"`
	Compression string       `json:"compression"`
	ZstdLevel   int          `json:"zstd_level"`
	Chunker     chunk.Params `json:"chunker"`
}

// DefaultConfig is what `sim init` writes.
func DefaultConfig() Config {
	return Config{Version: FormatVersion, Hash: "blake3-256", Compression: "zstd", ZstdLevel: 3, Chunker: chunk.DefaultParams}
}

// ErrNoStore is returned when a directory holds no store.
var ErrNoStore = errors.New("no store")

func readConfig(dir string) (Config, error) {
	var c Config
	b, err := os.ReadFile(filepath.Join(dir, "config"))
	if errors.Is(err, os.ErrNotExist) {
		return c, fmt.Errorf("%w at %s: run `sim init`", ErrNoStore, dir)
	}
	if err != nil {
		return c, fmt.Errorf("read store config: %w", err)
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("store config %s: %w", filepath.Join(dir, "config"), err)
	}
	if c.Version != FormatVersion {
		return c, fmt.Errorf("store %s has format version %d; this sim reads version %d", dir, c.Version, FormatVersion)
	}
	if c.Hash != "blake3-256" || c.Compression != "zstd" {
		return c, fmt.Errorf("store %s uses hash %q / compression %q; this sim supports blake3-256 / zstd", dir, c.Hash, c.Compression)
	}
	if err := c.Chunker.Validate(); err != nil {
		return c, fmt.Errorf("store %s: %w", dir, err)
	}
	return c, nil
}
