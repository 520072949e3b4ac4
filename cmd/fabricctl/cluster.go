package main

import (
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/fabricnet/fabric/cluster/gossipkey"
	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/spf13/cobra"
)

func newClusterCmd(c *cli) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "Cluster operations: gossip keys (generate, rotate)",
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
	cmd := &cobra.Command{
		Use:   "key generate|install|use|remove FILE",
		Short: "Make a gossip key, or rotate keys on every member without downtime",
		Long: `Gossip keys encrypt and authenticate everything the agents say to each
other; an agent that joins others (or listens beyond loopback) refuses to
start without one unless --cluster-insecure.

'generate FILE' makes a fresh key (32 random bytes, base64) in FILE with
mode 0600; copy it to every node and point --cluster-secret-file at it.
The agent refuses a key file that group or others can read.

A rotation without downtime is three steps, each leaving every pair of
members with a key in common:
  1. install NEW   every member accepts NEW (still encrypts with OLD)
  2. use NEW       every member encrypts with NEW
  3. remove OLD    OLD is no longer accepted
Between 2 and 3, put NEW first in every node's --cluster-secret-file, so a
restarted agent comes back with it. A member that is down during a
rotation keeps its old keys; give it the new key file before it restarts.`,
		Example: `  fabricctl cluster key generate /etc/fabric/gossip.key
  fabricctl cluster key generate new.key
  fabricctl cluster key install new.key
  fabricctl cluster key use new.key
  fabricctl cluster key remove old.key`,
		Args: noSubcommand,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newKeyGenerateCmd())
	for _, op := range []struct{ name, short string }{
		{"install", "Add a key to every member's keyring (it decrypts; the primary still encrypts)"},
		{"use", "Make an installed key the primary (the one that encrypts) on every member"},
		{"remove", "Remove a key from every member's keyring (not the primary)"},
	} {
		cmd.AddCommand(newKeyOpCmd(c, op.name, op.short))
	}
	return cmd
}

func newKeyGenerateCmd() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "generate FILE",
		Short: "Write a fresh random gossip key to FILE (mode 0600)",
		Long: `Write a fresh gossip key (32 random bytes, AES-256, base64) to FILE with
mode 0600. An existing FILE is never overwritten unless --force is given
(then agents using the old key need the new one). No agent is contacted.`,
		Example: `  fabricctl cluster key generate /etc/fabric/gossip.key
  fabricctl cluster key generate --force /etc/fabric/gossip.key`,
		Args: exactArgs("FILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := gossipkey.Generate(args[0], force); err != nil {
				return err
			}
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "wrote a new gossip key to %s (mode 0600); copy it to every node and set --cluster-secret-file\n", args[0])
			return err
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "overwrite FILE if it exists (agents using the old key then need the new one)")
	return cmd
}

func newKeyOpCmd(c *cli, op, short string) *cobra.Command {
	return &cobra.Command{
		Use:   op + " KEYFILE",
		Short: short,
		Long: short + `.
KEYFILE holds one base64 key (16, 24 or 32 bytes; '-' reads stdin), as
'fabricctl cluster key generate' writes. See 'fabricctl cluster key --help'
for the rotation steps.`,
		Example: "  fabricctl cluster key " + op + " new.key",
		Args:    exactArgs("KEYFILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			var data []byte
			var err error
			if args[0] == "-" {
				data, err = io.ReadAll(io.LimitReader(cmd.InOrStdin(), 4096))
			} else {
				data, err = os.ReadFile(args[0])
			}
			if err != nil {
				return fmt.Errorf("read key: %w", err)
			}
			key := strings.TrimSpace(string(data))
			if raw, err := base64.StdEncoding.DecodeString(key); err != nil || (len(raw) != 16 && len(raw) != 24 && len(raw) != 32) {
				return usageErr(cmd, fmt.Errorf("%s: want one base64 key of 16, 24 or 32 bytes", args[0]))
			}
			if err := c.client().KeyOp(cmd.Context(), api.KeyOp{Op: op, Key: key}); err != nil {
				return explain(err, "key %s", op)
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "key %s: done on every member\n", op)
			return err
		},
	}
}
