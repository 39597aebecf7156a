package conformance

import (
	"encoding/xml"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strings"
)

// Spec is one spec of a ginkgo JUnit report.
type Spec struct {
	// Name is the spec's full text (with its labels), as --focus and
	// --skip see it.
	Name string
	// State is passed, skipped or failed (failed also stands for
	// panicked, timed out, interrupted and aborted).
	State   string
	Message string
	Seconds float64
}

type junitReport struct {
	Suites []struct {
		Cases []struct {
			Name    string  `xml:"name,attr"`
			Status  string  `xml:"status,attr"`
			Time    float64 `xml:"time,attr"`
			Failure *struct {
				Message string `xml:"message,attr"`
			} `xml:"failure"`
			Error *struct {
				Message string `xml:"message,attr"`
			} `xml:"error"`
			Skipped *struct{} `xml:"skipped"`
		} `xml:"testcase"`
	} `xml:"testsuite"`
}

// ReadJUnit parses the JUnit report ginkgo writes (--junit-report).
func ReadJUnit(file string) ([]Spec, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ParseJUnit(f)
}

// ParseJUnit parses a ginkgo v2 JUnit report. Suite-level nodes
// ([SynchronizedBeforeSuite] and the like) are specs too: their failure
// fails the run.
func ParseJUnit(r io.Reader) ([]Spec, error) {
	var rep junitReport
	if err := xml.NewDecoder(r).Decode(&rep); err != nil {
		return nil, fmt.Errorf("parse JUnit report: %w", err)
	}
	var specs []Spec
	for _, s := range rep.Suites {
		for _, c := range s.Cases {
			sp := Spec{Name: strings.TrimPrefix(c.Name, "[It] "), Seconds: c.Time}
			switch {
			case c.Failure != nil:
				sp.State, sp.Message = "failed", c.Failure.Message
			case c.Error != nil:
				sp.State, sp.Message = "failed", c.Error.Message
			case c.Status == "skipped" || c.Status == "pending" || c.Skipped != nil:
				sp.State = "skipped"
			case c.Status == "passed" || c.Status == "":
				sp.State = "passed"
			default:
				sp.State = "failed"
				sp.Message = c.Status
			}
			specs = append(specs, sp)
		}
	}
	return specs, nil
}

// Verdict is a run judged against the skip list.
type Verdict struct {
	Passed, Failed, Skipped int
	// SkipListed counts the skipped specs that the skip list skipped (the
	// rest skipped themselves: a pattern or capability dhpp lacks).
	SkipListed int
	// Unexpected are failures the skip list does not cover.
	Unexpected []Spec
	// ListedFailures are failures of listed specs (in a recheck run).
	ListedFailures []Spec
	// NowPassing are listed specs that passed (in a recheck run): their
	// entries may be removed.
	NowPassing []Spec
	// Stale are entries that match no selected spec of this version.
	Stale []Skip
}

// OK reports whether the run passes: no unexpected failure, no stale entry,
// and at least one spec passed (a run that tested nothing is no pass).
func (v Verdict) OK() bool { return len(v.Unexpected) == 0 && len(v.Stale) == 0 && v.Passed > 0 }

// Judge counts the specs that focus selects and checks them against skips.
func Judge(specs []Spec, focus *regexp.Regexp, skips []Skip) Verdict {
	var v Verdict
	used := make([]bool, len(skips))
	for _, sp := range specs {
		isSuiteNode := strings.HasPrefix(sp.Name, "[Synchronized") || strings.HasPrefix(sp.Name, "[BeforeSuite]") ||
			strings.HasPrefix(sp.Name, "[AfterSuite]") || strings.HasPrefix(sp.Name, "[ReportAfterSuite]") ||
			strings.HasPrefix(sp.Name, "[ReportBeforeSuite]")
		if !isSuiteNode && !focus.MatchString(sp.Name) {
			continue
		}
		// Every matching entry is in use (a spec may be listed for two
		// reasons); the first one is the reason reported.
		listed := -1
		for i, s := range skips {
			if regexp.MustCompile(s.Pattern).MatchString(sp.Name) {
				used[i] = true
				if listed < 0 {
					listed = i
				}
			}
		}
		switch sp.State {
		case "passed":
			if isSuiteNode {
				continue
			}
			v.Passed++
			if listed >= 0 {
				v.NowPassing = append(v.NowPassing, sp)
			}
		case "skipped":
			if isSuiteNode {
				continue
			}
			v.Skipped++
			if listed >= 0 {
				v.SkipListed++
			}
		default:
			v.Failed++
			if listed >= 0 && !isSuiteNode {
				v.ListedFailures = append(v.ListedFailures, sp)
			} else {
				v.Unexpected = append(v.Unexpected, sp)
			}
		}
	}
	for i, s := range skips {
		if !used[i] {
			v.Stale = append(v.Stale, s)
		}
	}
	sort.Slice(v.Unexpected, func(i, j int) bool { return v.Unexpected[i].Name < v.Unexpected[j].Name })
	return v
}
