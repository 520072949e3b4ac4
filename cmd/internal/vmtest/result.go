package vmtest

import (
	"bufio"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Result is what one VM run showed.
type Result struct {
	Kernel  string
	Release string // uname -r in the guest
	Booted  bool
	Done    bool // the guest reached the end of its script
	// Crash is the guest kernel's first Oops/BUG/panic line, if it had
	// one: the guest died, not a test.
	Crash    string
	Wall     time.Duration
	Commands []CommandResult
}

// CommandResult is one command's outcome; the counts are of `go test -v`
// result lines (tests and subtests).
type CommandResult struct {
	Name                    string
	Exit                    int
	Wall                    time.Duration
	Passed, Failed, Skipped int
	Skips                   []Skip
	Failures                []string
}

// Skip is a skipped test and the reason it gave.
type Skip struct{ Test, Reason string }

// FailedCommands names the commands that exited non-zero.
func (r *Result) FailedCommands() []string {
	var out []string
	for _, c := range r.Commands {
		if c.Exit != 0 {
			out = append(out, c.Name)
		}
	}
	return out
}

// Totals sums the test counts over the commands.
func (r *Result) Totals() (passed, failed, skipped int) {
	for _, c := range r.Commands {
		passed += c.Passed
		failed += c.Failed
		skipped += c.Skipped
	}
	return passed, failed, skipped
}

var resultLine = regexp.MustCompile(`^(\s*)--- (PASS|FAIL|SKIP): (\S+)`)

var (
	runLine = regexp.MustCompile(`^=== (?:RUN|CONT|NAME)\s+(\S+)`)
	logLine = regexp.MustCompile(`^\s+\S+\.go:\d+: (.*)`)
	// crashLine is how the kernel's log starts a crash report.
	crashLine = regexp.MustCompile(`^\[\s*\d+\.\d+\] (?:Oops: |BUG: |Kernel panic - not syncing)`)
)

// parse reads the console, copies it to out and records markers and test
// results until the console ends. A skip's reason is the last line the
// test logged: go test -v prints it before the "--- SKIP" line.
func (r *Result) parse(in io.Reader, nonce string, out io.Writer) {
	mark := marker(nonce) + " "
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	var cur *CommandResult
	var started time.Time
	var test string                // the test whose output this is
	lastLog := map[string]string{} // test -> the last line it logged
	for sc.Scan() {
		line := string(stripCR(sc.Bytes()))
		fmt.Fprintln(out, line)
		if r.Crash == "" && crashLine.MatchString(line) {
			r.Crash = strings.TrimSpace(line)
		}
		if rest, ok := strings.CutPrefix(line, mark); ok {
			r.marker(rest, &cur, &started)
			clear(lastLog)
			continue
		}
		if cur == nil {
			continue
		}
		if m := runLine.FindStringSubmatch(line); m != nil {
			test = m[1]
			continue
		}
		if m := logLine.FindStringSubmatch(line); m != nil && test != "" {
			lastLog[test] = m[1]
			continue
		}
		m := resultLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		switch m[2] {
		case "PASS":
			cur.Passed++
		case "FAIL":
			cur.Failed++
			cur.Failures = append(cur.Failures, m[3])
		case "SKIP":
			cur.Skipped++
			cur.Skips = append(cur.Skips, Skip{Test: m[3], Reason: lastLog[m[3]]})
		}
	}
}

func (r *Result) marker(rest string, cur **CommandResult, started *time.Time) {
	f := strings.Fields(rest)
	if len(f) == 0 {
		return
	}
	switch f[0] {
	case "BOOTED":
		r.Booted = true
		if len(f) > 1 {
			r.Release = f[1]
		}
	case "START":
		*cur = &CommandResult{Name: strings.Join(f[1:], " ")}
		*started = time.Now()
	case "EXIT":
		if *cur == nil || len(f) < 2 {
			return
		}
		(*cur).Exit, _ = strconv.Atoi(f[len(f)-1])
		(*cur).Wall = time.Since(*started)
		r.Commands = append(r.Commands, **cur)
		*cur = nil
	case "DONE":
		r.Done = true
	}
}

// Summary writes the per-command and total lines of a run, with the skip
// reasons grouped.
func (r *Result) Summary(w io.Writer) {
	fmt.Fprintf(w, "== kernel %s (%s): wall %s\n", r.Kernel, r.Release, r.Wall.Round(time.Second))
	for _, c := range r.Commands {
		status := "ok"
		if c.Exit != 0 {
			status = fmt.Sprintf("FAIL (exit %d)", c.Exit)
		}
		fmt.Fprintf(w, "   %-22s %-14s %4d passed %3d failed %3d skipped  %s\n", c.Name, status, c.Passed, c.Failed, c.Skipped, c.Wall.Round(time.Second))
		for _, f := range c.Failures {
			fmt.Fprintf(w, "      failed: %s\n", f)
		}
		for _, s := range c.Skips {
			fmt.Fprintf(w, "      skipped: %s: %s\n", s.Test, s.Reason)
		}
	}
	p, f, s := r.Totals()
	fmt.Fprintf(w, "   total: %d run, %d passed, %d failed, %d skipped\n", p+f+s, p, f, s)
}
