package secrets

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/meshd/meshd/pkg/agent/bootstrap"
)

// File modes: the key is the workload's alone; the certificates are public.
const (
	dirMode  = 0o750
	keyMode  = 0o600
	certMode = 0o644
)

// writeFiles replaces the files proxyless gRPC's file_watcher reads (the names its bootstrap points at). Every
// file is written to a temporary name first and the renames happen together at the end, so a reader sees
// either the old or the new content of each file, never a partial one, and the key and the certificate change
// within microseconds of each other.
func writeFiles(dir string, st *issued) error {
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{bootstrap.KeyFile, st.cert.PrivateKeyPEM, keyMode},
		{bootstrap.CertChainFile, st.cert.CertChainPEM, certMode},
		{bootstrap.RootCertFile, st.root.RootPEM, certMode},
	}
	temps := make([]string, 0, len(files))
	cleanup := func() {
		for _, t := range temps {
			_ = os.Remove(t)
		}
	}
	for _, f := range files {
		tmp, err := writeTemp(dir, f.name, f.data, f.mode)
		if err != nil {
			cleanup()
			return err
		}
		temps = append(temps, tmp)
	}
	for i, f := range files {
		if err := os.Rename(temps[i], filepath.Join(dir, f.name)); err != nil {
			cleanup()
			return fmt.Errorf("replacing %s: %w", f.name, err)
		}
	}
	return nil
}

// writeTemp writes data to a new file in dir with mode, synced, and returns its path.
func writeTemp(dir, name string, data []byte, mode os.FileMode) (string, error) {
	// CreateTemp makes the file 0600, so the key is never readable by others, not even for a moment.
	f, err := os.CreateTemp(dir, "."+name+".*")
	if err != nil {
		return "", fmt.Errorf("writing %s: %w", name, err)
	}
	_, werr := f.Write(data)
	if werr == nil {
		werr = f.Chmod(mode) // Chmod is not subject to the umask, unlike the mode of a create
	}
	if werr == nil {
		werr = f.Sync()
	}
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		_ = os.Remove(f.Name())
		return "", fmt.Errorf("writing %s: %w", name, err)
	}
	return f.Name(), nil
}
