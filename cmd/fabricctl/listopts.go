package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"text/template"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/spf13/cobra"
)

// listOpts are the --filter and --format options of the ls commands, as in
// Docker: --filter KEY=VALUE keeps the items whose JSON field KEY is VALUE
// (for "name", whose name contains VALUE); several filters must all match.
// --format TEMPLATE prints each item through a Go template over its fields
// ({{.Name}}, {{.Subnet}}), one line each.
type listOpts struct {
	filters []string
	format  string
}

func (o *listOpts) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringArrayVar(&o.filters, "filter", nil, "keep items whose field KEY is VALUE: KEY=VALUE, KEY a JSON field (name matches a part; repeatable)")
	f.StringVar(&o.format, "format", "", "print each item with a Go template, e.g. '{{.Name}} {{.Subnet}}'")
}

// listing is what an ls command knows of its items: how to fetch and sort
// them, an item's name (for -q) and the table of them.
type listing[T any] struct {
	kind  string // "networks", for errors
	fetch func(*api.Client, context.Context) ([]T, error)
	sort  func([]T)
	name  func(T) string
	table func(io.Writer, []T) error
}

// listCmd makes cmd (its Use, Short, Long and Example set) the ls command
// of l: no arguments, -q, --filter and --format, else a table or --output.
func listCmd[T any](c *cli, cmd *cobra.Command, l listing[T]) *cobra.Command {
	var quiet bool
	var lo listOpts
	cmd.Args = exactArgs()
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		items, err := l.fetch(c.client(), cmd.Context())
		if err != nil {
			return explain(err, "list %s", l.kind)
		}
		if items, err = filterItems(items, lo.filters); err != nil {
			return usageErr(cmd, err)
		}
		if items == nil {
			items = []T{}
		}
		l.sort(items)
		if lo.format != "" {
			return formatItems(cmd.OutOrStdout(), items, lo.format)
		}
		if quiet {
			return printNames(cmd.OutOrStdout(), items, l.name)
		}
		return c.render(cmd.OutOrStdout(), items, func(w io.Writer) error { return l.table(w, items) })
	}
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only names")
	lo.register(cmd)
	return cmd
}

// printNames prints one name per line, for -q.
func printNames[T any](w io.Writer, items []T, name func(T) string) error {
	for _, it := range items {
		if _, err := fmt.Fprintln(w, name(it)); err != nil {
			return fmt.Errorf("write output: %w", err)
		}
	}
	return nil
}

// filterItems applies filters to items.
func filterItems[T any](items []T, filters []string) ([]T, error) {
	if len(filters) == 0 {
		return items, nil
	}
	known := jsonFields(reflect.TypeFor[T]())
	type cond struct{ key, val string }
	var conds []cond
	for _, f := range filters {
		k, v, ok := strings.Cut(f, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--filter %q: want KEY=VALUE", f)
		}
		if !slices.Contains(known, k) {
			return nil, fmt.Errorf("--filter %q: no field %q; fields: %s", f, k, strings.Join(known, ", "))
		}
		conds = append(conds, cond{k, v})
	}
	var out []T
	for _, it := range items {
		b, err := json.Marshal(it)
		if err != nil {
			return nil, fmt.Errorf("filter: %w", err)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			return nil, fmt.Errorf("filter: %w", err)
		}
		match := true
		for _, c := range conds {
			got := ""
			if v, ok := m[c.key]; ok && v != nil {
				got = fmt.Sprint(v)
			}
			if c.key == "name" {
				match = match && strings.Contains(got, c.val)
			} else {
				match = match && got == c.val
			}
		}
		if match {
			out = append(out, it)
		}
	}
	return out, nil
}

// jsonFields lists the JSON names of a struct type's fields.
func jsonFields(t reflect.Type) []string {
	var out []string
	for i := range t.NumField() {
		f := t.Field(i)
		name := strings.Split(f.Tag.Get("json"), ",")[0]
		if name == "" || name == "-" || !f.IsExported() {
			continue
		}
		out = append(out, name)
	}
	return out
}

// formatItems prints each item through the template format.
func formatItems[T any](w io.Writer, items []T, format string) error {
	tmpl, err := template.New("format").Option("missingkey=error").Parse(format)
	if err != nil {
		return fmt.Errorf("--format: %w", err)
	}
	for _, it := range items {
		if err := tmpl.Execute(w, it); err != nil {
			return fmt.Errorf("--format: %w", err)
		}
		if _, err := fmt.Fprintln(w); err != nil {
			return fmt.Errorf("write output: %w", err)
		}
	}
	return nil
}
