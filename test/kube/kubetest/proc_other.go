//go:build !linux

package kubetest

import "syscall"

// sysProcAttr puts a child in its own process group, so that stop reaches
// everything it starts. Without Linux's parent-death signal, a test binary that
// dies without running its cleanups leaves the processes running.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
