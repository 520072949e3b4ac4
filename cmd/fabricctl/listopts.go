package main

import (
	"encoding/json"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"text/template"

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
