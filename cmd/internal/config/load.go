package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"
)

// Load builds the configuration from, in increasing precedence: defaults,
// the config file, FABRIC_* environment variables, and the flags of fs
// that were set explicitly. fs may be nil. The result is validated.
//
// The config file is --config, else FABRIC_CONFIG, else DefaultConfigFile;
// only the default file may be missing.
func Load(flags *pflag.FlagSet) (Config, error) {
	v := viper.New()
	defaults := defaultValues()
	for key, val := range defaults {
		v.SetDefault(key, val)
	}

	v.SetEnvPrefix(EnvPrefix)
	v.SetEnvKeyReplacer(strings.NewReplacer("-", "_"))
	v.AutomaticEnv()

	if flags != nil {
		for key := range defaults {
			if f := flags.Lookup(key); f != nil {
				if err := v.BindPFlag(key, f); err != nil {
					return Config{}, fmt.Errorf("bind flag --%s: %w", key, err)
				}
			}
		}
	}

	path, explicit := configPath(flags)
	settings, err := readConfigFile(path, explicit)
	if err != nil {
		return Config{}, err
	}
	if settings != nil {
		if err := v.MergeConfigMap(settings); err != nil {
			return Config{}, fmt.Errorf("%w %s: %w", ErrConfigFile, path, err)
		}
	}

	var c Config
	if err := v.Unmarshal(&c); err != nil {
		return Config{}, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if settings != nil {
		c.ConfigFile = path
	}
	c.ClusterJoin = cleanList(c.ClusterJoin)
	c.DNSUpstreams = cleanList(c.DNSUpstreams)

	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// configPath returns the config file to read and whether the user named it.
func configPath(flags *pflag.FlagSet) (string, bool) {
	if flags != nil && flags.Changed(keyConfig) {
		if p, err := flags.GetString(keyConfig); err == nil {
			return p, true
		}
	}
	if p := os.Getenv(envName(keyConfig)); p != "" {
		return p, true
	}
	return defaultConfigFile, false
}

// defaultConfigFile is DefaultConfigFile; tests point it elsewhere so a
// file on the machine running them cannot leak in.
var defaultConfigFile = DefaultConfigFile

// readConfigFile parses the config file into a map of settings, rejecting
// keys fabricd does not know. It returns nil settings for a missing
// default file.
func readConfigFile(path string, explicit bool) (map[string]any, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			if !explicit {
				return nil, nil
			}
			return nil, fmt.Errorf("%w %s named by --config or FABRIC_CONFIG does not exist: %w", ErrConfigFile, path, err)
		}
		return nil, fmt.Errorf("%w: %w", ErrConfigFile, err)
	}

	fv := viper.New()
	ext := strings.TrimPrefix(filepath.Ext(path), ".")
	if !slices.Contains(viper.SupportedExts, ext) {
		ext = "yaml" // fabric.conf or no extension: the documented format
	}
	fv.SetConfigType(ext)
	if err := fv.ReadConfig(bytes.NewReader(data)); err != nil {
		return nil, fmt.Errorf("%w %s: %w", ErrConfigFile, path, err)
	}

	known := defaultValues()
	var unknown []string
	for _, key := range fv.AllKeys() {
		if _, ok := known[key]; !ok {
			unknown = append(unknown, describeUnknown(key, known))
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return nil, fmt.Errorf("%w in %s: %s; known keys: %s",
			ErrUnknownKey, path, strings.Join(unknown, ", "), strings.Join(sortedKeys(known), ", "))
	}
	return fv.AllSettings(), nil
}

// describeUnknown quotes an unknown key and suggests the known key it was
// probably meant to be (state_dir, StateDir and statedir all mean state-dir).
func describeUnknown(key string, known map[string]any) string {
	squash := func(s string) string {
		return strings.NewReplacer("-", "", "_", "", ".", "").Replace(strings.ToLower(s))
	}
	for k := range known {
		if squash(k) == squash(key) {
			return fmt.Sprintf("%q (did you mean %q?)", key, k)
		}
	}
	return fmt.Sprintf("%q", key)
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// cleanList trims the entries of a list given as "a, b" and drops empty
// ones, so a trailing comma in FABRIC_CLUSTER_JOIN is harmless.
func cleanList(in []string) []string {
	var out []string
	for _, s := range in {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// envName is the environment variable for a key: state-dir → FABRIC_STATE_DIR.
func envName(key string) string {
	return EnvPrefix + "_" + strings.ToUpper(strings.ReplaceAll(key, "-", "_"))
}
