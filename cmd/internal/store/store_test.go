package store

import (
	"errors"
	"path/filepath"
	"testing"
	"time"
)

type rec struct {
	Name string
	N    int
}

func TestPutGetListDeleteSurviveReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := Open(path, []string{"a"}, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	err = s.Update(func(tx *Tx) error {
		if err := tx.Put("a", "x", rec{"x", 1}); err != nil {
			return err
		}
		return tx.Put("a", "y", rec{"y", 2})
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()

	s, err = Open(path, []string{"a"}, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var got rec
	err = s.View(func(tx *Tx) error {
		ok, err := tx.Get("a", "y", &got)
		if !ok {
			return errors.New("y missing after reopen")
		}
		return err
	})
	if err != nil || got.N != 2 {
		t.Fatalf("get y: %v %+v", err, got)
	}
	_ = s.Update(func(tx *Tx) error { return tx.Delete("a", "x") })
	var all []rec
	_ = s.View(func(tx *Tx) (err error) { all, err = List[rec](tx, "a"); return err })
	if len(all) != 1 || all[0].Name != "y" {
		t.Fatalf("list after delete = %+v", all)
	}
}

func TestFailedUpdateWritesNothing(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "state.db"), []string{"a"}, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	boom := errors.New("boom")
	err = s.Update(func(tx *Tx) error {
		if err := tx.Put("a", "x", rec{"x", 1}); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
	var all []rec
	_ = s.View(func(tx *Tx) (err error) { all, err = List[rec](tx, "a"); return err })
	if len(all) != 0 {
		t.Fatalf("rolled-back put is visible: %+v", all)
	}
}

func TestSecondOpenerIsLockedOut(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := Open(path, nil, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := Open(path, nil, 100*time.Millisecond); !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: %v, want ErrLocked", err)
	}
}
