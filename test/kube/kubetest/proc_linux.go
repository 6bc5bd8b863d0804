package kubetest

import "syscall"

// sysProcAttr puts a child in its own process group, so that stop reaches
// everything it starts, and has Linux kill it when the test binary dies, even
// by SIGKILL or a test timeout.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
