package proxy

import "syscall"

// dieWithParent has the kernel send SIGKILL to the proxy when the agent's thread that started it exits.
func dieWithParent() *syscall.SysProcAttr { return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} }
