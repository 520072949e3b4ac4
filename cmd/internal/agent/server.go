package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path"

	"github.com/fabricnet/fabric/cmd/internal/api"
)

const maxBody = 1 << 20

// handler routes the API.
func (a *Agent) handler() http.Handler {
	mux := http.NewServeMux()
	p := "/" + api.Version
	mux.HandleFunc("GET "+p+"/status", func(w http.ResponseWriter, r *http.Request) {
		reply(w, http.StatusOK, a.Status(r.Context()))
	})
	mux.HandleFunc("GET "+p+"/cluster/keys", func(w http.ResponseWriter, r *http.Request) {
		keys, err := a.Keys()
		respond(w, http.StatusOK, keys, err)
	})
	mux.HandleFunc("POST "+p+"/cluster/keys", withBody(func(w http.ResponseWriter, r *http.Request, req api.KeyOp) {
		respond(w, http.StatusNoContent, nil, a.KeyOp(r.Context(), req))
	}))
	a.networkRoutes(mux, p)
	a.sandboxRoutes(mux, p)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		reply(w, http.StatusNotFound, api.Error{Message: fmt.Sprintf("no such API route: %s %s", r.Method, r.URL.Path), Code: api.CodeNotFound})
	})
	var h http.Handler = mux
	if a.opts.APIMetrics != nil {
		h = a.opts.APIMetrics.WrapMux(mux)
	}
	return a.logRequests(cleanPathsOnly(h))
}

// networkRoutes routes the network requests under prefix p.
func (a *Agent) networkRoutes(mux *http.ServeMux, p string) {
	collection[api.NetworkCreate, api.Network]{
		list: a.Networks, create: a.CreateNetwork, get: a.Network, remove: a.RemoveNetwork,
	}.routes(mux, p+"/networks")
	mux.HandleFunc("POST "+p+"/networks/{name}/connect", withBody(func(w http.ResponseWriter, r *http.Request, req api.Connect) {
		ep, err := a.Connect(r.Context(), r.PathValue("name"), req)
		respond(w, http.StatusCreated, ep, err)
	}))
	mux.HandleFunc("POST "+p+"/networks/{name}/disconnect", withBody(func(w http.ResponseWriter, r *http.Request, req api.Disconnect) {
		respond(w, http.StatusNoContent, nil, a.Disconnect(r.Context(), r.PathValue("name"), req))
	}))
}

// collection is one kind of named object the API lists, creates (from a
// Create request), gets and removes by name.
type collection[Create, Obj any] struct {
	list   func() []Obj
	create func(context.Context, Create) (Obj, error)
	get    func(name string) (Obj, error)
	remove func(ctx context.Context, name string) error
}

// routes routes the collection's requests under base (its list).
func (c collection[Create, Obj]) routes(mux *http.ServeMux, base string) {
	mux.HandleFunc("GET "+base, func(w http.ResponseWriter, r *http.Request) {
		reply(w, http.StatusOK, c.list())
	})
	mux.HandleFunc("POST "+base, withBody(func(w http.ResponseWriter, r *http.Request, req Create) {
		obj, err := c.create(r.Context(), req)
		respond(w, http.StatusCreated, obj, err)
	}))
	mux.HandleFunc("GET "+base+"/{name}", func(w http.ResponseWriter, r *http.Request) {
		obj, err := c.get(r.PathValue("name"))
		respond(w, http.StatusOK, obj, err)
	})
	mux.HandleFunc("DELETE "+base+"/{name}", func(w http.ResponseWriter, r *http.Request) {
		respond(w, http.StatusNoContent, nil, c.remove(r.Context(), r.PathValue("name")))
	})
}

// sandboxRoutes routes the sandbox and endpoint requests under prefix p.
func (a *Agent) sandboxRoutes(mux *http.ServeMux, p string) {
	collection[api.SandboxCreate, api.Sandbox]{
		list: a.Sandboxes, create: a.CreateSandbox, get: a.Sandbox, remove: a.RemoveSandbox,
	}.routes(mux, p+"/sandboxes")
	mux.HandleFunc("PUT "+p+"/sandboxes/{name}/process", withBody(func(w http.ResponseWriter, r *http.Request, req api.SandboxProcess) {
		respond(w, http.StatusNoContent, nil, a.SetProcess(r.PathValue("name"), req.PID))
	}))
	mux.HandleFunc("GET "+p+"/endpoints", func(w http.ResponseWriter, r *http.Request) {
		reply(w, http.StatusOK, a.Endpoints())
	})
}

// cleanPathsOnly refuses a path with '.', '..' or empty segments. The mux
// would answer it with a redirect to the cleaned path, so a name such as
// "." would reach another route (GET /v1/sandboxes/. is the list); an API
// client gets a 400 saying why instead.
func cleanPathsOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// As the mux does: the escaped path, so a name given as a
		// namespace path (%2Fvar%2Frun%2Fnetns%2Fx) is one segment.
		if p := r.URL.EscapedPath(); r.Method != http.MethodConnect && (p == "" || p[0] != '/' || path.Clean(p) != p) {
			reply(w, http.StatusBadRequest, api.Error{
				Message: fmt.Sprintf("API path %q has '.', '..' or empty segments: names cannot be '.' or '..'", p),
				Code:    api.CodeInvalid,
			})
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (a *Agent) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		if r.Method != http.MethodGet {
			// A client that goes away must not cancel a change half-way:
			// the rollback itself needs a live context.
			r = r.WithContext(context.WithoutCancel(r.Context()))
		}
		next.ServeHTTP(rec, r)
		a.log.Debug("api", "method", r.Method, "path", r.URL.Path, "code", rec.code)
	})
}

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.code = code
	s.ResponseWriter.WriteHeader(code)
}

// withBody is the handler of a request with a JSON body: serve gets the
// body decoded as a Req, and is not called when decode refuses it.
func withBody[Req any](serve func(w http.ResponseWriter, r *http.Request, req Req)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req Req
		if !decode(w, r, &req) {
			return
		}
		serve(w, r, req)
	}
}

// decode reads a JSON body strictly: unknown fields, trailing data and
// oversized bodies are rejected with a 400 before anything happens.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	data, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		reply(w, http.StatusBadRequest, api.Error{Message: "read request body: " + err.Error(), Code: api.CodeInvalid})
		return false
	}
	if len(data) > maxBody {
		reply(w, http.StatusRequestEntityTooLarge, api.Error{Message: "request body larger than 1 MiB", Code: api.CodeInvalid})
		return false
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		reply(w, http.StatusBadRequest, api.Error{Message: "bad JSON body: " + err.Error(), Code: api.CodeInvalid})
		return false
	}
	if dec.More() {
		reply(w, http.StatusBadRequest, api.Error{Message: "bad JSON body: trailing data after the object", Code: api.CodeInvalid})
		return false
	}
	return true
}

func respond(w http.ResponseWriter, okCode int, v any, err error) {
	if err != nil {
		e := apiError(err)
		reply(w, api.StatusOf(e.Code), e)
		return
	}
	if okCode == http.StatusNoContent {
		w.WriteHeader(okCode)
		return
	}
	reply(w, okCode, v)
}

func reply(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v) // the client may have gone; nothing to do then
}
