package main

import (
	"errors"
	"strings"

	"github.com/fabricnet/fabric/cmd/internal/api"
)

// flagOfField maps the agent API's request fields, by the JSON names the
// agent's errors use, to the flags that set them here.
var flagOfField = map[string]string{
	"name":        "--name",
	"network":     "--network",
	"ip":          "--ip",
	"ports":       "-p",
	"aliases":     "--alias",
	"auto_remove": "--rm",
	"driver":      "--driver",
	"subnet":      "--subnet",
	"gateway":     "--gateway",
	"ip_range":    "--ip-range",
	"internal":    "--internal",
	"options":     "-o",
}

// inFlags is err's text with the API fields an agent rejection names
// (api.Error.Fields) put as the flags a fabricctl user typed.
func inFlags(err error) string {
	s := err.Error()
	var apiErr *api.Error
	if !errors.As(err, &apiErr) || len(apiErr.Fields) == 0 {
		return s
	}
	msg := apiErr.Message
	for _, f := range apiErr.Fields {
		if flag, ok := flagOfField[f]; ok {
			msg = replaceWord(msg, f, flag)
		}
	}
	return strings.Replace(s, apiErr.Message, msg, 1)
}

// replaceWord replaces each whole-word use of word in s: not part of a
// longer name (ip in ip_range) and not a quoted value ("ip").
func replaceWord(s, word, with string) string {
	var b strings.Builder
	for {
		i := strings.Index(s, word)
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		end := i + len(word)
		if (i == 0 || !inWord(s[i-1])) && (end == len(s) || !inWord(s[end])) {
			b.WriteString(s[:i])
			b.WriteString(with)
		} else {
			b.WriteString(s[:end])
		}
		s = s[end:]
	}
}

func inWord(c byte) bool {
	return c == '_' || c == '-' || c == '"' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}
