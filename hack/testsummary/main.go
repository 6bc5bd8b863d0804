// Command testsummary reads `go test -json` on stdin and prints the package lines (ok, FAIL) and the output of
// failing tests, then one line counting tests: "N passed, N failed, N skipped". It exits non-zero when a test or a package failed, or when
// no test ran.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
)

type event struct {
	Action  string
	Package string
	Test    string
	Output  string
}

func main() { os.Exit(run(os.Stdin, os.Stdout)) }

// run summarises the events on r onto w and returns the exit code.
func run(r io.Reader, w io.Writer) int {
	var passed, failed, skipped, pkgFailed int
	// held keeps each running test's output, shown only if the test fails.
	held := map[string][]string{}
	in := bufio.NewScanner(r)
	in.Buffer(make([]byte, 1<<20), 16<<20)
	for in.Scan() {
		var e event
		if err := json.Unmarshal(in.Bytes(), &e); err != nil {
			// Not an event (a build error printed by go test): show it as it is.
			fmt.Fprintln(w, in.Text())
			continue
		}
		switch e.Action {
		case "output":
			if e.Test == "" {
				fmt.Fprint(w, e.Output)
			} else {
				k := e.Package + " " + e.Test
				held[k] = append(held[k], e.Output)
			}
		case "pass", "skip":
			if e.Test != "" {
				if e.Action == "pass" {
					passed++
				} else {
					skipped++
				}
				delete(held, e.Package+" "+e.Test)
			}
		case "fail":
			if e.Test == "" {
				pkgFailed++
				continue
			}
			failed++
			k := e.Package + " " + e.Test
			for _, line := range held[k] {
				fmt.Fprint(w, line)
			}
			delete(held, k)
		}
	}
	if err := in.Err(); err != nil {
		fmt.Fprintln(w, "testsummary:", err)
		return 2
	}
	fmt.Fprintf(w, "%d passed, %d failed, %d skipped\n", passed, failed, skipped)
	if failed > 0 || pkgFailed > 0 || passed == 0 {
		return 1
	}
	return 0
}
