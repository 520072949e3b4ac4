package agent

import (
	"errors"
	"fmt"

	"github.com/fabricnet/fabric/cmd/internal/api"
	"github.com/fabricnet/fabric/cmd/internal/ipam"
)

// Sentinel errors for expected states; the API maps them to status codes.
var (
	ErrInvalid   = errors.New("invalid request")
	ErrNotFound  = errors.New("not found")
	ErrConflict  = errors.New("conflict")
	ErrExhausted = errors.New("address pool exhausted")
)

// userError carries a message meant for the person at the CLI and the
// sentinel that classifies it.
type userError struct {
	kind error
	msg  string
}

func (e *userError) Error() string { return e.msg }
func (e *userError) Unwrap() error { return e.kind }

// fieldError is an error whose message names request fields by their JSON
// names; the API passes the names on, so clients can say them in their own
// terms (fabricctl shows its flags).
type fieldError struct {
	err    error
	fields []string
}

func (e *fieldError) Error() string { return e.err.Error() }
func (e *fieldError) Unwrap() error { return e.err }

// naming records which request fields err's message names.
func naming(err error, fields ...string) error {
	return &fieldError{err, fields}
}

func invalidf(format string, args ...any) error {
	return &userError{ErrInvalid, fmt.Sprintf(format, args...)}
}

func notFoundf(format string, args ...any) error {
	return &userError{ErrNotFound, fmt.Sprintf(format, args...)}
}

func conflictf(format string, args ...any) error {
	return &userError{ErrConflict, fmt.Sprintf(format, args...)}
}

// classifyIPAM turns an IPAM error into a user error of the right kind.
func classifyIPAM(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ipam.ErrExhausted):
		return &userError{ErrExhausted, err.Error()}
	case errors.Is(err, ipam.ErrInUse):
		return &userError{ErrConflict, err.Error()}
	default:
		return &userError{ErrInvalid, err.Error()}
	}
}

// apiError maps an error to the API's code.
func apiError(err error) *api.Error {
	code := api.CodeInternal
	switch {
	case errors.Is(err, ErrInvalid):
		code = api.CodeInvalid
	case errors.Is(err, ErrNotFound):
		code = api.CodeNotFound
	case errors.Is(err, ErrExhausted):
		code = api.CodeExhausted
	case errors.Is(err, ErrConflict):
		code = api.CodeConflict
	}
	var fields []string
	if fe := (*fieldError)(nil); errors.As(err, &fe) {
		fields = fe.fields
	}
	return &api.Error{Message: err.Error(), Code: code, Fields: fields}
}
