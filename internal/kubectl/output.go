package kubectl

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"sigs.k8s.io/yaml"
)

// table prints rows as kubectl does: upper-case headers, columns padded
// by three spaces, "<none>" for an empty cell.
func table(w io.Writer, headers []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 6, 4, 3, ' ', 0)
	fmt.Fprintln(tw, strings.Join(headers, "\t"))
	for _, r := range rows {
		cells := make([]string, len(r))
		for i, c := range r {
			if c == "" {
				c = "<none>"
			}
			cells[i] = c
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

// structured prints v as JSON or YAML (-o json|yaml).
func structured(w io.Writer, format string, v any) error {
	b, err := json.MarshalIndent(v, "", "    ")
	if err != nil {
		return err
	}
	if format == "yaml" {
		if b, err = yaml.JSONToYAML(b); err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// age formats a duration as kubectl's AGE column does ("45s", "12m", "3h",
// "5d"); a time in the future reads "in 12m".
func age(now, t time.Time) string {
	if t.IsZero() {
		return ""
	}
	d := now.Sub(t)
	prefix := ""
	if d < 0 {
		d, prefix = -d, "in "
	}
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%s%ds", prefix, int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%s%dm", prefix, int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%s%dh", prefix, int(d.Hours()))
	}
	return fmt.Sprintf("%s%dd", prefix, int(d.Hours()/24))
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
