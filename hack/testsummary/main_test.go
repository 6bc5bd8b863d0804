package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestSummary(t *testing.T) {
	events := `{"Action":"run","Package":"p","Test":"TestA"}
{"Action":"output","Package":"p","Test":"TestA","Output":"chatter of a passing test\n"}
{"Action":"pass","Package":"p","Test":"TestA"}
{"Action":"output","Package":"p","Test":"TestB","Output":"    b_test.go:3: boom\n"}
{"Action":"fail","Package":"p","Test":"TestB"}
{"Action":"skip","Package":"p","Test":"TestC"}
{"Action":"output","Package":"p","Output":"FAIL\tp\t0.01s\n"}
{"Action":"fail","Package":"p"}
# a build error line
`
	var out bytes.Buffer
	if code := run(strings.NewReader(events), &out); code != 1 {
		t.Fatalf("exit %d, want 1 on a failure", code)
	}
	got := out.String()
	for _, want := range []string{"b_test.go:3: boom", "FAIL\tp", "# a build error line", "1 passed, 1 failed, 1 skipped\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "chatter of a passing test") || !strings.HasSuffix(got, "1 passed, 1 failed, 1 skipped\n") {
		t.Errorf("output:\n%s", got)
	}
	if code := run(strings.NewReader(""), &out); code != 1 {
		t.Errorf("no tests: exit %d, want 1", code)
	}
	if code := run(strings.NewReader(`{"Action":"pass","Package":"p","Test":"TestA"}`), &out); code != 0 {
		t.Errorf("all passing: exit %d, want 0", code)
	}
}
