package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"testing"

	"github.com/fabricnet/fabric/cmd/internal/api"
)

// fuzzRoutes are the API's routes with a body or a name, as method and
// path pattern ({name} is replaced by the fuzzed name).
var fuzzRoutes = []struct{ method, path string }{
	{"POST", "/v1/networks"},
	{"POST", "/v1/networks/{name}/connect"},
	{"POST", "/v1/networks/{name}/disconnect"},
	{"DELETE", "/v1/networks/{name}"},
	{"GET", "/v1/networks/{name}"},
	{"POST", "/v1/sandboxes"},
	{"GET", "/v1/sandboxes/{name}"},
	{"DELETE", "/v1/sandboxes/{name}"},
	{"PUT", "/v1/sandboxes/{name}/process"},
	{"POST", "/v1/cluster/keys"},
	{"GET", "/v1/status"},
}

// FuzzAPIBodies sends arbitrary bodies and names to every route of the
// API handler of an agent on a fake datapath (no root needed, no kernel
// change). Invariants: no panic; every answer is a known status with a
// JSON body; a rejection is a well-formed api.Error whose code matches its
// status, and changes nothing (networks, sandboxes, endpoints).
//
// The fuzzer must never change the machine it runs on: a valid sandbox
// create is only planned (it would make a namespace and maybe start a
// process), and a connect naming a namespace by path is not sent.
func FuzzAPIBodies(f *testing.F) {
	seeds := []string{
		`{"name":"n1","subnet":"10.30.0.0/24"}`,
		`{"name":"n2","driver":"macvlan","subnet":"10.31.0.0/24","options":{"parent":"nope0"}}`,
		`{"name":"n3","subnet":"169.254.0.0/16"}`,
		`{"name":"n4","subnet":"10.32.0.0/24","gateway":"10.32.0.0","ip_range":"10.32.0.128/25"}`,
		`{"sandbox":"x","ip":"10.30.0.9","aliases":["github.com"]}`,
		`{"name":"web","network":"n1","ports":["8080:80"],"aliases":["a","b.c"]}`,
		`{"name":"web","network":"container:db"}`,
		`{"pid":1}`, `{"pid":-5}`, `{"op":"install","key":"AAAA"}`,
		`{}`, `[]`, `null`, `{"name":1}`, `{"name":"a"} {"name":"b"}`, `{"unknown":true}`, "\x00\xff",
	}
	for i, s := range seeds {
		f.Add(uint8(i), "n1", []byte(s))
	}
	a := newHandlerTestAgent(f, "fuzz")
	h := a.handler()

	f.Fuzz(func(t *testing.T, route uint8, name string, body []byte) {
		r := fuzzRoutes[int(route)%len(fuzzRoutes)]
		if strings.Contains(r.path, "{name}") && (name == "" || strings.ContainsAny(name, "/\\") || strings.Contains(name, "..")) {
			t.Skip("names with '/' are namespace paths: not opened by the fuzzer")
		}
		if unsafeForFuzz(r.path, body) {
			t.Skip("names a namespace by path")
		}
		if r.path == "/v1/sandboxes" {
			var req api.SandboxCreate
			if strictDecode(body, &req) == nil {
				// A valid body would make a namespace and maybe start a
				// process: only plan it (every check, nothing made).
				planOnly(t, a, req)
				return
			}
		}
		path := strings.Replace(r.path, "{name}", url.PathEscape(name), 1)
		before := a.snapshotForFuzz()
		req := httptest.NewRequest(r.method, path, bytes.NewReader(body))
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		code := w.Code
		switch code {
		case http.StatusOK, http.StatusCreated, http.StatusNoContent:
			return
		case http.StatusBadRequest, http.StatusNotFound, http.StatusConflict, http.StatusRequestEntityTooLarge:
		default:
			t.Fatalf("%s %s %q: status %d %s", r.method, path, body, code, w.Body)
		}
		var e api.Error
		if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Message == "" || e.Code == "" {
			t.Fatalf("%s %s %q: %d with body %q, want an api.Error", r.method, path, body, code, w.Body)
		}
		if code != http.StatusRequestEntityTooLarge && api.StatusOf(e.Code) != code {
			t.Fatalf("%s %s: status %d but code %q", r.method, path, code, e.Code)
		}
		if after := a.snapshotForFuzz(); !reflect.DeepEqual(before, after) {
			t.Fatalf("%s %s %q was refused (%d %s) but changed the state", r.method, path, body, code, e.Message)
		}
	})
}

// unsafeForFuzz says whether a request names a namespace by path (it
// would be opened, and a connect would bind-mount it).
func unsafeForFuzz(path string, body []byte) bool {
	return (strings.HasSuffix(path, "/connect") || strings.HasSuffix(path, "/disconnect")) && bytes.ContainsAny(body, "/\\")
}

// strictDecode decodes as the API does (unknown fields, trailing data).
func strictDecode(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data")
	}
	return nil
}

// planOnly runs every check of a sandbox create and gives back what the
// plan reserved; a refusal must be a user error, not an internal one.
func planOnly(t *testing.T, a *Agent, req api.SandboxCreate) {
	before := a.snapshotForFuzz()
	a.mu.Lock()
	sb, eps, err := a.planSandbox(context.Background(), req)
	for _, ep := range eps {
		a.releaseAddr(ep)
	}
	a.mu.Unlock()
	if err != nil {
		if code := apiError(err).Code; code == api.CodeInternal {
			t.Fatalf("plan %+v: internal error %v", req, err)
		}
	} else if sb == nil {
		t.Fatalf("plan %+v: no sandbox and no error", req)
	}
	if after := a.snapshotForFuzz(); before != after {
		t.Fatalf("planning %+v changed the state", req)
	}
}

// snapshotForFuzz is what a rejected request must not change.
func (a *Agent) snapshotForFuzz() [3]int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return [3]int{len(a.networks), len(a.sandboxes), len(a.endpoints)}
}
