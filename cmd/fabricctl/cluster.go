package main

import (
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/spf13/cobra"
)

func newClusterCmd(c *cli) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "Cluster operations: gossip key rotation",
		Long: `Operations on the whole cluster. Members, their state and health are in
'fabricctl status --verbose'.`,
		Args: noSubcommand,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newClusterKeysCmd(c), newClusterKeyCmd(c))
	return cmd
}

func newClusterKeysCmd(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:   "keys",
		Short: "List the gossip keys (fingerprints, primary first)",
		Long: `List the keys in this node's gossip keyring by fingerprint (the first 8
bytes of the key's SHA-256); the keys themselves are never shown. The
primary key encrypts; all keys decrypt.`,
		Example: `  fabricctl cluster keys`,
		Args:    exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			keys, err := c.client().Keys(cmd.Context())
			if err != nil {
				return explain(err, "list gossip keys")
			}
			return c.render(cmd.OutOrStdout(), keys, func(w io.Writer) error {
				t := newTable(w, "FINGERPRINT", "PRIMARY")
				for _, k := range keys {
					t.row(k.Fingerprint, fmt.Sprint(k.Primary))
				}
				return t.flush()
			})
		},
	}
}

func newClusterKeyCmd(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:   "key install|use|remove KEYFILE",
		Short: "Rotate the gossip key on every member without downtime",
		Long: `Run one step of a gossip key rotation on every member of the cluster.
KEYFILE holds one base64 key (16, 24 or 32 bytes; '-' reads stdin), e.g.
made with 'head -c 32 /dev/urandom | base64'.

A rotation without downtime is three steps, each leaving every pair of
members with a key in common:
  1. install NEW   every member accepts NEW (still encrypts with OLD)
  2. use NEW       every member encrypts with NEW
  3. remove OLD    OLD is no longer accepted
Between 2 and 3, put NEW first in every node's --cluster-secret-file, so a
restarted agent comes back with it. A member that is down during a
rotation keeps its old keys; give it the new key file before it restarts.`,
		Example: `  head -c 32 /dev/urandom | base64 > new.key
  fabricctl cluster key install new.key
  fabricctl cluster key use new.key
  fabricctl cluster key remove old.key`,
		Args: exactArgs("install|use|remove", "KEYFILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			op := args[0]
			if op != "install" && op != "use" && op != "remove" {
				return usageErr(cmd, fmt.Errorf("unknown key operation %q: want install, use or remove", op))
			}
			var data []byte
			var err error
			if args[1] == "-" {
				data, err = io.ReadAll(io.LimitReader(cmd.InOrStdin(), 4096))
			} else {
				data, err = os.ReadFile(args[1])
			}
			if err != nil {
				return fmt.Errorf("read key: %w", err)
			}
			key := strings.TrimSpace(string(data))
			if raw, err := base64.StdEncoding.DecodeString(key); err != nil || (len(raw) != 16 && len(raw) != 24 && len(raw) != 32) {
				return usageErr(cmd, fmt.Errorf("%s: want one base64 key of 16, 24 or 32 bytes", args[1]))
			}
			if err := c.client().KeyOp(cmd.Context(), api.KeyOp{Op: op, Key: key}); err != nil {
				return explain(err, "key %s", op)
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "key %s: done on every member\n", op)
			return err
		},
	}
}
